"""The node agent on a lab host: statistics, metrics, events, libvirtd restarts, storage trouble.

Needs the lab with the bootstrap and node_agent roles applied (test_roles.py
does it; the module fixture applies node_agent again, which is idempotent).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import REPO, lab_exec, lab_vars, run_playbook, wait_for

HOST = "vnhost1"
GUEST = "agent-guest"
SD_UUID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
MOUNT_DIR = "/rhev/data-center/mnt/agent-test"
AGENT_PATH = "/usr/lib/virtnode-agent"
PY = "/usr/bin/python3"
CLIENT = (
    "import sys, json; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events\n"
    "kind = sys.argv[1]\n"
    "if kind == 'events':\n"
    "    print(json.dumps(agent_events.read_events(since=int(sys.argv[2]))))\n"
    "else:\n"
    "    print(json.dumps(agent_client.query(kind, timeout=5, max_age=3600)))\n" % AGENT_PATH
)


def agent(kind: str, *args: str):
    proc = lab_exec(HOST, PY, "-c", CLIENT, kind, *args)
    return json.loads(proc.stdout)


def when(predicate, probe):
    """A probe that returns probe()'s value when predicate(value) holds, else None."""
    def check():
        value = probe()
        return value if value and predicate(value) else None
    return check


def events_since(cursor: int) -> list:
    return agent("events", str(cursor))["events"]


def agent_pid() -> int:
    return int(lab_exec(HOST, "cat", "/run/virtnode-agent.pid").stdout.split()[0])


def virsh(*args: str, check: bool = True):
    return lab_exec(HOST, "virsh", "-c", "qemu:///system", *args, check=check)


@pytest.fixture(scope="module")
def deployed(lab_hosts):
    proc = run_playbook(REPO / "molecule" / "node_agent" / "converge.yml")
    assert proc.returncode == 0, proc.stdout[-20000:]
    return agent_pid()


