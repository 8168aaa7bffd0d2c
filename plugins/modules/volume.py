#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume
short_description: Create, snapshot, clone, extend and delete disk images and volumes of a VDSM storage domain
version_added: 0.1.0
description:
  - Volumes live in C(images/<image>/<volume>) with a C(.meta) file (VDSM format) and, except on local
    domains, a C(.lease) sanlock resource.
  - On a block domain (iSCSI, FC) a volume is a logical volume named after it and tagged C(IU_<image>),
    C(PU_<parent>) and C(MD_<slot>), its metadata the 512-byte record of slot C(<slot>) of the domain's C(metadata)
    LV and its lease at (100 + slot) x ALIGNMENT of C(leases), as VDSM has them. RAW volumes are preallocated LVs of
    whole extents (the capacity reported is the LV's; V(SPARSE) RAW is refused); sparse COW volumes start at one
    1 GiB chunk (or their capacity if smaller).
  - A new volume is written ILLEGAL first and marked LEGAL when complete.
  - With O(parent_volume_uuid) the new volume is a COW snapshot whose backing file is the parent
    (C(qemu-img create -b <parent> -F <format>)); the parent becomes INTERNAL.
  - With O(clone_from) the new volume is a full copy of another volume (template), its chain flattened. On a block
    domain the source is a volume of a file domain or of the same domain, and the new logical volume gets what
    C(qemu-img measure) says the copy needs (at least the usual start of a thin volume).
  - A larger O(size) on an existing leaf volume extends it; shrinking is refused.
  - V(absent) deletes one volume (it must have no children) or, without O(volume_uuid), the whole image, renaming
    it C(_remove_me_<image>) first.
  - V(prepared) is VDSM's prepareImage, on the host where a VM is about to use the volume (the destination of a
    migration; M(virtnode.kvm.vm) does it itself when it starts a VM). On a block domain the volume and its parents
    are checked LEGAL, their logical volumes activated on this host and linked in the image directory; on a file
    domain the chain is only checked. It changes nothing on storage and runs on any host of the pool.
  - Changes run only on the SPM of the domain's pool; elsewhere the task fails naming the SPM host. Each change
    runs as a fenced SPM task, which holds a sanlock lease of its own in the master domain's lockspace and checks before
    every metadata write that this host still holds the SPM lease with the same LVER, so a task that outlives the
    lease writes nothing more.
  - A volume that an interrupted create left behind (still ILLEGAL, or a data file without C(.meta)) is removed and
    created again by the next V(present) run (action V(remove_leftover)); an ILLEGAL volume with children fails.
options:
  sd_uuid:
    description: Domain holding the image; it must be attached to a pool.
    type: str
    required: true
  image_uuid:
    description: Image (disk) UUID.
    type: str
    required: true
  volume_uuid:
    description: Volume UUID; required for V(present).
    type: str
  size:
    description:
      - Capacity, in bytes or with a unit (V(10G), V(512MiB)); at least 1 MiB, a multiple of 512 bytes.
      - Defaults to the parent's or the clone source's size.
    type: str
  format:
    description: Volume format.
    type: str
    choices: [RAW, COW]
    default: COW
  allocation:
    description: V(SPARSE) (thin) or V(PREALLOCATED).
    type: str
    choices: [SPARSE, PREALLOCATED]
    default: SPARSE
  initial_size:
    description:
      - Space to give a new COW volume on a block storage domain at once, in bytes or with a unit, as VDSM's
        C(initial_size); a sparse volume's logical volume gets it x 1.1 (VDSM's qcow2 overhead) instead of one chunk
        (1 GiB), rounded up to whole extents. At most the capacity x 1.1.
      - Used only when the volume is created. Refused for RAW volumes and on file domains, as VDSM refuses it.
    type: str
  parent_volume_uuid:
    description: Volume of the same image to snapshot (the current leaf).
    type: str
  clone_from:
    description: Volume to copy into the new volume.
    type: dict
    suboptions:
      sd_uuid:
        description: Domain of the source; defaults to O(sd_uuid).
        type: str
      image_uuid:
        description: Image of the source.
        type: str
        required: true
      volume_uuid:
        description: Source volume.
        type: str
        required: true
  description:
    description: Volume description (cut to 210 characters).
    type: str
    default: ''
  disk_type:
    description: VDSM disk type.
    type: str
    default: DATA
    choices: [DATA, ISOF, MEMD, MEMM, OVFS]
  state:
    description: Desired state. V(prepared) needs O(volume_uuid).
    type: str
    choices: [present, absent, prepared]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
