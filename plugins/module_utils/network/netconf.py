# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host networking as one desired state: model, validation, plan, apply, rollback, persistence.

The vocabulary follows VDSM's setupNetworks:

* a *network* is a logical network; a bridged network is a Linux bridge
  named after the network, a bridgeless one lives on its NIC, bond or VLAN
  device itself; a VLAN device on top of NIC or bond ``base`` is named
  ``base.VLAN``;
* a *bond* is a bonding device with its member NICs;
* the *running config* (the networks and bonds this collection manages) is
  kept in :data:`RUNNING_FILE` under ``/run``, so like the kernel state it
  describes it is gone after a reboot; ``save`` copies it to
  :data:`PERSISTENT_FILE`, which is what a boot-time restore applies.

Everything that changes the kernel is a *plan*: an ordered list of steps,
each one ``ip`` command with the commands that undo it. A plan is computed
by :func:`plan_changes` from the current kernel state towards *targets*
(the wanted state of each device involved, field by field); the same
function restores a *snapshot* (the full previous state of those devices),
which is how a failed or unconfirmed transaction is rolled back.
"""

from __future__ import annotations

import copy
import datetime
import fcntl
import ipaddress
import json
import os
import signal
import subprocess
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network.iproute import format_command

from ansible_collections.virtnode.kvm.plugins.module_utils.common.fileio import write_atomic

STATE_DIR = '/var/lib/virtnode/network'
PERSISTENT_DIR = STATE_DIR + '/persistent'
PERSISTENT_FILE = PERSISTENT_DIR + '/netconf.json'
TRANSACTION_DIR = STATE_DIR + '/transactions'
RUN_DIR = '/run/virtnode/network'
RUNNING_FILE = RUN_DIR + '/running.json'
LOCK_FILE = RUN_DIR + '/lock'
DHCP_DIR = RUN_DIR + '/dhcp'
LOG_FILE = '/var/log/virtnode/network.log'
FORMAT_VERSION = 1

IFNAMSIZ = 16
MTU_MIN = 68
MTU_MAX = 65535
DEFAULT_MTU = 1500
VLAN_MIN = 1
VLAN_MAX = 4094
BOND_MODES = ('balance-rr', 'active-backup', 'balance-xor', 'broadcast', '802.3ad', 'balance-tlb', 'balance-alb')
DEFAULT_BOND_MODE = 'balance-rr'
CREATABLE_KINDS = ('bridge', 'vlan', 'bond')
LAYER = {'nic': 0, 'bond': 1, 'vlan': 2, 'bridge': 3}
FAMILIES = {'ipv4': 4, 'ipv6': 6}
INET = {4: 'inet', 6: 'inet6'}
DHCP_CLIENTS = ('/usr/sbin/dhclient', '/sbin/dhclient', '/usr/sbin/udhcpc', '/sbin/udhcpc', '/bin/busybox', '/usr/bin/busybox')


# ---------------------------------------------------------------- desired state model

def valid_ifname(name):
    """The kernel's rule (dev_valid_name): 1..15 chars, not . or .., no '/', ':' or whitespace."""
    if not isinstance(name, str) or not name or len(name) >= IFNAMSIZ or name in ('.', '..'):
        return False
    return not any(c == '/' or c == ':' or c.isspace() for c in name)


def ifname_problem(what, name):
    if not isinstance(name, str) or not name:
        return '%s: a name is required' % what
    if len(name) >= IFNAMSIZ:
        return "%s '%s': too long for a Linux interface name (%d characters, at most %d)" % (what, name, len(name), IFNAMSIZ - 1)
    if not valid_ifname(name):
        return "%s '%s': not a valid Linux interface name (no '/', ':', whitespace, '.' or '..')" % (what, name)
    return None


def vlan_device(base, vlan):
    return '%s.%d' % (base, vlan)


def _ip_spec(raw, family):
    raw = dict(raw or {})
    addresses = [str(a) for a in (raw.get('addresses') or [])]
    method = raw.get('method') or ('static' if addresses else 'none')
    return {'method': method, 'addresses': addresses, 'gateway': raw.get('gateway') or None}