@pytest.fixture(scope="module")
def guest(deployed, inventory):
    lab_settings = lab_vars(inventory)
    xml = f"""<domain type='qemu'>
  <name>{GUEST}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{lab_settings['virtnode_lab_guest_kernel']}</kernel>
    <initrd>{lab_settings['virtnode_lab_guest_initrd']}</initrd>
    <cmdline>{lab_settings['virtnode_lab_guest_cmdline']} workload=heartbeat</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""
    virsh("destroy", GUEST, check=False)
    lab_exec(HOST, "sh", "-c", f"cat > /run/{GUEST}.xml <<'EOF'\n{xml}EOF\n")
    cursor = agent("status")["data"]["event_seq"]
    virsh("create", f"/run/{GUEST}.xml")
    yield cursor
    virsh("destroy", GUEST, check=False)


def vm_entry():
    answer = agent("vms")
    if not answer:
        return None
    for vm in answer["data"]["vms"]:
        if vm["name"] == GUEST:
            return vm
    return None


def test_vm_stats_match_libvirt_and_rates_are_sane(guest):
    vm = wait_for("two samples of the guest",
                  when(lambda v: v["cpu"] and v["cpu"]["usage_percent"] is not None, vm_entry))
    raw = virsh("domstats", "--raw", "--cpu-total", "--balloon", "--vcpu", GUEST).stdout
    stats = dict(line.strip().split("=", 1) for line in raw.splitlines() if "=" in line)
    assert vm["status"] == "Up"
    assert vm["cpu"]["vcpus"] == int(stats["vcpu.current"]) == 1
    assert vm["memory"]["max_kib"] == int(stats["balloon.maximum"]) == 131072
    # The agent's counter was read earlier, so it is at most libvirt's current one.
    assert 0 < vm["cpu"]["time_ns"] <= int(stats["cpu.time"])
    assert 0 <= vm["cpu"]["usage_percent"] <= 105
    host = agent("host")["data"]["stats"]
    assert 0 <= host["cpu"]["idle"] <= 100 and host["memory"]["free_mib"] > 0
    assert host["sample_interval"] > 0


def test_metrics_endpoint(guest):
    wait_for("the guest in the cache", vm_entry)
    scrape = lab_exec(HOST, PY, "-c", "import urllib.request; print(urllib.request.urlopen("
                      "'http://127.0.0.1:9177/metrics', timeout=10).read().decode())").stdout
    # prometheus_client writes labels sorted by name.
    assert re.search(r'^virtnode_vm_cpu_seconds_total\{uuid="[0-9a-f-]+",vm="%s"\} [0-9.e+]+$' % GUEST, scrape, re.M)
    assert re.search(r'^virtnode_vm_up\{uuid="[0-9a-f-]+",vm="%s"\} 1\.0$' % GUEST, scrape, re.M)
    assert "virtnode_host_memory_available_bytes " in scrape
    assert "virtnode_agent_libvirt_connected 1.0" in scrape


def test_events_for_start_pause_resume_stop(guest, tmp_path):
    cursor = guest
    wait_for("the started event",
             lambda: any(e["event"] == "started" and e.get("vm") == GUEST for e in events_since(cursor)))
    virsh("suspend", GUEST)
    virsh("resume", GUEST)
    virsh("destroy", GUEST)
    seen = wait_for("pause, resume and stop events",
                    when(lambda evs: {"paused", "resumed", "stopped"} <= {e["event"] for e in evs},
                         lambda: [e for e in events_since(cursor) if e.get("vm") == GUEST]))
    kinds = [(e["event"], e["reason"]) for e in seen]
    # libvirt also reports the resume of the CPUs at start and the shutdown before the stop: look for
    # the four in order, others may come between.
    wanted = [("started", "booted"), ("paused", "paused"), ("resumed", "unpaused"), ("stopped", "destroyed")]
    positions = []
    for item in wanted:
        start = positions[-1] + 1 if positions else 0
        assert item in kinds[start:], f"{item} missing after {wanted[:len(positions)]} in {kinds}"
        positions.append(kinds.index(item, start))
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    # The module reads the same log since a cursor.
    playbook = tmp_path / "events.yml"
    playbook.write_text(
        "- name: Read events\n  hosts: vnhost1\n  gather_facts: false\n  tasks:\n"
        f"    - name: Since the guest started\n      virtnode.kvm.event_info:\n        since: {cursor}\n"
        "        events: [paused, resumed]\n      register: ev\n"
        "    - name: Check\n      ansible.builtin.assert:\n        that:\n"
        "          - (ev.events | map(attribute='event') | list)[-2:] == ['paused', 'resumed']\n"
        "          - ev.events | map(attribute='event') | unique | sort == ['paused', 'resumed']\n"
        f"          - ev.cursor >= {seqs[-1]}\n"
        "          - not ev.changed\n")
    proc = run_playbook(playbook)
    assert proc.returncode == 0, proc.stdout[-5000:]


def test_agent_survives_a_libvirtd_restart(deployed):
    pid = agent_pid()
    before = agent("status")["data"]
    assert before["libvirt_connected"]
    cursor = before["event_seq"]
    old = int(lab_exec(HOST, "cat", "/run/libvirtd.pid").stdout.split()[0])
    lab_exec(HOST, "kill", "-TERM", str(old))
    wait_for("libvirtd to exit", lambda: lab_exec(HOST, "kill", "-0", str(old), check=False).returncode != 0)
    wait_for("the agent to notice", lambda: not agent("status")["data"]["libvirt_connected"], timeout=40)
    lab_exec(HOST, "libvirtd", "-d", "--listen")
    after = wait_for("the agent to reconnect",
                     when(lambda s: s["libvirt_connected"] and s["libvirt_connects"] > before["libvirt_connects"],
                          lambda: agent("status")["data"]), timeout=60)
    assert agent_pid() == pid
    assert after["pid"] == pid
    names = [e["event"] for e in events_since(cursor)]
    assert "libvirt_disconnected" in names and names.index("libvirt_disconnected") < len(names) - 1 - names[::-1].index("libvirt_connected")
    wait_for("fresh VM data", lambda: agent("vms"))


METADATA_WRITER = (
    "import sys; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata\n"
    "pairs = sd_metadata.new_domain_metadata(sys.argv[1], 'POSIXFS', 'Data', 'agent test', 'server:/agent')\n"
    "open(sys.argv[2], 'wb').write(sd_metadata.serialize(pairs))\n" % AGENT_PATH
)


def domain_status():
    answer = agent("storage")
    return answer["data"]["domains"].get(SD_UUID) if answer else None


@pytest.fixture
def storage_domain(deployed):
    dom_md = f"{MOUNT_DIR}/{SD_UUID}/dom_md"
    lab_exec(HOST, "mkdir", "-p", dom_md, "/run/agent-test-empty")
    lab_exec(HOST, PY, "-c", METADATA_WRITER, SD_UUID, f"{dom_md}/metadata")
    yield dom_md
    lab_exec(HOST, "sh", "-c", f"umount {dom_md}/metadata 2>/dev/null; umount {dom_md} 2>/dev/null; "
             f"rm -rf {MOUNT_DIR} /run/agent-test-empty /run/agent-test-fifo", check=False)


def test_storage_domain_unreachable_and_back(storage_domain):
    pid = agent_pid()
    wait_for("the domain valid", lambda: (domain_status() or {}).get("valid"))
    cursor = agent("status")["data"]["event_seq"]
    # Unreachable: the domain's dom_md is hidden behind an empty directory.
    lab_exec(HOST, "mount", "--bind", "/run/agent-test-empty", storage_domain)
    status = wait_for("the domain invalid", when(lambda s: not s["valid"], domain_status))
    assert status["code"] == 2 and "metadata" in status["error"]
    lab_exec(HOST, "umount", storage_domain)
    wait_for("the domain valid again", lambda: (domain_status() or {}).get("valid"))
    names = [(e["event"], e.get("sd_uuid")) for e in events_since(cursor)]
    assert ("storage_domain_unreachable", SD_UUID) in names and ("storage_domain_reachable", SD_UUID) in names
    assert agent_pid() == pid


def test_storage_domain_space_and_lockspace_in_the_metrics(storage_domain):
    status = wait_for("the domain valid", when(lambda s: s["valid"], domain_status))
    # The test domain has no lockspace: sanlock answers, and this host has not joined one.
    assert status["acquired"] is False and status["host_id"] is None
    assert 0 < status["free_bytes"] <= status["total_bytes"]
    scrape = lab_exec(HOST, PY, "-c", "import urllib.request; print(urllib.request.urlopen("
                      "'http://127.0.0.1:9177/metrics', timeout=10).read().decode())").stdout
    labels = '{sd_uuid="%s"}' % SD_UUID
    assert f"virtnode_storage_domain_lockspace_acquired{labels} 0.0" in scrape
    assert f"virtnode_storage_domain_version{labels} 5.0" in scrape
    assert re.search(r"^virtnode_storage_domain_free_bytes%s [0-9.e+]+$" % re.escape(labels), scrape, re.M)
    assert re.search(r"^virtnode_storage_domain_size_bytes%s [0-9.e+]+$" % re.escape(labels), scrape, re.M)


def test_storage_that_hangs_never_blocks_the_agent(storage_domain):
    pid = agent_pid()
    wait_for("the domain valid", lambda: (domain_status() or {}).get("valid"))
    # Reads of the metadata block as on a dead NFS server: a FUSE file that never answers a read
    # (a FIFO or a link would be refused before any read).
    metadata = f"{storage_domain}/metadata"
    server = lab_exec(HOST, "/usr/bin/python3", str(REPO / "tests/lab/faulty_file.py"), "hang", metadata).stdout.strip()
    try:
        status = wait_for("the read to time out", when(lambda s: s["code"] == 110, domain_status))
        assert not status["valid"] and status["delay"] >= 2
        assert agent("status")["data"]["storage_stuck"] >= 1
        # Everything else keeps answering, fast.
        started = time.monotonic()
        assert agent("status")["data"]["libvirt_connected"]
        assert agent("host")
        assert time.monotonic() - started < 10
    finally:
        # The server goes away for good: the stuck read fails (ENOTCONN) and the mount can go.
        lab_exec(HOST, "sh", "-c", f"kill {server}; for i in $(seq 50); do umount {metadata} 2>/dev/null && exit 0; "
                 f"sleep 0.2; done; umount -l {metadata}")
    wait_for("the domain valid again", lambda: (domain_status() or {}).get("valid"))
    wait_for("no read stuck", lambda: agent("status")["data"]["storage_stuck"] == 0)
    assert agent_pid() == pid


# ---------------------------------------------------------------- stuck QEMU, idle clients, a second agent

def agent_status() -> dict:
    return agent("status")["data"]


def fresh_vms_after(moment: float):
    """The agent's VM answer when it was sampled after ``moment`` (epoch seconds), else None."""
    answer = agent("vms")
    return answer if answer and answer["sampled_at"] > moment else None


