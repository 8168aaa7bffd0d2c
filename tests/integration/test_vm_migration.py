"""Live migration of the tiny guest between the two lab hosts with virtnode.kvm.vm.

The heartbeat counter on the serial console must go on across the migration
(no reboot), the VM must leave the source, migrating back must work, and a
migration to a host that does not exist must leave the VM running where it is.
The guest rewrites a few MiB of its RAM all the time (workload=dirty), so a
capped migration with auto-converge never catches up: QEMU must be seen
throttling the guest before the timeout aborts it.

The capture test is the control for test_bootstrap_tls.py's: a guest holds a
known string in RAM, and a plain TCP migration captured on the source host's
port of the lab bridge carries it in clear; the TLS migration must not.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (LAB_ID, LAST_HEARTBEAT, START_HEARTBEAT_GUEST, heartbeats, lab_exec, remove_guest_everywhere,
                      run_playbook, wait_for)

GUEST = "vmtest-migrate"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"

# The guest has a cloud-init seed, a file of its first host only. It rewrites DIRTY_MB MiB of its RAM in a
# loop, well over 100 MiB/s even under TCG, more than the capped migration's 64 MiB/s; an uncapped migration
# still sends those pages within its 300 ms of downtime.
DIRTY_MB = 8
START_SEEDED_GUEST = START_HEARTBEAT_GUEST.replace(
    'workload=heartbeat"\n',
    'workload=dirty dirty_mb=%d"\n        cloud_init: {meta_data: {local-hostname: migrating}}\n' % DIRTY_MB, 1)

PLAYBOOK = """
- name: Start the guest on the first host
  hosts: lab[0]
  gather_facts: false
  tasks:
""" + START_SEEDED_GUEST + """    - name: A migration to a host that does not exist fails and leaves the VM here
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: no-such-host.invalid
        migrate_unsafe: true
      register: bad
      ignore_errors: true
    - name: Clear error
      ansible.builtin.assert:
        that:
          - bad is failed
          - "'no-such-host.invalid' in bad.msg"
""" + LAST_HEARTBEAT + """    - name: Migrate to the second host
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tcp  # the lab's hosts listen on plain TCP
        migrate_unsafe: true
        migrate_options:
          max_downtime_ms: 300
          timeout: 120
      register: out
    - name: Migrate again (already there)
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tcp  # the lab's hosts listen on plain TCP
        migrate_unsafe: true
      register: again
    - name: Report
      ansible.builtin.debug:
        msg: "MIGRATION out {{ out.migration.duration_s }} s, downtime {{ out.migration.stats.downtime_ms }} ms; heartbeat before: {{ before.stdout }}"
    - name: Migrated and idempotent
      ansible.builtin.assert:
        that:
          - out is changed
          - out.vm.status == 'Up'
          - out.vm.host == 'qemu+tcp://' + groups['lab'][1] + '/system'
          - out.migration.duration_s > 0
          - again is not changed
          # The guest's downtime as the destination's completed job stats give it (reported; QEMU aims at the
          # 300 ms asked from its own estimate, so under load the measured figure may pass it).
          - out.migration.stats.downtime_ms is number and out.migration.stats.downtime_ms > 0
          - out.migration.stats.data_transferred > 0 and out.migration.stats.total_ms > 0
          # The seed is a file of the source host: ejected before the destination's QEMU would fail to open it.
          - "'eject cloud-init seed (it stays on this host) from hdd' in out.actions"

