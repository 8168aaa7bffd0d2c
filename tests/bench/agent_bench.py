"""Benchmark (not a test): the agent's sampler and cache against libvirt's test driver.

Generates a test-driver XML with N running domains (default 1000), opens
`test:///<file>`, and measures, for one full sample (getAllDomainStats plus
building every VM entry, with rates from the previous sample) and for a
vm_info-equivalent query of all of them through the agent's unix socket:
wall time, tracemalloc peak and the process RSS growth.

    make bench-agent                      # 1000 domains
    /usr/bin/python3 tests/bench/agent_bench.py --domains 200 --rounds 5

Runs under /usr/bin/python3 (python3-libvirt); needs the collection copy made
by `make collection` (BUILD=.build by default, or --collections PATH).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def domain_xml(index: int) -> str:
    return f"""  <domain type='test'>
    <name>bench-{index:04d}</name>
    <uuid>{uuid.uuid5(uuid.NAMESPACE_DNS, f'bench-{index}')}</uuid>
    <memory unit='MiB'>128</memory>
    <currentMemory unit='MiB'>128</currentMemory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/var/lib/bench/{index}.img'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'>
        <source network='default'/>
        <mac address='52:54:00:{index >> 8 & 255:02x}:{index & 255:02x}:01'/>
      </interface>
    </devices>
  </domain>
"""


def write_test_driver(path: Path, count: int) -> None:
    network = ("  <network><name>default</name><bridge name='virbr0'/>"
               "<ip address='192.168.122.1' netmask='255.255.255.0'/></network>\n")
    path.write_text("<node>\n" + network + "".join(domain_xml(i) for i in range(count)) + "</node>\n")


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(label: str, func, rounds: int) -> None:
    times, peaks, rss_growth = [], [], []
    result = None
    for _round in range(rounds):
        rss_before = rss_kib()
        tracemalloc.start()
        started = time.perf_counter()
        result = func()
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        times.append(elapsed)
        peaks.append(peak)
        rss_growth.append(rss_kib() - rss_before)
    print(f"{label:<34} median {statistics.median(times) * 1000:8.1f} ms  min {min(times) * 1000:8.1f} ms  "
          f"tracemalloc peak {max(peaks) / 1048576:6.1f} MiB  RSS growth {max(rss_growth) / 1024:6.1f} MiB")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--collections", default=str(REPO / os.environ.get("BUILD", ".build")))
    args = parser.parse_args()
    sys.path.insert(0, args.collections)
    import libvirt  # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils import (  # pylint: disable=import-outside-toplevel
        agent_client, agent_daemon, agent_sampling)

    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        tmp_path = Path(tmp)
        driver = tmp_path / "test-driver.xml"
        write_test_driver(driver, args.domains)
        uri = f"test://{driver}"
        print(f"{args.domains} domains on {uri}; {args.rounds} rounds each; python {sys.version.split()[0]}, "
              f"RSS at start {rss_kib() / 1024:.1f} MiB")
        conn = libvirt.open(uri)
        assert len(conn.listAllDomains()) == args.domains
        sampler = agent_sampling.VmSampler(libvirt, records_dir=str(tmp_path / "records"))
        sampler.take(conn)

        def full_sample():
            sampler.take(conn)
            return sampler.entries()

        entries = measure("one full sample (bulk + entries)", full_sample, args.rounds)
        assert len(entries) == args.domains, len(entries)
        measure("getAllDomainStats alone", lambda: conn.getAllDomainStats(0, 0), args.rounds)
        conn.close()

        config = agent_daemon.load_config(None, {
            "libvirt_uri": uri, "socket_path": str(tmp_path / "agent.sock"), "events_file": str(tmp_path / "ev.jsonl"),
            "metrics_enabled": False, "storage_enabled": False, "log_file": "", "interval": 3600.0})
        agent = agent_daemon.Agent(config, libvirt_module=libvirt)
        agent.vm_sampler.records_dir = str(tmp_path / "records")
        agent.start()
        try:
            agent.sample_once()
            agent.sample_once()

            def vm_info_all():
                answer = agent_client.query("vms", timeout=60, path=config["socket_path"])
                return answer["data"]["vms"]

            vms = measure("vm_info query of all (socket)", vm_info_all, args.rounds)
            assert len(vms) == args.domains
            measure("agent sample_once (host + VMs)", agent.sample_once, args.rounds)
        finally:
            agent.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process max RSS {usage.ru_maxrss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