def normalize_network(name, raw):
    """A network spec with every field present, from module options or a hook's JSON."""
    raw = dict(raw or {})
    vlan = raw.get('vlan')
    mtu = raw.get('mtu')
    return {
        'name': name,
        'bridged': True if raw.get('bridged') is None else bool(raw.get('bridged')),
        'nic': raw.get('nic') or None,
        'bond': raw.get('bond') or None,
        'vlan': None if vlan is None else vlan,
        'mtu': DEFAULT_MTU if mtu is None else mtu,
        'ipv4': _ip_spec(raw.get('ipv4'), 4),
        'ipv6': _ip_spec(raw.get('ipv6'), 6),
        'default_route': bool(raw.get('default_route')),
    }


def normalize_bond(name, raw):
    raw = dict(raw or {})
    options = raw.get('options') or {}
    mtu = raw.get('mtu')
    return {
        'name': name,
        'mode': str(raw.get('mode') or DEFAULT_BOND_MODE),
        'options': dict((str(k), str(v)) for k, v in sorted(options.items())),
        'nics': sorted(str(n) for n in (raw.get('nics') or [])),
        'mtu': None if mtu is None else mtu,
    }


def empty_config():
    return {'networks': {}, 'bonds': {}}


def request_from_params(networks, bonds, purge=False, save=False, connectivity_check=True, connectivity_timeout=30):
    """The JSON request (as given to hooks) from the module's list options."""
    request = {'networks': {}, 'bonds': {}, 'options': {
        'purge': bool(purge), 'save': bool(save), 'connectivity_check': bool(connectivity_check),
        'connectivity_timeout': connectivity_timeout}}
    for kind, items in (('networks', networks), ('bonds', bonds)):
        for item in items or []:
            item = dict((k, v) for k, v in item.items() if v is not None)
            name = item.pop('name', None)
            if name in request[kind]:
                raise VirtnodeError("%s '%s' is given twice" % (kind[:-1], name))
            request[kind][name] = item
    return request


def desired_config(running, request):
    """Merge ``request`` into the ``running`` config; return (config, problems).

    Items with ``state: absent`` are removed; with ``options.purge`` every
    managed network and bond not in the request is removed too.
    """
    problems = []
    config = {'networks': {}, 'bonds': {}}
    purge = bool((request.get('options') or {}).get('purge'))
    for kind, normalize in (('networks', normalize_network), ('bonds', normalize_bond)):
        wanted = request.get(kind) or {}
        if not isinstance(wanted, dict):
            problems.append('request.%s must be a mapping of name to settings' % kind)
            continue
        if not purge:
            config[kind].update(copy.deepcopy(running.get(kind) or {}))
        for name, raw in wanted.items():
            if not isinstance(raw, dict):
                problems.append("%s '%s': settings must be a mapping" % (kind[:-1], name))
                continue
            state = raw.get('state') or 'present'
            if state == 'absent':
                config[kind].pop(name, None)
                continue
            if state != 'present':
                problems.append("%s '%s': state must be present or absent, not %r" % (kind[:-1], name, state))
                continue
            settings = dict((k, v) for k, v in raw.items() if k != 'state')
            try:
                config[kind][name] = normalize(name, settings)
            except (TypeError, ValueError, AttributeError) as err:
                problems.append("%s '%s': malformed settings: %s" % (kind[:-1], name, err))
    return config, problems


def _check_int(problems, what, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value)
        except (TypeError, ValueError):
            problems.append('%s: %r is not an integer' % (what, value))
            return None
    if not low <= value <= high:
        problems.append('%s: %d is out of range %d..%d' % (what, value, low, high))
        return None
    return value


