"""Live migration of the tiny guest between the two lab hosts with virtnode.kvm.vm.

The heartbeat counter on the serial console must go on across the migration
(no reboot), the VM must leave the source, migrating back must work, and a
migration to a host that does not exist must leave the VM running where it is.
A guest that rewrites its RAM faster than a capped migration can send it must be seen throttled by
QEMU's auto-converge, and a UEFI guest's variable store must follow it to the destination.

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
                      run_playbook)

GUEST = "vmtest-migrate"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"

# The guest has a cloud-init seed, a file of its first host only.
START_SEEDED_GUEST = START_HEARTBEAT_GUEST.replace(
    'workload=heartbeat"\n', 'workload=heartbeat"\n        cloud_init: {meta_data: {local-hostname: migrating}}\n', 1)

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
    - name: A migration capped at 1 MiB/s that cannot finish in its 8 s is aborted
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][0] }}"
        migrate_transport: tcp
        migrate_unsafe: true
        migrate_options:
          bandwidth: 1
          timeout: 8
      register: capped
      ignore_errors: true
    - name: Where the guest runs after the abort
      ansible.builtin.command: virsh domstate %(guest)s
      register: capped_state
      changed_when: false
    - name: Aborted on time, the cap held, the VM still runs here
      ansible.builtin.assert:
        that:
          - capped is failed
          - "'did not finish within 8s and was aborted' in capped.msg"
          - capped_state.stdout == 'running'
          # At most 8 s at 1 MiB/s (the job starts sending after the destination is ready); uncapped, the
          # guest's 128 MiB go in about two seconds.
          - capped.migration.progress.data_processed > 0
          - capped.migration.progress.data_processed < 12 * 1048576
          - capped.migration.duration_s >= 8 and capped.migration.duration_s < 40
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
    back = heartbeats(lab_exec(hosts[0], "cat", LOG).stdout)
    assert back and min(back) > before, (before, back)


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


UEFI_GUEST = "vmtest-migrate-uefi"
UEFI_UUID = "6c1f0e2a-7b3d-4e5f-9a8b-1c2d3e4f5a66"
UEFI_NVRAM = f"/var/lib/libvirt/qemu/nvram/{UEFI_UUID}_VARS.fd"
UEFI_PLAYBOOK = """
- name: A UEFI guest on the first host
  hosts: lab[0]
  gather_facts: false
  tasks:
    - name: Start it (OVMF writes its variables while it boots)
      virtnode.kvm.vm:
        name: %(guest)s
        uuid: %(uuid)s
        memory: 256MiB
        machine: q35
        firmware: uefi
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=heartbeat agent=off"
    - name: Booted through OVMF
      ansible.builtin.wait_for:
        path: /var/log/libvirt/qemu/%(guest)s-console.log
        search_regex: heartbeat 1
        timeout: 120
    - name: Its variable store here, and OVMF's template
      ansible.builtin.command:
        argv: [sha1sum, %(nvram)s, /usr/share/OVMF/OVMF_VARS_4M.fd]
      register: source_vars
      changed_when: false
    - name: Migrate it
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tcp
        migrate_unsafe: true
      register: moved

- name: Its variables on the second host
  hosts: lab[1]
  gather_facts: false
  tasks:
    - name: The destination's variable store
      ansible.builtin.command:
        argv: [sha1sum, %(nvram)s]
      register: dest_vars
      changed_when: false
    - name: QEMU wrote the migrated flash into the destination's store, which a restart there boots from
      vars:
        source_sums: "{{ hostvars[groups['lab'][0]].source_vars.stdout_lines | map('split') | map('first') | list }}"
      ansible.builtin.assert:
        that:
          - hostvars[groups['lab'][0]].moved is changed
          - source_sums[0] != source_sums[1]
          - dest_vars.stdout.split()[0] == source_sums[0]
        fail_msg: "{{ source_sums }} {{ dest_vars.stdout }}"
