#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_lease
short_description: Create and remove VM leases on a storage domain's xleases volume, as VDSM's Lease API
version_added: 0.1.0
description:
  - A VM lease is a sanlock resource named by its lease id in the storage domain's lockspace, at a slot of the
    domain's C(xleases) volume that the volume's index (VDSM format 1) names. Give it to M(virtnode.kvm.vm) as
    O(virtnode.kvm.vm#module:lease) (RV(lease) has that shape). With libvirt's sanlock lock manager, QEMU holds the
    lease while the VM runs, so the same VM cannot run on two hosts, and after a host dies it can be started
    elsewhere once sanlock has fenced the old copy. The C(bootstrap) role does not configure that lock manager yet.
  - Adding and removing are the SPM's (one writer of the index per pool), as VDSM's C(Lease.create) and
    C(Lease.delete); the sanlock resource is written before the index names it, and the index record is cleared
    before the resource, so an interrupted change never leaves the index naming a lease that is not there.
  - Any host attached to the domain reads a lease that exists (no change, no SPM needed).
  - Domains of format 4 and later that are shared (not local) have the xleases volume.
options:
  sd_uuid:
    description: UUID of the storage domain whose xleases volume holds the lease.
    type: str
    required: true
  lease_id:
    description: UUID of the lease; VDSM uses the VM's UUID.
    type: str
    required: true
  state:
    description: Whether the lease exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
requirements:
  - python3-sanlock on the managed host
seealso:
  - module: virtnode.kvm.vm
  - module: virtnode.kvm.spm
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs a shared domain attached to a pool whose SPM is this host (the storage target runs it)
- name: A lease for the VM, on the SPM
  virtnode.kvm.vm_lease:
    sd_uuid: 9d1b0f3e-41a4-4a4c-8f0e-5e0f8d7c6b5a
    lease_id: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
  register: vm_lease

- name: Start the VM holding it (on any host of the pool)
  virtnode.kvm.vm:
    name: web1
    uuid: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
    memory: 1GiB
    lease: "{{ vm_lease.lease }}"

- name: Remove the lease once the VM is gone
  virtnode.kvm.vm_lease:
    sd_uuid: 9d1b0f3e-41a4-4a4c-8f0e-5e0f8d7c6b5a
    lease_id: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
    state: absent
"""

RETURN = r"""
lease:
  description: The lease, in the shape of M(virtnode.kvm.vm)'s O(virtnode.kvm.vm#module:lease); V(null) when absent.
  returned: always
  type: dict
  contains:
    sd_id:
      description: The storage domain (the sanlock lockspace).
      type: str
      sample: 9d1b0f3e-41a4-4a4c-8f0e-5e0f8d7c6b5a
    lease_id:
      description: The lease (the sanlock resource).
      type: str
      sample: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
    path:
      description: The domain's xleases volume.
      type: str
      sample: /rhev/data-center/mnt/server:_export/9d1b0f3e-41a4-4a4c-8f0e-5e0f8d7c6b5a/dom_md/xleases
    offset:
      description: Where the lease is in it, in bytes.
      type: int
      sample: 3145728
actions:
  description: What was done (or, in check mode, would be done).
  returned: always
  type: list
  elements: str
  sample: ["add lease 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e at 3145728"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import vm_lease


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str', required=True),
            lease_id=dict(type='str', required=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, vm_lease.run_module)


if __name__ == '__main__':
    main()