def _check_ip(problems, net, family):
    key = 'ipv%d' % family
    spec = net[key]
    what = "network '%s' %s" % (net['name'], key)
    methods = ('none', 'static', 'dhcp')
    if spec['method'] not in methods:
        problems.append('%s: method must be one of %s, not %r' % (what, ', '.join(methods), spec['method']))
        return
    subnets = []
    for text in spec['addresses']:
        if '/' not in text:
            problems.append("%s: address '%s' needs a prefix length (e.g. %s)" % (
                what, text, '192.0.2.10/24' if family == 4 else '2001:db8::10/64'))
            continue
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError as err:
            problems.append("%s: bad address '%s': %s" % (what, text, err))
            continue
        if iface.version != family:
            problems.append("%s: '%s' is not an IPv%d address" % (what, text, family))
            continue
        if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
            problems.append("%s: '%s' cannot be a host address" % (what, text))
            continue
        if family == 6 and iface.ip.is_link_local:
            problems.append("%s: '%s' is link-local; the kernel manages link-local addresses" % (what, text))
            continue
        subnets.append(iface.network)
    if spec['method'] == 'static' and not spec['addresses']:
        problems.append('%s: method static needs at least one address' % what)
    if spec['method'] != 'static' and spec['addresses']:
        problems.append('%s: addresses are only allowed with method static (method is %s)' % (what, spec['method']))
    if spec['gateway']:
        try:
            gateway = ipaddress.ip_address(spec['gateway'])
        except ValueError as err:
            problems.append("%s: bad gateway '%s': %s" % (what, spec['gateway'], err))
            return
        if gateway.version != family:
            problems.append("%s: gateway '%s' is not an IPv%d address" % (what, spec['gateway'], family))
        elif spec['method'] == 'static' and subnets and not any(gateway in s for s in subnets) and not gateway.is_link_local:
            problems.append("%s: gateway %s is not in the network's subnet(s) %s" % (
                what, gateway, ', '.join(str(s) for s in subnets)))
        if spec['method'] == 'dhcp':
            problems.append('%s: a gateway cannot be set with method dhcp (DHCP provides it)' % what)
        if not net['default_route']:
            problems.append('%s: a gateway is only used for the default route: set default_route: true '
                            '(per-network source routing is not supported)' % what)