DIRECT_SAMPLE = (
    "import json, sys, time; sys.path.insert(0, %r)\n"
    "import libvirt\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats\n"
    "conn = libvirt.open('qemu:///system')\n"
    "started = time.monotonic()\n"
    "entries = stats.collect(conn, [conn.lookupByName(sys.argv[1])], sample_interval=0)\n"
    "print(json.dumps({'seconds': time.monotonic() - started, 'names': [e['name'] for e in entries]}))\n" % AGENT_PATH
)


def test_a_stuck_qemu_monitor_does_not_stall_sampling(guest):
    """QEMU stopped (SIGSTOP): its monitor never answers and a domain job stays held by the call that
    asked it. The agent keeps sampling every VM within its interval, and vm_info answers."""
    if virsh("domstate", GUEST, check=False).stdout.strip() != "running":
        virsh("create", f"/run/{GUEST}.xml")
    wait_for("the guest in the cache", vm_entry)
    qemu = int(lab_exec(HOST, "cat", f"/run/libvirt/qemu/{GUEST}.pid").stdout.split()[0])
    interval = agent_status()["interval"]
    holder = None
    lab_exec(HOST, "kill", "-STOP", str(qemu))
    try:
        # Another client holds the domain's job on the stuck monitor, as a stuck block job or a
        # monitor query of a management tool would.
        holder = lab_exec(HOST, "sh", "-c", f"timeout 90 virsh -c qemu:///system domstats {GUEST} >/dev/null 2>&1 </dev/null & echo $!")
        stopped_at = float(lab_exec(HOST, "date", "+%s.%N").stdout)
        time.sleep(interval)
        for round_ in range(3):
            moment = float(lab_exec(HOST, "date", "+%s.%N").stdout)
            answer = wait_for(f"a sample after {round_ + 1} interval(s) of a stuck QEMU",
                              lambda: fresh_vms_after(moment), timeout=3 * interval + 2, step=0.2)
            assert GUEST in [vm["name"] for vm in answer["data"]["vms"]]
        assert answer["sampled_at"] > stopped_at + interval
        # vm_info's own path (no agent): the same bulk call, straight to libvirt.
        direct = json.loads(lab_exec(HOST, PY, "-c", DIRECT_SAMPLE, GUEST).stdout)
        assert direct["names"] == [GUEST] and direct["seconds"] < 10, direct
        started = time.monotonic()
        proc = run_playbook_text(
            "- name: vm_info with a stuck guest\n  hosts: vnhost1\n  gather_facts: false\n  tasks:\n"
            f"    - name: Read\n      virtnode.kvm.vm_info:\n        name: {GUEST}\n      register: info\n"
            "    - name: Check\n      ansible.builtin.assert:\n        that:\n"
            f"          - info.vms | map(attribute='name') | list == ['{GUEST}']\n", timeout=120)
        assert proc.returncode == 0, proc.stdout[-5000:]
        assert time.monotonic() - started < 90
    finally:
        lab_exec(HOST, "kill", "-CONT", str(qemu), check=False)
        if holder is not None:
            lab_exec(HOST, "kill", holder.stdout.strip(), check=False)
    # After QEMU answers again, full statistics come back.
    moment = float(lab_exec(HOST, "date", "+%s.%N").stdout)
    wait_for("full statistics again", when(lambda v: v["cpu"] and v["cpu"]["time_ns"],
                                           lambda: next((vm for vm in (fresh_vms_after(moment) or {"data": {"vms": []}})
                                                         ["data"]["vms"] if vm["name"] == GUEST), None)), timeout=60)
    assert agent_status()["libvirt_connected"]


