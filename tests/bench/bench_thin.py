"""Benchmark of thin provisioning in the node agent, on the lab (not a test: it prints figures).

    VIRTNODE_LAB_ID=<n> make lab-up HOSTS=2 && make BUILD=<build> bench-thin [BENCH_THIN_ARGS='--chunk-mib 64']

Three runs of the writer guest on a COW volume of a posixfs pool (vnhost1 is SPM), each writing
``--write-mib`` sequentially with O_DIRECT:

* local:   the VM on the SPM host, thin volume starting at one chunk: the agent extends directly;
* mailbox: the VM on the other host: every extension is a request through the master domain's
           mailbox, served by the SPM host's agent;
* no agent: the VM on the SPM host with the agent stopped and the volume grown to its maximum
           first (nothing to extend): the guest's write rate without thin provisioning.

While each guest writes, a poller on its host reads the disk's written bytes (libvirt's block
stats) and the volume's physical size (block info) every 0.1 s; ``--plot`` (default
.cache/bench-thin/thin-provisioning.png, needs matplotlib: ``make bench-thin`` installs it into
the venv) draws both over time for the local and mailbox runs, each extension and ENOSPC pause
marked.

Printed: extension latency (the agent's BLOCK_THRESHOLD or ENOSPC trigger to the new size
reported by libvirt for the running disk) as count, median, p99 and max per path, with the
share spent getting the space and refreshing the device; ENOSPC pauses; the guest's own write
rate (MiB/s over its guest clock) for each run. The lab shares the machine's CPUs, so figures
vary with load; the machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import test_thin_provisioning as thin  # noqa: E402  pylint: disable=wrong-import-position
from conftest import INVENTORY  # noqa: E402  pylint: disable=wrong-import-position


# Runs on the guest's host from the writer's start until the domain is gone: one JSON line per
# reading, host wall clock (the agent's events use the same clock).
POLL_DISK = r"""
import json, sys, time, libvirt
libvirt.registerErrorHandler(lambda ctx, err: None, None)
conn = libvirt.openReadOnly('qemu:///system')
dom = conn.lookupByName(sys.argv[1])
while True:
    try:
        written = dom.blockStats('vda')[3]
        physical = dom.blockInfo('vda')[2]
    except libvirt.libvirtError:
        break
    print(json.dumps({'time': round(time.time(), 3), 'written': written, 'physical': physical}), flush=True)
    time.sleep(0.1)