def validate_config(config, links, dhcp_client=None, unchanged=()):
    """Return a list of problems with ``config`` against current kernel ``links`` (name -> record).

    Networks named in ``unchanged`` (managed, not in the request) are not
    blamed for a NIC that disappeared since they were set up: they are left alone.
    """
    problems = []
    networks = config['networks']
    bonds = config['bonds']
    owner_of_nic = {}
    for name in sorted(bonds):
        bond = bonds[name]
        problem = ifname_problem('bond', name)
        if problem:
            problems.append(problem)
            continue
        if bond['mode'] not in BOND_MODES:
            problems.append("bond '%s': mode must be one of %s, not %r" % (name, ', '.join(BOND_MODES), bond['mode']))
        for key in bond['options']:
            if key == 'mode' or not key.replace('_', '').isalnum():
                problems.append("bond '%s': bad option name %r (set the mode with 'mode')" % (name, key))
        if not bond['nics']:
            problems.append("bond '%s': needs at least one member NIC" % name)
        if bond['mtu'] is not None:
            _check_int(problems, "bond '%s' mtu" % name, bond['mtu'], MTU_MIN, MTU_MAX)
        existing = links.get(name)
        if existing and existing['kind'] != 'bond':
            problems.append("bond '%s': a %s device with that name already exists" % (name, existing['kind']))
        for nic in bond['nics']:
            if nic in owner_of_nic:
                problems.append("NIC '%s' is in two bonds: '%s' and '%s'" % (nic, owner_of_nic[nic], name))
                continue
            owner_of_nic[nic] = name
            problem = ifname_problem("bond '%s' member" % name, nic)
            if problem:
                problems.append(problem)
            elif nic not in links:
                problems.append("bond '%s': member NIC '%s' does not exist" % (name, nic))
            elif links[nic]['kind'] != 'nic':
                problems.append("bond '%s': member '%s' is a %s, not a NIC" % (name, nic, links[nic]['kind']))
    users = {}
    default_route = []
    for name in sorted(networks):
        net = networks[name]
        problem = ifname_problem('network', name)
        if problem:
            problems.append(problem)
            continue
        if net['nic'] and net['bond']:
            problems.append("network '%s': give either nic or bond, not both" % name)
            continue
        base = net['nic'] or net['bond']
        if base is None and not net['bridged']:
            problems.append("network '%s': a bridgeless network needs a nic or a bond" % name)
        if net['nic']:
            problem = ifname_problem("network '%s' nic" % name, net['nic'])
            if problem:
                problems.append(problem)
            elif net['nic'] not in links:
                if name not in unchanged:
                    problems.append("network '%s': NIC '%s' does not exist" % (name, net['nic']))
            elif links[net['nic']]['kind'] != 'nic':
                problems.append("network '%s': '%s' is a %s, not a NIC" % (name, net['nic'], links[net['nic']]['kind']))
            elif net['nic'] in owner_of_nic:
                problems.append("network '%s': NIC '%s' is a member of bond '%s'; put the network on the bond" % (
                    name, net['nic'], owner_of_nic[net['nic']]))
        if net['bond'] and net['bond'] not in bonds:
            problems.append("network '%s': bond '%s' is not defined (add it to bonds)" % (name, net['bond']))
        vlan = net['vlan']
        if vlan is not None:
            vlan = _check_int(problems, "network '%s' vlan" % name, vlan, VLAN_MIN, VLAN_MAX)
            if vlan is not None and base:
                problem = ifname_problem("network '%s' VLAN device" % name, vlan_device(base, vlan))
                if problem:
                    problems.append(problem)
            if vlan is not None and base is None:
                problems.append("network '%s': a VLAN needs a nic or a bond" % name)
        _check_int(problems, "network '%s' mtu" % name, net['mtu'], MTU_MIN, MTU_MAX)
        if base:
            key = (base, net['vlan'])
            if key in users:
                problems.append("networks '%s' and '%s' are both on %s%s" % (
                    users[key], name, base, ' VLAN %s' % net['vlan'] if net['vlan'] is not None else ' without VLAN'))
            users[key] = name
        if net['bridged']:
            existing = links.get(name)
            if existing and existing['kind'] != 'bridge':
                problems.append("network '%s': its bridge would be named '%s', but a %s device with that name exists" % (
                    name, name, existing['kind']))
            if name in bonds:
                problems.append("network '%s': a bond has the same name" % name)
        for family in (4, 6):
            _check_ip(problems, net, family)
            if net['ipv%d' % family]['method'] == 'dhcp' and dhcp_client is None:
                problems.append("network '%s': DHCP requested but no DHCP client (dhclient or busybox udhcpc) is installed" % name)
        if net['default_route']:
            default_route.append(name)
            if net['ipv4']['method'] == 'static' and not net['ipv4']['gateway'] and not net['ipv6']['gateway']:
                problems.append("network '%s': default_route needs a gateway (ipv4.gateway or ipv6.gateway) or DHCP" % name)
    if len(default_route) > 1:
        problems.append('only one network can have the default route, not %s' % ', '.join(default_route))
    return problems


def check_config(config, links, dhcp_client=None, unchanged=()):
    problems = validate_config(config, links, dhcp_client, unchanged)
    if problems:
        raise VirtnodeError('invalid network configuration, nothing was changed: ' + '; '.join(problems),
                            {'problems': problems})


# ---------------------------------------------------------------- kernel state

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
            record['bond'] = {'mode': data.pop('mode', None),
                              'options': dict((str(k), str(v)) for k, v in data.items() if not isinstance(v, (list, dict)))}
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


def _route(family, raw):
    route = {'family': family, 'gateway': raw.get('gateway'), 'dev': raw.get('dev')}
    if raw.get('metric') and not (family == 6 and raw.get('metric') == 1024):
        route['metric'] = raw['metric']
    return route


def route_args(route):
    args = ['default', 'via', route['gateway'], 'dev', route['dev']]
    if route.get('metric'):
        args += ['metric', str(route['metric'])]
    return args


# ---------------------------------------------------------------- targets