requirements:
  - qemu-img (Debian qemu-utils) and python3-sanlock on the managed host
seealso:
  - module: virtnode.kvm.spm
  - module: virtnode.kvm.storage_info
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs an attached domain and this host being the SPM of its pool
- name: Create a 10 GiB thin disk
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21
    size: 10G
    format: COW
    allocation: SPARSE

- name: Take a snapshot (a new leaf on top of it)
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    parent_volume_uuid: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21

- name: Extend the leaf to 20 GiB
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    size: 20G

- name: On the host a VM on this disk migrates to, activate and link the leaf's chain first (prepareImage)
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    state: prepared

- name: Delete the whole disk
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    state: absent
"""

RETURN = r"""
volume:
  description: The volume after the task (V(null) when absent or not yet created in check mode).
  type: dict
  returned: success
  contains:
    volume_uuid:
      description: Volume UUID.
      type: str
      returned: always
      sample: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21
    path:
      description: Path of the volume's data file; on a block domain its link to C(/dev/<sd>/<volume>) (present while
        the LV is active on this host).
      type: str
      returned: always
      sample: /rhev/data-center/mnt/nfs.example.com:_exports_data/5f2d.../images/3e1c.../9d3c...
    format:
      description: V(RAW) or V(COW).
      type: str
      returned: always
      sample: COW
    allocation:
      description: V(SPARSE) or V(PREALLOCATED).
      type: str
      returned: always
      sample: SPARSE
    capacity:
      description: Virtual size in bytes.
      type: int
      returned: always
      sample: 10737418240
    parent:
      description: Parent volume UUID, all zeros for none.
      type: str
      returned: always
      sample: 00000000-0000-0000-0000-000000000000
    role:
      description: V(LEAF), V(INTERNAL) or V(SHARED).
      type: str
      returned: always
      sample: LEAF
    legality:
      description: V(LEGAL) or V(ILLEGAL).
      type: str
      returned: always
      sample: LEGAL
chain:
  description: The image's volumes after the task, base first.
  type: list
  elements: dict
  returned: success
  sample: []
actions:
  description:
    - What was done (or would be done in check mode), in order.
    - One of V(create), V(snapshot), V(clone), V(extend), V(delete_volume), V(delete_image), V(remove_leftover),
      V(prepare).
  type: list
  elements: str
  returned: success
  sample: [create]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str', required=True),
            image_uuid=dict(type='str', required=True),
            volume_uuid=dict(type='str'),
            size=dict(type='str'),
            initial_size=dict(type='str'),
            format=dict(type='str', default='COW', choices=['RAW', 'COW']),
            allocation=dict(type='str', default='SPARSE', choices=['SPARSE', 'PREALLOCATED']),
            parent_volume_uuid=dict(type='str'),
            clone_from=dict(type='dict', options=dict(
                sd_uuid=dict(type='str'),
                image_uuid=dict(type='str', required=True),
                volume_uuid=dict(type='str', required=True),
            )),
            description=dict(type='str', default=''),
            disk_type=dict(type='str', default='DATA', choices=['DATA', 'ISOF', 'MEMD', 'MEMM', 'OVFS']),
            state=dict(type='str', default='present', choices=['present', 'absent', 'prepared']),
        ),
        mutually_exclusive=[('parent_volume_uuid', 'clone_from')],
        supports_check_mode=True,
    )
    module_run.run(module, volume_state.run_module)


if __name__ == '__main__':
    main()
