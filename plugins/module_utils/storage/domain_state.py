# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A storage domain brought to the state the ``storage_domain`` module asks for.

Creating, importing and removing a domain, and changing its membership of a
pool (through ``pool.set_membership``, on the SPM); :func:`run_module` is the
module's work.
"""

from __future__ import annotations

import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm

# The module's domain types, as the metadata's TYPE spells them.
FILE_TYPE_NAMES = {'nfs': 'NFS', 'posixfs': 'POSIXFS', 'localfs': 'LOCALFS'}
TYPE_NAMES = dict(FILE_TYPE_NAMES, **block_domain.TYPE_NAMES)
STATES = ('present', 'absent', 'attached', 'active', 'detached', 'imported')
# The pool status each membership state asks for (None: not in the pool).
_MEMBERSHIP = {'attached': storage.STATUS_ATTACHED, 'active': storage.STATUS_ACTIVE, 'detached': None}


def _summary(info):
    """The part of a domain's description that the diff shows."""
    if info is None:
        return None
    return {key: info[key] for key in ('sd_uuid', 'role', 'pool_uuids')}


def _mount(params):
    """The mount point of the connected storage server the options name."""
    if not params['server']:
        raise VirtnodeError('server is required for state=%s' % params['state'], {'field': 'server'})
    mount = sd_layout.mount_point(params['server'])
    if not os.path.isdir(mount):
        raise VirtnodeError('storage server %s is not connected (no %s): connect it with virtnode.kvm.storage_server'
                            % (params['server'], mount), {'field': 'server'})
    return mount


def ensure_present(module, actions):
    """The domain's directory, creating the domain if needed (None in check mode before creation)."""
    params = module.params
    sd_uuid = params['sd_uuid']
    dom_dir = storage.find_domain(sd_uuid, required=False)
    if dom_dir is not None:
        repair_leases(module, dom_dir, actions)
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


def repair_leases(module, dom_dir, actions):
    """Initialise the lease areas of an existing domain that were provably never written.

    A crash between the creation of a domain's directory and the formatting
    of its leases leaves such a domain. Areas that cannot be read, or hold
    anything, are never touched (``storage.missing_leases`` raises).
    """
    md = storage.read_md(dom_dir)
    if not storage.uses_sanlock(md.sd_type):
        return
    sanlock_lock.require_sanlock(module)
    if storage.format_missing_leases(dom_dir, md, dry_run=module.check_mode):
        actions.append('init_leases')


def _chosen_domain(params, found):
    """The UUID of the domain to import among those ``found`` on the server."""
    if params['sd_uuid']:
        if params['sd_uuid'] not in found:
            raise VirtnodeError('storage domain %s not found on %s (found: %s)'
                                % (params['sd_uuid'], params['server'], ', '.join(found) or 'none'), {'found': sorted(found)})
        return params['sd_uuid']
    if len(found) == 1:
        return next(iter(found))
    raise VirtnodeError('%d storage domains found on %s (%s): choose one with sd_uuid'
                        % (len(found), params['server'], ', '.join(found) or 'none'), {'found': sorted(found)})


def import_domain(module, actions):
    """Take over a domain found on the server: initialise never-written leases, join the pool if one is named.

    Returns the domain's directory and the UUIDs of every domain found.
    """
    params = module.params
    found = storage.scan_domains(mount=_mount(params))
    dom_dir = found[_chosen_domain(params, found)]
    md = storage.read_md(dom_dir)
    if storage.uses_sanlock(md.sd_type):
        sanlock_lock.require_sanlock(module)

        # Only areas proven never written are formatted: an area that could not
        # be read may hold a live lockspace or SDM lease.
        def only_the_spm_formats():
            if params['pool_uuid']:
                spm.require_spm(params['pool_uuid'])
        if storage.format_missing_leases(dom_dir, md, dry_run=module.check_mode, before_format=only_the_spm_formats):
            actions.append('init_leases')
    if params['pool_uuid']:
        pool.set_membership(module, dom_dir, pool.required_uuid(params), storage.STATUS_ACTIVE, actions, params['force'])
    return dom_dir, sorted(found)


