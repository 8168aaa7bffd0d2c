# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding a VM's libvirt domain by name (and UUID), and whether it runs.

Kept apart from :mod:`lifecycle` so that modules which only read (vm_info)
find a domain without shipping the code that changes one.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats


def error_code(exc):
    """libvirt's error code of ``exc``, or None for other exceptions."""
    getter = getattr(exc, 'get_error_code', None)
    return getter() if callable(getter) else None


def is_no_domain(exc):
    """True when ``exc`` says the domain does not exist (any more)."""
    return error_code(exc) == constants.value('VIR_ERR_NO_DOMAIN')


def lookup(conn, name, vm_uuid=None):
    """The domain called ``name`` (checked against ``vm_uuid``), or None."""
    try:
        dom = conn.lookupByName(name)
    except libvirt_conn.LibvirtError as exc:
        if is_no_domain(exc):
            dom = None
        else:
            raise
    if dom is not None and vm_uuid and dom.UUIDString() != vm_uuid:
        raise VirtnodeError('a domain named %s exists with UUID %s, not %s' % (name, dom.UUIDString(), vm_uuid),
                            {'name': name})
    if dom is None and vm_uuid:
        try:
            other = conn.lookupByUUIDString(vm_uuid)
        except libvirt_conn.LibvirtError:
            other = None
        if other is not None:
            raise VirtnodeError('UUID %s belongs to domain %s, not %s' % (vm_uuid, other.name(), name), {'name': name})
    return dom


def is_active(dom):
    return dom is not None and dom.state()[0] not in (vm_stats.SHUTOFF, vm_stats.CRASHED)