def network_device(net):
    """The device carrying a network's addresses."""
    if net['bridged']:
        return net['name']
    base = net['nic'] or net['bond']
    return vlan_device(base, net['vlan']) if net['vlan'] is not None else base


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

    def target(name):
        return targets.setdefault(name, {})

    networks = config['networks']
    bonds = config['bonds']
    base_mtu = {}
    for net in networks.values():
        base = net['nic'] or net['bond']
        if base:
            base_mtu[base] = max(base_mtu.get(base, MTU_MIN), net['mtu'])
    for name, bond in bonds.items():
        t = target(name)
        t.update({'present': True, 'kind': 'bond', 'bond': {'mode': bond['mode'], 'options': dict(bond['options'])},
                  'up': True, 'master': None, 'addresses': [], 'dhcp': []})
        t['mtu'] = bond['mtu'] if bond['mtu'] is not None else base_mtu.get(name, DEFAULT_MTU)
        for nic in bond['nics']:
            target(nic).update({'master': name, 'up': True, 'addresses': [], 'dhcp': []})
    for name, net in networks.items():
        base = net['nic'] or net['bond']
        if net['nic'] and net['nic'] not in links:
            continue  # its NIC is gone: left alone (only an unchanged network gets here)
        under = base
        if base:
            t = target(base)
            t['up'] = True
            if net['nic']:
                t['mtu'] = base_mtu[base]
                t.setdefault('master', None)
            t.setdefault('addresses', [])
            t.setdefault('dhcp', [])
        if base and net['vlan'] is not None:
            under = vlan_device(base, net['vlan'])
            target(under).update({'present': True, 'kind': 'vlan', 'vlan': {'parent': base, 'id': int(net['vlan'])},
                                  'mtu': net['mtu'], 'up': True, 'master': None, 'addresses': [], 'dhcp': []})
        if net['bridged']:
            target(name).update({'present': True, 'kind': 'bridge', 'mtu': net['mtu'], 'up': True, 'master': None,
                                 'addresses': _net_addresses(net), 'dhcp': _net_dhcp(net)})
            if under:
                target(under).update({'master': name, 'addresses': [], 'dhcp': []})
        else:
            target(under).update({'addresses': _net_addresses(net), 'dhcp': _net_dhcp(net)})
    # What the previous config had and the new one does not: take it down.
    for name, net in (previous.get('networks') or {}).items():
        if name in networks:
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
        if name in bonds:
            continue
        targets[name] = {'present': False}
        for nic in bond['nics']:
            if nic not in targets and nic in links:
                targets[nic] = {'master': None}
    route_targets = {}
    scope = set(n for n, t in targets.items() if 'addresses' in t)
    for family in (4, 6):
        routes = []
        for net in networks.values():
            gateway = net['ipv%d' % family]['gateway']
            if net['default_route'] and gateway:
                routes.append({'family': family, 'gateway': str(ipaddress.ip_address(gateway)), 'dev': network_device(net)})
        route_targets[family] = {'scope': 'all' if routes else sorted(scope), 'routes': routes}
    return targets, route_targets


def snapshot_state(state, names):
    """The full state of ``names`` (absent ones included) and all default routes."""
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
            record['bond'] = {'mode': link['bond']['mode'], 'options': {}}
        devices[name] = record
    routes = dict((family, {'scope': 'all', 'routes': [dict(r) for r in state['routes'][family]]}) for family in (4, 6))
    return {'devices': devices, 'routes': routes}


# ---------------------------------------------------------------- plan

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
        for port in sorted(n for n, l in self.links.items() if l['master'] == name):
            self.set_master(port, None)
        for family in (4, 6):
            for route in [r for r in self.state['routes'][family] if r['dev'] == name]:
                self.del_route(route)
        for family in sorted(link.get('dhcp') or []):
            self.dhcp(name, family, False)
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