def remove(module, actions):
    """Remove the domain if it exists: refused while in a pool, or holding images unless ``force``."""
    params = module.params
    dom_dir = storage.find_domain(params['sd_uuid'], required=False)
    if dom_dir is None:
        return
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


def _check_uuids(params):
    if params['sd_uuid'] is not None:
        validate.uuid_str(params['sd_uuid'], 'sd_uuid')
    elif params['state'] != 'imported':
        raise VirtnodeError('sd_uuid is required for state=%s' % params['state'], {'field': 'sd_uuid'})
    if params['pool_uuid'] is not None:
        validate.uuid_str(params['pool_uuid'], 'pool_uuid')


def _block_format_leases(domain, md):  # pylint: disable=unused-argument
    """A new block domain's lockspace, SDM lease and xleases index (its areas were zeroed at creation)."""
    return storage.format_missing_leases(None, md)


def _block_present(module, domain, vg, actions):
    """An existing block domain as asked: LUNs added, never-written lease areas formatted."""
    params = module.params
    md = domain.read_md(vg)
    added = block_domain.missing_luns(domain, params['luns'] or [], vg)
    if added:
        if md.pool_uuids:
            spm.require_spm(md.pool_uuids[0])
        block_domain.lun_devices(added, domain.lvm, params['force'], vg_name=domain.sd_uuid)
        actions.append('extend')
        if not module.check_mode:
            block_domain.extend(domain, added, params['force'])
    elif not module.check_mode and block_domain.update_pv_mapping(domain):
        actions.append('update_pv_mapping')  # an extension stopped between vgextend and the metadata
    sanlock_lock.require_sanlock(module)
    # The special LVs a connected host needs active (VDSM activates them when it produces the domain).
    lvs = domain.lvm.lvs(domain.sd_uuid)
    if any(not lvs.get(name, {}).get('active') for name in domain.host_lvs(md)):
        actions.append('activate')
        if not module.check_mode:
            domain.activate_special(md)
    if module.check_mode:
        # Reading the areas needs the LVs active here; check mode activates nothing.
        active = os.path.exists(storage.area_path(None, md, 'ids'))
        missing = storage.missing_leases(None, md) if active else []
    else:
        missing = storage.format_missing_leases(None, md)
    if missing:
        actions.append('init_leases')


