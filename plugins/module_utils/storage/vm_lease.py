# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM leases on a storage domain's xleases volume (VDSM's ``Lease.create`` / ``Lease.delete``).

A VM lease is a sanlock resource named by the lease id, in the domain's
lockspace, at the offset the xleases index gives it. libvirt's sanlock lock
manager acquires it when a VM with the matching ``<lease>`` starts and holds
it while QEMU runs, so a second copy of the VM on another host cannot start,
and after a host dies the lease is free only once sanlock knows that host's
copy cannot write any more. Adding and removing leases is the SPM's job (one
writer of the index per pool); any host may look a lease up.
"""

from __future__ import annotations

import contextlib

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import xlease


def xleases_of(dom_dir, md):
    """The path of the domain's xleases volume; refused for domains without one (before format 4, local)."""
    if md.version < sd_layout.XLEASES_MIN_VERSION or md.sd_type == 'LOCALFS':
        raise VirtnodeError('storage domain %s (format %d, %s) has no xleases volume: VM leases need a shared domain '
                            'of format 4 or later' % (md.sd_uuid, md.version, md.sd_type), {'sd_uuid': md.sd_uuid})
    return storage.area_path(dom_dir, md, 'xleases')


def lease_view(md, lease_id, path, offset):
    """The lease as the vm module's ``lease`` option takes it."""
    if offset is None:
        return None
    return {'sd_id': md.sd_uuid, 'lease_id': lease_id, 'path': path, 'offset': offset}


def _require_spm(md):
    if not md.pool_uuids:
        raise VirtnodeError('storage domain %s is not attached to a pool; VM leases are changed by the pool SPM'
                            % md.sd_uuid, {'sd_uuid': md.sd_uuid})
    spm.require_spm(md.pool_uuids[0])


def run_module(module):
    """The work of the ``vm_lease`` module."""
    params = module.params
    sd_uuid = validate.uuid_str(params['sd_uuid'], 'sd_uuid')
    lease_id = validate.uuid_str(params['lease_id'], 'lease_id')
    dom_dir = storage.find_domain(sd_uuid)
    md = storage.read_md(dom_dir)
    path = xleases_of(dom_dir, md)
    before = xlease.find_lease(path, md.sd_uuid, lease_id, md.alignment)
    wanted = params['state'] == 'present'
    if (before is not None) == wanted:
        return {'changed': False, 'actions': [], 'lease': lease_view(md, lease_id, path, before)}
    _require_spm(md)
    with contextlib.ExitStack() as stack:
        stack.enter_context(domain_lock.dir_lock(dom_dir))
        if not module.check_mode:
            task = stack.enter_context(spm.task(md.pool_uuids[0], 'VM lease %s %s' % ('add' if wanted else 'remove',
                                                                                      lease_id)))
            task.check()
        if wanted:
            changed, offset = xlease.add_lease(
                path, md.sd_uuid, lease_id, md.alignment, check_mode=module.check_mode,
                write_resource=lambda at: sanlock_lock.write_resource(md.sd_uuid, lease_id, path, at, md.alignment,
                                                                      md.block_size))
        else:
            changed, offset = xlease.remove_lease(
                path, md.sd_uuid, lease_id, md.alignment, check_mode=module.check_mode,
                clear_resource=lambda at: _clear_resource(module, path, at, md))
    after = offset if wanted else None
    return {'changed': changed, 'actions': ['%s lease %s at %d' % ('add' if wanted else 'remove', lease_id, offset)],
            'lease': lease_view(md, lease_id, path, after)}


def _clear_resource(module, path, offset, md):
    """Overwrite a removed lease's sanlock resource with a nameless one, as VDSM does; the index no longer names it,
    so a failure is only a warning."""
    try:
        sanlock_lock.write_resource('', '', path, offset, md.alignment, md.block_size)
    except VirtnodeError as err:
        module.warn('the removed lease at %s:%d keeps its old sanlock resource: %s' % (path, offset, err.message))