def plan_changes(state, targets, route_targets, with_state=False):
    """Ordered steps that take the kernel from ``state`` to ``targets``.

    With ``with_state`` return ``(steps, predicted state)``. Raises
    VirtnodeError if a target cannot be reached at all (a NIC that would
    have to be created or removed).
    """
    planner = Planner(state)
    links = planner.links
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
    order_down = sorted(targets, key=lambda n: (-_layer(targets, links, n), n))
    order_up = sorted(targets, key=lambda n: (_layer(targets, links, n), n))

    # Default routes that must go, before the addresses that carry them.
    for family in (4, 6):
        rt = route_target(route_targets, family)
        in_scope = (lambda r: True) if rt['scope'] == 'all' else (lambda r, s=set(rt['scope']): r['dev'] in s)
        for route in list(planner.state['routes'][family]):
            if in_scope(route) and not any(_same_route(route, w) for w in rt['routes']):
                planner.del_route(route)
    # Devices to remove or rebuild, upper layers first.
    for name in order_down:
        target = targets[name]
        link = links.get(name)
        if link and (target.get('present') is False or _needs_recreate(link, target)):
            planner.delete(name)
    # Detach ports whose master changes.
    for name in order_down:
        link = links.get(name)
        target = targets[name]
        if link and 'master' in target and link['master'] and link['master'] != target['master']:
            planner.set_master(name, None)
    # DHCP clients and addresses that must go.
    for name in order_down:
        link = links.get(name)
        target = targets[name]
        if not link:
            continue
        if target.get('dhcp') is not None:
            for family in sorted(set(link.get('dhcp') or []) - set(target['dhcp'])):
                planner.dhcp(name, family, False)
        if target.get('addresses') is not None:
            for address in sorted(set(link['addresses']) - set(target['addresses'])):
                planner.del_addr(name, address)
    # New devices, lower layers first.
    for name in order_up:
        target = targets[name]
        if target.get('present') is True and name not in links:
            planner.create(name, target)
    # Bond options of bonds that stay.
    for name in order_up:
        target = targets[name]
        link = links.get(name)
        if target.get('kind') == 'bond' and link:
            current = (link.get('bond') or {}).get('options') or {}
            for key, value in sorted(target['bond'].get('options', {}).items()):
                if current.get(key) != value:
                    undo = [['link', 'set', 'dev', name, 'type', 'bond', key, current[key]]] if key in current else []
                    planner.step('set bond %s option %s=%s' % (name, key, value),
                                 ['link', 'set', 'dev', name, 'type', 'bond', key, value], undo,
                                 lambda k=key, v=value, l=link: l['bond']['options'].__setitem__(k, v))
    # MTU decreases, upper layers first.
    for name in order_down:
        target = targets[name]
        link = links.get(name)
        if link and target.get('mtu') and target['mtu'] < link['mtu']:
            planner.set_mtu(name, target['mtu'])
    # Attach ports: bond members (which must be down), then bridge ports.
    for name in order_up:
        target = targets[name]
        link = links.get(name)
        if link and target.get('master') and link['master'] != target['master']:
            master_kind = (targets.get(target['master']) or {}).get('kind') or (links.get(target['master']) or {}).get('kind')
            if master_kind == 'bond' and link['up']:
                planner.set_up(name, False)
            planner.set_master(name, target['master'])
            if master_kind == 'bond' and links.get(target['master']):
                link['mtu'] = links[target['master']]['mtu']
    # MTU increases, lower layers first.
    for name in order_up:
        target = targets[name]
        link = links.get(name)
        if link and target.get('mtu') and target['mtu'] > link['mtu']:
            planner.set_mtu(name, target['mtu'])
    # Addresses that must be added.
    for name in order_up:
        target = targets[name]
        link = links.get(name)
        if link and target.get('addresses') is not None:
            for address in sorted(set(target['addresses']) - set(link['addresses'])):
                planner.add_addr(name, address)
    # Link state: downs (only a restore asks for them), then ups lower layers first.
    for name in order_down:
        link = links.get(name)
        if link and targets[name].get('up') is False and link['up']:
            planner.set_up(name, False)
    for name in order_up:
        link = links.get(name)
        if link and targets[name].get('up') is True and not link['up']:
            planner.set_up(name, True)
    # DHCP clients to start, once the link is up.
    for name in order_up:
        link = links.get(name)
        target = targets[name]
        if link and target.get('dhcp') is not None:
            for family in sorted(set(target['dhcp']) - set(link.get('dhcp') or [])):
                planner.dhcp(name, family, True)
    # Default routes last, once the addresses that reach the gateway are there.
    for family in (4, 6):
        rt = route_target(route_targets, family)
        for route in rt['routes']:
            if not any(_same_route(route, r) for r in planner.state['routes'][family]):
                planner.add_route(route)
    if with_state:
        return planner.steps, planner.state
    return planner.steps


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
                family, [_route_text(r) for r in current], [_route_text(r) for r in rt['routes']]))
    return diffs


