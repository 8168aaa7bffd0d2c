"""NFS storage on the lab's kernel hosts, against the lab's NFS server (vnkern1, kernel group vars).

- storage_server connects and disconnects NFS exports with a protocol version, timeo and retrans;
  /proc/mounts shows what was asked for, plus nosuid,nodev.
- A file storage domain on an NFS export is used by both kernel hosts: one creates it, both see
  it, a volume made by the SPM is visible on the other host.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import lab_exec, run_playbook

SP = "3c1e5a7f-9b2d-4e6f-8a1c-5d7e9f1a3b50"
SD = "4d2f6b8a-0c3e-4f7a-9b2d-6e8f0a2b4c61"
IMG = "5e3a7c9b-1d4f-4a8b-8c3e-7f9a1b3c5d72"
VOL = "6f4b8d0c-2e5a-4b9c-9d4f-8a0b2c4d6e83"
IO_TIMEOUT = 3
# The domain's export: timeo=20 (2 s), retrans=2, so an NFS call to a dead server fails after
# 2 + 4 + 6 s (linear backoff over TCP) instead of VDSM's default of minutes.
DOMAIN_TIMEO, DOMAIN_RETRANS = 20, 2


def play(tmp_path, name: str, hosts: str, tasks: str, timeout: int = 600) -> str:
    """Run one play (tasks given as YAML text indented for a play's task list); fail with its output."""
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(f"- name: {name}\n  hosts: {hosts}\n  gather_facts: false\n  tasks:\n{tasks}")
    started = time.monotonic()
    proc = run_playbook(playbook, timeout=timeout)
    print(f"{name}: {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return proc.stdout


# ---------------------------------------------------------------- storage_server on NFS

# One version of NFS, looped over by CONNECT_PLAY: item = {path, version, timeo, retrans, fstype}.
NFS_VERSION_TASKS = """---
- name: Connect (check mode)
  virtnode.kvm.storage_server: &nfs
    type: nfs
    path: "{{ item.path }}"
    nfs_version: "{{ item.version }}"
    timeo: "{{ item.timeo }}"
    retrans: "{{ item.retrans }}"
  check_mode: true
  register: nfs_check

- name: Connect
  virtnode.kvm.storage_server: *nfs
  register: nfs_real

- name: Connect again
  virtnode.kvm.storage_server: *nfs
  register: nfs_again

- name: Read the mount table and the export's root
  ansible.builtin.shell: cat /proc/mounts; ls -a {{ nfs_real.mount_point | quote }}
  register: mounted
  changed_when: false

- name: Disconnect (check mode)
  virtnode.kvm.storage_server: &nfs_off
    type: nfs
    path: "{{ item.path }}"
    state: disconnected
  check_mode: true
  register: off_check

- name: Disconnect
  virtnode.kvm.storage_server: *nfs_off
  register: off_real

- name: Disconnect again
  virtnode.kvm.storage_server: *nfs_off
  register: off_again

- name: Read the mount table and look for the mount point
  ansible.builtin.shell: cat /proc/mounts; test -e {{ nfs_real.mount_point | quote }} && echo MOUNT POINT LEFT || true
  register: unmounted
  changed_when: false

- name: "NFS {{ item.version }}: mounted as asked, nosuid,nodev, idempotent, unmounted"
  vars:
    lines: "{{ mounted.stdout_lines | select('search', ' ' ~ (nfs_real.mount_point | regex_escape) ~ ' ') | list }}"
    fields: "{{ (lines | last).split() }}"
    opts: "{{ fields[3].split(',') }}"
  ansible.builtin.assert:
    that:
      - nfs_check is changed
      - nfs_real is changed and nfs_real.connected
      - nfs_again is not changed and nfs_again.connected
      - nfs_real.mount_point == '/rhev/data-center/mnt/' + (item.path | replace('_', '__') | replace('/', '_'))
      - lines | length == 1
      - fields[0] == item.path
      - fields[2] == item.fstype
      - ('vers=' ~ item.version) in opts
      - ('timeo=' ~ item.timeo) in opts
      - ('retrans=' ~ item.retrans) in opts
      - "'soft' in opts and 'nosharecache' in opts"
      - "'nosuid' in opts and 'nodev' in opts"
      - "'.' in mounted.stdout_lines"
      - off_check is changed
      - off_real is changed and not off_real.connected
      - off_again is not changed and not off_again.connected
      - (' ' ~ nfs_real.mount_point ~ ' ') not in unmounted.stdout
      - "'MOUNT POINT LEFT' not in unmounted.stdout"
    fail_msg: "{{ lines }} {{ nfs_real }} {{ unmounted.stdout_lines | select('search', 'nfs') | list }}"
"""

CONNECT_PLAY = """    - name: Each NFS version against the lab's server
      ansible.builtin.include_tasks: %(tasks)s
      loop:
        - path: "{{ virtnode_lab_nfs_server }}:{{ virtnode_lab_nfs_exports_v3[1] }}"
          version: "3"
          timeo: 50
          retrans: 3
          fstype: nfs
        # NFSv4 names the export under the server's v4 root (fsid=0), not by its path there.
        - path: "{{ virtnode_lab_nfs_server }}:{{ virtnode_lab_nfs_exports_v4[1] }}"
          version: "4.2"
          timeo: 70
          retrans: 4
          fstype: nfs4
      loop_control:
        label: "{{ item.version }}"
"""


def test_nfs_connect_disconnect_with_version_timeo_retrans(kernel_hosts, tmp_path):
    tasks = tmp_path / "nfs_version.yml"
    tasks.write_text(NFS_VERSION_TASKS)
    play(tmp_path, "storage_server on NFS 3 and 4.2", "kernel[1]", CONNECT_PLAY % {"tasks": tasks})
