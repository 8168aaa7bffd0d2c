"""What a kernel host (User-mode Linux) costs against a namespace host, on the lab (not a test).

    make lab-up && make bench-kernel [BENCH_KERNEL_ARGS='--rounds 10']

For the first namespace host and each kernel host, the same ad-hoc module runs are timed from the
controller, ``--rounds`` times each (the first run is a warm-up and not counted): the builtin
``ping`` (Python start-up and Ansible's module transfer alone) and the collection's ``host_info``
and ``vm_info``. Printed: the median and the slowest wall time per module and host, and the ratio
kernel/namespace. The kernel hosts' boot times are printed by ``lab.py up``. The lab shares the
machine's CPUs, so figures vary with load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from conftest import INVENTORY, ansible_env  # noqa: E402  pylint: disable=wrong-import-position

MODULES = ("ansible.builtin.ping", "virtnode.kvm.host_info", "virtnode.kvm.vm_info")


def timed_run(host: str, module: str) -> float:
    start = time.monotonic()
    proc = subprocess.run(["ansible", "-i", str(INVENTORY), host, "-m", module, "-o"], env=ansible_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{module} on {host} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not INVENTORY.exists():
        raise SystemExit(f"no lab inventory at {INVENTORY}: run `make lab-up` first")
    children = json.loads(INVENTORY.read_text())["all"]["children"]
    namespace_host = sorted(children["lab"]["hosts"])[0]
    kernel_hosts = sorted(children.get("kernel", {}).get("hosts", {}))
    if not kernel_hosts:
        raise SystemExit("the lab has no kernel hosts: make lab-up KERNEL_HOSTS=2")
    rows = []
    for module in MODULES:
        figures = {}
        for host in [namespace_host, *kernel_hosts]:
            timed_run(host, module)  # warm-up: SSH connection, caches
            times = [timed_run(host, module) for _round in range(args.rounds)]
            figures[host] = (statistics.median(times), max(times))
        base = figures[namespace_host][0]
        for host, (median, slowest) in figures.items():
            rows.append((module, host, median, slowest, median / base))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, rounds: {args.rounds}")
    print(f"{'module':28} {'host':10} {'median s':>9} {'max s':>7} {'x namespace':>12}")
    for module, host, median, slowest, ratio in rows:
        print(f"{module:28} {host:10} {median:9.2f} {slowest:7.2f} {ratio:12.1f}")


if __name__ == "__main__":
    main()
