# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of iSCSI sessions, SCSI disks and dm-multipath maps in sysfs.

host_info (facts), storage_server (which sessions exist) and lun_info (the
LUNs) all read these; no process is started (forks are slow on some hosts).
Every function takes ``root``, under which ``/sys`` is read (tests give a
fake tree).
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common.readers import host_path, list_dir, read_int, read_optional_text


def scsi_disk(name, root='/'):
    """What sysfs says of block device ``name``'s SCSI device (None when it has none)."""
    link = os.path.join(host_path(root, '/sys/block'), name, 'device')
    if not os.path.exists(link):
        return None
    real = os.path.realpath(link)
    hctl = os.path.basename(real)
    parts = hctl.split(':')
    session = re.search(r'/session(\d+)/', real)
    return {'name': name, 'hctl': hctl, 'sys_device': link,
            'lun': int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else None,
            'state': read_optional_text(os.path.join(link, 'state')),
            'transport': 'fcp' if '/rport-' in real else 'iscsi' if session else 'other',
            'session': int(session.group(1)) if session else None}


def scsi_disk_names(root='/'):
    """Names of the block devices that are SCSI disks (have a SCSI device)."""
    block = host_path(root, '/sys/block')
    return [name for name in list_dir(block) if os.path.isdir(os.path.join(block, name, 'device', 'scsi_device'))]


def fc_hosts(root='/'):
    """The SCSI hosts of the Fibre Channel HBAs (``/sys/class/fc_host``)."""
    return list_dir(host_path(root, '/sys/class/fc_host'))


def iscsi_sessions(root='/'):
    """Every iSCSI session: ``[{'id', 'name', 'target', 'address', 'port', 'iface', 'state', 'disks'}]``.

    ``disks`` are the SCSI disks the session carries (:func:`scsi_disk` entries).
    """
    base = host_path(root, '/sys/class/iscsi_session')
    connections = host_path(root, '/sys/class/iscsi_connection')
    names = list_dir(base)
    disks = [scsi_disk(name, root) for name in list_dir(host_path(root, '/sys/block')) if names]
    sessions = []
    for name in names:
        number = name[len('session'):]
        # connection<session number>:<connection id>
        connection = next((os.path.join(connections, c) for c in list_dir(connections)
                           if c.startswith('connection%s:' % number)), None)
        address = port = None
        if connection:
            address = read_optional_text(os.path.join(connection, 'persistent_address')) or read_optional_text(os.path.join(connection, 'address'))
            port = read_int(os.path.join(connection, 'persistent_port')) or read_int(os.path.join(connection, 'port'))
        sessions.append({
            'id': int(number) if number.isdigit() else None, 'name': name,
            'target': read_optional_text(os.path.join(base, name, 'targetname')),
            'address': address, 'port': port,
            'iface': read_optional_text(os.path.join(base, name, 'ifacename')),
            'state': read_optional_text(os.path.join(base, name, 'state')),
            'disks': [d for d in disks if d and str(d['session']) == number],
        })
    return sessions


def _serial(sys_device):
    """The unit serial number (VPD page 0x80: 4 header bytes, then the serial), '' when there is none."""
    try:
        with open(os.path.join(sys_device, 'vpd_pg80'), 'rb') as stream:
            page = stream.read(260)  # a 4-byte header and at most 255 bytes of serial
    except OSError:
        return ''
    if not page or len(page) < 4:
        return ''
    return page[4:4 + page[3]].decode('ascii', 'replace').strip()


def _not_scsi(name):
    return {'name': name, 'hctl': None, 'sys_device': None, 'lun': None, 'state': None, 'transport': 'other',
            'session': None}


def multipath_maps(root='/'):
    """Every dm-multipath map, sorted by WWID, with its paths (:func:`scsi_disk` entries)."""
    block = host_path(root, '/sys/block')
    maps = []
    for dm in list_dir(block):
        sysdir = os.path.join(block, dm)
        uuid = read_optional_text(os.path.join(sysdir, 'dm', 'uuid')) or ''
        if not uuid.startswith('mpath-'):
            continue
        paths = [scsi_disk(slave, root) or _not_scsi(slave) for slave in list_dir(os.path.join(sysdir, 'slaves'))]
        first = next((p['sys_device'] for p in paths if p['sys_device']), None)
        sectors = read_int(os.path.join(sysdir, 'size'))
        maps.append({
            'wwid': uuid[len('mpath-'):], 'dm': dm, 'name': read_optional_text(os.path.join(sysdir, 'dm', 'name')),
            'size_bytes': None if sectors is None else sectors * 512,
            'logical_block_size': read_int(os.path.join(sysdir, 'queue', 'logical_block_size')),
            'physical_block_size': read_int(os.path.join(sysdir, 'queue', 'physical_block_size')),
            'vendor': read_optional_text(os.path.join(first, 'vendor')) if first else None,
            'model': read_optional_text(os.path.join(first, 'model')) if first else None,
            'serial': _serial(first) if first else '',
            'holders': list_dir(os.path.join(sysdir, 'holders')),
            'paths': paths,
        })
    return sorted(maps, key=lambda m: m['wwid'])
