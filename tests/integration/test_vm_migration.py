"""Live migration of the tiny guest between the two lab hosts with virtnode.kvm.vm.

The heartbeat counter on the serial console must go on across the migration
(no reboot), the VM must leave the source, migrating back must work, and a
migration to a host that does not exist must leave the VM running where it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import LAST_HEARTBEAT, START_HEARTBEAT_GUEST, heartbeats, lab_exec, remove_guest_everywhere, run_playbook

GUEST = "vmtest-migrate"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"

PLAYBOOK = """
- name: Start the guest on the first host
  hosts: lab[0]
  gather_facts: false
  tasks:
""" + START_HEARTBEAT_GUEST + """    - name: A migration to a host that does not exist fails and leaves the VM here
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
        msg: "MIGRATION out {{ out.migration.duration_s }} s; heartbeat before: {{ before.stdout }}"
    - name: Migrated and idempotent
      ansible.builtin.assert:
        that:
          - out is changed
          - out.vm.status == 'Up'
          - out.vm.host == 'qemu+tcp://' + groups['lab'][1] + '/system'
          - out.migration.duration_s > 0
          - again is not changed

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