def run_block_module(module):
    """The work of the ``storage_domain`` module for iSCSI and FC domains."""
    params = module.params
    state = params['state']
    if not params['sd_uuid']:
        raise VirtnodeError('sd_uuid is required for block storage domains (lun_info names the domain on each LUN)',
                            {'field': 'sd_uuid'})
    actions = []
    result = {'actions': actions}
    domain = block_domain.BlockDomain(params['sd_uuid'])
    vg = domain.vg()
    if vg is not None and block_domain.DOMAIN_TAG not in vg['tags'] and block_domain.UNREADY_TAG not in vg['tags']:
        raise VirtnodeError('a volume group named %s exists and is not a storage domain: refusing to touch it'
                            % domain.sd_uuid, {'sd_uuid': domain.sd_uuid})
    ready = vg is not None and block_domain.DOMAIN_TAG in vg['tags']
    before_info = domain.info() if ready else None
    before = _summary(before_info)
    if state == 'absent':
        if vg is None:
            # Removed from another host while this one had its LVs active: the mappings go too.
            stale = lvm_cmd.stale_mappings(domain.sd_uuid)
            if stale or os.path.lexists(sd_layout.block_domain_dir(domain.sd_uuid)):
                actions.append('release')
                if not module.check_mode:
                    lvm_cmd.remove_mappings(stale)
        else:
            if ready:
                md = domain.read_md(vg)
                if md.pool_uuids:
                    raise VirtnodeError('storage domain %s is attached to pool %s: detach it first'
                                        % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
                volumes = sorted(domain.volumes())
                if volumes and not params['force']:
                    raise VirtnodeError('storage domain %s still has %d volume(s); delete them first or use force'
                                        % (md.sd_uuid, len(volumes)), {'volumes': volumes})
                storage.leave_lockspace(md.sd_uuid)
            actions.append('remove')
            if not module.check_mode:
                block_domain.remove(domain)
        if not module.check_mode and actions:
            storage.forget_block_domain_dir(domain.sd_uuid)
    elif ready:
        _block_present(module, domain, vg, actions)
    elif state in _MEMBERSHIP and module.check_mode:
        raise VirtnodeError('storage domain %s does not exist yet (check mode): cannot attach it' % domain.sd_uuid)
    elif state == 'imported':
        raise VirtnodeError('storage domain %s not found on this host\'s LUNs (connect its storage server; lun_info '
                            'shows which domain each LUN holds)' % domain.sd_uuid, {'sd_uuid': domain.sd_uuid})
    else:
        storage.check_io_timeout(params['io_timeout'])
        block_domain.check_new(domain.sd_uuid, TYPE_NAMES[params['type']], params['domain_class'], params['description'],
                               params['version'], params['luns'])
        block_domain.lun_devices(params['luns'], domain.lvm, params['force'], vg_name=domain.sd_uuid)
        sanlock_lock.require_sanlock(module)
        actions.append('create')
        if not module.check_mode:
            block_domain.create(domain.sd_uuid, params['luns'], TYPE_NAMES[params['type']], params['description'],
                                params['version'], params['io_timeout'], params['force'], lvm=domain.lvm,
                                format_leases=_block_format_leases)
    if state in _MEMBERSHIP:
        pool.set_membership(module, sd_layout.block_domain_dir(domain.sd_uuid), pool.required_uuid(params),
                            _MEMBERSHIP[state], actions)
    elif state == 'imported' and params['pool_uuid']:
        # As for file domains: an imported domain named with a pool joins it, taken over from another with force.
        pool.set_membership(module, sd_layout.block_domain_dir(domain.sd_uuid), pool.required_uuid(params),
                            storage.STATUS_ACTIVE, actions, params['force'])
    # The description read before is still true when nothing was (or, in check mode, would have been) done.
    if state == 'absent' or not (ready or (actions and not module.check_mode)):
        info = None
    elif actions and not module.check_mode:
        info = domain.info()
    else:
        info = before_info
    result['domain'] = info
    if state == 'imported':
        result['found'] = block_domain.list_domains(domain.lvm)
    result['changed'] = bool(actions)
    if module._diff:
        after = _summary(info) if not module.check_mode else ({'state': state} if actions else before)
        result['diff'] = {'before': before or {}, 'after': after or {}}
    return result


def run_module(module):
    """The work of the ``storage_domain`` module."""
    params = module.params
    if params.get('type') in block_domain.TYPE_NAMES:
        return run_block_module(module)
    if params.get('luns'):
        raise VirtnodeError('luns is for iscsi and fcp domains; type=%s domains live on server' % params['type'],
                            {'field': 'luns'})
    state = params['state']
    actions = []
    result = {'actions': actions}
    _check_uuids(params)
    before = None
    if params['sd_uuid']:
        existing = storage.find_domain(params['sd_uuid'], required=False)
        before = _summary(storage.domain_info(existing, images=False)) if existing else None

    dom_dir = None
    if state == 'imported':
        dom_dir, result['found'] = import_domain(module, actions)
    elif state == 'absent':
        remove(module, actions)
    else:
        dom_dir = ensure_present(module, actions)
        if state in _MEMBERSHIP:
            if dom_dir is None:
                raise VirtnodeError('storage domain %s does not exist yet (check mode): cannot attach it' % params['sd_uuid'])
            pool.set_membership(module, dom_dir, pool.required_uuid(params), _MEMBERSHIP[state], actions)
    info = storage.domain_info(dom_dir) if dom_dir is not None else None
    result['domain'] = info
    result['changed'] = bool(actions)
    if module._diff:
        after = _summary(info) if not module.check_mode else ({'state': state} if actions else before)
        result['diff'] = {'before': before or {}, 'after': after or {}}
    return result
