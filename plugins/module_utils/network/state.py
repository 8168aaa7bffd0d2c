# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's network state as the rest of this package sees it.

:func:`read_state` turns what ``ip -j`` reports into
``{'links': {name: record}, 'routes': {4: [...], 6: [...]}}``; only static,
global addresses and the default routes this collection could have set
count. A *snapshot* is the full state of some devices, kept to restore them;
a *view* is the compact form returned to the user.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.virtnode.kvm.plugins.module_utils.network.model import CREATABLE_KINDS


def _norm_addr(local, prefixlen):
    return str(ipaddress.ip_interface('%s/%s' % (local, prefixlen)))


def managed_address(info):
    """Static, global addresses only: link-local and DHCP/SLAAC (dynamic) addresses are the kernel's."""
    if info.get('family') not in ('inet', 'inet6') or 'local' not in info:
        return False
    if info.get('dynamic') or info.get('scope') in ('link', 'host'):
        return False
    return True


def read_state(ip, dhcp=None):
    """Current kernel state: ``{'links': {name: record}, 'routes': {4: [...], 6: [...]}}``."""
    links = {}
    for link in ip.links():
        info = link.get('linkinfo') or {}
        kind = info.get('info_kind')
        record = {
            'present': True,
            'kind': kind if kind in CREATABLE_KINDS else 'nic',
            'type': kind or link.get('link_type'),
            'master': link.get('master'),
            'mtu': link.get('mtu'),
            'up': 'UP' in (link.get('flags') or []),
            'mac': link.get('address'),
            'addresses': [],
            'dynamic_addresses': [],
        }
        if kind == 'vlan':
            data = info.get('info_data') or {}
            record['vlan'] = {'parent': link.get('link'), 'id': data.get('id')}
        if kind == 'bond':
            data = dict(info.get('info_data') or {})
            record['bond'] = {'mode': data.pop('mode', None), 'options': _bond_options(data)}
        if dhcp is not None:
            record['dhcp'] = dhcp.running(link['ifname'])
        links[link['ifname']] = record
    for entry in ip.addresses():
        record = links.get(entry.get('ifname'))
        if record is None:
            continue
        for info in entry.get('addr_info') or []:
            if managed_address(info):
                record['addresses'].append(_norm_addr(info['local'], info['prefixlen']))
            elif info.get('dynamic') and info.get('scope') == 'global':
                record['dynamic_addresses'].append(_norm_addr(info['local'], info['prefixlen']))
        record['addresses'].sort()
    routes = {}
    for family in (4, 6):
        routes[family] = [_route(family, r) for r in ip.routes(family)
                          if r.get('dst') == 'default' and r.get('protocol') not in ('ra', 'dhcp', 'kernel') and r.get('gateway')]
    return {'links': links, 'routes': routes}


def _bond_options(data):
    """Bond options as ``ip link ... type bond`` takes them: a list (arp_ip_target) is comma separated."""
    options = {}
    for key, value in data.items():
        if value is None:
            continue  # ip -j prints null for some unset options (arp_validate without ARP monitoring)
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            options[str(key)] = ','.join(str(v) for v in value)
        elif not isinstance(value, (list, dict)):
            options[str(key)] = str(value)
    return options


def _route(family, raw):
    route = {'family': family, 'gateway': raw.get('gateway'), 'dev': raw.get('dev')}
    if raw.get('metric') and not (family == 6 and raw.get('metric') == 1024):
        route['metric'] = raw['metric']
    return route


def route_text(route):
    return 'via %s dev %s' % (route['gateway'], route['dev']) + (' metric %s' % route['metric'] if route.get('metric') else '')


def snapshot_state(state, names, bond_options=None):
    """The full state of ``names`` (absent ones included) and all default routes.

    ``bond_options`` names, per bond, the options whose current values are kept
    (those the configurations involved set): a bond re-created on rollback
    gets them back. Other options are left to the kernel's defaults.
    """
    devices = {}
    for name in sorted(names):
        link = state['links'].get(name)
        if link is None:
            devices[name] = {'present': False}
            continue
        record = {'present': True, 'kind': link['kind'], 'master': link['master'], 'mtu': link['mtu'],
                  'up': link['up'], 'addresses': list(link['addresses'])}
        if 'dhcp' in link:
            record['dhcp'] = list(link['dhcp'])
        if link['kind'] == 'vlan':
            record['vlan'] = dict(link['vlan'])
        if link['kind'] == 'bond':
            current = link['bond']['options']
            record['bond'] = {'mode': link['bond']['mode'],
                              # An empty value (no arp_ip_target) cannot be given back to ip.
                              'options': dict((k, current[k]) for k in sorted((bond_options or {}).get(name) or ())
                                              if current.get(k) not in (None, ''))}
        devices[name] = record
    routes = dict((family, {'scope': 'all', 'routes': [dict(r) for r in state['routes'][family]]}) for family in (4, 6))
    return {'devices': devices, 'routes': routes}


def device_view(state, names):
    """A compact, JSON friendly view of some devices, for before/after and diff."""
    view = {}
    for name in sorted(names):
        link = state['links'].get(name)
        if link is None:
            view[name] = {'present': False}
            continue
        item = {'present': True, 'kind': link['kind'], 'master': link['master'], 'mtu': link['mtu'], 'up': link['up'],
                'addresses': list(link['addresses'])}
        if link.get('vlan'):
            item['vlan'] = link['vlan']
        if link.get('bond'):
            item['bond_mode'] = link['bond']['mode']
        if link.get('dhcp'):
            item['dhcp'] = link['dhcp']
        view[name] = item
    routes = [route_text(r) for family in (4, 6) for r in state['routes'][family]]
    return {'devices': view, 'default_routes': routes}
