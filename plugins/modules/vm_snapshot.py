#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_snapshot
short_description: Live external disk snapshots and live merge of a running VM's storage-domain disks
version_added: 0.1.0
description:
  - Takes a live external snapshot of one or more disks of a running VM onto new volumes, and
    merges a volume away again while the VM runs (live merge), as VDSM's C(snapshot) and
    C(merge) verbs do.
  - The snapshot volume must exist first, created on the SPM with M(virtnode.kvm.volume) as a
    COW child (O(virtnode.kvm.volume#module:parent_volume_uuid)) of the disk's current top
    volume, in the same image. This module then runs on the host running the VM and switches
    the disk onto it (C(virDomainSnapshotCreateXML) with C(DISK_ONLY), C(REUSE_EXT) and
    C(NO_METADATA); all O(volumes) in one snapshot).
  - V(absent) merges the volume into its parent with a block commit. When the volume is the
    active layer this is an active commit followed by a pivot to the parent (the merged
    volume is marked ILLEGAL before the pivot, as VDSM does); an internal volume is committed
    and its child is re-pointed to the parent. The volume metadata then follows the new chain.
  - Deleting the merged volume changes the image and is the SPM's job. With
    O(delete_merged=true) the module deletes it when this host is the SPM of the domain's
    pool; otherwise the volume stays, ILLEGAL, and is listed in RV(pending_delete) for a
    M(virtnode.kvm.volume) O(virtnode.kvm.volume#module:state=absent) task on the SPM.
  - Idempotent against the live domain's backing chain; V(present) means the volume is in the
    disk's chain, V(absent) that it is not.
options:
  name:
    description: Name of the running VM (libvirt domain).
    type: str
    required: true
  volumes:
    description:
      - The snapshot volumes, one per disk at most. A disk is found by the volume's image.
    type: list
    elements: dict
    required: true
    suboptions:
      domain_id:
        description: Storage domain UUID.
        type: str
        required: true
      image_id:
        description: Image UUID (the disk).
        type: str
        required: true
      volume_id:
        description: Volume UUID.
        type: str
        required: true
  state:
    description:
      - V(present) makes each volume part of its disk's live chain, taking the snapshot when it
        is not.
      - V(absent) merges each volume into its parent while the VM runs.
    type: str
    choices: [present, absent]
    default: present
  memory_volume:
    description:
      - With O(state=present), also save the VM's memory state into this RAW volume (the VM
        keeps running). It must hold the VM's memory plus 32 MiB.
    type: dict
    suboptions:
      domain_id:
        description: Storage domain UUID.
        type: str
        required: true
      image_id:
        description: Image UUID.
        type: str
        required: true
      volume_id:
        description: Volume UUID.
        type: str
        required: true
  freeze:
    description:
      - Freeze the guest's file systems through the QEMU guest agent around the snapshot.
        Best effort; without a connected agent the snapshot is taken anyway and RV(freeze)
        says so.
    type: bool
    default: true
  description:
    description: Description given to the snapshot.
    type: str
  delete_merged:
    description:
      - After a merge, delete the merged volume when this host is the SPM of its domain's pool.
    type: bool
    default: true
  timeout:
    description: Seconds a merge may take before it is cancelled (the chain then stays as it was).
    type: int
    default: 300
extends_documentation_fragment:
  - virtnode.kvm.libvirt
  - virtnode.kvm.failure
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The volume chains of the disks concerned, before and after.
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
notes:
  - The VM must run (or be paused) on this host; a VM that is down fails with a clear message
    and nothing changes. Every volume is checked before anything changes.
  - A live merge needs the volumes on the host's mount of the domain, as the VM uses them.
  - On a block domain the snapshot volume's LV is activated and linked here first. A merge there runs only on the
    pool's SPM, in one fenced SPM task; a thin base LV is grown first by what the merged volume holds plus one
    chunk (at most to its capacity x 1.1), and the merged volume's LV is removed.
seealso:
  - module: virtnode.kvm.volume
  - module: virtnode.kvm.vm
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# The whole flow on one host, from the lab's shared directory to a merged snapshot.
- name: Export directory for the example storage
  ansible.builtin.file:
    path: "{{ virtnode_lab_shared_dir }}/example-snapshot"
    state: directory
    mode: "0755"

- name: Connect it as a POSIX storage server
  virtnode.kvm.storage_server: &example_server
    type: posixfs
    path: "{{ virtnode_lab_shared_dir }}/example-snapshot"
    vfstype: none
    options: bind

- name: A data domain on it
  virtnode.kvm.storage_domain:
    sd_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
    server: "{{ virtnode_lab_shared_dir }}/example-snapshot"
    type: posixfs
    io_timeout: 1

- name: A pool on it, this host connected as host 1
  virtnode.kvm.storage_pool:
    pool_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f00
    master_sd_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
    host_id: 1
    state: present

- name: This host is the SPM
  virtnode.kvm.spm:
    pool_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f00
    state: started

- name: The VM's thin disk (on the SPM)
  virtnode.kvm.volume:
    sd_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
    image_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
    volume_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f11
    size: 64MiB

- name: Run a VM on it
  virtnode.kvm.vm:
    name: example-snap-vm
    memory: 128MiB
    kernel: "{{ virtnode_lab_guest_kernel }}"
    initrd: "{{ virtnode_lab_guest_initrd }}"
    cmdline: "{{ virtnode_lab_guest_cmdline }} workload=idle"
    disks:
      - domain_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
        image_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
        volume_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f11
        format: qcow2

- name: The snapshot volume, a child of the disk's top volume (on the SPM)
  virtnode.kvm.volume:
    sd_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
    image_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
    volume_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12
    parent_volume_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f11

- name: Take the live snapshot (on the host running the VM)
  virtnode.kvm.vm_snapshot:
    name: example-snap-vm
    volumes:
      - domain_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
        image_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
        volume_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12

- name: Merge it away live; this host is the SPM, so the merged volume is deleted too
  virtnode.kvm.vm_snapshot:
    name: example-snap-vm
    volumes:
      - domain_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
        image_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
        volume_id: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12
    state: absent

- name: Remove the VM
  virtnode.kvm.vm:
    name: example-snap-vm
    state: absent

- name: Stop being SPM
  virtnode.kvm.spm:
    pool_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f00
    state: stopped

- name: Disconnect the pool
  virtnode.kvm.storage_pool:
    pool_uuid: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f00
    state: disconnected

- name: Disconnect the storage server
  virtnode.kvm.storage_server:
    <<: *example_server
    state: disconnected

- name: Remove the example storage
  ansible.builtin.file:
    path: "{{ virtnode_lab_shared_dir }}/example-snapshot"
    state: absent
"""

RETURN = r"""
chains:
  description: Volume chains (base first, active layer last) of the disks concerned, before and after.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: Device name of the disk in the guest.
      type: str
      returned: always
      sample: vda
    domain_id:
      description: Storage domain UUID.
      type: str
      returned: always
      sample: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01
    image_id:
      description: Image UUID.
      type: str
      returned: always
      sample: 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10
    before:
      description: Volume UUIDs before the task.
      type: list
      elements: str
      returned: always
      sample: [4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f11]
    after:
      description: Volume UUIDs after the task (expected ones in check mode).
      type: list
      elements: str
      returned: always
      sample: [4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f11, 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12]
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: [snapshot vda onto 4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12]
duration_s:
  description: Seconds the snapshot or merges took; V(0) when nothing was done.
  returned: always
  type: float
  sample: 0.42
freeze:
  description:
    - Whether the guest's file systems were frozen for the snapshot, and why not.
    - C(filesystems) is how many the guest agent froze (V(null) when none was asked to).
  returned: when a snapshot is taken
  type: dict
  sample: {"requested": true, "frozen": false, "filesystems": null,
           "message": "no connected guest agent: snapshot taken without freezing"}
memory:
  description: The memory-state volume used, with the bytes it needed.
  returned: when O(memory_volume) is given
  type: dict
  sample: {"volume_id": "4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f21", "capacity": 268435456, "needed": 167772160}
deleted:
  description: Merged volumes deleted by this task (this host is the SPM).
  returned: always
  type: list
  elements: dict
  sample: [{"domain_id": "4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f01", "image_id": "4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f10",
            "volume_id": "4e0b6a52-1c1d-4f0e-9a8e-6d3b2c1a0f12"}]
pending_delete:
  description: Merged volumes left on storage, ILLEGAL, for the SPM to delete.
  returned: always
  type: list
  elements: dict
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import snapshot as vm_snapshot
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec


def main():
    module = AnsibleModule(
        argument_spec=libvirt_conn.libvirt_argument_spec(
            name=dict(type='str', required=True),
            volumes=dict(type='list', elements='dict', required=True, options=vm_spec.VOLUME_REF_OPTIONS),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            memory_volume=dict(type='dict', options=vm_spec.VOLUME_REF_OPTIONS),
            freeze=dict(type='bool', default=True),
            description=dict(type='str'),
            delete_merged=dict(type='bool', default=True),
            timeout=dict(type='int', default=300),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, vm_snapshot.converge)


if __name__ == '__main__':
    main()