- name: Check the guest on the second host and bring it back
  hosts: lab[1]
  gather_facts: false
  tasks:
    - name: Let it tick on the destination
      ansible.builtin.pause:
        seconds: 2
    - name: Destination console
      ansible.builtin.command: cat %(log)s
      register: dest_log
      changed_when: false
    - name: Show it
      ansible.builtin.debug:
        msg: "DESTLOG {{ dest_log.stdout_lines | select('match', 'heartbeat') | list | join(',') }}"
    # Pages the guest dirties again faster than 64 MiB/s can send them, and 10 ms of downtime (640 KiB at that
    # rate): the migration never converges. Auto-converge throttles the vCPUs (20 %% at first, QEMU's default) once
    # the guest has dirtied more than half of what was sent in two periods of a second or more after the first
    # full pass of its RAM: about 4 s in (2 s for that pass at 64 MiB/s), 10 points more every 2 s. Aborted at 10 s,
    # with room for a slow pass.
    - name: A capped auto-converge migration that cannot catch up with the guest is aborted
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][0] }}"
        migrate_transport: tcp
        migrate_unsafe: true
        migrate_options:
          bandwidth: 64
          max_downtime_ms: 10
          auto_converge: true
          timeout: 10
      register: capped
      ignore_errors: true
    - name: Where the guest runs after the abort
      ansible.builtin.command: virsh domstate %(guest)s
      register: capped_state
      changed_when: false
    - name: Report
      ansible.builtin.debug:
        msg: >-
          MIGRATION capped throttle {{ progress.auto_converge_throttle | default('none') }} %%,
          {{ progress.memory_dirty_rate | default('none') }} dirty pages/s,
          {{ (progress.data_processed | default(0) / 1048576) | round | int }} MiB in
          {{ (progress.elapsed_ms | default(0) / 1000) | round(1) }} s
      vars:
        progress: "{{ (capped.migration | default({})).progress | default({}, true) }}"
    - name: Aborted on time, the cap held, QEMU throttled the guest, the VM still runs here
      ansible.builtin.assert:
        that:
          - capped is failed
          - "'did not finish within 10s and was aborted' in capped.msg"
          - capped_state.stdout == 'running'
          # At most 64 MiB/s over the job's time (a second's worth more as slack); uncapped, the lab moves
          # several times that.
          - capped.migration.progress.data_processed > 0
          - >-
            capped.migration.progress.data_processed
            < (capped.migration.progress.elapsed_ms / 1000 + 1) * 64 * 1048576
          - capped.migration.duration_s >= 10 and capped.migration.duration_s < 40
          # The last job statistics before the abort: the guest kept dirtying pages (pages/s) and QEMU was
          # taking a share of its vCPU time (percent).
          - capped.migration.progress.memory_dirty_rate > 0
          - capped.migration.progress.auto_converge_throttle is number
          - capped.migration.progress.auto_converge_throttle > 0
        fail_msg: "{{ capped.migration | default({}) | to_json }}"
    - name: Migrate back
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][0] }}"
        migrate_transport: tcp
        migrate_unsafe: true
      register: back
    - name: Report
      ansible.builtin.debug:
        msg: "MIGRATION back {{ back.migration.duration_s }} s"
    - name: Back on the first host
      ansible.builtin.assert:
        that:
          - back is changed
          - back.vm.status == 'Up'
"""


@pytest.fixture
def cleanup(tmp_path):
    yield
    remove_guest_everywhere(tmp_path, GUEST)


def test_live_migration_keeps_the_guest_running(lab_hosts, tmp_path: Path, cleanup) -> None:
    hosts = list(lab_hosts)
    assert len(hosts) >= 2, "migration needs two lab hosts"
    playbook = tmp_path / "migrate.yml"
    playbook.write_text(PLAYBOOK % {"guest": GUEST, "log": LOG})
    proc = run_playbook(playbook)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-20000:]
    for line in re.findall(r"MIGRATION [^\"\n]*", proc.stdout):
        print(line)
    before = heartbeats(re.search(r"heartbeat before: (heartbeat \d+)", proc.stdout).group(1))[0]
    dest = heartbeats(re.search(r"DESTLOG ([^\"\n]*)", proc.stdout).group(1))
    # The destination's console shows the same counter going on: no reboot.
    assert dest and min(dest) > before and min(dest) < before + 30, (before, dest)
    assert "virtnode-guest ready" not in lab_exec(hosts[1], "cat", LOG).stdout
    # Gone from the second host, running again on the first, counter still going.
    assert GUEST not in lab_exec(hosts[1], "virsh", "list", "--all", "--name").stdout
    assert lab_exec(hosts[0], "virsh", "domstate", GUEST).stdout.strip() == "running"
    # The console log starts anew with the incoming QEMU; the busy guest's next heartbeat may take a moment.
    back = wait_for("heartbeats on the first host", lambda: heartbeats(lab_exec(hosts[0], "cat", LOG).stdout),
                    timeout=20)
    assert min(back) > before, (before, back)


# ---------------------------------------------------------------- what crosses the network

MARKER_GUEST = "vmtest-migrate-marker"
MARKER_LOG = f"/var/log/libvirt/qemu/{MARKER_GUEST}-console.log"
MARKER_MB = 16
# The guest fills MARKER_MB MiB of its RAM with "virtnode-ram-marker <tag>" (tests/lab/guest.py);
# only the tag is on its command line, so the whole string can only come from its memory.
START_MARKER_GUEST = """    - name: Start a guest with a known string in its RAM
      virtnode.kvm.vm:
        name: %(guest)s
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=memory_marker memory_mb=%(mb)d memory_tag=%(tag)s"
    - name: Wait until the memory is marked and the guest ticks
      ansible.builtin.wait_for:
        path: %(log)s
        search_regex: heartbeat 2
        timeout: 120
    - name: Marked
      ansible.builtin.command: grep -c "memory marked %(mb)d" %(log)s
      changed_when: false
