"""A host dies: another host takes the SPM role once sanlock declares it dead, the old SPM's unfinished
task is fenced, and its leased (HA) VM is restarted on another host by the ha_restart role.

Two lab hosts share a posixfs domain whose lockspace uses an io timeout of 1 s, so the dead
host's lease expires after 8 x 1 + 60 s. The measured failover time is printed
(`pytest -s tests/integration/test_spm.py`). The old SPM is then crashed, brought back with
`lab.py up` and reconnects its storage and pool, so later tests find two working hosts. One
host death covers the failover, the fencing and the HA restart: each costs the same ~70 s wait.
The HA restart time is printed too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (INVENTORY, POOL_SERVER, REPO, ansible_env, bring_back_namespace_hosts, lab_exec, pool_cleanup_tasks,
                      run_playbook, wait_for)

SP = "4e5f6a7b-1c2d-4e3f-8a9b-0c1d2e3f4a50"
SD = "5f6a7b8c-2d3e-4f4a-9b0c-1d2e3f4a5b61"
IO_TIMEOUT = 1
# The HA VM: a lease on the domain's xleases volume, a disk with a pattern written on the first host.
HA_VM = "hatest-vm"
HA_UUID = "3b1c7e52-9d0a-4f6e-8a2b-5c4d3e2f1a01"
HA_IMG, HA_VOL = "3b1c7e52-9d0a-4f6e-8a2b-5c4d3e2f1a02", "3b1c7e52-9d0a-4f6e-8a2b-5c4d3e2f1a03"
HA_PATTERN_MB = 8
HA_CONSOLE = f"/var/log/libvirt/qemu/{HA_VM}-console.log"


def ha_vm_spec(workload: str, with_disk: bool = True) -> dict:
    """The HA VM as the vm module takes it; ``ha_lease`` is the play's registered vm_lease result."""
    spec = {"name": HA_VM, "uuid": HA_UUID, "memory": "128MiB",
            "kernel": "{{ virtnode_lab_guest_kernel }}", "initrd": "{{ virtnode_lab_guest_initrd }}",
            "cmdline": "{{ virtnode_lab_guest_cmdline }} " + f"workload={workload} pattern_mb={HA_PATTERN_MB} pattern_tag=ha",
            "lease": "{{ ha_lease.lease }}"}
    if with_disk:
        spec["disks"] = [{"domain_id": "{{ sd }}", "image_id": HA_IMG, "volume_id": HA_VOL, "format": "raw"}]
    return spec


# Any host of the pool looks the lease up (only the SPM could create it).
HA_LEASE = {"name": "The HA VM's lease", "virtnode.kvm.vm_lease": {"sd_uuid": "{{ sd }}", "lease_id": HA_UUID},
            "register": "ha_lease"}


def refused_second_start(where: str) -> list:
    """Tasks: the HA VM started on this host while it runs on another is refused, and nothing is left here."""
    return [
        HA_LEASE,
        {"name": f"A second copy of the HA VM ({where}) is refused",
         "virtnode.kvm.vm": ha_vm_spec("heartbeat"), "register": "second", "ignore_errors": True},
        # In the lab QEMU's own image locking (one kernel under every host) may refuse the shared disk before
        # the lease is asked for; the copy without the disk shows libvirt's sanlock lock manager refusing it.
        {"name": f"A second copy holding only the lease ({where}) is refused by sanlock",
         "virtnode.kvm.vm": ha_vm_spec("heartbeat", with_disk=False), "register": "lease_only",
         "ignore_errors": True},
        {"name": "Not running here", "ansible.builtin.command": {"argv": ["virsh", "domstate", HA_VM]},
         "register": "here", "changed_when": False, "failed_when": False},
        {"name": "Refused, the lease named, nothing left behind", "ansible.builtin.assert": {"that": [
            "second is failed", "lease_only is failed", "lease_only.lease_busy",
            f"'{HA_UUID}' in lease_only.msg and 'held by another host' in lease_only.msg",
            "here.rc != 0"], "fail_msg": "{{ [second, lease_only] | to_json }}"}},
    ]


def play(tmp_path: Path, name: str, hosts: str, tasks: list, timeout: int = 900) -> str:
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": hosts, "gather_facts": False,
        "vars": {"export": "{{ virtnode_lab_shared_dir }}/spm-failover", "sp": SP, "sd": SD},
        "tasks": tasks}]))
    proc = run_playbook(playbook, timeout=timeout)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return proc.stdout


