# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What storage this host sees: its domains and, when asked, one pool and its SPM.

:func:`run_module` is the work of the ``storage_info`` module; it changes nothing.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool as storage_pool
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm


def domains_info(sd_filter=None, members=None, images=True):
    """The description of every domain found (one with ``sd_filter``; only pool ``members`` if given).

    A domain that cannot be read is listed with its ``error`` instead of failing the rest.
    """
    domains = []
    for sd_uuid, dom_dir in sorted(storage.scan_domains().items()):
        if (sd_filter and sd_uuid != sd_filter) or (members is not None and sd_uuid not in members):
            continue
        try:
            domains.append(storage.domain_info(dom_dir, images=images))
        except VirtnodeError as err:
            domains.append({'sd_uuid': sd_uuid, 'path': dom_dir, 'error': err.message})
    return domains


def run_module(module):
    """The work of the ``storage_info`` module."""
    params = module.params
    sd_filter = validate.uuid_str(params['sd_uuid'], 'sd_uuid') if params['sd_uuid'] else None
    sp_uuid = validate.uuid_str(params['pool_uuid'], 'pool_uuid') if params['pool_uuid'] else None
    pool = spm_status = members = None
    if sp_uuid:
        _master_dir, md = storage.find_master(sp_uuid)
        members = set(storage.pool_domains(md))
        pool = storage_pool.describe(sp_uuid, md)
        if sanlock_lock.HAS_SANLOCK:
            spm_status = spm.status(sp_uuid)
    domains = domains_info(sd_filter, members, params['images'])
    if sd_filter and not domains:
        raise VirtnodeError('storage domain %s not found under %s' % (sd_filter, sd_layout.MOUNT_ROOT), {'sd_uuid': sd_filter})
    return {'changed': False, 'domains': domains, 'pool': pool, 'spm': spm_status}