"""

MARKER_PLAYBOOK = """
- name: Plain TCP migration of a guest with a known string in RAM
  hosts: lab[0]
  gather_facts: false
  tasks:
""" + START_MARKER_GUEST + """    - name: Migrate to the second host over plain TCP
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tcp
        migrate_unsafe: true
        migrate_options:
          timeout: 120
      register: out
    - name: Migrated
      ansible.builtin.assert:
        that:
          - out is changed
          - out.vm.status == 'Up'
"""


def marker_tag() -> str:
    return "m" + secrets.token_hex(8)


def marker_bytes(tag: str) -> bytes:
    return f"virtnode-ram-marker {tag}".encode()


@contextlib.contextmanager
def capture_between(src_ip: str, dest_ip: str, pcap: Path):
    """tcpdump, whole packets, of the TCP traffic between two lab hosts but SSH, on the source's
    port of the lab bridge (tests/lab/lab.py host_nics: vnlab<N>-h<index>, address .<10+index>)."""
    port = f"vnlab{LAB_ID}-h{int(src_ip.rsplit('.', 1)[1]) - 10}"
    assert Path("/sys/class/net", port).exists(), f"no bridge port {port} for {src_ip}"
    proc = subprocess.Popen(["tcpdump", "-i", port, "-n", "-s", "0", "-U", "-w", str(pcap),
                             f"tcp and host {src_ip} and host {dest_ip} and not port 22"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not pcap.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, f"tcpdump exited: {proc.stderr.read()}"
        yield
    finally:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def marker_cleanup(tmp_path):
    yield
    remove_guest_everywhere(tmp_path, MARKER_GUEST)


def test_plain_tcp_migration_carries_guest_memory_in_clear(lab_hosts, tmp_path: Path, marker_cleanup) -> None:
    """The control: the capture can see guest memory, so its absence over TLS means something."""
    hosts = list(lab_hosts)[:2]
    assert len(hosts) == 2, "migration needs two lab hosts"
    tag = marker_tag()
    playbook = tmp_path / "marker.yml"
    playbook.write_text(MARKER_PLAYBOOK % {"guest": MARKER_GUEST, "log": MARKER_LOG, "mb": MARKER_MB, "tag": tag})
    pcap = tmp_path / "plain.pcap"
    with capture_between(lab_hosts[hosts[0]]["ansible_host"], lab_hosts[hosts[1]]["ansible_host"], pcap):
        proc = run_playbook(playbook)
    assert proc.returncode == 0, proc.stdout[-20000:]
    data = pcap.read_bytes()
    print(f"CAPTURE {len(data)} bytes, marker seen {data.count(marker_bytes(tag))} times")
    assert data.count(marker_bytes(tag)) > 1000, len(data)
