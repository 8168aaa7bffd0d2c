# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans: the ordered steps that take the kernel from its state to *targets*.

A target is the wanted state of one device, field by field (a field left
out is not touched); :func:`compute_targets` derives them from a config.
Each step of a plan is one ``ip`` command (or a DHCP client start/stop,
``['@dhcp', ...]``) with the commands that undo it. :func:`plan_changes`
computes the steps in phases (see :data:`PHASES`) while simulating their
effect, and the same function restores a snapshot (state.snapshot_state),
which is how a failed or unconfirmed transaction is rolled back.
"""

from __future__ import annotations

import collections
import copy
import ipaddress

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network.iproute import format_command
from ansible_collections.virtnode.kvm.plugins.module_utils.network.model import (
    CREATABLE_KINDS, DEFAULT_MTU, LAYER, MTU_MIN, network_device, vlan_device)
from ansible_collections.virtnode.kvm.plugins.module_utils.network.state import route_text


# ---------------------------------------------------------------- targets

def _net_addresses(net):
    return sorted(str(ipaddress.ip_interface(a)) for fam in ('ipv4', 'ipv6') for a in net[fam]['addresses'])


def _net_dhcp(net):
    return sorted(f for f, fam in ((4, 'ipv4'), (6, 'ipv6')) if net[fam]['method'] == 'dhcp')


def compute_targets(config, previous, links):
    """Wanted state of every device the change involves, and of the default routes.

    Returns ``(targets, route_targets)``. A target sets only the fields it
    cares about; a field left out is not touched.
    """
    targets = {}
    base_mtu = _base_mtus(config['networks'])
    _bond_targets(targets, config['bonds'], base_mtu)
    _network_targets(targets, config['networks'], links, base_mtu)
    _left_behind_targets(targets, config, previous, links)
    return targets, _route_targets(targets, config['networks'])


def _target(targets, name):
    return targets.setdefault(name, {})


def _base_mtus(networks):
    """The MTU of each NIC or bond: the largest of the networks on it."""
    base_mtu = {}
    for net in networks.values():
        base = net['nic'] or net['bond']
        if base:
            base_mtu[base] = max(base_mtu.get(base, MTU_MIN), net['mtu'])
    return base_mtu


def _bond_targets(targets, bonds, base_mtu):
    for name, bond in bonds.items():
        t = _target(targets, name)
        t.update({'present': True, 'kind': 'bond', 'bond': {'mode': bond['mode'], 'options': dict(bond['options'])},
                  'up': True, 'master': None, 'addresses': [], 'dhcp': []})
        t['mtu'] = bond['mtu'] if bond['mtu'] is not None else base_mtu.get(name, DEFAULT_MTU)
        for nic in bond['nics']:
            _target(targets, nic).update({'master': name, 'up': True, 'addresses': [], 'dhcp': []})


def _network_targets(targets, networks, links, base_mtu):
    """Each network's base device, VLAN device and bridge; the top one carries the addresses."""
    for name, net in networks.items():
        base = net['nic'] or net['bond']
        if net['nic'] and net['nic'] not in links:
            continue  # its NIC is gone: left alone (only an unchanged network gets here)
        under = base
        if base:
            t = _target(targets, base)
            t['up'] = True
            if net['nic']:
                t['mtu'] = base_mtu[base]
                t.setdefault('master', None)
            t.setdefault('addresses', [])
            t.setdefault('dhcp', [])
        if base and net['vlan'] is not None:
            under = vlan_device(base, net['vlan'])
            _target(targets, under).update({'present': True, 'kind': 'vlan', 'vlan': {'parent': base, 'id': int(net['vlan'])},
                                            'mtu': net['mtu'], 'up': True, 'master': None, 'addresses': [], 'dhcp': []})
        if net['bridged']:
            _target(targets, name).update({'present': True, 'kind': 'bridge', 'mtu': net['mtu'], 'up': True, 'master': None,
                                           'addresses': _net_addresses(net), 'dhcp': _net_dhcp(net)})
            if under:
                _target(targets, under).update({'master': name, 'addresses': [], 'dhcp': []})
        else:
            _target(targets, under).update({'addresses': _net_addresses(net), 'dhcp': _net_dhcp(net)})


