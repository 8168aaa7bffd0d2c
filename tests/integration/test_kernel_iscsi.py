"""storage_server type iscsi on the lab's kernel hosts, against the lab's CHAP target (vnkern1).

Both kernel hosts at once (vnkern1 serves the target and logs in to itself): a wrong CHAP secret
is refused with a clear message and leaves no node record; check mode logs in to nothing; a
login on both portals gives a session per portal with the target's LUN on each; a second run
changes nothing. The records log in again as the boot service does it (``--loginall=automatic``,
CHAP from the record). Disconnecting logs out and deletes the records, and a second disconnect
changes nothing. The module starts iscsid itself when none runs (the block tests stop it).
"""

from __future__ import annotations

import time

from conftest import run_playbook

PLAY = """\
- name: storage_server iscsi
  hosts: kernel
  gather_facts: false
  vars:
    iscsi: &iscsi
      type: iscsi
      target: "{{ virtnode_lab_iscsi_chap_target }}"
      portals: "{{ virtnode_lab_iscsi_portals }}"
      chap_username: "{{ virtnode_lab_iscsi_chap_user }}"
      chap_password: "{{ virtnode_lab_iscsi_chap_password }}"
    sessions_cmd: >-
      grep -lx '{{ virtnode_lab_iscsi_chap_target }}' /sys/class/iscsi_session/session*/targetname || true
    records_cmd: iscsiadm -m node -T {{ virtnode_lab_iscsi_chap_target }}
  tasks:
    - name: A wrong CHAP secret
      virtnode.kvm.storage_server:
        <<: *iscsi
        chap_password: not-the-secret
      register: wrong
      ignore_errors: true

    - name: No record left by the refused login
      ansible.builtin.command: "{{ records_cmd }}"
      register: records
      changed_when: false
      failed_when: records.rc != 21

    - name: Refused clearly, secret never shown
      ansible.builtin.assert:
        that:
          - wrong is failed
          - "'CHAP authentication failed' in wrong.msg"
          - "'not-the-secret' not in (wrong | to_json)"

    - name: Log in (check mode)
      virtnode.kvm.storage_server: *iscsi
      check_mode: true
      diff: true
      register: check

    - name: Sessions after check mode
      ansible.builtin.shell: "{{ sessions_cmd }}"
      register: after_check
      changed_when: false

    - name: Log in on both portals
      virtnode.kvm.storage_server: *iscsi
      register: login

    - name: Log in again
      virtnode.kvm.storage_server: *iscsi
      register: again

    - name: Logged in once per portal, the LUN on each path
      ansible.builtin.assert:
        that:
          - check is changed
          - check.diff.before.logged_in == []
          - after_check.stdout == ""
          - login is changed
          - login.sessions | length == 2
          - login.sessions | map(attribute='state') | unique == ['LOGGED_IN']
          - login.sessions | map(attribute='disks') | map('length') | list == [1, 1]
          - login.actions | map(attribute='record_created') | unique == [true]
          - again is not changed
          - "virtnode_lab_iscsi_chap_password not in (login | to_json)"

    - name: Log out, keeping the records (as at shutdown)
      ansible.builtin.command: "iscsiadm -m node -T {{ virtnode_lab_iscsi_chap_target }} --logout"

    - name: The records log in again as the boot service does it
      ansible.builtin.command: iscsiadm -m node --loginall=automatic

    - name: Sessions after the boot-time login
      ansible.builtin.shell: "{{ sessions_cmd }}"
      register: after_boot
      changed_when: false

    - name: Nothing to do after the boot-time login
      virtnode.kvm.storage_server: *iscsi
      register: after_boot_module

    - name: Disconnect (check mode)
      virtnode.kvm.storage_server:
        <<: *iscsi
        state: disconnected
      check_mode: true
      register: disconnect_check

    - name: Disconnect
      virtnode.kvm.storage_server:
        <<: *iscsi
        state: disconnected
      register: disconnect

    - name: Disconnect again
      virtnode.kvm.storage_server:
        <<: *iscsi
        state: disconnected
      register: disconnect_again

    - name: Sessions after the disconnect
      ansible.builtin.shell: "{{ sessions_cmd }}"
      register: after_disconnect
      changed_when: false

    - name: Records after the disconnect
      ansible.builtin.command: "{{ records_cmd }}"
      register: records_after
      changed_when: false
      failed_when: records_after.rc != 21

    - name: Boot-time login and disconnect
      ansible.builtin.assert:
        that:
          - after_boot.stdout_lines | length == 2
          - after_boot_module is not changed
          - disconnect_check is changed
          - disconnect is changed
          - disconnect_again is not changed
          - after_disconnect.stdout == ""
"""

CLEANUP = """\
- name: Leave the CHAP target
  hosts: kernel
  gather_facts: false
  tasks:
    - name: Log out and forget the records
      ansible.builtin.shell: >-
        iscsiadm -m node -T {{ virtnode_lab_iscsi_chap_target }} --logout;
        iscsiadm -m node -T {{ virtnode_lab_iscsi_chap_target }} -o delete; true
      changed_when: false
"""


def test_iscsi_login_with_chap_on_two_portals_persists_and_logs_out(kernel_hosts, tmp_path):
    playbook = tmp_path / "iscsi.yml"
    playbook.write_text(PLAY)
    cleanup = tmp_path / "cleanup.yml"
    cleanup.write_text(CLEANUP)
    started = time.monotonic()
    try:
        proc = run_playbook(playbook, timeout=600)
        print(proc.stdout[-8000:])
        assert proc.returncode == 0, proc.stdout[-20000:]
    finally:
        run_playbook(cleanup, timeout=300)
    print(f"iscsi play on {len(kernel_hosts)} hosts: {time.monotonic() - started:.1f}s")