def run_playbook_text(text: str, timeout: int = 300):
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=REPO / "tests" / "integration", delete=False) as handle:
        handle.write(text)
    try:
        return run_playbook(Path(handle.name), timeout=timeout)
    finally:
        os.unlink(handle.name)


IDLE_CLIENTS = (
    "import json, os, socket, sys, time, urllib.request\n"
    "pid, sock_path = int(sys.argv[1]), sys.argv[2]\n"
    "idle = [socket.create_connection(('127.0.0.1', 9177), timeout=5) for _ in range(5)]\n"
    "for _ in range(5):\n"
    "    s = socket.socket(socket.AF_UNIX); s.connect(sock_path); idle.append(s)\n"
    "time.sleep(1)\n"
    "t = time.monotonic()\n"
    "scrape = urllib.request.urlopen('http://127.0.0.1:9177/metrics', timeout=5).read().decode()\n"
    "scrape_s = time.monotonic() - t\n"
    "sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client\n"
    "t = time.monotonic()\n"
    "status = client.request({'query': 'status'}, timeout=5, path=sock_path)\n"
    "query_s = time.monotonic() - t\n"
    "os.kill(pid, 15)\n"
    "t = time.monotonic()\n"
    "while os.path.exists('/proc/%%d' %% pid) and time.monotonic() - t < 30:\n"
    "    time.sleep(0.05)\n"
    "print(json.dumps({'scrape_s': scrape_s, 'scraped': 'virtnode_agent_samples_total' in scrape, 'query_s': query_s,\n"
    "                  'status_ok': status.get('ok'), 'stop_s': time.monotonic() - t,\n"
    "                  'gone': not os.path.exists('/proc/%%d' %% pid), 'socket_left': os.path.exists(sock_path)}))\n"
    % AGENT_PATH
)
AGENT_ARGV = (PY, f"{AGENT_PATH}/virtnode-agent", "--config", "/etc/virtnode/agent.conf")
SOCKET = "/run/virtnode/agent.sock"