def _route_key(route):
    return (route['gateway'], route['dev'], route.get('metric') or 0)


def _route_text(route):
    return 'via %s dev %s' % (route['gateway'], route['dev']) + (' metric %s' % route['metric'] if route.get('metric') else '')


# ---------------------------------------------------------------- DHCP clients

def find_dhcp_client():
    for path in DHCP_CLIENTS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class DhcpClients(object):
    """Starts and stops one DHCP client per device and family, tracked by pid files under /run."""

    def __init__(self, directory=None, client=None):
        self.directory = directory or DHCP_DIR
        self.client = client if client is not None else find_dhcp_client()

    def _pidfile(self, dev, family):
        return os.path.join(self.directory, '%s.%d.pid' % (dev, family))

    def running(self, dev):
        return [family for family in (4, 6) if self._pid(dev, family)]

    def _pid(self, dev, family):
        try:
            with open(self._pidfile(dev, family)) as handle:
                pid = int(handle.read().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def start(self, dev, family):
        if self.client is None:
            raise VirtnodeError('no DHCP client (dhclient or busybox udhcpc) is installed')
        os.makedirs(self.directory, exist_ok=True)
        pidfile = self._pidfile(dev, family)
        name = os.path.basename(self.client)
        if name == 'dhclient':
            argv = [self.client, '-%d' % family, '-nw', '-pf', pidfile, dev]
        elif family == 4:
            argv = ([self.client, 'udhcpc'] if name == 'busybox' else [self.client]) + ['-b', '-p', pidfile, '-i', dev]
        else:
            argv = ([self.client, 'udhcpc6'] if name == 'busybox' else [self.client.replace('udhcpc', 'udhcpc6')]) + \
                ['-b', '-p', pidfile, '-i', dev]
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise VirtnodeError('cannot start DHCPv%d client on %s: %s' % (family, dev, err))

    def stop(self, dev, family):
        pid = self._pid(dev, family)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            os.unlink(self._pidfile(dev, family))
        except OSError:
            pass


# ---------------------------------------------------------------- apply and roll back

def run_command(ip, dhcp, args):
    if args and args[0] == '@dhcp':
        action, dev, family = args[1], args[2], int(args[3])
        if dhcp is None:
            raise VirtnodeError('DHCP clients are not available')
        (dhcp.start if action == 'start' else dhcp.stop)(dev, family)
        return
    ip.run(args)


def command_text(args):
    if args and args[0] == '@dhcp':
        return 'dhcp %s %s IPv%s' % (args[1], args[2], args[3])
    return format_command(args)


class ApplyError(VirtnodeError):
    def __init__(self, message, index, done):
        super().__init__(message, {'failed_step': index})
        self.index = index
        self.done = done


def apply_steps(ip, dhcp, steps, fail_at_step=None):
    """Run ``steps`` in order; on the first failure raise ApplyError with the steps done so far."""
    done = []
    for index, step in enumerate(steps):
        if fail_at_step is not None and index == fail_at_step:
            raise ApplyError('injected failure at step %d (%s) for testing rollback' % (index, step['description']), index, done)
        try:
            run_command(ip, dhcp, step['do'])
        except VirtnodeError as err:
            raise ApplyError('step %d (%s) failed: %s' % (index, step['description'], err), index, done)
        done.append(step)
    return done


def undo_steps(ip, dhcp, done):
    """Undo ``done`` steps in reverse order; return the errors (best effort, never raises)."""
    errors = []
    for step in reversed(done):
        for args in step['undo']:
            try:
                run_command(ip, dhcp, args)
            except VirtnodeError as err:
                errors.append('undo of %s: %s' % (step['description'], err))
    return errors


def restore_snapshot(ip, dhcp, snapshot, attempts=2):
    """Bring the snapshotted devices and default routes back; return (ok, remaining differences, errors)."""
    errors = []
    diffs = []
    for _attempt in range(attempts):
        state = read_state(ip, dhcp)
        diffs = differences(state, snapshot['devices'], snapshot['routes'])
        if not diffs:
            return True, [], errors
        try:
            steps = plan_changes(state, snapshot['devices'], snapshot['routes'])
        except VirtnodeError as err:
            errors.append(str(err))
            break
        for step in steps:
            try:
                run_command(ip, dhcp, step['do'])
            except VirtnodeError as err:
                errors.append(str(err))
    state = read_state(ip, dhcp)
    diffs = differences(state, snapshot['devices'], snapshot['routes'])
    return not diffs, diffs, errors


def rollback(ip, dhcp, done, snapshot):
    """Undo ``done``, then make sure the snapshot holds; return a report dict."""
    undo_errors = undo_steps(ip, dhcp, done)
    ok, diffs, errors = restore_snapshot(ip, dhcp, snapshot)
    return {'restored': ok, 'differences': diffs, 'errors': undo_errors + errors}


def check_kernel_support(ip, state, steps):
    """Fail early, before touching anything, if a step needs a link kind the kernel lacks."""
    for step in steps:
        args = step['do']
        if args[:2] == ['link', 'add'] and 'type' in args:
            kind = args[args.index('type') + 1]
            if kind not in ('bond', 'vlan'):
                continue
            parent = args[3] if kind == 'vlan' and args[2] == 'link' else None
            if kind == 'vlan' and parent not in state['links']:
                parent = next((n for n, l in state['links'].items() if l['kind'] == 'nic' and n != 'lo'), None)
            supported, message = ip.supports_kind(kind, parent)
            if not supported:
                what = {'bond': 'bonding', 'vlan': '802.1q VLAN'}[kind]
                raise VirtnodeError('the kernel cannot create %s devices (%s: %s); nothing was changed' % (
                    what, 'bonding module' if kind == 'bond' else '8021q module', message.strip() or 'not available'),
                    {'kind': kind, 'kernel_message': message})


# ---------------------------------------------------------------- files

def _write_json(path, data, mode=0o644):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    payload = (json.dumps(data, indent=2, sort_keys=True) + '\n').encode('utf-8')
    write_atomic(path, payload, mode)


def _read_json(path, default=None):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err), {'path': path})


