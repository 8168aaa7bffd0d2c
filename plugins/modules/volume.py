#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume
short_description: Create, snapshot, clone, extend and delete disk images and volumes of a VDSM file domain
version_added: 0.1.0
description:
  - Volumes live in C(images/<image>/<volume>) with a C(.meta) file (VDSM format) and, except on local
    domains, a C(.lease) sanlock resource.
  - A new volume is written ILLEGAL first and marked LEGAL when complete.
  - With O(parent_volume_uuid) the new volume is a COW snapshot whose backing file is the parent
    (C(qemu-img create -b <parent> -F <format>)); the parent becomes INTERNAL.
  - With O(clone_from) the new volume is a full copy of another volume (template), its chain flattened.
  - A larger O(size) on an existing leaf volume extends it; shrinking is refused.
  - V(absent) deletes one volume (it must have no children) or, without O(volume_uuid), the whole image, renaming
    it C(_remove_me_<image>) first.
  - Changes run only on the SPM of the domain's pool; elsewhere the task fails naming the SPM host.
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
    description: Desired state.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
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
      description: Path of the volume's data file.
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
  description: What was done (or would be done in check mode).
  type: list
  elements: str
  returned: success
  sample: [create]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


def _volume_dict(dom_dir, img_uuid, vol_uuid):
    md = volumes.read_volume(dom_dir, img_uuid, vol_uuid)
    if md is None:
        return None
    return {'volume_uuid': vol_uuid, 'path': volumes.paths(dom_dir, img_uuid, vol_uuid)[0], 'format': md.volume_format,
            'allocation': md.allocation, 'capacity': md.capacity, 'parent': md.parent, 'role': md.role,
            'legality': md.legality}


def _chain(dom_dir, img_uuid):
    if not os.path.isdir(volumes.image_path(dom_dir, img_uuid)):
        return []
    return storage.volume_chain_info(dom_dir, img_uuid)


def _require_spm(dom_md):
    if not dom_md.pool_uuids:
        raise VirtnodeError('storage domain %s is not attached to a pool; volume changes run on the pool SPM' % dom_md.sd_uuid)
    spm.require_spm(dom_md.pool_uuids[0])


def run(module):
    params = module.params
    sd_uuid = validate.uuid_str(params['sd_uuid'], 'sd_uuid')
    img_uuid = validate.uuid_str(params['image_uuid'], 'image_uuid')
    vol_uuid = validate.uuid_str(params['volume_uuid'], 'volume_uuid') if params['volume_uuid'] else None
    parent = validate.uuid_str(params['parent_volume_uuid'], 'parent_volume_uuid') if params['parent_volume_uuid'] else None
    size = None
    if params['size'] is not None:
        size = volumes.check_capacity(validate.size_bytes(params['size'], 'size'))
    clone = params['clone_from']
    if clone:
        for key in ('image_uuid', 'volume_uuid'):
            validate.uuid_str(clone[key], 'clone_from.%s' % key)
        validate.uuid_str(clone['sd_uuid'] or sd_uuid, 'clone_from.sd_uuid')
    if clone and parent:
        raise VirtnodeError('clone_from and parent_volume_uuid are mutually exclusive')
    dom_dir = storage.find_domain(sd_uuid)
    dom_md = storage.read_md(dom_dir)
    actions = []
    before = _volume_dict(dom_dir, img_uuid, vol_uuid) if vol_uuid else None

    if params['state'] == 'present':
        if vol_uuid is None:
            raise VirtnodeError('volume_uuid is required for state=present', {'field': 'volume_uuid'})
        if before is None:
            _require_spm(dom_md)
            if clone:
                src_dir = storage.find_domain(clone['sd_uuid'] or sd_uuid)
                if volumes.read_volume(src_dir, clone['image_uuid'], clone['volume_uuid']) is None:
                    raise VirtnodeError('clone source volume %s not found' % clone['volume_uuid'], {'field': 'clone_from'})
            elif parent:
                if volumes.read_volume(dom_dir, img_uuid, parent) is None:
                    raise VirtnodeError('parent volume %s not found in image %s' % (parent, img_uuid), {'field': 'parent_volume_uuid'})
            elif size is None:
                raise VirtnodeError('size is required to create a volume', {'field': 'size'})
            if params['format'] == 'RAW' and parent:
                raise VirtnodeError('a snapshot volume must be COW', {'field': 'format'})
            actions.append('clone' if clone else 'snapshot' if parent else 'create')
            if not module.check_mode:
                source = (storage.find_domain(clone['sd_uuid'] or sd_uuid), clone['image_uuid'], clone['volume_uuid']) if clone else None
                volumes.create_volume(dom_dir, dom_md, img_uuid, vol_uuid, params['format'], params['allocation'], size, parent,
                                      params['description'], params['disk_type'], source)
        else:
            if parent and before['parent'] != parent:
                raise VirtnodeError('volume %s exists with parent %s, not %s' % (vol_uuid, before['parent'], parent))
            if size is not None and size < before['capacity']:
                raise VirtnodeError('volume %s is %d bytes; shrinking to %d bytes is not supported'
                                    % (vol_uuid, before['capacity'], size), {'field': 'size'})
            if size is not None and size > before['capacity']:
                _require_spm(dom_md)
                if before['role'] != 'LEAF':
                    raise VirtnodeError('only the leaf volume of an image can be extended; %s is %s' % (vol_uuid, before['role']))
                actions.append('extend')
                if not module.check_mode:
                    volumes.extend_volume(dom_dir, dom_md, img_uuid, vol_uuid, size)
    else:
        if vol_uuid is not None:
            if before is not None or os.path.lexists(volumes.paths(dom_dir, img_uuid, vol_uuid)[0]):
                _require_spm(dom_md)
                children = [v for v, m in volumes.image_volumes(dom_dir, img_uuid).items() if m.parent == vol_uuid]
                if children:
                    raise VirtnodeError('volume %s has child volume(s) %s: delete them first' % (vol_uuid, ', '.join(children)))
                actions.append('delete_volume')
                if not module.check_mode:
                    volumes.delete_volume(dom_dir, dom_md, img_uuid, vol_uuid)
        elif os.path.isdir(volumes.image_path(dom_dir, img_uuid)):
            _require_spm(dom_md)
            actions.append('delete_image')
            if not module.check_mode:
                volumes.delete_image(dom_dir, img_uuid)

    after = _volume_dict(dom_dir, img_uuid, vol_uuid) if vol_uuid else None
    result = {'changed': bool(actions), 'actions': actions, 'volume': after, 'chain': _chain(dom_dir, img_uuid)}
    if module._diff:
        result['diff'] = {'before': before or {}, 'after': (after or {}) if not module.check_mode else {'actions': actions}}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str', required=True),
            image_uuid=dict(type='str', required=True),
            volume_uuid=dict(type='str'),
            size=dict(type='str'),
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
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        mutually_exclusive=[('parent_volume_uuid', 'clone_from')],
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except VirtnodeError as err:
        module.fail_json(**err.to_dict())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
