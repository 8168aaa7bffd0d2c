# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What virtnode.kvm.network_info reports: the managed networks and the host's links, read only."""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.network import store
from ansible_collections.virtnode.kvm.plugins.module_utils.network.dhcp import DhcpClients
from ansible_collections.virtnode.kvm.plugins.module_utils.network.iproute import IpRoute
from ansible_collections.virtnode.kvm.plugins.module_utils.network.model import network_device
from ansible_collections.virtnode.kvm.plugins.module_utils.network.state import read_state


def run_module(module):
    """The work of the network_info module."""
    return dict(gather(IpRoute(), DhcpClients()), changed=False)


def gather(ip, dhcp=None):
    """Networks as configured and as the kernel shows them, every link by kind, default routes, what is saved."""
    state = read_state(ip, dhcp)
    running = store.read_running()
    persistent = store.read_persistent()
    persisted = store.persisted_names(running, persistent)
    links = state['links']
    networks = {}
    for name, net in sorted(running['networks'].items()):
        device = network_device(net)
        link = links.get(device) or {}
        networks[name] = {'config': net, 'device': device, 'present': bool(link), 'mtu': link.get('mtu'),
                          'up': bool(link.get('up')), 'addresses': link.get('addresses', []),
                          'persisted': name in persisted['networks']}
    bonds, bridges, nics, vlans = {}, {}, {}, {}
    for name, link in sorted(links.items()):
        ports = sorted(n for n, other in links.items() if other['master'] == name)
        if link['kind'] == 'bond':
            bonds[name] = {'mode': link['bond']['mode'], 'nics': ports, 'mtu': link['mtu'],
                           'managed': name in running['bonds'], 'persisted': name in persisted['bonds']}
        elif link['kind'] == 'bridge':
            bridges[name] = {'ports': ports, 'mtu': link['mtu'], 'addresses': link['addresses'],
                             'network': name in running['networks'] and running['networks'][name]['bridged']}
        elif link['kind'] == 'vlan':
            vlans[name] = {'parent': link['vlan']['parent'], 'id': link['vlan']['id'], 'mtu': link['mtu'],
                           'master': link['master'], 'addresses': link['addresses']}
        else:
            nics[name] = {'type': link['type'], 'mac': link['mac'], 'mtu': link['mtu'], 'master': link['master'],
                          'up': link['up'], 'addresses': link['addresses']}
    routes = [dict(r) for family in (4, 6) for r in state['routes'][family]]
    saved = persistent or {}
    return {
        'networks': networks, 'bonds': bonds, 'bridges': bridges, 'nics': nics, 'vlans': vlans, 'routes': routes,
        'persistent': {'saved_at': saved.get('saved_at'), 'networks': sorted(saved.get('networks') or {}),
                       'bonds': sorted(saved.get('bonds') or {})},
    }
