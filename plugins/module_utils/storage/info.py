# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What storage this host sees: its domains and, when asked, one pool and its SPM.

The node agent's storage monitor state (VDSM's repoStats) is added when the
agent runs: reading it costs no storage I/O here.

:func:`run_module` is the work of the ``storage_info`` module; it changes nothing.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common import deadline
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool as storage_pool
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm


# Seconds one domain's description (metadata, space, images) may take on storage that stopped answering.
DOMAIN_INFO_TIMEOUT = 30


def domains_info(sd_filter=None, members=None, images=True, unreachable=None):
    """The description of every domain found (one with ``sd_filter``; only pool ``members`` if given).

    A domain that cannot be read, or not within DOMAIN_INFO_TIMEOUT, is listed
    with its ``error`` instead of failing the rest. Mounts that did not answer
    go to ``unreachable`` (see ``storage.domain_dirs``).
    """
    domains = []
    for sd_uuid, dom_dir in sorted(storage.scan_domains(unreachable=unreachable).items()):
        if (sd_filter and sd_uuid != sd_filter) or (members is not None and sd_uuid not in members):
            continue
        try:
            domains.append(deadline.call_within(
                DOMAIN_INFO_TIMEOUT, lambda dom_dir=dom_dir: domain_info(dom_dir, images),
                'no answer within %ds describing storage domain %s (storage server not responding?)'
                % (DOMAIN_INFO_TIMEOUT, sd_uuid), name='describe %s' % sd_uuid))
        except (VirtnodeError, OSError) as err:
            domains.append({'sd_uuid': sd_uuid, 'path': dom_dir,
                            'error': err.message if isinstance(err, VirtnodeError) else '%s: %s' % (dom_dir, err)})
    return sorted(domains, key=lambda domain: domain['sd_uuid'])


def domain_info(dom_dir, images):
    """:func:`storage.domain_info`, a block domain's images described as a file domain's are (volume chains)."""
    info = storage.domain_info(dom_dir, images=images)
    if not storage.block_domain_of(dom_dir):
        return info
    if not images:
        info.pop('images', None)
        return info
    store = block_volumes.for_domain(dom_dir, sdm.DomainMetadata.from_dict(info['metadata']))
    described = []
    for image in info['images']:
        try:
            described.append({'image_uuid': image['image_uuid'], 'volumes': store.chain_info(image['image_uuid'])})
        except VirtnodeError as err:  # e.g. the metadata LV is not active here: the image is still listed
            described.append(dict(image, error=err.message))
    info['images'] = described
    return info


# What each repoStats entry holds, from the agent's storage monitor.
REPO_STATS_KEYS = ('valid', 'code', 'delay', 'last_check', 'error', 'acquired', 'host_id', 'version', 'role',
                   'free_bytes', 'total_bytes')


def repo_stats(answer, sd_filter=None, members=None):
    """``{sd_uuid: {valid, code, delay, last_check, acquired, version, free_bytes, ...}}`` from the
    agent's ``storage`` answer (``{}`` without one), limited as :func:`domains_info` is."""
    if not answer:
        return {}
    stats = {}
    for sd_uuid, status in sorted((answer['data'].get('domains') or {}).items()):
        if (sd_filter and sd_uuid != sd_filter) or (members is not None and sd_uuid not in members):
            continue
        stats[sd_uuid] = dict((key, status.get(key)) for key in REPO_STATS_KEYS)
    return stats


def run_module(module, query_agent=None):
    """The work of the ``storage_info`` module; ``query_agent(kind)`` is the node agent's answer (None
    when the agent does not run)."""
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
    unreachable = {}
    domains = domains_info(sd_filter, members, params['images'], unreachable)
    if sd_filter and not domains and unreachable:
        raise storage.unreachable_error('storage domain %s not found' % sd_filter, unreachable, {'sd_uuid': sd_filter})
    if sd_filter and not domains:
        raise VirtnodeError('storage domain %s not found under %s' % (sd_filter, sd_layout.MOUNT_ROOT), {'sd_uuid': sd_filter})
    monitored = query_agent('storage') if query_agent and params['repo_stats'] else None
    return {'changed': False, 'domains': domains, 'pool': pool, 'spm': spm_status,
            'unreachable': [{'mount_point': mnt, 'error': unreachable[mnt]} for mnt in sorted(unreachable)],
            'repo_stats': repo_stats(monitored, sd_filter, members),
            'repo_stats_age': monitored['age'] if monitored else None}