def start_agent_again():
    lab_exec(HOST, *AGENT_ARGV, "--daemon", "--pidfile", "/run/virtnode-agent.pid")
    wait_for("the agent to answer", lambda: agent("status"), timeout=60)


def test_idle_clients_block_neither_scrapes_nor_sigterm(deployed):
    pid = agent_pid()
    try:
        result = json.loads(lab_exec(HOST, PY, "-c", IDLE_CLIENTS, str(pid), SOCKET).stdout)
        assert result["scraped"] and result["scrape_s"] < 3, result
        assert result["status_ok"] and result["query_s"] < 3, result
        assert result["gone"] and result["stop_s"] < 10, result
        assert not result["socket_left"], result
    finally:
        if lab_exec(HOST, "kill", "-0", str(pid), check=False).returncode != 0:
            start_agent_again()


@pytest.mark.parametrize("extra", [(), ("--pidfile", "/run/virtnode-agent-second.pid"),
                                   ("--daemon", "--pidfile", "/run/virtnode-agent.pid")],
                         ids=["foreground", "own-pidfile", "daemon-same-pidfile"])
def test_a_second_agent_refuses_to_start(deployed, extra):
    pid = agent_pid()
    inode = lab_exec(HOST, "stat", "-c", "%i", SOCKET).stdout.strip()
    # `timeout`: an agent that took the socket over would run on; it must exit by itself at once.
    proc = lab_exec(HOST, "timeout", "20", *AGENT_ARGV, *extra, check=False)
    assert proc.returncode not in (0, 124), (proc.returncode, proc.stderr)
    assert "another virtnode-agent" in proc.stderr, proc.stderr
    assert lab_exec(HOST, "stat", "-c", "%i", SOCKET).stdout.strip() == inode
    assert agent_pid() == pid
    assert agent("status")["data"]["pid"] == pid


# ---------------------------------------------------------------- hooks the agent runs