"""


def run_guest_playbook(tmp_path: Path, guest: str, text: str):
    """Run a playbook about ``guest``, then remove the guest from every lab host whatever happened."""
    playbook = tmp_path / f"{guest}.yml"
    playbook.write_text(text)
    try:
        return run_playbook(playbook)
    finally:
        remove_guest_everywhere(tmp_path, guest)


def test_a_uefi_vm_takes_its_variables_along(lab_hosts, tmp_path: Path) -> None:
    """The per-VM NVRAM follows the VM: after a live migration the destination's store file holds the
    variables OVMF wrote on the source (not the template the destination's libvirt created it from)."""
    proc = run_guest_playbook(tmp_path, UEFI_GUEST,
                              UEFI_PLAYBOOK % {"guest": UEFI_GUEST, "uuid": UEFI_UUID, "nvram": UEFI_NVRAM})
    assert proc.returncode == 0, proc.stdout[-10000:]


DIRTY_GUEST = "vmtest-migrate-dirty"
DIRTY_BANDWIDTH = 16  # MiB/s
DIRTY_PLAYBOOK = """
- name: A guest that rewrites 16 MiB of its RAM all the time, migrated with a cap and auto-converge
  hosts: lab[0]
  gather_facts: false
  tasks:
    - name: Start it
      virtnode.kvm.vm:
        name: %(guest)s
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=dirty dirty_mb=16 agent=off"
    - name: Dirtying
      ansible.builtin.wait_for:
        path: /var/log/libvirt/qemu/%(guest)s-console.log
        search_regex: dirty started 16
        timeout: 120
    # The guest dirties pages several times faster than %(bw)d MiB/s sends them and 10 ms of downtime is a few
    # pages' worth: without throttling the migration cannot converge. Auto-converge throttles the vCPUs once a
    # full pass of the guest's RAM is sent (QEMU's default: 20 %% at first, 10 points more every sync).
    # Whether the throttled guest then converged before the timeout or was aborted depends on the machine's
    # speed; either way the job's statistics must show the throttle.
    - name: Migrate with a cap and auto-converge
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tcp
        migrate_unsafe: true
        migrate_options:
          bandwidth: %(bw)d
          max_downtime_ms: 10
          auto_converge: true
          timeout: 16
      register: capped
      ignore_errors: true
    - name: Where the guest runs now
      ansible.builtin.command: virsh domstate %(guest)s
      register: capped_state
      changed_when: false
      failed_when: false
    - name: Report
      vars:
        figures: "{{ capped.migration.progress if capped is failed else capped.migration.stats }}"
      ansible.builtin.debug:
        msg: >-
          AUTOCONVERGE {{ 'aborted' if capped is failed else 'completed' }},
          throttle {{ figures.auto_converge_throttle | default('none') }} %%
    - name: QEMU throttled the guest; an aborted migration left it running here, within the cap
      vars:
        figures: "{{ capped.migration.progress if capped is failed else capped.migration.stats }}"
      ansible.builtin.assert:
        that:
          - figures.auto_converge_throttle is number and figures.auto_converge_throttle > 0
          - >-
            capped is succeeded or ('did not finish within 16s and was aborted' in capped.msg
            and capped_state.stdout == 'running'
            and capped.migration.progress.data_processed
                < (capped.migration.progress.elapsed_ms / 1000 + 1) * %(bw)d * 1048576)
        fail_msg: "{{ capped | to_json }}"
"""


def test_auto_converge_throttles_a_guest_that_outruns_the_cap(lab_hosts, tmp_path: Path) -> None:
    proc = run_guest_playbook(tmp_path, DIRTY_GUEST, DIRTY_PLAYBOOK % {"guest": DIRTY_GUEST, "bw": DIRTY_BANDWIDTH})
    print("\n".join(line for line in proc.stdout.splitlines() if "AUTOCONVERGE" in line))
    assert proc.returncode == 0, proc.stdout[-10000:]