def read_running(path=None):
    path = path or RUNNING_FILE
    data = _read_json(path) or {}
    return {'networks': data.get('networks') or {}, 'bonds': data.get('bonds') or {}}


def write_running(config, path=None):
    path = path or RUNNING_FILE
    _write_json(path, {'version': FORMAT_VERSION, 'networks': config['networks'], 'bonds': config['bonds']})


def read_persistent(path=None):
    path = path or PERSISTENT_FILE
    data = _read_json(path)
    if data is None:
        return None
    return {'networks': data.get('networks') or {}, 'bonds': data.get('bonds') or {}, 'saved_at': data.get('saved_at')}


def write_persistent(config, path=None):
    """setSafeNetworkConfig: the running config becomes what a boot-time restore applies."""
    path = path or PERSISTENT_FILE
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    _write_json(path, {'version': FORMAT_VERSION, 'saved_at': now,
                       'networks': config['networks'], 'bonds': config['bonds']}, 0o600)


def persisted_names(running, persistent):
    """Names of running networks and bonds whose persisted settings are identical."""
    persistent = persistent or empty_config()
    return dict((kind, sorted(n for n, spec in running[kind].items() if persistent[kind].get(n) == spec))
                for kind in ('networks', 'bonds'))


def log(message, path=None):
    path = path or LOG_FILE
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
        with open(path, 'a') as handle:
            handle.write('%s [%d] %s\n' % (stamp, os.getpid(), message))
    except OSError:
        pass


class HostLock(object):
    """Serializes network changes on one host (flock on a file under /run)."""

    def __init__(self, path=None, timeout=60):
        self.path = path or LOCK_FILE
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise VirtnodeError('another network change holds %s for more than %ss' % (self.path, self.timeout))
                time.sleep(0.1)

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None
        return False


# ---------------------------------------------------------------- views

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
    routes = [_route_text(r) for family in (4, 6) for r in state['routes'][family]]
    return {'devices': view, 'default_routes': routes}


def public_steps(steps):
    return [{'description': s['description'], 'command': command_text(s['do']),
             'undo': [command_text(u) for u in s['undo']]} for s in steps]