HOOK_GUEST = "agent-hook-guest"
HOOK_OUT = "/run/agent-hook-test"
HOOK_NAME = "90_virtnode_integration"
# Records its VM's runs only: other VMs of the lab host (another test's) go down meanwhile.
VM_DOWN_HOOK = f"""#!/bin/sh
[ "$vmName" = "{HOOK_GUEST}" ] || exit 0
mkdir -p {HOOK_OUT}
n=$(( $(cat {HOOK_OUT}/count 2>/dev/null || echo 0) + 1 ))
echo $n > {HOOK_OUT}/count
cp "$_hook_domxml" {HOOK_OUT}/run-$n.xml
echo "vmId=$vmId vmName=$vmName owner=$owner" >> {HOOK_OUT}/runs
"""
AGENT_HOOK = f"""#!/bin/sh
mkdir -p {HOOK_OUT}
echo "$(basename "$(dirname "$0")")" >> {HOOK_OUT}/agent
"""


def install_hook(point: str, body: str, name: str = HOOK_NAME, host: str = HOST) -> None:
    lab_exec(host, "sh", "-c", f"install -d -m 0755 /etc/virtnode/hooks/{point} && "
                               f"cat > /etc/virtnode/hooks/{point}/{name} <<'EOF'\n{body}EOF\n"
                               f"chmod 0755 /etc/virtnode/hooks/{point}/{name}")


def remove_hooks(*points: str, host: str = HOST) -> None:
    lab_exec(host, "sh", "-c", " ".join(f"rm -f /etc/virtnode/hooks/{point}/{HOOK_NAME}* ;" for point in points)
             + f" rm -rf {HOOK_OUT}", check=False)


def read_lab_file(path: str) -> str:
    return lab_exec(HOST, "cat", path, check=False).stdout


def test_after_vm_destroy_runs_once_for_a_guest_power_off(deployed):
    """The module's destroy runs the hook itself (the agent leaves it alone); the guest powering itself off
    through its agent, which the module never sees, has the node agent run it, once, with the domain XML."""
    remove_hooks("after_vm_destroy")
    virsh("destroy", HOOK_GUEST, check=False)
    install_hook("after_vm_destroy", VM_DOWN_HOOK)
    cursor = agent("status")["data"]["event_seq"]
    started = time.monotonic()
    try:
        proc = run_playbook_text(f"""- name: A guest the module destroys, then one that powers itself off
  hosts: {HOST}
  gather_facts: false
  tasks:
    - name: Start
      virtnode.kvm.vm: &guest
        name: {HOOK_GUEST}
        memory: 128MiB
        kernel: "{{{{ virtnode_lab_guest_kernel }}}}"
        initrd: "{{{{ virtnode_lab_guest_initrd }}}}"
        cmdline: "{{{{ virtnode_lab_guest_cmdline }}}}"
        custom_properties:
          owner: agent-hook-test
    - name: Destroyed by the module, which runs after_vm_destroy
      virtnode.kvm.vm:
        name: {HOOK_GUEST}
        state: destroyed
      register: destroyed
    - name: The module ran the hook
      ansible.builtin.assert:
        that: destroyed.hooks | map(attribute='point') | list == ['after_vm_destroy']
    - name: Start again
      virtnode.kvm.vm: *guest
    - name: Until its guest agent answers
      virtnode.kvm.vm_info:
        name: {HOOK_GUEST}
        guest_info: true
        sample_interval: 0
      register: info
      until: info.vms[0].guest.agent == 'connected' and info.vms[0].guest.error is none
      retries: 60
      delay: 1
""")
        assert proc.returncode == 0, proc.stdout[-5000:]
        vm_uuid = virsh("domuuid", HOOK_GUEST).stdout.strip()
        # The guest powers itself off: qemu-ga's guest-shutdown, not the module.
        virsh("shutdown", "--mode", "agent", HOOK_GUEST)

        def of_guest(kind):
            return [e for e in events_since(cursor) if e["event"] == kind and e.get("vm") == HOOK_GUEST]

        wait_for("the agent's after_vm_destroy", lambda: of_guest("hook_ran"), timeout=60)
        assert [e["reason"] for e in of_guest("stopped")] == ["destroyed", "shutdown"], of_guest("stopped")
        time.sleep(1)  # a second run would come right after the first
        ran = of_guest("hook_ran")
        assert [(e["point"], e["uuid"], e["reason"], e["rc"], e["failed"]) for e in ran] == [
            ("after_vm_destroy", vm_uuid, "shutdown", 0, False)], ran
        # Two runs in all: the module's for the first start, the agent's for the second.
        runs = read_lab_file(f"{HOOK_OUT}/runs").splitlines()
        assert len(runs) == 2 and runs[1] == f"vmId={vm_uuid} vmName={HOOK_GUEST} owner=agent-hook-test", runs
        assert runs[0].endswith(f" vmName={HOOK_GUEST} owner=agent-hook-test"), runs
        first, second = read_lab_file(f"{HOOK_OUT}/run-1.xml"), read_lab_file(f"{HOOK_OUT}/run-2.xml")
        for xml in (first, second):
            assert f"<name>{HOOK_GUEST}</name>" in xml, xml[:500]
            assert "agent-hook-test" in xml  # the metadata with the custom property
        # Each got the live XML of its own run: another domain id.
        assert f"<uuid>{vm_uuid}</uuid>" in second, second[:500]
        ids = [re.match(r"<domain [^>]*id='(\d+)'", xml).group(1) for xml in (first, second)]
        assert ids[0] != ids[1], ids
    finally:
        remove_hooks("after_vm_destroy")
        virsh("destroy", HOOK_GUEST, check=False)
        print(f"after_vm_destroy test: {time.monotonic() - started:.1f}s")


