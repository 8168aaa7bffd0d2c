# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The desired network configuration: its vocabulary, how a request becomes one, and its validation.

The vocabulary follows VDSM's setupNetworks:

* a *network* is a logical network; a bridged network is a Linux bridge
  named after the network, a bridgeless one lives on its NIC, bond or VLAN
  device itself; a VLAN device on top of NIC or bond ``base`` is named
  ``base.VLAN``;
* a *bond* is a bonding device with its member NICs;
* a *config* is ``{'networks': {name: spec}, 'bonds': {name: spec}}``, every
  spec normalized (every field present); the one this collection manages
  is the *running config* (see store.py).

Nothing here touches the kernel: validation reads the current links as
given by state.read_state.
"""

from __future__ import annotations

import copy
import ipaddress

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

IFNAMSIZ = 16
MTU_MIN = 68
MTU_MAX = 65535
DEFAULT_MTU = 1500
VLAN_MIN = 1
VLAN_MAX = 4094
BOND_MODES = ('balance-rr', 'active-backup', 'balance-xor', 'broadcast', '802.3ad', 'balance-tlb', 'balance-alb')
DEFAULT_BOND_MODE = 'balance-rr'
# Device kinds this collection creates and deletes; any other link is a NIC to it.
CREATABLE_KINDS = ('bridge', 'vlan', 'bond')
# Stacking order of device kinds: a device sits on top of lower layers.
LAYER = {'nic': 0, 'bond': 1, 'vlan': 2, 'bridge': 3}


def valid_ifname(name):
    """The kernel's rule (dev_valid_name): 1..15 chars, not . or .., no '/', ':' or whitespace."""
    if not isinstance(name, str) or not name or len(name) >= IFNAMSIZ or name in ('.', '..'):
        return False
    # Also no controls, bidi or invisible characters, lone surrogates (common/validate.char_problem).
    return not any(c == '/' or c == ':' or c.isspace() for c in name) and validate.char_problem(name, spaces=False) is None


def ifname_problem(what, name):
    if not isinstance(name, str) or not name:
        return '%s: a name is required' % what
    if len(name) >= IFNAMSIZ:
        return "%s '%s': too long for a Linux interface name (%d characters, at most %d)" % (what, name, len(name), IFNAMSIZ - 1)
    if not valid_ifname(name):
        return "%s %s: not a valid Linux interface name (no '/', ':', whitespace, control characters, '.' or '..')" % (what, ascii(name))
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


def network_device(net):
    """The device carrying a network's addresses."""
    if net['bridged']:
        return net['name']
    base = net['nic'] or net['bond']
    return vlan_device(base, net['vlan']) if net['vlan'] is not None else base


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
            value = validate.integer(value, what)  # ASCII digits only, as int() also reads other scripts'
        except VirtnodeError:
            problems.append('%s: %s is not an integer' % (what, ascii(value)))
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
    owner_of_nic = _check_bonds(problems, config['bonds'], links)
    _check_networks(problems, config, links, owner_of_nic, dhcp_client, unchanged)
    return problems


def check_config(config, links, dhcp_client=None, unchanged=()):
    problems = validate_config(config, links, dhcp_client, unchanged)
    if problems:
        raise VirtnodeError('invalid network configuration, nothing was changed: ' + '; '.join(problems),
                            {'problems': problems})


def _check_bonds(problems, bonds, links):
    """Check every bond; return which bond each member NIC belongs to."""
    owner_of_nic = {}
    for name in sorted(bonds):
        problem = ifname_problem('bond', name)
        if problem:
            problems.append(problem)
            continue
        _check_bond(problems, name, bonds[name], links)
        _check_bond_members(problems, name, bonds[name], links, owner_of_nic)
    return owner_of_nic


def _check_bond(problems, name, bond, links):
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


def _check_bond_members(problems, name, bond, links, owner_of_nic):
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


def _check_networks(problems, config, links, owner_of_nic, dhcp_client, unchanged):
    networks = config['networks']
    bonds = config['bonds']
    users = {}  # (base device, VLAN) -> the network on it
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
        _check_network_base(problems, net, links, bonds, owner_of_nic, unchanged)
        _check_network_vlan(problems, net, base)
        _check_int(problems, "network '%s' mtu" % name, net['mtu'], MTU_MIN, MTU_MAX)
        if base:
            key = (base, net['vlan'])
            if key in users:
                problems.append("networks '%s' and '%s' are both on %s%s" % (
                    users[key], name, base, ' VLAN %s' % net['vlan'] if net['vlan'] is not None else ' without VLAN'))
            users[key] = name
        if net['bridged']:
            _check_bridge_name(problems, net, links, bonds)
        _check_addressing(problems, net, dhcp_client)
        if net['default_route']:
            default_route.append(name)
    if len(default_route) > 1:
        problems.append('only one network can have the default route, not %s' % ', '.join(default_route))


def _check_network_base(problems, net, links, bonds, owner_of_nic, unchanged):
    """The NIC or bond a network sits on."""
    name = net['name']
    if (net['nic'] or net['bond']) is None and not net['bridged']:
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


def _check_network_vlan(problems, net, base):
    name = net['name']
    vlan = net['vlan']
    if vlan is None:
        return
    vlan = _check_int(problems, "network '%s' vlan" % name, vlan, VLAN_MIN, VLAN_MAX)
    if vlan is not None and base:
        problem = ifname_problem("network '%s' VLAN device" % name, vlan_device(base, vlan))
        if problem:
            problems.append(problem)
    if vlan is not None and base is None:
        problems.append("network '%s': a VLAN needs a nic or a bond" % name)


def _check_bridge_name(problems, net, links, bonds):
    name = net['name']
    existing = links.get(name)
    if existing and existing['kind'] != 'bridge':
        problems.append("network '%s': its bridge would be named '%s', but a %s device with that name exists" % (
            name, name, existing['kind']))
    if name in bonds:
        problems.append("network '%s': a bond has the same name" % name)


def _check_addressing(problems, net, dhcp_client):
    name = net['name']
    for family in (4, 6):
        _check_ip(problems, net, family)
        if net['ipv%d' % family]['method'] == 'dhcp' and dhcp_client is None:
            problems.append("network '%s': DHCP requested but no DHCP client (dhclient or busybox udhcpc) is installed" % name)
    if net['default_route'] and net['ipv4']['method'] == 'static' and not net['ipv4']['gateway'] and not net['ipv6']['gateway']:
        problems.append("network '%s': default_route needs a gateway (ipv4.gateway or ipv6.gateway) or DHCP" % name)
