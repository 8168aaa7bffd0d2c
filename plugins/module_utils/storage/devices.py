# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LUNs a host sees, as VDSM's getDeviceList reports them.

A LUN is a dm-multipath device (``/dev/mapper/<WWID>``, VDSM's GUID), one
per LUN whatever the number of paths. Everything but LVM's view is read from
sysfs, with no process per device: the map and its paths
(``/sys/block/dm-N/slaves``), each path's SCSI address, vendor, product,
serial (VPD page 0x80) and state, and for iSCSI paths the session's target
and portal. LVM's view (which PV is in which VG, so which storage domain uses
the LUN) comes from one read-only ``pvs``.
"""

from __future__ import annotations

import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import scsi_sysfs
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd

_UUID_RE = re.compile(r'\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')
# WWIDs are what multipath names maps by: hex for NAA/EUI ids, printable text for the rest.
_GUID_RE = re.compile(r'\A[A-Za-z0-9_.:-]{1,128}\Z')


def _path(disk, sessions):
    path = {'name': disk['name'], 'lun': disk['lun'], 'state': 'active' if disk['state'] == 'running' else 'failed',
            'device_state': disk['state'], 'type': disk['transport']}
    session = next((s for s in sessions if s['id'] == disk['session']), None) if disk['session'] is not None else None
    if session:
        path.update(target=session['target'], address=session['address'], port=session['port'])
    return path


def multipath_devices(root='/'):
    """``{guid: lun}`` for every multipath map, with its paths (no LVM information)."""
    maps = scsi_sysfs.multipath_maps(root)
    sessions = scsi_sysfs.iscsi_sessions(root) if maps else []
    found = {}
    for found_map in maps:
        paths = [_path(disk, sessions) for disk in found_map['paths']]
        found[found_map['wwid']] = {
            'guid': found_map['wwid'], 'dm': found_map['dm'], 'device': '/dev/mapper/%s' % (found_map['name'] or found_map['wwid']),
            'capacity': found_map['size_bytes'],
            'logical_block_size': found_map['logical_block_size'], 'physical_block_size': found_map['physical_block_size'],
            'vendor_id': found_map['vendor'] or '', 'product_id': found_map['model'] or '', 'serial': found_map['serial'],
            'holders': found_map['holders'], 'paths': paths,
            'paths_active': sum(1 for p in paths if p['state'] == 'active'),
        }
    return found


def physical_volumes(devices, run=command.run_checked):
    """``{device: {'pv_uuid', 'vg_name', 'vg_uuid'}}`` of the PVs on ``devices``, from one read-only ``pvs``."""
    rows = lvm_cmd.Lvm(devices, run).report('pvs', 'pv_name,pv_uuid,vg_name,vg_uuid')
    return {row['pv_name']: {key: row[key] for key in ('pv_uuid', 'vg_name', 'vg_uuid')} for row in rows if row['pv_name']}


def validate_guids(guids):
    for guid in guids or []:
        if not isinstance(guid, str) or not _GUID_RE.match(guid):
            raise VirtnodeError('a LUN GUID is the WWID multipath names the device by (letters, digits, _ . : -), got %r'
                                % (guid,), {'field': 'guids'})
    return list(guids or [])


def lun_list(guids=None, root='/', run=command.run_checked):
    """The LUNs (optionally only ``guids``), each with whether LVM uses it and for which storage domain."""
    wanted = validate_guids(guids)
    devices = multipath_devices(root)
    pvs = physical_volumes([lun['device'] for lun in devices.values()], run) if devices else {}
    luns = []
    for guid, lun in sorted(devices.items()):
        if wanted and guid not in wanted:
            continue
        pv = pvs.get(lun['device']) or pvs.get('/dev/%s' % lun['dm'])
        vg_name = pv['vg_name'] if pv else ''
        lun.update(pv_uuid=pv['pv_uuid'] if pv else '', vg_name=vg_name, vg_uuid=pv['vg_uuid'] if pv else '',
                   # A block storage domain's VG is named after the domain's UUID (VDSM's layout).
                   sd_uuid=vg_name if _UUID_RE.match(vg_name) else '',
                   # In use: a PV, or anything built on the map (a partition, an LV, another map).
                   status='used' if pv or lun['holders'] else 'free')
        luns.append(lun)
    return {'luns': luns, 'missing': sorted(set(wanted) - set(devices))}


def run_module(module):
    """The work of the ``lun_info`` module."""
    return dict(lun_list(module.params['guids']), changed=False)
