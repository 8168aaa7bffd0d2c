# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A storage pool's members and this host's connection to it.

Which domains belong to a pool, and whether each is Active or Attached, is
written in the master domain's ``POOL_DOMAINS``; changing it is pool metadata
work, so it runs only on the pool's SPM (:func:`set_membership`). Connecting a
host (joining lockspaces, linking the pool directory) is in ``domain.py``;
:func:`run_module` is the work of the ``storage_pool`` module.
"""

from __future__ import annotations

import os
import socket

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import mailbox
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm


def describe(sp_uuid, master_md):
    """The pool as its master domain's metadata describes it."""
    return {'pool_uuid': sp_uuid, 'master_sd_uuid': master_md.sd_uuid, 'description': master_md.pool_description or '',
            'domains': storage.pool_domains(master_md), 'master_version': master_md.master_version,
            'spm_id': master_md.pool_spm_id, 'lver': master_md.pool_spm_lver}


def pool_info(sp_uuid):
    """The pool's description, or None when no master domain of it is found."""
    _master_dir, md = storage.find_master(sp_uuid, required=False)
    return None if md is None else describe(sp_uuid, md)


def required_uuid(params, key='pool_uuid'):
    """The validated pool UUID option, which the requested state needs."""
    if not params[key]:
        raise VirtnodeError('%s is required for state=%s' % (key, params['state']), {'field': key})
    return validate.uuid_str(params[key], key)


