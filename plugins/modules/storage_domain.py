#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_domain
short_description: Create, attach, activate, detach, import and remove VDSM file storage domains
version_added: 0.1.0
description:
  - Manages a file storage domain (NFS, POSIX or local directory) in VDSM's on-disk format, so oVirt can import
    domains made here and this module can import domains made by oVirt.
  - V(present) creates the domain on a connected storage server - the C(dom_md) files, metadata sealed with
    C(_SHA_CKSUM), the sanlock lockspace on C(dom_md/ids), the SPM lease C(SDM) at 1 x ALIGNMENT of
    C(dom_md/leases) and, for version 4 and later non-local domains, the C(xleases) index.
  - V(attached), V(active) and V(detached) change the domain's membership of pool O(pool_uuid). They change pool
    metadata, so they run only on the pool's SPM; elsewhere they fail naming the SPM host.
  - V(imported) finds an existing domain on server O(server) (oVirt's import of an existing data domain), initialises
    its lockspace and SPM lease if they are blank, and, with O(pool_uuid), attaches and activates it.
  - V(absent) removes a detached domain; refused while it has images unless O(force).
options:
  sd_uuid:
    description:
      - UUID of the domain. Required except for V(imported), where it defaults to the only domain found on O(server).
    type: str
  server:
    description:
      - The storage server path as given to M(virtnode.kvm.storage_server) O(virtnode.kvm.storage_server#module:path).
      - Required for V(present) and V(imported).
    type: str
  type:
    description: Domain type written to the metadata (C(TYPE)).
    type: str
    choices: [nfs, posixfs, localfs]
    default: posixfs
  domain_class:
    description: Domain class.
    type: str
    choices: [Data, Iso, Backup]
    default: Data
  description:
    description: Domain description, at most 50 characters.
    type: str
    default: ''
  version:
    description: Storage format version of a new domain (4 and 5 are read).
    type: int
    choices: [4, 5]
    default: 5
  io_timeout:
    description:
      - sanlock I/O timeout of the domain's lockspace in seconds, written as C(IOOPTIMEOUTSEC).
      - A host that stops renewing loses its leases after 8 x io_timeout + 60 seconds; tests use V(1).
    type: int
    default: 10
  block_size:
    description: Block size of a new version 5 domain.
    type: int
    choices: [512, 4096]
    default: 512
  alignment:
    description: Lease alignment of a new version 5 domain, in bytes.
    type: int
    choices: [1048576, 2097152, 4194304, 8388608]
    default: 1048576
  pool_uuid:
    description: Pool for V(attached), V(active), V(detached) and V(imported).
    type: str
  force:
    description:
      - With V(absent), remove the domain even if it has images.
      - With V(imported), take over a domain that still names another pool.
    type: bool
    default: false
  state:
    description: Desired state of the domain.
    type: str
    choices: [present, absent, attached, active, detached, imported]
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
notes:
  - Activating a domain joins its lockspace on this host; other hosts join when they reconnect the pool with
    M(virtnode.kvm.storage_pool).
  - The domain being the pool's master cannot be detached.
requirements:
  - python3-sanlock on the managed host (not needed for V(localfs) domains)
seealso:
  - module: virtnode.kvm.storage_server
  - module: virtnode.kvm.storage_pool
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs an NFS server, and a pool whose SPM is this host
- name: Create a data domain on an NFS export
  virtnode.kvm.storage_domain:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    server: nfs.example.com:/exports/data
    type: nfs
    description: data on nfs

- name: Attach it to a pool and activate it (on the SPM)
  virtnode.kvm.storage_domain:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    state: active

- name: Import the data domain an old oVirt setup left on another export
  virtnode.kvm.storage_domain:
    server: nfs.example.com:/exports/old
    type: nfs
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    force: true
    state: imported
"""

RETURN = r"""
domain:
  description: The domain after the task (V(null) when absent, or in check mode before creation).
  type: dict
  returned: success
  contains:
    sd_uuid:
      description: Domain UUID.
      type: str
      returned: always
      sample: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    path:
      description: Domain directory.
      type: str
      returned: always
      sample: /rhev/data-center/mnt/nfs.example.com:_exports_data/5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    version:
      description: Format version.
      type: int
      returned: always
      sample: 5
    role:
      description: V(Regular) or V(Master).
      type: str
      returned: always
      sample: Regular
    pool_uuids:
      description: Pools the domain belongs to.
      type: list
      elements: str
      returned: always
      sample: []
    metadata:
      description: The raw metadata keys.
      type: dict
      returned: always
      sample: {CLASS: Data, VERSION: "5"}
    images:
      description: Images with their volume chains.
      type: list
      elements: dict
      returned: always
      sample: []
found:
  description: UUIDs of the domains found on O(server) (V(imported) only).
  type: list
  elements: str
  returned: when O(state=imported)
  sample: [5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11]
actions:
  description: What was done (or would be done in check mode).
  type: list
  elements: str
  returned: success
  sample: [create, init_leases]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

TYPE_NAMES = {'nfs': 'NFS', 'posixfs': 'POSIXFS', 'localfs': 'LOCALFS'}


def _summary(info):
    if info is None:
        return None
    return {key: info[key] for key in ('sd_uuid', 'role', 'pool_uuids')}


def _mount(params):
    if not params['server']:
        raise VirtnodeError('server is required for state=%s' % params['state'], {'field': 'server'})
    mount = sd_layout.mount_point(params['server'])
    if not os.path.isdir(mount):
        raise VirtnodeError('storage server %s is not connected (no %s): connect it with virtnode.kvm.storage_server'
                            % (params['server'], mount), {'field': 'server'})
    return mount


def ensure_present(module, actions):
    params = module.params
    sd_uuid = params['sd_uuid']
    dom_dir = storage.find_domain(sd_uuid, required=False)
    if dom_dir is not None:
        return dom_dir
    mount = _mount(params)
    storage.check_io_timeout(params['io_timeout'])
    sdm.new_domain_metadata(sd_uuid, TYPE_NAMES[params['type']], params['domain_class'], params['description'],
                            params['server'], params['version'], params['block_size'], params['alignment'])
    if params['type'] != 'localfs':
        sanlock_lock.require_sanlock(module)
    actions.append('create')
    if module.check_mode:
        return None
    return storage.create_domain(mount, sd_uuid, TYPE_NAMES[params['type']], params['domain_class'], params['description'],
                                 params['server'], params['version'], params['io_timeout'], params['block_size'],
                                 params['alignment'])


def _pool_uuid(params):
    if not params['pool_uuid']:
        raise VirtnodeError('pool_uuid is required for state=%s' % params['state'], {'field': 'pool_uuid'})
    return validate.uuid_str(params['pool_uuid'], 'pool_uuid')


def set_membership(module, dom_dir, sp_uuid, wanted, actions, force=False):
    """wanted: 'Active', 'Attached' or None (detached)."""
    md = storage.read_md(dom_dir)
    master_dir, master_md = storage.find_master(sp_uuid)
    current = storage.pool_domains(master_md).get(md.sd_uuid)
    in_pool = sp_uuid in md.pool_uuids
    if wanted is not None and md.pool_uuids and not in_pool:
        if not force:
            raise VirtnodeError('storage domain %s belongs to pool %s; use force to take it over'
                                % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
    if wanted is None and md.sd_uuid == master_md.sd_uuid:
        raise VirtnodeError('storage domain %s is the master of pool %s and cannot be detached' % (md.sd_uuid, sp_uuid))
    if wanted is not None and md.domain_class != 'Data' and md.sd_type == 'LOCALFS':
        raise VirtnodeError('only data domains can be attached')
    if current == wanted and (in_pool if wanted else not in_pool):
        return False
    spm.require_spm(sp_uuid)
    actions.append({'Active': 'activate', 'Attached': 'attach' if current is None else 'deactivate'}.get(wanted, 'detach'))
    if module.check_mode:
        return True
    domains = storage.pool_domains(master_md)
    if wanted is None:
        domains.pop(md.sd_uuid, None)
        storage.update_md(dom_dir, {sdm.POOL_UUID: ''})
        storage.leave_lockspace(md.sd_uuid)
    else:
        changes = {sdm.POOL_UUID: sp_uuid}
        if force and md.pool_uuids and not in_pool:
            changes.update({sdm.ROLE: 'Regular', sdm.POOL_DOMAINS: None, sdm.POOL_SPM_ID: None, sdm.POOL_SPM_LVER: None,
                            sdm.MASTER_VERSION: None, sdm.POOL_DESCRIPTION: None})
        storage.update_md(dom_dir, changes)
        domains[md.sd_uuid] = wanted
        if wanted == storage.STATUS_ACTIVE:
            pool_state = storage.read_pool_state(sp_uuid) or {}
            storage.join_lockspace(dom_dir, storage.read_md(dom_dir), pool_state.get('host_id'))
    storage.update_md(master_dir, {sdm.POOL_DOMAINS: storage.encode_pool_domains(domains)})
    storage.refresh_links(sp_uuid, master_dir, storage.read_md(master_dir))
    return True


def import_domain(module, actions):
    params = module.params
    mount = _mount(params)
    found = storage.scan_domains(mount=mount)
    if params['sd_uuid']:
        if params['sd_uuid'] not in found:
            raise VirtnodeError('storage domain %s not found on %s (found: %s)'
                                % (params['sd_uuid'], params['server'], ', '.join(found) or 'none'), {'found': sorted(found)})
        sd_uuid = params['sd_uuid']
    elif len(found) == 1:
        sd_uuid = next(iter(found))
    else:
        raise VirtnodeError('%d storage domains found on %s (%s): choose one with sd_uuid'
                            % (len(found), params['server'], ', '.join(found) or 'none'), {'found': sorted(found)})
    dom_dir = found[sd_uuid]
    md = storage.read_md(dom_dir)
    if storage.uses_sanlock(md.sd_type):
        sanlock_lock.require_sanlock(module)
        if not storage.leases_initialised(dom_dir, md):
            if params['pool_uuid']:
                spm.require_spm(params['pool_uuid'])
            actions.append('init_leases')
            if not module.check_mode:
                storage.init_leases(dom_dir, md, md.io_op_timeout_sec)
    if params['pool_uuid']:
        set_membership(module, dom_dir, _pool_uuid(params), storage.STATUS_ACTIVE, actions, params['force'])
    return dom_dir, sorted(found)


def run(module):
    params = module.params
    state = params['state']
    actions = []
    result = {'actions': actions}
    if params['sd_uuid'] is not None:
        validate.uuid_str(params['sd_uuid'], 'sd_uuid')
    elif state != 'imported':
        raise VirtnodeError('sd_uuid is required for state=%s' % state, {'field': 'sd_uuid'})
    if params['pool_uuid'] is not None:
        validate.uuid_str(params['pool_uuid'], 'pool_uuid')
    before = None
    if params['sd_uuid']:
        existing = storage.find_domain(params['sd_uuid'], required=False)
        before = _summary(storage.domain_info(existing, images=False)) if existing else None

    dom_dir = None
    if state == 'imported':
        dom_dir, result['found'] = import_domain(module, actions)
    elif state == 'absent':
        dom_dir = storage.find_domain(params['sd_uuid'], required=False)
        if dom_dir is not None:
            md = storage.read_md(dom_dir)
            if md.pool_uuids:
                raise VirtnodeError('storage domain %s is attached to pool %s: detach it first'
                                    % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
            images = storage.list_image_uuids(dom_dir)
            if images and not params['force']:
                raise VirtnodeError('storage domain %s still has %d image(s); delete them first or use force'
                                    % (md.sd_uuid, len(images)), {'images': images})
            actions.append('remove')
            if not module.check_mode:
                storage.remove_domain(dom_dir, params['force'])
            dom_dir = None
    else:
        dom_dir = ensure_present(module, actions)
        if state in ('attached', 'active', 'detached'):
            if dom_dir is None:
                raise VirtnodeError('storage domain %s does not exist yet (check mode): cannot attach it' % params['sd_uuid'])
            wanted = {'attached': storage.STATUS_ATTACHED, 'active': storage.STATUS_ACTIVE, 'detached': None}[state]
            sp_uuid = _pool_uuid(params)
            set_membership(module, dom_dir, sp_uuid, wanted, actions)
    info = storage.domain_info(dom_dir) if dom_dir is not None else None
    result['domain'] = info
    result['changed'] = bool(actions)
    if module._diff:
        after = _summary(info) if not module.check_mode else ({'state': state} if actions else before)
        result['diff'] = {'before': before or {}, 'after': after or {}}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str'),
            server=dict(type='str'),
            type=dict(type='str', default='posixfs', choices=list(TYPE_NAMES)),
            domain_class=dict(type='str', default='Data', choices=['Data', 'Iso', 'Backup']),
            description=dict(type='str', default=''),
            version=dict(type='int', default=5, choices=[4, 5]),
            io_timeout=dict(type='int', default=10),
            block_size=dict(type='int', default=512, choices=[512, 4096]),
            alignment=dict(type='int', default=1048576, choices=[1048576, 2097152, 4194304, 8388608]),
            pool_uuid=dict(type='str'),
            force=dict(type='bool', default=False),
            state=dict(type='str', default='present', choices=['present', 'absent', 'attached', 'active', 'detached', 'imported']),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except VirtnodeError as err:
        module.fail_json(**err.to_dict())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