def _left_behind_targets(targets, config, previous, links):
    """What the previous config had and the new one does not: take it down."""
    for name, net in (previous.get('networks') or {}).items():
        if name in config['networks']:
            continue
        base = net['nic'] or net['bond']
        if net['bridged'] and name not in targets:
            targets[name] = {'present': False}
        if base and net['vlan'] is not None:
            vdev = vlan_device(base, net['vlan'])
            if vdev not in targets:
                targets[vdev] = {'present': False}
        if base and base not in targets and base in links:
            targets[base] = {'master': None, 'addresses': [], 'dhcp': []}
        if not net['bridged'] and base and net['vlan'] is None and base in targets:
            targets[base].setdefault('addresses', [])
    for name, bond in (previous.get('bonds') or {}).items():
        if name in config['bonds']:
            continue
        targets[name] = {'present': False}
        for nic in bond['nics']:
            if nic not in targets and nic in links:
                targets[nic] = {'master': None}


def _route_targets(targets, networks):
    """The default route of each family: the network's that asks for it, or none on the devices involved."""
    route_targets = {}
    scope = set(n for n, t in targets.items() if 'addresses' in t)
    for family in (4, 6):
        routes = []
        for net in networks.values():
            gateway = net['ipv%d' % family]['gateway']
            if net['default_route'] and gateway:
                routes.append({'family': family, 'gateway': str(ipaddress.ip_address(gateway)), 'dev': network_device(net)})
        route_targets[family] = {'scope': 'all' if routes else sorted(scope), 'routes': routes}
    return route_targets


# ---------------------------------------------------------------- steps

def command_text(args):
    if args and args[0] == '@dhcp':
        return 'dhcp %s %s IPv%s' % (args[1], args[2], args[3])
    return format_command(args)


def public_steps(steps):
    return [{'description': s['description'], 'command': command_text(s['do']),
             'undo': [command_text(u) for u in s['undo']]} for s in steps]


def route_args(route):
    args = ['default', 'via', route['gateway'], 'dev', route['dev']]
    if route.get('metric'):
        args += ['metric', str(route['metric'])]
    return args