"""


class DiskPoller:
    """The written bytes and physical size of a guest's disk over time, read on its host."""

    def __init__(self, host: str):
        self.host = host
        self.proc = None

    def start(self, name: str):
        self.proc = subprocess.Popen(["python3", str(REPO / "tests/lab/lab.py"), "exec", self.host, "--",
                                      "/usr/bin/python3", "-c", POLL_DISK, name],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def series(self) -> list:
        if self.proc is None:
            return []
        try:
            out = self.proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def plot(runs: list, path: Path, chunk_mib: int) -> bool:
    """Written bytes and physical size over time, one panel per run, extensions and pauses marked."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
        print(f"no plot: matplotlib is not installed for {sys.executable} (make bench-thin installs it)")
        return False
    figure, axes = plt.subplots(len(runs), 1, figsize=(9, 3.4 * len(runs)), squeeze=False)
    for ax, (name, result) in zip(axes[:, 0], runs):
        series = result["series"]
        if not series:
            continue
        start = series[0]["time"]
        ax.plot([p["time"] - start for p in series], [p["written"] / 2 ** 20 for p in series],
                label="written by the guest", color="tab:blue")
        ax.step([p["time"] - start for p in series], [p["physical"] / 2 ** 20 for p in series], where="post",
                label="volume's physical size", color="tab:orange")
        for index, event in enumerate(result["extensions"]):
            ax.axvline(event["time"] - start, color="tab:green", linewidth=0.8, alpha=0.6,
                       label="extension" if index == 0 else None)
        for index, event in enumerate(e for e in result["events"] if e["event"] == "paused"):
            ax.axvline(event["time"] - start, color="tab:red", linewidth=1.2, linestyle="--",
                       label="ENOSPC pause" if index == 0 else None)
        ax.set_title(f"{name}: {len(result['extensions'])} extensions, {result['enospc_pauses']} ENOSPC pauses")
        ax.set_xlabel("seconds since the guest started")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"Thin provisioning by the node agent, chunk {chunk_mib} MiB")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    print(f"plot written to {path}")
    return True


def write_summary(path, results):
    if not path:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_table  # pylint: disable=import-outside-toplevel
    by_path = {line["path"].split(" ")[0]: line for line in results}
    rows = []
    for name, limit_ms in (("local", 30.0), ("mailbox", 500.0)):
        line = by_path.get(name, {})
        p99 = line.get("latency_ms_p99")
        rows.append(bench_table.row(f"thin: {name} extension p99 ({line.get('extensions', 0)} extensions, "
                                    f"{line.get('enospc_pauses', '-')} ENOSPC pauses)",
                                    "-" if p99 is None else f"{p99:.1f} ms", f"limit {limit_ms:g} ms",
                                    None if p99 is None else p99 / limit_ms, 1.0))
    bare = by_path.get("no", {}).get("guest_rate_mib_s")
    for name in ("local", "mailbox"):
        rate = by_path.get(name, {}).get("guest_rate_mib_s")
        rows.append(bench_table.row(f"thin: guest write rate, {name}", "-" if rate is None else f"{rate} MiB/s",
                                    "no agent, full size " + ("-" if bare is None else f"{bare} MiB/s"),
                                    rate / bare if rate and bare else None))
    bench_table.write(path, rows)


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary(name, result):
    extensions = result["extensions"]
    latencies = [e["latency"] * 1000 for e in extensions]
    line = {"path": name, "extensions": len(extensions), "enospc_pauses": result["enospc_pauses"],
            "guest_rate_mib_s": round(result["rate_mib_s"], 1) if result["rate_mib_s"] else None,
            "writer_done": f"writer done {result['write_mib'] * 2 ** 20}" in result["console"]}
    if latencies:
        line.update({
            "latency_ms_median": round(statistics.median(latencies), 1),
            "latency_ms_p99": round(percentile(latencies, 0.99), 1),
            "latency_ms_max": round(max(latencies), 1),
            "extend_ms_median": round(statistics.median(e["extend_seconds"] * 1000 for e in extensions), 1),
            "refresh_ms_median": round(statistics.median(e["refresh_seconds"] * 1000 for e in extensions), 1),
            "triggers": sorted(set(e["trigger"] for e in extensions)),
        })
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--chunk-mib", type=int, default=64, help="agent chunk (test-sized; VDSM: 2560)")
    parser.add_argument("--write-mib", type=int, default=896, help="MiB the guest writes per run (capacity 1 GiB)")
    parser.add_argument("--summary", help="write the summary rows of `make bench` to this file")
    parser.add_argument("--plot", default=str(REPO / ".cache" / "bench-thin" / "thin-provisioning.png"),
                        help="PNG of the local and mailbox runs over time (default %(default)s; '' for none)")
    args = parser.parse_args(argv)
    inventory = json.loads(INVENTORY.read_text())
    hosts = list(inventory["all"]["children"]["lab"]["hosts"])[:2]
    if len(hosts) < 2:
        sys.exit("bench-thin needs a lab with two hosts (make lab-up HOSTS=2)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        with thin.thin_lab(hosts, Path(tmp), thin_chunk_mib=args.chunk_mib, log_level="INFO"):
            plotted = []
            for name, host, key in (("local", hosts[0], "spm"), ("mailbox", hosts[1], "mailbox")):
                poller = DiskPoller(host)
                result = thin.run_writer(inventory, host, key, write_mib=args.write_mib, start_mib=args.chunk_mib,
                                         timeout=600, before_start=poller.start)
                result["write_mib"] = args.write_mib
                result["series"] = poller.series()
                results.append(summary(name, result))
                plotted.append((f"{name} (VM on {host})", result))
            thin.agent_stop(hosts[0])
            try:
                result = thin.run_writer(inventory, hosts[0], "stopped", write_mib=args.write_mib,
                                         start_mib=thin.CAPACITY_MIB * 11 // 10 + 1, timeout=600)
            finally:
                thin.agent_start(hosts[0])
            result["write_mib"] = args.write_mib
            results.append(summary("no agent (volume at full size)", result))
    print()
    print(f"thin provisioning benchmark: chunk {args.chunk_mib} MiB, utilization 20 %, guest writes "
          f"{args.write_mib} MiB per run; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for line in results:
        print(json.dumps(line, sort_keys=True))
    if args.plot:
        plot(plotted, Path(args.plot), args.chunk_mib)
    write_summary(args.summary, results)
    print("VDSM for comparison: the watermark check polls every 2 s and a mailbox request waits for the SPM's "
          "poll (2 s, or 0.5 s with events), i.e. a median wait of about 1 s (0.25 s) before the extension "
          "starts, plus the host's own outbox poll; here the BLOCK_THRESHOLD event starts it at once, the SPM "
          "checks the mailbox every 0.1 s and the host its reply every 0.05 s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