CONNECT = {"virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "host_id": "{{ groups.lab.index(inventory_hostname) + 1 }}"}}
# A domain on the shared export, a pool on it that every host joins, and the first host as its SPM.
POOL_WITH_SPM = [
    {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"},
     "run_once": True},
    {"name": "Connect server", **POOL_SERVER},
    {"name": "Create domain", "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}",
                                                              "io_timeout": IO_TIMEOUT},
     "run_once": True},
    {"name": "Create pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}",
                                                          "host_id": 1, "state": "present"},
     "when": "inventory_hostname == groups.lab[0]"},
    {"name": "Connect pool", **CONNECT},
    {"name": "First host becomes SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started",
                                                            "check_interval": 0.5},
     "when": "inventory_hostname == groups.lab[0]", "register": "started"},
]


def test_spm_stops_and_pool_disconnects_after_its_storage_vanished(lab_hosts, tmp_path):
    """Storage gone from view (here: lazily unmounted) must not strand the SPM lease or the lockspace."""
    host = list(lab_hosts)[0]
    sp, sd = "6a7b8c9d-3e4f-4a5b-8c6d-2e3f4a5b6c72", "7b8c9d0e-4f5a-4b6c-9d7e-3f4a5b6c7d83"
    server = {"virtnode.kvm.storage_server": {"type": "posixfs", "path": "{{ export }}", "vfstype": "none",
                                              "options": "bind"}}

    def vanished_play(name, tasks):
        playbook = tmp_path / f"{name}.yml"
        playbook.write_text(json.dumps([{
            "name": name, "hosts": host, "gather_facts": False,
            "vars": {"export": "{{ virtnode_lab_shared_dir }}/spm-vanished", "sp": sp, "sd": sd}, "tasks": tasks}]))
        proc = run_playbook(playbook)
        print(proc.stdout[-6000:])
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"

    vanished_play("setup", [
        {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"}},
        {"name": "Connect server", **server, "register": "server"},
        {"name": "Create domain", "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}",
                                                                  "io_timeout": IO_TIMEOUT}},
        {"name": "Create pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}",
                                                              "host_id": 1, "state": "present"}},
        {"name": "Connect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "host_id": 1}},
        {"name": "Become SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5}},
        {"name": "The storage goes away under the SPM",
         "ansible.builtin.command": {"argv": ["umount", "-l", "{{ server.mount_point }}"]}, "changed_when": True},
    ])
    assert sd in lab_exec(host, "sanlock", "client", "status").stdout
    vanished_play("recover", [
        {"name": "Stop being SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "stopped"}, "register": "stopped"},
        {"name": "Disconnect the pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "state": "disconnected"}},
        {"name": "Disconnect the server", **{k: dict(v, state="disconnected") for k, v in server.items()}},
        {"name": "Stopped", "ansible.builtin.assert": {"that": ["stopped is changed", "stopped.spm.spm_status == 'Free'"]}},
        {"name": "Remove export", "ansible.builtin.file": {"path": "{{ export }}", "state": "absent"}},
    ])
    status = lab_exec(host, "sanlock", "client", "status").stdout
    assert sd not in status, f"lockspace or SDM lease of the vanished domain still held:\n{status}"


def test_host_death_moves_spm_fences_its_task_and_restarts_ha_vm(lab_hosts, tmp_path):
    """The SPM host stops renewing its lease: another host takes over, the old SPM's task writes nothing, and
    the leased VM it ran starts on the other host once its lease is free, its disk intact.

    The first host is SPM, runs a leased VM that wrote a pattern to its disk (a second copy on the
    second host is refused), and starts a clone; a ``qemu-img`` wrapper (only in that task's PATH)
    holds the finished copy until told to go on. Then the first host's sanlock daemon is frozen, so
    the host stops renewing its leases as a hung or dead host does, and its VM is killed. The
    second host's ha_restart role starts the VM once sanlock calls the first host dead, and the
    guest finds its pattern intact; the second host takes the SPM role too (the test's one ~70 s
    wait; the HA restart and failover times are printed). Then the clone goes on: it must stop with
    "no longer allowed" and leave no ``.meta``. The new SPM's `present` for the same volume removes
    the leftover data and makes the volume LEGAL. The first host is then crashed (every process
    killed), comes back fresh, reconnects, sees host 2 as SPM and cannot start the VM again.
    """
    sys.path.insert(0, str(REPO / "tests" / "lab"))
    import lab  # pylint: disable=import-outside-toplevel
    first, second = list(lab_hosts)[:2]
    src_img, src_vol = "8c9d0e1f-5a6b-4c7d-8e9f-0a1b2c3d4e01", "9d0e1f2a-6b7c-4d8e-9f0a-1b2c3d4e5f02"
    img, vol = "0e1f2a3b-7c8d-4e9f-8a0b-2c3d4e5f6a03", "1f2a3b4c-8d9e-4f0a-9b1c-3d4e5f6a7b04"
    wrap = "/run/vntest-fence"
    clone = {"virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": img, "volume_uuid": vol, "format": "COW",
                                     "clone_from": {"image_uuid": src_img, "volume_uuid": src_vol}}}
    play(tmp_path, "cleanup-before", "lab", [{"name": "No HA VM", "virtnode.kvm.vm": {"name": HA_VM, "state": "absent"}},
                                             *pool_cleanup_tasks()])
    play(tmp_path, "setup", "lab", [
        *POOL_WITH_SPM,
        {"name": "Source volume", "virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": src_img,
                                                          "volume_uuid": src_vol, "format": "RAW", "size": "8M"},
         "when": "inventory_hostname == groups.lab[0]"},
    ])
    # The HA VM runs on the first host with its pattern written, and cannot run a second time on the second.
    play(tmp_path, "ha-vm", first, [
        {"name": "HA VM disk", "virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": HA_IMG,
                                                       "volume_uuid": HA_VOL, "format": "RAW", "size": "16M"}},
        {**HA_LEASE, "name": "HA VM lease (on the SPM)"},
        {"name": "Start the HA VM writing its pattern", "virtnode.kvm.vm": ha_vm_spec("pattern_write")},
        {"name": "Pattern written", "ansible.builtin.wait_for": {"path": HA_CONSOLE, "timeout": 120,
                                                                 "search_regex": f"pattern written {HA_PATTERN_MB}"}},
    ])
    play(tmp_path, "ha-second-copy", second, refused_second_start("while it runs on the first host"))
    script = ("#!/bin/sh\n"
              "# qemu-img convert, then wait for the test before reporting success\n"
              f"if [ \"$1\" = convert ]; then /usr/bin/qemu-img \"$@\" || exit $?; touch {wrap}/converted;\n"
              f"  while [ ! -e {wrap}/go ]; do sleep 0.2; done; exit 0; fi\n"
              "exec /usr/bin/qemu-img \"$@\"\n")
    lab_exec(first, "sh", "-c", f"mkdir -p {wrap}/bin && rm -f {wrap}/go {wrap}/converted && cat > {wrap}/bin/qemu-img "
             f"<<'EOF'\n{script}EOF\nchmod 755 {wrap}/bin/qemu-img")
    playbook = tmp_path / "clone.yml"
    playbook.write_text(json.dumps([{
        "name": "clone", "hosts": first, "gather_facts": False,
        "vars": {"export": "{{ virtnode_lab_shared_dir }}/spm-failover", "sp": SP, "sd": SD},
        "tasks": [{"name": "Clone (held after the copy)", **clone,
                   "environment": {"PATH": f"{wrap}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}]}]))
    stale = subprocess.Popen(["ansible-playbook", "-i", str(INVENTORY), str(playbook)], cwd=REPO, env=ansible_env(),
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    frozen = []
    try:
        wait_for("the clone's copy", lambda: lab_exec(first, "test", "-e", f"{wrap}/converted", check=False).returncode == 0,
                 timeout=120)
        for pid in lab.netns_pids(lab.netns_name(first)):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sanlock":
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
            except (OSError, ProcessLookupError):
                pass
        assert frozen, "no sanlock daemon found on the first host"
        frozen_wall = time.time()
        # The HA VM dies with its host; its lease stays held on storage until sanlock declares the host dead
        # (a real host would be reset by sanlock's watchdog; the lab has none, so the test kills QEMU).
        killed = []
        for pid in lab.netns_pids(lab.netns_name(first)):
            try:
                if (Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")
                        and HA_VM.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (OSError, ProcessLookupError):
                pass
        assert killed, "no QEMU of the HA VM on the first host"
        out = play(tmp_path, "takeover", second, [
            HA_LEASE,
            {"name": "Restart the HA VM here, checking its pattern", "ansible.builtin.include_role": {
                "name": "virtnode.kvm.ha_restart"},
             "vars": {"ha_restart_vms": [ha_vm_spec("pattern_check")], "ha_restart_delay": 1,
                      "ha_restart_timeout": 300}},
            {"name": "Restarted", "ansible.builtin.debug": {
                "msg": "HA_RESTARTED_AT {{ lookup('ansible.builtin.pipe', 'date +%s.%N') }} {{ ha_restart_result | to_json }}"}},
            {"name": "Pattern checked", "ansible.builtin.wait_for": {"path": HA_CONSOLE, "timeout": 120,
                                                                     "search_regex": "pattern (ok|bad)"}},
            {"name": "Console", "ansible.builtin.command": {"argv": ["grep", "-a", "pattern", HA_CONSOLE]},
             "register": "ha_console", "changed_when": False},
            {"name": "Started after waiting for the lease, pattern intact", "ansible.builtin.assert": {"that": [
                "ha_restart_result | length == 1", "ha_restart_result[0].status == 'Up'",
                f"'pattern ok {HA_PATTERN_MB}' in ha_console.stdout"], "fail_msg": "{{ ha_console.stdout }}"}},
            {"name": "Second host takes over once the first host's lease expires",
             "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5},
             "register": "takeover", "until": "takeover is succeeded", "retries": 150, "delay": 1},
            {"name": "Show", "ansible.builtin.debug": {
                "msg": "SPM_TAKEN_AT {{ lookup('ansible.builtin.pipe', 'date +%s.%N') }} {{ takeover.spm | to_json }}"}},
            {"name": "Second host is SPM with a new LVER",
             "ansible.builtin.assert": {"that": ["takeover.spm.spm_status == 'SPM'", "takeover.spm.spm_id == 2",
                                                 "takeover.spm.lver >= 2"]}},
        ])
        failover = float(out.split("SPM_TAKEN_AT ", 1)[1].split()[0]) - frozen_wall
        restart = float(out.split("HA_RESTARTED_AT ", 1)[1].split()[0]) - frozen_wall
        print(f"HA restart of {HA_VM} on {second} after {first} died: {restart:.1f} s "
              f"(sanlock io timeout {IO_TIMEOUT} s, attempts every 1 s)")
        print(f"SPM failover after {first} stopped renewing: {failover:.1f} s (sanlock io timeout {IO_TIMEOUT} s)")
        # The takeover waited for the dead host's lease: sanlock calls a host dead 8 io timeouts plus the
        # 60 s watchdog fire timeout after its last renewal (at most 2 io timeouts before the freeze).
        # Whether the module was refused and retried meanwhile, or blocked in sanlock, is timing.
        assert failover >= 60 + 6 * IO_TIMEOUT - 1, failover
        # Never while the old copy could still have written: the lease was free only once the host was dead.
        assert restart >= 60 + 6 * IO_TIMEOUT - 1, restart
        assert 8 * IO_TIMEOUT + 40 < failover < 8 * IO_TIMEOUT + 60 + 60
        lab_exec(first, "touch", f"{wrap}/go")
        out = stale.communicate(timeout=120)[0]
        print(out[-4000:])
        assert stale.returncode != 0 and "no longer allowed to change the storage of pool" in out, out[-4000:]
        image_dir = lab.SHARED_DIR / "spm-failover" / SD / "images" / img
        assert not (image_dir / f"{vol}.meta").exists(), "the stale clone wrote metadata after losing the lease"
        # The new SPM heals what the stale task left: a data file without metadata.
        healed = {"name": "Healed", "ansible.builtin.assert": {"that": [
            "healed.volume.legality == 'LEGAL'", "'remove_leftover' in healed.actions"]}}
        play(tmp_path, "heal", second, [{"name": "Clone again on the new SPM", **clone, "register": "healed"}, healed])
    finally:
        if stale.poll() is None:
            stale.kill()
        crash = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "crash", first],
                               capture_output=True, text=True, timeout=120, check=False)
        assert crash.returncode == 0, crash.stderr
        bring_back_namespace_hosts(lab_hosts)
    # The crashed host comes back fresh: it reconnects the storage and the pool, and sees host 2 as SPM.
    play(tmp_path, "reconnect", first, [
        {"name": "Reconnect server", **POOL_SERVER},
        {"name": "Reconnect pool", **CONNECT},
        {"name": "Status", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}"}, "register": "status"},
        {"name": "Host 2 is SPM, this host is free",
         "ansible.builtin.assert": {"that": ["status.spm.spm_id == 2", "status.spm.spm_status == 'Free'",
                                             f"status.spm.spm_host == '{second}'"]}},
    ])
    assert "sanlock" not in lab_exec(first, "true").stderr
    # Host 2 holds the lease now: the old host cannot start the VM again.
    play(tmp_path, "ha-old-host", first, refused_second_start("on the old host, after the restart"))
    play(tmp_path, "ha-cleanup", second, [
        {"name": "Remove the HA VM", "virtnode.kvm.vm": {"name": HA_VM, "state": "absent"}},
        {"name": "Remove its lease (the new SPM)", "virtnode.kvm.vm_lease": {"sd_uuid": "{{ sd }}", "lease_id": HA_UUID,
                                                                             "state": "absent"}},
    ])
    play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())