def test_before_vdsm_start_and_after_vdsm_stop_run_and_a_failing_one_is_not_fatal(deployed):
    remove_hooks("before_vdsm_start", "after_vdsm_stop")
    install_hook("before_vdsm_start", AGENT_HOOK)
    install_hook("before_vdsm_start", "#!/bin/sh\necho refused to start >&2\nexit 1\n", HOOK_NAME + "_fail")
    install_hook("after_vdsm_stop", AGENT_HOOK)
    started = time.monotonic()
    try:
        pid = agent_pid()
        cursor = agent("status")["data"]["event_seq"]
        lab_exec(HOST, "kill", "-TERM", str(pid))
        wait_for("the agent to stop", lambda: lab_exec(HOST, "kill", "-0", str(pid), check=False).returncode != 0,
                 timeout=30)
        assert read_lab_file(f"{HOOK_OUT}/agent").splitlines() == ["after_vdsm_stop"]
        start_agent_again()
        assert agent_pid() != pid
        assert read_lab_file(f"{HOOK_OUT}/agent").splitlines() == ["after_vdsm_stop", "before_vdsm_start"]
        events = [e for e in events_since(cursor) if e["event"] in ("hook_ran", "agent_started", "agent_stopped")]
        assert [(e["event"], e.get("point")) for e in events] == [
            ("hook_ran", "after_vdsm_stop"), ("agent_stopped", None), ("agent_started", None),
            ("hook_ran", "before_vdsm_start")], events
        stop, start = events[0], events[3]
        assert (stop["rc"], stop["failed"]) == (0, False), stop
        # The failing hook is recorded, and the agent serves all the same.
        assert (start["rc"], start["failed"]) == (1, True), start
        assert [s["rc"] for s in start["scripts"]] == [0, 1] and "refused to start" in start["scripts"][1]["error"]
        assert agent("status")["ok"]
    finally:
        remove_hooks("before_vdsm_start", "after_vdsm_stop")
        if lab_exec(HOST, "test", "-e", "/run/virtnode-agent.pid", check=False).returncode != 0:
            start_agent_again()
        print(f"start/stop hooks test: {time.monotonic() - started:.1f}s")


MIG_GUEST = "agent-mig-guest"
OTHER = "vnhost2"
# On the destination: before_vm_migrate_destination (libvirt's qemu hook) puts a description into the incoming
# XML and says where it ran; a second one refuses any migration to OTHER. after_vm_migrate_destination (the
# agent) says where and for which VM it ran. Both hosts get the same scripts (/etc/virtnode and /run are each
# lab host's own).
MIG_BEFORE_HOOK = f"""#!/bin/sh
[ "$vmName" = "{MIG_GUEST}" ] || exit 0
sed -i 's|</name>|</name><description>set by before_vm_migrate_destination</description>|' "$_hook_domxml"
mkdir -p {HOOK_OUT} && echo "$(hostname) vmId=$vmId" >> {HOOK_OUT}/before
"""
MIG_REFUSE_HOOK = f"""#!/bin/sh
[ "$vmName" = "{MIG_GUEST}" ] && [ "$(hostname)" = "{OTHER}" ] || exit 0
echo "no migrations to {OTHER}" >&2
exit 1
"""
MIG_AFTER_HOOK = f"""#!/bin/sh
[ "$vmName" = "{MIG_GUEST}" ] || exit 0
mkdir -p {HOOK_OUT} && echo "$(hostname) vmId=$vmId" >> {HOOK_OUT}/after
"""


