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


def under(root, path):
    """``path`` (absolute) seen under ``root``."""
    return path if not root or root == '/' else os.path.join(root, path.lstrip('/'))


def _read(path, limit=4096):
    try:
        with open(path, 'rb') as stream:
            return stream.read(limit)
    except (OSError, ValueError):
        return None


def _text(path):
    data = _read(path)
    return data.decode('utf-8', 'replace').strip() if data is not None else None


def _list(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _int(path):
    text = _text(path)
    return int(text) if text and text.isdigit() else None


def scsi_disk(name, root='/'):
    """What sysfs says of block device ``name``'s SCSI device (None when it has none)."""
    link = os.path.join(under(root, '/sys/block'), name, 'device')
    if not os.path.exists(link):
        return None
    real = os.path.realpath(link)
    hctl = os.path.basename(real)
    parts = hctl.split(':')
    session = re.search(r'/session(\d+)/', real)
    return {'name': name, 'hctl': hctl, 'sys_device': link,
            'lun': int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else None,
            'state': _text(os.path.join(link, 'state')),
            'transport': 'fcp' if '/rport-' in real else 'iscsi' if session else 'other',
            'session': int(session.group(1)) if session else None}


def scsi_disk_names(root='/'):
    """Names of the block devices that are SCSI disks (have a SCSI device)."""
    block = under(root, '/sys/block')
    return [name for name in _list(block) if os.path.isdir(os.path.join(block, name, 'device', 'scsi_device'))]


def fc_hosts(root='/'):
    """The SCSI hosts of the Fibre Channel HBAs (``/sys/class/fc_host``)."""
    return _list(under(root, '/sys/class/fc_host'))


def iscsi_sessions(root='/'):
    """Every iSCSI session: ``[{'id', 'name', 'target', 'address', 'port', 'iface', 'state', 'disks'}]``.

    ``disks`` are the SCSI disks the session carries (:func:`scsi_disk` entries).
    """
    base = under(root, '/sys/class/iscsi_session')
    connections = under(root, '/sys/class/iscsi_connection')
    names = _list(base)
    disks = [scsi_disk(name, root) for name in _list(under(root, '/sys/block')) if names]
    sessions = []
    for name in names:
        number = name[len('session'):]
        # connection<session number>:<connection id>
        connection = next((os.path.join(connections, c) for c in _list(connections)
                           if c.startswith('connection%s:' % number)), None)
        address = port = None
        if connection:
            address = _text(os.path.join(connection, 'persistent_address')) or _text(os.path.join(connection, 'address'))
            port = _int(os.path.join(connection, 'persistent_port')) or _int(os.path.join(connection, 'port'))
        sessions.append({
            'id': int(number) if number.isdigit() else None, 'name': name,
            'target': _text(os.path.join(base, name, 'targetname')),
            'address': address, 'port': port,
            'iface': _text(os.path.join(base, name, 'ifacename')),
            'state': _text(os.path.join(base, name, 'state')),
            'disks': [d for d in disks if d and str(d['session']) == number],
        })
    return sessions


def _serial(sys_device):
    """The unit serial number (VPD page 0x80: 4 header bytes, then the serial), '' when there is none."""
    page = _read(os.path.join(sys_device, 'vpd_pg80'))
    if not page or len(page) < 4:
        return ''
    return page[4:4 + page[3]].decode('ascii', 'replace').strip()


def _not_scsi(name):
    return {'name': name, 'hctl': None, 'sys_device': None, 'lun': None, 'state': None, 'transport': 'other',
            'session': None}


def multipath_maps(root='/'):
    """Every dm-multipath map, sorted by WWID, with its paths (:func:`scsi_disk` entries)."""
    block = under(root, '/sys/block')
    maps = []
    for dm in _list(block):
        sysdir = os.path.join(block, dm)
        uuid = _text(os.path.join(sysdir, 'dm', 'uuid')) or ''
        if not uuid.startswith('mpath-'):
            continue
        paths = [scsi_disk(slave, root) or _not_scsi(slave) for slave in _list(os.path.join(sysdir, 'slaves'))]
        first = next((p['sys_device'] for p in paths if p['sys_device']), None)
        sectors = _int(os.path.join(sysdir, 'size'))
        maps.append({
            'wwid': uuid[len('mpath-'):], 'dm': dm, 'name': _text(os.path.join(sysdir, 'dm', 'name')),
            'size_bytes': None if sectors is None else sectors * 512,
            'logical_block_size': _int(os.path.join(sysdir, 'queue', 'logical_block_size')),
            'physical_block_size': _int(os.path.join(sysdir, 'queue', 'physical_block_size')),
            'vendor': _text(os.path.join(first, 'vendor')) if first else None,
            'model': _text(os.path.join(first, 'model')) if first else None,
            'serial': _serial(first) if first else '',
            'holders': _list(os.path.join(sysdir, 'holders')),
            'paths': paths,
        })
    return sorted(maps, key=lambda m: m['wwid'])
