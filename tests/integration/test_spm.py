"""SPM failover: the SPM host stops renewing its lease, another host takes the role once sanlock
declares it dead, and the old SPM's unfinished task is fenced.

Two lab hosts share a posixfs domain whose lockspace uses an io timeout of 1 s, so the dead
host's lease expires after 8 x 1 + 60 s. The measured failover time is printed
(`pytest -s tests/integration/test_spm.py`). The old SPM is then crashed, brought back with
`lab.py up` and reconnects its storage and pool, so later tests find two working hosts. One
takeover covers both the failover and the fencing: each costs the same ~70 s wait.
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


def test_spm_failover_fences_the_dead_spms_task(lab_hosts, tmp_path):
    """The SPM host stops renewing its lease: another host takes over, and the old SPM's task writes nothing.

    The first host is SPM and starts a clone; a ``qemu-img`` wrapper (only in that task's PATH)
    holds the finished copy until told to go on. Then the first host's sanlock daemon is frozen, so
    the host stops renewing its lease as a hung or dead host does, and the second host takes the SPM
    role once sanlock calls the first dead (the test's one ~70 s wait; the failover time is printed).
    Then the clone goes on: it must stop with "no longer allowed" and leave no ``.meta``. The new
    SPM's `present` for the same volume removes the leftover data and makes the volume LEGAL. The
    first host is then crashed (every process killed), comes back fresh, reconnects and sees host 2
    as SPM.
    """
    sys.path.insert(0, str(REPO / "tests" / "lab"))
    import lab  # pylint: disable=import-outside-toplevel
    first, second = list(lab_hosts)[:2]
    src_img, src_vol = "8c9d0e1f-5a6b-4c7d-8e9f-0a1b2c3d4e01", "9d0e1f2a-6b7c-4d8e-9f0a-1b2c3d4e5f02"
    img, vol = "0e1f2a3b-7c8d-4e9f-8a0b-2c3d4e5f6a03", "1f2a3b4c-8d9e-4f0a-9b1c-3d4e5f6a7b04"
    wrap = "/run/vntest-fence"
    clone = {"virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": img, "volume_uuid": vol, "format": "COW",
                                     "clone_from": {"image_uuid": src_img, "volume_uuid": src_vol}}}
    play(tmp_path, "cleanup-before", "lab", pool_cleanup_tasks())
    play(tmp_path, "setup", "lab", [
        *POOL_WITH_SPM,
        {"name": "Source volume", "virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": src_img,
                                                          "volume_uuid": src_vol, "format": "RAW", "size": "8M"},
         "when": "inventory_hostname == groups.lab[0]"},
    ])
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
        frozen_at = time.monotonic()
        play(tmp_path, "takeover", second, [
            {"name": "Second host takes over once the first host's lease expires",
             "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5},
             "register": "takeover", "until": "takeover is succeeded", "retries": 150, "delay": 1},
            {"name": "Show", "ansible.builtin.debug": {"var": "takeover.spm"}},
            {"name": "Second host is SPM with a new LVER",
             "ansible.builtin.assert": {"that": ["takeover.spm.spm_status == 'SPM'", "takeover.spm.spm_id == 2",
                                                 "takeover.spm.lver >= 2"]}},
        ])
        failover = time.monotonic() - frozen_at
        print(f"SPM failover after {first} stopped renewing: {failover:.1f} s (sanlock io timeout {IO_TIMEOUT} s)")
        # The takeover waited for the dead host's lease: sanlock calls a host dead 8 io timeouts plus the
        # 60 s watchdog fire timeout after its last renewal (at most 2 io timeouts before the freeze).
        # Whether the module was refused and retried meanwhile, or blocked in sanlock, is timing.
        assert failover >= 60 + 6 * IO_TIMEOUT - 1, failover
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
    play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())