def test_migrate_destination_hooks_run_on_the_destination(deployed):
    """A VM migrates from vnhost2 to this host: before_vm_migrate_destination ran here first and the VM runs
    with the XML it wrote, after_vm_migrate_destination ran here once it ran (recorded by the agent); a failing
    before_vm_migrate_destination on vnhost2 refuses the migration back, and the VM stays here."""
    points = ("before_vm_migrate_destination", "after_vm_migrate_destination")
    for host in (HOST, OTHER):
        remove_hooks(*points, host=host)
        install_hook(points[0], MIG_BEFORE_HOOK, host=host)
        install_hook(points[0], MIG_REFUSE_HOOK, HOOK_NAME + "_refuse", host=host)
        install_hook(points[1], MIG_AFTER_HOOK, host=host)
    cursor = agent("status")["data"]["event_seq"]
    started = time.monotonic()
    try:
        proc = run_playbook_text(f"""- name: A guest on {OTHER}, migrated here, then refused the way back
  hosts: {OTHER}
  gather_facts: false
  tasks:
    - name: Start
      virtnode.kvm.vm:
        name: {MIG_GUEST}
        memory: 128MiB
        kernel: "{{{{ virtnode_lab_guest_kernel }}}}"
        initrd: "{{{{ virtnode_lab_guest_initrd }}}}"
        cmdline: "{{{{ virtnode_lab_guest_cmdline }}}} agent=off"
    - name: Migrate to {HOST}
      virtnode.kvm.vm:
        name: {MIG_GUEST}
        migrate_to: {HOST}
        migrate_transport: tcp
        migrate_unsafe: true
      register: moved
    - name: Back to {OTHER}, refused there
      delegate_to: {HOST}
      virtnode.kvm.vm:
        name: {MIG_GUEST}
        migrate_to: {OTHER}
        migrate_transport: tcp
        migrate_unsafe: true
      register: back
      ignore_errors: true
    - name: Moved, then refused
      ansible.builtin.assert:
        that:
          - moved is changed
          - back is failed and 'no migrations to {OTHER}' in back.msg
        fail_msg: "{{{{ back.msg | default('') }}}}"
""")
        assert proc.returncode == 0, proc.stdout[-6000:]
        vm_uuid = virsh("domuuid", MIG_GUEST).stdout.strip()
        assert virsh("domstate", MIG_GUEST).stdout.strip() == "running"
        assert "<description>set by before_vm_migrate_destination</description>" in virsh("dumpxml", MIG_GUEST).stdout
        assert read_lab_file(f"{HOOK_OUT}/before").splitlines() == [f"{HOST} vmId={vm_uuid}"]

        def ran_here():
            return [e for e in events_since(cursor) if e["event"] == "hook_ran" and e.get("vm") == MIG_GUEST]

        wait_for("the agent's after_vm_migrate_destination", ran_here, timeout=30)
        time.sleep(1)
        assert [(e["point"], e["uuid"], e["reason"], e["failed"]) for e in ran_here()] == [
            (points[1], vm_uuid, "migrated", False)], ran_here()
        assert read_lab_file(f"{HOOK_OUT}/after").splitlines() == [f"{HOST} vmId={vm_uuid}"]
        # The refused migration ran nothing after it on the other host.
        assert lab_exec(OTHER, "cat", f"{HOOK_OUT}/after", check=False).returncode != 0
    finally:
        for host in (HOST, OTHER):
            remove_hooks(*points, host=host)
            lab_exec(host, "virsh", "-c", "qemu:///system", "destroy", MIG_GUEST, check=False)
        print(f"migrate destination hooks test: {time.monotonic() - started:.1f}s")