def _check_membership_change(md, master_md, sp_uuid, wanted, force):
    in_pool = sp_uuid in md.pool_uuids
    if wanted is not None and md.pool_uuids and not in_pool and not force:
        raise VirtnodeError('storage domain %s belongs to pool %s; use force to take it over'
                            % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
    if wanted is None and md.sd_uuid == master_md.sd_uuid:
        raise VirtnodeError('storage domain %s is the master of pool %s and cannot be detached' % (md.sd_uuid, sp_uuid))
    if wanted is not None and md.domain_class != 'Data' and md.sd_type == 'LOCALFS':
        raise VirtnodeError('only data domains can be attached')


def set_membership(module, dom_dir, sp_uuid, wanted, actions, force=False):
    """Make the domain in ``dom_dir`` Active or Attached in the pool, or detach it (``wanted`` None).

    Runs on the SPM only. Activating joins the domain's lockspace with this
    host's id in the pool. Returns True if anything changed (or would change).
    """
    master_dir = storage.find_master(sp_uuid)[0]
    # POOL_DOMAINS is read, decided on and written back: no other task of this host may
    # change the master's metadata in between (only the SPM writes it, so a host lock is enough).
    with domain_lock.dir_lock(master_dir):
        return _set_membership_locked(module, dom_dir, sp_uuid, wanted, actions, force)


def _set_membership_locked(module, dom_dir, sp_uuid, wanted, actions, force):
    md = storage.read_md(dom_dir)
    master_dir, master_md = storage.find_master(sp_uuid)
    current = storage.pool_domains(master_md).get(md.sd_uuid)
    in_pool = sp_uuid in md.pool_uuids
    _check_membership_change(md, master_md, sp_uuid, wanted, force)
    if current == wanted and (in_pool if wanted else not in_pool):
        return False
    spm.require_spm(sp_uuid)
    actions.append({storage.STATUS_ACTIVE: 'activate', storage.STATUS_ATTACHED: 'attach' if current is None else 'deactivate'}
                   .get(wanted, 'detach'))
    if module.check_mode:
        return True
    # A fenced SPM task: every write first asks whether this host still holds the SPM lease, and
    # losing the master lockspace kills this process (see spm.SpmTask), so an SPM that lost its
    # lease mid-way never writes pool metadata beside the new SPM.
    with spm.task(sp_uuid, 'domain %s' % actions[-1]) as spm_task:
        _write_membership(spm_task.check, md, dom_dir, master_dir, master_md, sp_uuid, wanted, force and not in_pool)
    return True


def _write_membership(check, md, dom_dir, master_dir, master_md, sp_uuid, wanted, taken_over):
    domains = storage.pool_domains(master_md)
    if wanted is None:
        domains.pop(md.sd_uuid, None)
        check()
        storage.update_md(dom_dir, {sdm.POOL_UUID: ''})
        storage.leave_lockspace(md.sd_uuid)
    else:
        changes = {sdm.POOL_UUID: sp_uuid}
        if taken_over and md.pool_uuids:
            # A domain taken over from another pool keeps none of that pool's keys.
            changes.update({sdm.ROLE: 'Regular', sdm.POOL_DOMAINS: None, sdm.POOL_SPM_ID: None, sdm.POOL_SPM_LVER: None,
                            sdm.MASTER_VERSION: None, sdm.POOL_DESCRIPTION: None})
        check()
        storage.update_md(dom_dir, changes)
        domains[md.sd_uuid] = wanted
        if wanted == storage.STATUS_ACTIVE:
            pool_state = storage.read_pool_state(sp_uuid) or {}
            storage.join_lockspace(dom_dir, storage.read_md(dom_dir), pool_state.get('host_id'))
    check()
    storage.update_md(master_dir, {sdm.POOL_DOMAINS: storage.encode_pool_domains(domains)})
    storage.refresh_links(sp_uuid, master_dir, storage.read_md(master_dir))


# ------------------------------------------------------------------ the storage_pool module

def configured_host_id():
    """The host id bootstrap wrote (``bootstrap_sanlock_host_id``), or None when it wrote none."""
    if not os.path.lexists(paths.HOST_ID_FILE):
        return None
    text = fileio.read_text(paths.HOST_ID_FILE, limit=64).strip()
    try:
        return validate.integer(text, 'the host id in %s' % paths.HOST_ID_FILE)
    except VirtnodeError as err:
        raise VirtnodeError('%s holds %s, not a host id: set host_id, or fix bootstrap_sanlock_host_id'
                            % (paths.HOST_ID_FILE, ascii(text)), {'field': 'host_id', 'path': paths.HOST_ID_FILE}) from err


def _host_id(params):
    host_id = params['host_id']
    if host_id is None:
        host_id = configured_host_id()
    if host_id is None:
        raise VirtnodeError('host_id is required for state=%s (or give the host one with the bootstrap role\'s '
                            'bootstrap_sanlock_host_id, written to %s)' % (params['state'], paths.HOST_ID_FILE),
                            {'field': 'host_id'})
    host_id = sanlock_lock.check_host_id(host_id)
    # sanlock takes ids up to 2000, but the SPM mailbox has one slot per host
    # id up to 250 (VDSM's limit): a host above it could never get a volume extended.
    if host_id > mailbox.MAX_HOST_ID:
        raise VirtnodeError('host id must be an integer from 1 to %d (the SPM mailbox has a slot for each), got %d'
                            % (mailbox.MAX_HOST_ID, host_id), {'field': 'host_id'})
    return host_id


def _disconnect(module, sp_uuid, actions):
    holder = spm.read_state(sp_uuid)
    if holder and holder.get('alive'):
        raise VirtnodeError('this host is the SPM of pool %s (holder pid %s): stop the SPM first' % (sp_uuid, holder['pid']))
    if storage.is_pool_linked(sp_uuid):
        actions.append('disconnect')
        if not module.check_mode:
            storage.disconnect_pool(sp_uuid)


def _create_if_missing(module, sp_uuid, host_id, actions):
    params = module.params
    _master_dir, master_md = storage.find_master(sp_uuid, required=False)
    if master_md is not None:
        return
    if params['state'] != 'present':
        raise VirtnodeError('no master domain of pool %s found on the connected storage servers' % sp_uuid)
    if not params['master_sd_uuid']:
        raise VirtnodeError('master_sd_uuid is required to create pool %s' % sp_uuid, {'field': 'master_sd_uuid'})
    validate.uuid_str(params['master_sd_uuid'], 'master_sd_uuid')
    dom_dir = storage.find_domain(params['master_sd_uuid'])
    actions.append('create')
    if not module.check_mode:
        storage.create_pool(sp_uuid, dom_dir, params['description'], host_id)


def _connect(module, sp_uuid, actions):
    """Create the pool if asked and connect this host; returns this host's id in the pool."""
    params = module.params
    sanlock_lock.require_sanlock(module)
    host_id = _host_id(params)
    hostname = params['hostname']
    if hostname is not None:
        validate.safe_name(hostname, 'hostname')
    _create_if_missing(module, sp_uuid, host_id, actions)
    if module.check_mode and actions:
        actions.append('connect')
        return host_id
    connected, _details = storage.pool_connection_state(sp_uuid, host_id, hostname or socket.gethostname())
    if not connected:
        actions.append('connect')
        if not module.check_mode:
            storage.connect_pool(sp_uuid, host_id, hostname)
    return host_id


def run_module(module):
    """The work of the ``storage_pool`` module: create a pool, connect this host to it or disconnect it."""
    params = module.params
    sp_uuid = validate.uuid_str(params['pool_uuid'], 'pool_uuid')
    actions = []
    state_before = storage.read_pool_state(sp_uuid)
    if params['state'] == 'disconnected':
        _disconnect(module, sp_uuid, actions)
        connected, host_id = False, None
    else:
        connected, host_id = True, _connect(module, sp_uuid, actions)
    result = {'changed': bool(actions), 'actions': actions, 'connected': connected, 'host_id': host_id,
              'pool': pool_info(sp_uuid)}
    if module._diff:
        result['diff'] = {'before': {'connected': state_before is not None,
                                     'host_id': (state_before or {}).get('host_id')},
                          'after': {'connected': connected, 'host_id': host_id}}
    return result
