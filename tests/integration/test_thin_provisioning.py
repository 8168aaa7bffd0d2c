"""Thin provisioning in the node agent, with real TCG guests writing into thin COW block volumes.

A posixfs domain on the lab's shared storage is the master of a pool; vnhost1 is SPM. Each test
presents a 1 GiB COW volume that starts at one chunk (CHUNK_MIB) as a block device (a loop
device over the volume file, ``thin_block.LoopBackend``) and boots the writer guest on it, which
writes WRITE_MIB sequentially with O_DIRECT at full speed, so the volume must grow several times.

Chunk size: the lab notes measured the writer at about 400 MiB/s with 32 MiB chunks still
pausing twice with a 50 ms handler. With 128 MiB chunks and the default 20 % utilization the
threshold fires when about 102 MiB are left, i.e. with 250 ms of writing left at that rate, while
an extension (event, file grown, loop device refreshed, new threshold) takes 10-60 ms locally and
a mailbox round trip (0.1 s SPM poll) 80-270 ms, measured on the loaded development machine:
0 ENOSPC pauses is realistic. The pause counts are printed (``pytest -s``), not asserted: they
depend on the machine's load.

The agent under test runs from a copy of the collection's module_utils in each host's private
``/run/virtnode-thin`` with its own configuration and event log (``/etc`` and ``/var/lib`` are
shared by all lab hosts), in place of the node_agent role's agent, which is restarted afterwards.
test_agent.py covers the role's installation of the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import POOL_SERVER, REPO, lab_exec, lab_vars, pool_cleanup_tasks, run_playbook, wait_for

SP = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c40"
SD = "7b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d51"
CHUNK_MIB = 128
CAPACITY_MIB = 1024
WRITE_MIB = 384
AGENT_PATH = "/run/virtnode-thin"
PY = "/usr/bin/python3"
PIDFILE = "/run/virtnode-agent.pid"
SOCKET = "/run/virtnode/agent.sock"
AGENT_ARGV = (PY, f"{AGENT_PATH}/virtnode-agent", "--config", f"{AGENT_PATH}/agent.conf", "--daemon", "--pidfile", PIDFILE)
ROLE_AGENT_ARGV = (PY, "/usr/lib/virtnode-agent/virtnode-agent", "--config", "/etc/virtnode/agent.conf", "--daemon",
                   "--pidfile", PIDFILE)
AGENT_CONFIG = {"interval": 2, "storage_interval": 2, "storage_timeout": 2, "thin_chunk_mib": CHUNK_MIB,
                "events_file": f"{AGENT_PATH}/events.jsonl", "log_file": f"{AGENT_PATH}/agent.log", "log_level": "DEBUG"}
VOLUMES = {
    "spm": ("7c3d4e5f-6a7b-4c8d-8e9f-1a2b3c4d5e62", "7d4e5f6a-7b8c-4d9e-9f0a-2b3c4d5e6f73"),
    "stopped": ("7e5f6a7b-8c9d-4e0f-8a1b-3c4d5e6f7a84", "7f6a7b8c-9d0e-4f1a-9b2c-4d5e6f7a8b95"),
    "mailbox": ("706a7b8c-9d0e-4f1a-8b2c-5d6e7f8a9ba6", "716b7c8d-0e1f-4a2b-9c3d-6e7f8a9b0cb7"),
}
HELPER = (
    "import sys, json; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events\n"
    "op, args = sys.argv[1], sys.argv[2:]\n"
    "if op == 'events':\n"
    "    print(json.dumps(agent_events.read_events(%r, since=int(args[0]))))\n"
    "elif op == 'grow':\n"
    "    print(thin_block.extend_volume_on_spm(args[0], args[1], int(args[2])))\n"
    "elif op == 'activate':\n"
    "    print(thin_block.LoopBackend().activate(*args))\n"
    "elif op == 'deactivate':\n"
    "    thin_block.LoopBackend().deactivate(*args)\n" % (AGENT_PATH, AGENT_CONFIG["events_file"])
)


def helper(host: str, *args: str) -> str:
    return lab_exec(host, PY, "-c", HELPER, *args).stdout.strip()


def events_since(host: str, cursor: int) -> list:
    return json.loads(helper(host, "events", str(cursor)))["events"]


def event_cursor(host: str) -> int:
    return json.loads(helper(host, "events", "0"))["cursor"]


def play(tmp_path: Path, name: str, tasks: list, hosts: str = "lab") -> str:
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": hosts, "gather_facts": False,
        "vars": {"export": "{{ virtnode_lab_shared_dir }}/thin", "sp": SP, "sd": SD}, "tasks": tasks}]))
    proc = run_playbook(playbook, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return proc.stdout


FIRST = "inventory_hostname == groups.lab[0]"


def agent_pid(host: str):
    """The pid of the agent running on ``host`` (None when none runs)."""
    proc = lab_exec(host, "cat", PIDFILE, check=False)
    pid = proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else None
    return pid if pid and lab_exec(host, "kill", "-0", pid, check=False).returncode == 0 else None


def agent_stop(host: str):
    pid = agent_pid(host)
    if pid:
        lab_exec(host, "kill", "-TERM", pid)
        wait_for("the agent to stop", lambda: lab_exec(host, "kill", "-0", pid, check=False).returncode != 0, timeout=30)


def agent_start(host: str, argv=AGENT_ARGV):
    lab_exec(host, *argv)
    wait_for("the agent's socket", lambda: lab_exec(host, "test", "-S", SOCKET, check=False).returncode == 0, timeout=30)


def install_agent(host: str, config: dict):
    """This collection's agent code and a test configuration in the host's private /run."""
    collection = Path(os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build"))) / "ansible_collections/virtnode/kvm"
    target = f"{AGENT_PATH}/ansible_collections/virtnode/kvm/plugins"
    lab_exec(host, "sh", "-c", f"rm -rf {AGENT_PATH} && mkdir -p {target} && "
             f"cp -r {collection}/plugins/module_utils {target}/ && "
             f"cp {collection}/roles/node_agent/files/virtnode-agent {AGENT_PATH}/ && "
             f"echo '{json.dumps(config)}' > {AGENT_PATH}/agent.conf")


@contextlib.contextmanager
def thin_lab(hosts: list, tmp: Path, **config):
    """The pool, its volumes and the agent under test (``config`` overrides) on two lab hosts."""
    volumes = [{"name": f"Volume {key}", "virtnode.kvm.volume": {
        "sd_uuid": "{{ sd }}", "image_uuid": img, "volume_uuid": vol, "size": f"{CAPACITY_MIB}M", "format": "COW",
        "allocation": "SPARSE"}, "when": FIRST} for key, (img, vol) in VOLUMES.items()]
    leftovers = [dict(task, failed_when=False) for task in pool_cleanup_tasks()]
    play(tmp, "thin-setup", [
        *leftovers,
        {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"},
         "run_once": True},
        {"name": "Connect server", **POOL_SERVER},
        {"name": "Create domain", "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}",
                                                                  "io_timeout": 1}, "run_once": True},
        {"name": "Create pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}",
                                                              "host_id": 1, "state": "present"}, "when": FIRST},
        {"name": "Connect pool", "virtnode.kvm.storage_pool": {
            "pool_uuid": "{{ sp }}", "host_id": "{{ groups.lab.index(inventory_hostname) + 1 }}"}},
        {"name": "First host is SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started"}, "when": FIRST},
        *volumes,
    ])
    role_agents = dict((host, agent_pid(host) is not None) for host in hosts)
    try:
        for host in hosts:
            agent_stop(host)
            install_agent(host, dict(AGENT_CONFIG, **config))
            agent_start(host)
        yield hosts
    finally:
        teardown(hosts, tmp, role_agents)


def teardown(hosts: list, tmp: Path, role_agents: dict):
    for host in hosts:
        lab_exec(host, "sh", "-c", "for d in $(virsh -c qemu:///system list --name | grep '^thin-'); do "
                 "virsh -c qemu:///system destroy $d; done", check=False)
        for img, vol in VOLUMES.values():
            lab_exec(host, PY, "-c", HELPER, "deactivate", SD, img, vol, check=False)
        agent_stop(host)
        if role_agents[host]:
            agent_start(host, ROLE_AGENT_ARGV)
    play(tmp, "thin-cleanup", pool_cleanup_tasks())


@pytest.fixture(scope="module")
def pool(lab_hosts, tmp_path_factory):
    with thin_lab(list(lab_hosts)[:2], tmp_path_factory.mktemp("thin")) as hosts:
        yield hosts


def guest_xml(inventory: dict, name: str, device: str, write_mib: int) -> str:
    lab_settings = lab_vars(inventory)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{lab_settings['virtnode_lab_guest_kernel']}</kernel>
    <initrd>{lab_settings['virtnode_lab_guest_initrd']}</initrd>
    <cmdline>{lab_settings['virtnode_lab_guest_cmdline']} workload=writer writer_mb={write_mib}</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native' error_policy='stop' rerror_policy='stop'/>
      <source dev='{device}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><log file='/var/log/libvirt/qemu/{name}-console.log' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def vm_task(name: str, img: str, vol: str, write_mib: int) -> dict:
    """The writer guest as a user writes it: the vm module with the volume presented as a block device."""
    return {"name": "Writer guest on a thin block volume", "virtnode.kvm.vm": {
        "name": name, "domain_type": "qemu", "machine": "q35", "memory": "128MiB", "vcpus": 1,
        "kernel": "{{ virtnode_lab_guest_kernel }}", "initrd": "{{ virtnode_lab_guest_initrd }}",
        "cmdline": "{{ virtnode_lab_guest_cmdline }} workload=writer writer_mb=%d" % write_mib, "console_log": True,
        "disks": [{"domain_id": SD, "image_id": img, "volume_id": vol, "type": "block", "format": "qcow2",
                   "io": "native"}]}}


def run_writer(inventory, host: str, key: str, before_start=None, timeout: float = 180, write_mib: int = WRITE_MIB,
               start_mib: int = CHUNK_MIB) -> dict:
    """Boot the writer guest on volume ``key`` (grown to ``start_mib``) on ``host`` from plain domain XML; wait
    for its end."""
    img, vol = VOLUMES[key]
    name = f"thin-{key}"
    first = next(iter(inventory["all"]["children"]["lab"]["hosts"]))
    assert int(helper(first, "grow", SD, vol, str(start_mib))) == start_mib
    device = f"/run/virtnode/block/{SD}/{img}/{vol}"
    cursor = event_cursor(host)
    started = time.monotonic()
    assert helper(host, "activate", SD, img, vol) == device
    lab_exec(host, "sh", "-c", f"cat > /run/{name}.xml <<'EOF'\n{guest_xml(inventory, name, device, write_mib)}EOF\n")
    lab_exec(host, "virsh", "-c", "qemu:///system", "create", f"/run/{name}.xml")
    if before_start:
        before_start(name)
    log = f"/var/log/libvirt/qemu/{name}-console.log"
    wait_for("the writer to finish",
             lambda: re.search(r"writer (done|error)", lab_exec(host, "cat", log, check=False).stdout),
             timeout=timeout, step=1)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    console = lab_exec(host, "cat", log).stdout
    lab_exec(host, "virsh", "-c", "qemu:///system", "destroy", name)
    check = lab_exec(host, "qemu-img", "check", "-f", "qcow2", device, check=False)
    helper(host, "deactivate", SD, img, vol)
    events = [e for e in events_since(host, cursor) if e.get("vm") == name]
    rate = re.search(r"writer rate bytes=(\d+) cs=(\d+)", console)
    result = {
        "console": console, "elapsed": elapsed, "events": events, "qemu_img_check": check,
        "enospc_pauses": sum(1 for e in events if e["event"] == "paused" and e.get("reason") == "ioerror"),
        "extensions": [e for e in events if e["event"] == "volume_extended"],
        "rate_mib_s": (int(rate.group(1)) / 2 ** 20) / max(0.01, int(rate.group(2)) / 100) if rate else None,
    }
    latencies = sorted(e["latency"] * 1000 for e in result["extensions"])
    print(f"\n{key}: host {host}, writer done in {elapsed:.1f}s, guest rate "
          f"{result['rate_mib_s'] or 0:.0f} MiB/s, ENOSPC pauses {result['enospc_pauses']}, extensions "
          f"{len(latencies)} ({', '.join('%s/%s' % (e['trigger'], e['path']) for e in result['extensions'])}), "
          f"latency ms {', '.join('%.1f' % v for v in latencies)}")
    return result


def assert_complete(result: dict, path: str):
    assert f"writer done {WRITE_MIB * 2 ** 20}" in result["console"], result["console"][-2000:]
    assert result["qemu_img_check"].returncode == 0, result["qemu_img_check"].stdout + result["qemu_img_check"].stderr
    extensions = result["extensions"]
    # 384 MiB written from a 128 MiB start: the allocation passes 3 thresholds (25.6, 153.6, 281.6 MiB).
    assert len(extensions) >= 3, result["events"]
    assert all(e["path"] == path for e in extensions), extensions
    assert all(e["new_size"] - e["old_size"] == CHUNK_MIB * 2 ** 20 for e in extensions), extensions
    assert not [e for e in result["events"] if e["event"] == "volume_extend_failed"], result["events"]


def test_extends_on_the_spm_while_the_guest_writes(pool, inventory):
    result = run_writer(inventory, pool[0], "spm")
    assert_complete(result, "local")


def test_paused_on_enospc_without_agent_then_resumed_by_it(pool, inventory):
    host = pool[0]
    agent_stop(host)
    states = []

    def pause_then_start_agent(name):
        try:
            wait_for("the guest to pause on ENOSPC", lambda: "I/O error" in lab_exec(
                host, "virsh", "-c", "qemu:///system", "domstate", "--reason", name).stdout, timeout=60)
            states.append(lab_exec(host, "virsh", "-c", "qemu:///system", "domstate", "--reason", name).stdout.strip())
            errors = lab_exec(host, "virsh", "-c", "qemu:///system", "domblkerror", name).stdout
            states.append(errors.strip())
        finally:
            agent_start(host)

    try:
        result = run_writer(inventory, host, "stopped", before_start=pause_then_start_agent)
    finally:
        if agent_pid(host) is None:
            agent_start(host)
    print("without the agent:", states)
    assert states[0] == "paused (I/O error)"
    assert "no space" in states[1].lower(), states
    assert_complete(result, "local")
    assert result["extensions"][0]["trigger"] == "enospc", result["extensions"]
    assert any(e["event"] == "vm_resumed_after_extension" for e in result["events"]), result["events"]


def test_migrated_to_a_host_that_is_not_spm_it_is_extended_there_through_the_mailbox(pool, inventory, tmp_path):
    """The writer guest boots on the SPM host and waits; the other host presents its thin volume as a block
    device (``volume state=prepared block_device=true``, as VDSM's destination prepares the images), the VM
    migrates there and the source lets the volume go. Only then does the guest write, told through its
    guest agent: the destination's agent, which never saw the VM start and is not SPM, extends the volume
    through the SPM's mailbox as it fills. The module's stop there gives the volume back."""
    source, dest = pool[0], pool[1]
    img, vol = VOLUMES["mailbox"]
    name = "thin-mailbox"
    device = f"/run/virtnode/block/{SD}/{img}/{vol}"
    log = f"/var/log/libvirt/qemu/{name}-console.log"
    assert int(helper(source, "grow", SD, vol, str(CHUNK_MIB))) == CHUNK_MIB
    guest = vm_task(name, img, vol, WRITE_MIB)
    guest["virtnode.kvm.vm"]["cmdline"] += " writer_go=/tmp/writer-go"
    prepare = {"virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": img, "volume_uuid": vol,
                                       "state": "prepared", "block_device": True}}
    try:
        play(tmp_path, "thin-migrate-start", [
            guest, {"ansible.builtin.wait_for": {"path": log, "search_regex": "writer waiting", "timeout": 120}}],
            hosts=source)
        play(tmp_path, "thin-migrate-prepare", [
            {**prepare, "check_mode": True, "register": "check"}, {**prepare, "register": "prepared"},
            {**prepare, "register": "again"},
            {"ansible.builtin.assert": {"that": [
                "check is changed and check.actions == ['present as a block device']",
                "prepared is changed and again is not changed"]}}], hosts=dest)
        assert lab_exec(dest, "test", "-b", device, check=False).returncode == 0, f"{device} is not a block device"
        play(tmp_path, "thin-migrate", [
            {"virtnode.kvm.vm": {"name": name, "migrate_to": dest, "migrate_transport": "tcp", "migrate_unsafe": True,
                                 "migrate_options": {"timeout": 120}}, "register": "moved"},
            {"ansible.builtin.assert": {"that": ["moved is changed",
                                                 f"'deactivate block volume {device}' in moved.actions"],
                                        "fail_msg": "{{ moved.actions | default([]) | to_json }}"}}], hosts=source)
        assert lab_exec(source, "test", "-e", device, check=False).returncode != 0, f"{device} is still on the source"
        cursor = event_cursor(dest)
        go = '{"execute": "guest-file-open", "arguments": {"path": "/tmp/writer-go", "mode": "w"}}'
        wait_for("the guest agent to let the writer go", lambda: lab_exec(
            dest, "virsh", "-c", "qemu:///system", "qemu-agent-command", name, go, check=False).returncode == 0,
            timeout=60, step=1)
        wait_for("the writer to finish on the destination",
                 lambda: re.search(r"writer (done|error)", lab_exec(dest, "cat", log, check=False).stdout),
                 timeout=180, step=1)
        time.sleep(0.5)
        console = lab_exec(dest, "cat", log).stdout
        volume_file = lab_exec(dest, "losetup", "-n", "-O", "BACK-FILE",
                               lab_exec(dest, "readlink", "-f", device).stdout.strip()).stdout.strip()
        play(tmp_path, "thin-migrate-stop", [
            {"virtnode.kvm.vm": {"name": name, "state": "destroyed"}, "register": "stopped"},
            {"ansible.builtin.assert": {"that": [f"'deactivate block volume {device}' in stopped.actions"],
                                        "fail_msg": "{{ stopped.actions | to_json }}"}}], hosts=dest)
        assert lab_exec(dest, "test", "-e", device, check=False).returncode != 0, f"{device} is still there"
        assert vol not in lab_exec(dest, "losetup", "-a").stdout, "loop device left attached over the volume"
        check = lab_exec(dest, "qemu-img", "check", "-f", "qcow2", volume_file, check=False)
    finally:
        remove = [{"virtnode.kvm.vm": {"name": name, "state": "absent"}}]
        play(tmp_path, "thin-migrate-cleanup", remove, hosts="lab")
    events = [e for e in events_since(dest, cursor) if e.get("vm") == name]
    result = {"console": console, "events": events, "qemu_img_check": check,
              "extensions": [e for e in events if e["event"] == "volume_extended"]}
    print(f"\nmailbox after migration: extensions on {dest} {len(result['extensions'])}, "
          f"ENOSPC pauses {sum(1 for e in events if e['event'] == 'paused' and e.get('reason') == 'ioerror')}")
    assert "writer start" in console, console[-2000:]
    assert_complete(result, "mailbox")


def test_storage_info_gives_each_hosts_repo_stats_from_its_agent(pool, tmp_path):
    """repoStats through storage_info on both hosts: the pool's master valid, this host's id acquired."""
    stats = "result.repo_stats[sd]"
    play(tmp_path, "repo-stats", [
        {"name": "The agent's storage monitor state",
         "virtnode.kvm.storage_info": {"pool_uuid": "{{ sp }}", "images": False},
         "register": "result", "retries": 15, "delay": 1,
         "until": f"{stats} is defined and {stats}.acquired and {stats}.valid"},
        {"ansible.builtin.assert": {"that": [
            f"{stats}.host_id == groups.lab.index(inventory_hostname) + 1",
            f"{stats}.code == 0 and {stats}.version == 5 and {stats}.role == 'Master'",
            f"{stats}.error is none and {stats}.last_check < 10",
            f"{stats}.free_bytes > 0 and {stats}.total_bytes >= {stats}.free_bytes",
            "result.repo_stats | length == 1 and result.repo_stats_age is not none"],
            "fail_msg": "{{ result.repo_stats | to_json }}"}},
        {"name": "Without the agent's answer",
         "virtnode.kvm.storage_info": {"pool_uuid": "{{ sp }}", "images": False, "repo_stats": False},
         "register": "plain"},
        {"ansible.builtin.assert": {"that": ["plain.repo_stats == {}", "plain.repo_stats_age is none"]}},
    ], hosts=",".join(pool))