def _create_args(name, target):
    kind = target['kind']
    if kind == 'bridge':
        return ['link', 'add', 'name', name, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']
    if kind == 'vlan':
        return ['link', 'add', 'link', target['vlan']['parent'], 'name', name, 'type', 'vlan', 'id', str(target['vlan']['id'])]
    if kind == 'bond':
        args = ['link', 'add', 'name', name, 'type', 'bond', 'mode', target['bond']['mode']]
        for key, value in sorted(target['bond'].get('options', {}).items()):
            args += [key, value]
        return args
    raise VirtnodeError("cannot create device '%s' of kind %s" % (name, kind))


def _family_of(address):
    return 6 if ':' in address else 4


class Planner(object):
    """Builds the step list while simulating its effect on a copy of the state."""

    def __init__(self, state):
        self.state = copy.deepcopy(state)
        self.links = self.state['links']
        self.steps = []

    def step(self, description, do, undo, effect=None):
        self.steps.append({'description': description, 'do': do, 'undo': undo})
        if effect:
            effect()

    def set_master(self, name, master):
        link = self.links[name]
        old = link['master']
        do = ['link', 'set', 'dev', name] + (['master', master] if master else ['nomaster'])
        undo = [['link', 'set', 'dev', name] + (['master', old] if old else ['nomaster'])]
        if old and (self.links.get(old) or {}).get('kind') == 'bond':
            # The kernel refuses to enslave a device that is up; the bond brings it up again.
            undo.insert(0, ['link', 'set', 'dev', name, 'down'])
        desc = 'attach %s to %s' % (name, master) if master else 'detach %s from %s' % (name, old)
        self.step(desc, do, undo, lambda: link.update(master=master))

    def set_up(self, name, up):
        link = self.links[name]
        self.step('%s %s' % ('bring up' if up else 'bring down', name), ['link', 'set', 'dev', name, 'up' if up else 'down'],
                  [['link', 'set', 'dev', name, 'down' if up else 'up']], lambda: link.update(up=up))

    def set_mtu(self, name, mtu):
        link = self.links[name]
        self.step('set MTU of %s to %d (was %d)' % (name, mtu, link['mtu']), ['link', 'set', 'dev', name, 'mtu', str(mtu)],
                  [['link', 'set', 'dev', name, 'mtu', str(link['mtu'])]], lambda: link.update(mtu=mtu))

    def del_addr(self, name, address):
        link = self.links[name]
        self.step('remove address %s from %s' % (address, name), ['addr', 'del', address, 'dev', name],
                  [['addr', 'add', address, 'dev', name]], lambda: link['addresses'].remove(address))

    def add_addr(self, name, address):
        link = self.links[name]
        args = ['addr', 'add', address, 'dev', name]
        if _family_of(address) == 6:
            args += ['nodad']
        self.step('add address %s to %s' % (address, name), args,
                  [['addr', 'del', address, 'dev', name]], lambda: link['addresses'].append(address))

    def del_route(self, route):
        self.step('remove default route via %s dev %s' % (route['gateway'], route['dev']),
                  ['-%d' % route['family'], 'route', 'del'] + route_args(route),
                  [['-%d' % route['family'], 'route', 'add'] + route_args(route)],
                  lambda: self.state['routes'][route['family']].remove(route))

    def add_route(self, route):
        self.step('add default route via %s dev %s' % (route['gateway'], route['dev']),
                  ['-%d' % route['family'], 'route', 'add'] + route_args(route),
                  [['-%d' % route['family'], 'route', 'del'] + route_args(route)],
                  lambda: self.state['routes'][route['family']].append(dict(route)))

    def dhcp(self, name, family, start):
        link = self.links[name]

        def effect():
            running = set(link.get('dhcp') or [])
            running.add(family) if start else running.discard(family)
            link['dhcp'] = sorted(running)
        self.step('%s DHCPv%d client on %s' % ('start' if start else 'stop', family, name),
                  ['@dhcp', 'start' if start else 'stop', name, str(family)],
                  [['@dhcp', 'stop' if start else 'start', name, str(family)]], effect)

    def delete(self, name):
        link = self.links[name]
        # The kernel deletes a device's VLANs with it (a bond re-created for a new mode, say):
        # delete them first, as steps of their own with their undo, so the plan knows they are gone.
        for upper in sorted(n for n, l in self.links.items() if (l.get('vlan') or {}).get('parent') == name):
            self.delete(upper)
        for family in sorted(link.get('dhcp') or []):
            self.dhcp(name, family, False)
        for port in sorted(n for n, l in self.links.items() if l['master'] == name):
            self.set_master(port, None)
        for family in (4, 6):
            for route in [r for r in self.state['routes'][family] if r['dev'] == name]:
                self.del_route(route)
        for address in list(link['addresses']):
            self.del_addr(name, address)
        if link['master']:
            self.set_master(name, None)
        if link['up']:
            self.set_up(name, False)
        recreate = {'kind': link['kind'], 'vlan': link.get('vlan'), 'bond': {'mode': (link.get('bond') or {}).get('mode'), 'options': {}}}
        undo = [_create_args(name, recreate)]
        if link['mtu'] and link['mtu'] != DEFAULT_MTU:
            undo.append(['link', 'set', 'dev', name, 'mtu', str(link['mtu'])])
        self.step('delete %s %s' % (link['kind'], name), ['link', 'del', 'dev', name], undo, lambda: self.links.pop(name))

    def create(self, name, target):
        def effect():
            link = {'present': True, 'kind': target['kind'], 'type': target['kind'], 'master': None, 'mtu': DEFAULT_MTU,
                    'up': False, 'addresses': [], 'dynamic_addresses': [], 'dhcp': []}
            if target['kind'] == 'vlan':
                link['vlan'] = dict(target['vlan'])
                parent = self.links.get(target['vlan']['parent'])
                if parent:
                    link['mtu'] = parent['mtu']
            if target['kind'] == 'bond':
                link['bond'] = copy.deepcopy(target['bond'])
            self.links[name] = link
        self.step('create %s %s' % (target['kind'], name), _create_args(name, target),
                  [['link', 'del', 'dev', name]], effect)


def _needs_recreate(link, target):
    if target.get('present') is False or 'kind' not in target:
        return False
    if target['kind'] in CREATABLE_KINDS and link['kind'] != target['kind']:
        return True
    if target['kind'] == 'vlan' and link.get('vlan') != target['vlan']:
        return True
    if target['kind'] == 'bond' and (link.get('bond') or {}).get('mode') != target['bond']['mode']:
        return True
    return False


def _layer(targets, links, name):
    kind = (targets.get(name) or {}).get('kind') or (links.get(name) or {}).get('kind') or 'nic'
    return LAYER.get(kind, 0)


# ---------------------------------------------------------------- the plan, phase by phase

# The two orders of the devices a plan involves: tear down from the top of
# the stack (bridges first), build up from the bottom (NICs first).
Order = collections.namedtuple('Order', 'down up')


def plan_changes(state, targets, route_targets, with_state=False):
    """Ordered steps that take the kernel from ``state`` to ``targets``.

    With ``with_state`` return ``(steps, predicted state)``. Raises
    VirtnodeError if a target cannot be reached at all (a NIC that would
    have to be created or removed).
    """
    planner = Planner(state)
    _check_reachable(planner.links, targets)
    order = Order(down=sorted(targets, key=lambda n: (-_layer(targets, planner.links, n), n)),
                  up=sorted(targets, key=lambda n: (_layer(targets, planner.links, n), n)))
    for phase in PHASES:
        phase(planner, targets, route_targets, order)
    if with_state:
        return planner.steps, planner.state
    return planner.steps


def _check_reachable(links, targets):
    problems = []
    for name, target in sorted(targets.items()):
        link = links.get(name)
        if target.get('present') is False and link and link['kind'] not in CREATABLE_KINDS:
            problems.append("cannot remove '%s': it is a NIC (%s), not a bridge, VLAN or bond" % (name, link.get('type')))
        if target.get('present') is not False and link is None and target.get('kind') not in CREATABLE_KINDS:
            problems.append("device '%s' does not exist" % name)
        if link and target.get('kind') in CREATABLE_KINDS and link['kind'] not in CREATABLE_KINDS:
            problems.append("'%s' is a NIC; it cannot become a %s" % (name, target['kind']))
    if problems:
        raise VirtnodeError('; '.join(problems), {'problems': problems})


def _stop_dhcp(planner, targets, route_targets, order):
    """DHCP clients that go, first of all: each releases its lease while its device still reaches the server."""
    for name in order.down:
        link = planner.links.get(name)
        target = targets[name]
        if not link:
            continue
        if target.get('present') is False or _needs_recreate(link, target):
            wanted = set()
        elif target.get('dhcp') is not None:
            wanted = set(target['dhcp'])
        else:
            continue
        for family in sorted(set(link.get('dhcp') or []) - wanted):
            planner.dhcp(name, family, False)


def _remove_default_routes(planner, targets, route_targets, order):
    """Default routes that must go, before the addresses that carry them."""
    for family in (4, 6):
        rt = route_target(route_targets, family)
        in_scope = (lambda r: True) if rt['scope'] == 'all' else (lambda r, s=set(rt['scope']): r['dev'] in s)
        for route in list(planner.state['routes'][family]):
            if in_scope(route) and not any(_same_route(route, w) for w in rt['routes']):
                planner.del_route(route)


def _remove_devices(planner, targets, route_targets, order):
    """Devices to remove or rebuild, upper layers first."""
    for name in order.down:
        target = targets[name]
        link = planner.links.get(name)
        if link and (target.get('present') is False or _needs_recreate(link, target)):
            planner.delete(name)


def _detach_ports(planner, targets, route_targets, order):
    """Ports whose master changes."""
    for name in order.down:
        link = planner.links.get(name)
        target = targets[name]
        if link and 'master' in target and link['master'] and link['master'] != target['master']:
            planner.set_master(name, None)


def _remove_dhcp_and_addresses(planner, targets, route_targets, order):
    for name in order.down:
        link = planner.links.get(name)
        target = targets[name]
        if not link:
            continue
        if target.get('dhcp') is not None:
            for family in sorted(set(link.get('dhcp') or []) - set(target['dhcp'])):
                planner.dhcp(name, family, False)
        if target.get('addresses') is not None:
            for address in sorted(set(link['addresses']) - set(target['addresses'])):
                planner.del_addr(name, address)


def _create_devices(planner, targets, route_targets, order):
    """New devices, lower layers first."""
    for name in order.up:
        target = targets[name]
        if target.get('present') is True and name not in planner.links:
            planner.create(name, target)


def _set_bond_options(planner, targets, route_targets, order):
    """Options of bonds that stay."""
    for name in order.up:
        target = targets[name]
        link = planner.links.get(name)
        if target.get('kind') == 'bond' and link:
            current = (link.get('bond') or {}).get('options') or {}
            for key, value in sorted(target['bond'].get('options', {}).items()):
                if current.get(key) != value:
                    undo = [['link', 'set', 'dev', name, 'type', 'bond', key, current[key]]] if key in current else []
                    planner.step('set bond %s option %s=%s' % (name, key, value),
                                 ['link', 'set', 'dev', name, 'type', 'bond', key, value], undo,
                                 lambda k=key, v=value, l=link: l['bond']['options'].__setitem__(k, v))


def _lower_mtus(planner, targets, route_targets, order):
    """MTU decreases, upper layers first."""
    for name in order.down:
        target = targets[name]
        link = planner.links.get(name)
        if link and target.get('mtu') and target['mtu'] < link['mtu']:
            planner.set_mtu(name, target['mtu'])


def _attach_ports(planner, targets, route_targets, order):
    """Bond members (which must be down), then bridge ports."""
    links = planner.links
    for name in order.up:
        target = targets[name]
        link = links.get(name)
        if link and target.get('master') and link['master'] != target['master']:
            master_kind = (targets.get(target['master']) or {}).get('kind') or (links.get(target['master']) or {}).get('kind')
            if master_kind == 'bond' and link['up']:
                planner.set_up(name, False)
            planner.set_master(name, target['master'])
            if master_kind == 'bond' and links.get(target['master']):
                link['mtu'] = links[target['master']]['mtu']


def _raise_mtus(planner, targets, route_targets, order):
    """MTU increases, lower layers first."""
    for name in order.up:
        target = targets[name]
        link = planner.links.get(name)
        if link and target.get('mtu') and target['mtu'] > link['mtu']:
            planner.set_mtu(name, target['mtu'])


def _add_addresses(planner, targets, route_targets, order):
    for name in order.up:
        target = targets[name]
        link = planner.links.get(name)
        if link and target.get('addresses') is not None:
            for address in sorted(set(target['addresses']) - set(link['addresses'])):
                planner.add_addr(name, address)


def _set_link_states(planner, targets, route_targets, order):
    """Downs (only a restore asks for them), then ups, lower layers first."""
    for name in order.down:
        link = planner.links.get(name)
        if link and targets[name].get('up') is False and link['up']:
            planner.set_up(name, False)
    for name in order.up:
        link = planner.links.get(name)
        if link and targets[name].get('up') is True and not link['up']:
            planner.set_up(name, True)


def _start_dhcp(planner, targets, route_targets, order):
    """DHCP clients to start, once the link is up."""
    for name in order.up:
        link = planner.links.get(name)
        target = targets[name]
        if link and target.get('dhcp') is not None:
            for family in sorted(set(target['dhcp']) - set(link.get('dhcp') or [])):
                planner.dhcp(name, family, True)


def _add_default_routes(planner, targets, route_targets, order):
    """Last, once the addresses that reach the gateway are there."""
    for family in (4, 6):
        rt = route_target(route_targets, family)
        for route in rt['routes']:
            if not any(_same_route(route, r) for r in planner.state['routes'][family]):
                planner.add_route(route)


# Each phase adds its steps to the planner and sees the effect of the phases before it.
PHASES = (
    _stop_dhcp,
    _remove_default_routes,
    _remove_devices,
    _detach_ports,
    _remove_dhcp_and_addresses,
    _create_devices,
    _set_bond_options,
    _lower_mtus,
    _attach_ports,
    _raise_mtus,
    _add_addresses,
    _set_link_states,
    _start_dhcp,
    _add_default_routes,
)


# ---------------------------------------------------------------- comparing state and targets

def route_target(route_targets, family):
    """Route target of ``family``; a target read back from JSON has string keys."""
    return route_targets.get(family) or route_targets.get(str(family)) or {'scope': [], 'routes': []}


def _same_route(a, b):
    return a['gateway'] == b['gateway'] and a['dev'] == b['dev'] and a.get('metric') == b.get('metric')


def differences(state, targets, route_targets):
    """Human readable differences between kernel ``state`` and ``targets``; empty when they match."""
    diffs = []
    links = state['links']
    for name, target in sorted(targets.items()):
        link = links.get(name)
        if target.get('present') is False:
            if link:
                diffs.append('%s still exists' % name)
            continue
        if link is None:
            if target.get('present') or target.get('kind'):
                diffs.append('%s is missing' % name)
            continue
        if target.get('kind') in CREATABLE_KINDS and link['kind'] != target['kind']:
            diffs.append('%s is a %s, not a %s' % (name, link['kind'], target['kind']))
        if 'vlan' in target and target.get('vlan') and link.get('vlan') != target['vlan']:
            diffs.append('%s VLAN is %s, not %s' % (name, link.get('vlan'), target['vlan']))
        if target.get('kind') == 'bond':
            bond = link.get('bond') or {}
            if bond.get('mode') != target['bond']['mode']:
                diffs.append('%s bond mode is %s, not %s' % (name, bond.get('mode'), target['bond']['mode']))
            for key, value in target['bond'].get('options', {}).items():
                if (bond.get('options') or {}).get(key) != value:
                    diffs.append('%s bond option %s is %s, not %s' % (name, key, (bond.get('options') or {}).get(key), value))
        if 'master' in target and link['master'] != target['master']:
            diffs.append('%s master is %s, not %s' % (name, link['master'], target['master']))
        if target.get('mtu') and link['mtu'] != target['mtu']:
            diffs.append('%s MTU is %s, not %s' % (name, link['mtu'], target['mtu']))
        if target.get('up') is not None and link['up'] != target['up']:
            diffs.append('%s is %s, not %s' % (name, 'up' if link['up'] else 'down', 'up' if target['up'] else 'down'))
        if target.get('addresses') is not None and sorted(link['addresses']) != sorted(target['addresses']):
            diffs.append('%s addresses are %s, not %s' % (name, sorted(link['addresses']), sorted(target['addresses'])))
        if target.get('dhcp') is not None and 'dhcp' in link and sorted(link['dhcp']) != sorted(target['dhcp']):
            diffs.append('%s DHCP clients are %s, not %s' % (name, link['dhcp'], target['dhcp']))
    for family in (4, 6):
        rt = route_target(route_targets, family)
        scope = None if rt['scope'] == 'all' else set(rt['scope'])
        current = [r for r in state['routes'][family] if scope is None or r['dev'] in scope]
        if sorted(_route_key(r) for r in current) != sorted(_route_key(r) for r in rt['routes']):
            diffs.append('IPv%d default routes are %s, not %s' % (
                family, [route_text(r) for r in current], [route_text(r) for r in rt['routes']]))
    return diffs


def _route_key(route):
    return (route['gateway'], route['dev'], route.get('metric') or 0)
