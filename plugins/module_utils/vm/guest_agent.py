# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the QEMU guest agent inside a VM knows, through libvirt.

VDSM reads its guest agent over a virtio-serial port and reports the
guest's OS, host name, addresses, users and file systems with the VM's
stats. libvirt speaks to qemu-guest-agent on the same kind of port and
hands the answers out as typed parameters (``virDomainGetGuestInfo``);
this reads them into plain dicts. Nothing here changes the guest.
"""

from __future__ import annotations

import time

from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml

# The channel's state attribute as libvirt reports it on a running domain.
CONNECTED = 'connected'
DISCONNECTED = 'disconnected'
NONE = 'none'

OS_KEYS = ('id', 'name', 'pretty-name', 'version', 'version-id', 'kernel-release', 'kernel-version', 'machine',
           'variant', 'variant-id')


def channel_state(xml_text):
    """``connected`` when the agent answers on its port, ``disconnected`` when the port exists but nothing listens
    in the guest (or the VM is down), ``none`` without the port."""
    channel = domxml.guest_agent_channel(domxml.parse_xml(xml_text))
    if channel is None:
        return NONE
    target = channel.find('target')
    return CONNECTED if target.get('state') == CONNECTED else DISCONNECTED


def is_connected(xml_text):
    return channel_state(xml_text) == CONNECTED


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _indexed(params, prefix):
    """The ``prefix.N.`` groups of typed parameters as a list of dicts with the prefix taken off."""
    count = _int(params.get('%s.count' % prefix)) or 0
    items = []
    for index in range(count):
        head = '%s.%d.' % (prefix, index)
        items.append(dict((key[len(head):], value) for key, value in params.items() if key.startswith(head)))
    return items


def _filesystem(item):
    used, total = _int(item.get('used-bytes')), _int(item.get('total-bytes'))
    return {'mountpoint': item.get('mountpoint'), 'name': item.get('name'), 'type': item.get('fstype'),
            'used_bytes': used, 'total_bytes': total,
            'disks': [disk.get('alias') or disk.get('serial') or disk.get('device')
                      for disk in _indexed(item, 'disk')]}


def _interface(item):
    return {'name': item.get('name'), 'hwaddr': item.get('hwaddr'),
            'addresses': [{'type': addr.get('type'), 'address': addr.get('addr'), 'prefix': _int(addr.get('prefix'))}
                          for addr in _indexed(item, 'addr')]}


def parse_guest_info(params):
    """``virDomainGetGuestInfo``'s flat typed parameters (``os.id``, ``fs.0.mountpoint`` ...) as nested data in
    this collection's names."""
    params = params or {}
    offset = _int(params.get('timezone.offset'))
    return {
        'os': dict((key.replace('-', '_'), params.get('os.' + key)) for key in OS_KEYS),
        'hostname': params.get('hostname'),
        'timezone': {'name': params.get('timezone.name'), 'offset_seconds': offset}
        if 'timezone.name' in params or offset is not None else None,
        'users': [{'name': user.get('name'), 'domain': user.get('domain'),
                   'login_time_ms': _int(user.get('login-time'))} for user in _indexed(params, 'user')],
        'filesystems': [_filesystem(item) for item in _indexed(params, 'fs')],
        'interfaces': [_interface(item) for item in _indexed(params, 'if')],
    }


def guest_info(dom):
    """What the agent of a running domain reports, with ``agent`` (its channel state) and ``error`` (why nothing
    came, or None) and ``answered_at`` (when it answered). Never raises for a guest-side failure: a VM's report must not fail for its agent."""
    state = channel_state(dom.XMLDesc(0))
    report = {'agent': state, 'error': None, 'answered_at': None}
    if state != CONNECTED:
        report['error'] = 'the VM has no guest agent port' if state == NONE else 'the guest agent is not connected'
        return report
    try:
        # Types 0: everything this libvirt and the agent support.
        params = dom.guestInfo(0, 0)
    except libvirt_conn.LibvirtError as exc:
        report['error'] = libvirt_conn.error_text(exc)
        return report
    report.update(parse_guest_info(params))
    report['answered_at'] = time.time()
    return report
