# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's numeric constants, looked up by name in one place.

The values are libvirt's stable ABI. They are read from the bindings when
they are installed (so a newer binding wins), and from the table below when
they are not: a module must import, and its unit tests run, without
python3-libvirt. Tests that fake the bindings pass their fake as
``binding``.
"""

from __future__ import annotations

try:
    import libvirt as _libvirt
except ImportError:
    _libvirt = None

VALUES = {
    # domain XML, start, save, undefine, devices, metadata
    'VIR_DOMAIN_NONE': 0,
    'VIR_DOMAIN_XML_SECURE': 1,
    'VIR_DOMAIN_XML_INACTIVE': 2,
    'VIR_DOMAIN_START_PAUSED': 1,
    'VIR_DOMAIN_SAVE_PAUSED': 4,
    'VIR_DOMAIN_AFFECT_LIVE': 1,
    'VIR_DOMAIN_AFFECT_CONFIG': 2,
    'VIR_DOMAIN_UNDEFINE_MANAGED_SAVE': 1,
    'VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA': 2,
    'VIR_DOMAIN_UNDEFINE_NVRAM': 4,
    'VIR_DOMAIN_DEVICE_MODIFY_FORCE': 4,
    'VIR_DOMAIN_METADATA_ELEMENT': 2,
    # migration
    'VIR_MIGRATE_LIVE': 1,
    'VIR_MIGRATE_PEER2PEER': 2,
    'VIR_MIGRATE_PERSIST_DEST': 8,
    'VIR_MIGRATE_UNDEFINE_SOURCE': 16,
    'VIR_MIGRATE_UNSAFE': 512,
    'VIR_MIGRATE_COMPRESSED': 2048,
    'VIR_MIGRATE_ABORT_ON_ERROR': 4096,
    'VIR_MIGRATE_AUTO_CONVERGE': 8192,
    'VIR_MIGRATE_TLS': 65536,
    'VIR_MIGRATE_PARAM_BANDWIDTH': 'bandwidth',
    'VIR_MIGRATE_PARAM_URI': 'migrate_uri',
    # snapshots and block jobs
    'VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA': 4,
    'VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY': 16,
    'VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT': 32,
    'VIR_DOMAIN_SNAPSHOT_CREATE_LIVE': 256,
    'VIR_DOMAIN_BLOCK_COMMIT_ACTIVE': 4,
    'VIR_DOMAIN_BLOCK_COMMIT_RELATIVE': 8,
    'VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT': 2,
    # bulk statistics groups
    'VIR_DOMAIN_STATS_STATE': 1,
    'VIR_DOMAIN_STATS_CPU_TOTAL': 2,
    'VIR_DOMAIN_STATS_BALLOON': 4,
    'VIR_DOMAIN_STATS_VCPU': 8,
    'VIR_DOMAIN_STATS_INTERFACE': 16,
    'VIR_DOMAIN_STATS_BLOCK': 32,
    # bulk statistics flags: NOWAIT skips what needs a domain job another call holds
    'VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT': 1 << 29,
    # virDomainControlState: whether a call holds the domain's job (controlInfo takes no job itself)
    'VIR_DOMAIN_CONTROL_OK': 0,
    'VIR_DOMAIN_CONTROL_JOB': 1,
    'VIR_DOMAIN_CONTROL_OCCUPIED': 2,
    'VIR_DOMAIN_CONTROL_ERROR': 3,
    # events and listings
    'VIR_DOMAIN_EVENT_ID_LIFECYCLE': 0,
    'VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON': 6,
    'VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED': 15,
    'VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2': 16,
    'VIR_DOMAIN_EVENT_ID_DEVICE_ADDED': 19,
    'VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION': 20,
    'VIR_DOMAIN_EVENT_ID_JOB_COMPLETED': 21,
    'VIR_DOMAIN_EVENT_ID_METADATA_CHANGE': 23,
    'VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD': 24,
    'VIR_CONNECT_LIST_DOMAINS_ACTIVE': 1,
    'VIR_CONNECT_LIST_DOMAINS_TRANSIENT': 8,
    # guest addresses (virDomainInterfaceAddressesSource)
    'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE': 0,
    'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT': 1,
    'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP': 2,
    # domain states and lifecycle events (virDomainState, virDomainEventType)
    'VIR_DOMAIN_PAUSED': 3,
    'VIR_DOMAIN_PAUSED_IOERROR': 5,
    'VIR_DOMAIN_DISK_ERROR_NONE': 0,
    'VIR_DOMAIN_DISK_ERROR_NO_SPACE': 2,
    'VIR_DOMAIN_EVENT_STARTED': 2,
    'VIR_DOMAIN_EVENT_SUSPENDED': 3,
    'VIR_DOMAIN_EVENT_RESUMED': 4,
    'VIR_DOMAIN_EVENT_RESUMED_MIGRATED': 1,
    'VIR_DOMAIN_EVENT_STOPPED': 5,
    # errors
    'VIR_ERR_NO_DOMAIN': 42,
    'VIR_ERR_RESOURCE_BUSY': 87,
}

_MISSING = object()


def value(name, binding=_MISSING):
    """The constant ``name``: from ``binding`` (default: the installed bindings), else libvirt's value.

    ``binding=None`` means "no bindings" and gives the table's value. A name
    the table does not know and the binding lacks raises KeyError: a typo
    must not turn into a silent 0.
    """
    if binding is _MISSING:
        binding = _libvirt
    if binding is not None:
        found = getattr(binding, name, _MISSING)
        if found is not _MISSING:
            return found
    return VALUES[name]


def mask(*names, binding=_MISSING):
    """The bitwise or of the named constants."""
    result = 0
    for name in names:
        result |= value(name, binding)
    return result
