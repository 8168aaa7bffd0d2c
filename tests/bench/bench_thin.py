"""Benchmark of thin provisioning in the node agent, on the lab (not a test: it prints figures).

    VIRTNODE_LAB_ID=<n> make lab-up HOSTS=2 && make BUILD=<build> bench-thin [BENCH_THIN_ARGS='--chunk-mib 64']

Three runs of the writer guest on a COW volume of a posixfs pool (vnhost1 is SPM), each writing
``--write-mib`` sequentially with O_DIRECT:

* local:   the VM on the SPM host, thin volume starting at one chunk: the agent extends directly;
* mailbox: the VM on the other host: every extension is a request through the master domain's
           mailbox, served by the SPM host's agent;
* no agent: the VM on the SPM host with the agent stopped and the volume grown to its maximum
           first (nothing to extend): the guest's write rate without thin provisioning.

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
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import test_thin_provisioning as thin  # noqa: E402  pylint: disable=wrong-import-position
from conftest import INVENTORY  # noqa: E402  pylint: disable=wrong-import-position


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
    args = parser.parse_args(argv)
    inventory = json.loads(INVENTORY.read_text())
    hosts = list(inventory["all"]["children"]["lab"]["hosts"])[:2]
    if len(hosts) < 2:
        sys.exit("bench-thin needs a lab with two hosts (make lab-up HOSTS=2)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        with thin.thin_lab(hosts, Path(tmp), thin_chunk_mib=args.chunk_mib, log_level="INFO"):
            for name, host, key in (("local", hosts[0], "spm"), ("mailbox", hosts[1], "mailbox")):
                result = thin.run_writer(inventory, host, key, write_mib=args.write_mib, start_mib=args.chunk_mib,
                                         timeout=600)
                result["write_mib"] = args.write_mib
                results.append(summary(name, result))
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
    print("VDSM for comparison: the watermark check polls every 2 s and a mailbox request waits for the SPM's "
          "poll (2 s, or 0.5 s with events), i.e. a median wait of about 1 s (0.25 s) before the extension "
          "starts, plus the host's own outbox poll; here the BLOCK_THRESHOLD event starts it at once, the SPM "
          "checks the mailbox every 0.1 s and the host its reply every 0.05 s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
