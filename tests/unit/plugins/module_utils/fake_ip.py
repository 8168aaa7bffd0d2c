# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake kernel behind the IpRoute interface: the subset of `ip` the network code uses."""

from __future__ import annotations

import copy

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network.iproute import format_command


class FakeIp(object):
    def __init__(self, supported=('bridge', 'bond', 'vlan')):
        self.devs = {}
        self.rts = {4: [], 6: []}
        self.supported = set(supported)
        self.commands = []
        self.fail_on = None  # substring of a command that must fail

    # ---- set up
    def add_nic(self, name, mtu=1500, up=False, addresses=()):
        self.devs[name] = {'kind': None, 'type': 'veth', 'mtu': mtu, 'up': up, 'master': None,
                           'addresses': list(addresses), 'data': {}, 'parent': None}

    def snapshot(self):
        return copy.deepcopy((self.devs, self.rts))

    # ---- IpRoute interface
    def run(self, args):
        args = [str(a) for a in args]
        self.commands.append(format_command(args))
        if self.fail_on and self.fail_on in format_command(args):
            raise VirtnodeError('%s failed (exit 2): RTNETLINK answers: injected' % format_command(args),
                                {'command': format_command(args), 'rc': 2, 'stderr': 'RTNETLINK answers: injected'})
        family = None
        if args and args[0] in ('-4', '-6'):
            family = int(args[0][1])
            args = args[1:]
        try:
            return self._run(args, family) or ''
        except (KeyError, ValueError, IndexError) as err:
            raise VirtnodeError('%s failed (exit 1): %r' % (format_command(args), err),
                                {'command': format_command(args), 'rc': 1, 'stderr': repr(err)})

    def _err(self, args, message):
        raise VirtnodeError('%s failed (exit 2): %s' % (format_command(args), message),
                            {'command': format_command(args), 'rc': 2, 'stderr': message})

    def _run(self, args, family):
        if args[:2] == ['link', 'add']:
            rest = args[2:]
            parent = None
            if rest[0] == 'link':
                parent = rest[1]
                rest = rest[2:]
            name = rest[rest.index('name') + 1]
            kind = rest[rest.index('type') + 1]
            if kind not in self.supported:
                self._err(args, 'Error: Unknown device type.')
            if name in self.devs:
                self._err(args, 'RTNETLINK answers: File exists')
            opts = rest[rest.index('type') + 2:]
            data = dict(zip(opts[::2], opts[1::2]))
            mtu = self.devs[parent]['mtu'] if parent else 1500
            self.devs[name] = {'kind': kind, 'type': kind, 'mtu': mtu, 'up': False, 'master': None, 'addresses': [],
                               'data': data, 'parent': parent}
            return None
        if args[:2] == ['link', 'del']:
            name = args[3]
            if name not in self.devs:
                self._err(args, 'Cannot find device "%s"' % name)
            del self.devs[name]
            for link in self.devs.values():
                if link['master'] == name:
                    link['master'] = None
            for fam in (4, 6):
                self.rts[fam] = [r for r in self.rts[fam] if r['dev'] != name]
            for other in [n for n, l in self.devs.items() if l['parent'] == name]:
                del self.devs[other]
            return None
        if args[:2] == ['link', 'set']:
            name = args[3]
            link = self.devs.get(name)
            if link is None:
                self._err(args, 'Cannot find device "%s"' % name)
            rest = args[4:]
            if rest[0] == 'type':
                link['data'][rest[2]] = rest[3]
            elif rest[0] == 'master':
                master = self.devs[rest[1]]
                if master['kind'] == 'bond' and link['up']:
                    self._err(args, 'Error: Device can not be enslaved while up.')
                link['master'] = rest[1]
                if master['kind'] == 'bond':
                    link['mtu'] = master['mtu']
            elif rest[0] == 'nomaster':
                link['master'] = None
            elif rest[0] == 'mtu':
                link['mtu'] = int(rest[1])
            elif rest[0] in ('up', 'down'):
                link['up'] = rest[0] == 'up'
            return None
        if args[0] == 'addr' and args[1] in ('add', 'del'):
            address, name = args[2], args[4]
            link = self.devs[name]
            if args[1] == 'add':
                if address in link['addresses']:
                    self._err(args, 'RTNETLINK answers: File exists')
                link['addresses'].append(address)
            else:
                if address not in link['addresses']:
                    self._err(args, 'RTNETLINK answers: Cannot assign requested address')
                link['addresses'].remove(address)
                # The kernel drops routes whose gateway is no longer reachable.
                self.rts[4] = [r for r in self.rts[4] if r['dev'] != name or any(
                    a.split('/')[0].rsplit('.', 1)[0] == r['gateway'].rsplit('.', 1)[0] for a in link['addresses'])]
            return None
        if args[0] == 'route' and args[1] in ('add', 'del'):
            family = family or 4
            route = {'gateway': args[4], 'dev': args[6]}
            if 'metric' in args:
                route['metric'] = int(args[args.index('metric') + 1])
            if args[1] == 'add':
                if any(r.get('metric') == route.get('metric') for r in self.rts[family]):
                    self._err(args, 'RTNETLINK answers: File exists')
                self.rts[family].append(route)
            else:
                if route not in self.rts[family]:
                    self._err(args, 'RTNETLINK answers: No such process')
                self.rts[family].remove(route)
            return None
        raise ValueError('fake ip does not know: %s' % ' '.join(args))

    def json(self, args):
        args = list(args)
        if args == ['-d', 'link', 'show']:
            out = []
            for name, link in self.devs.items():
                item = {'ifname': name, 'mtu': link['mtu'], 'flags': ['BROADCAST', 'MULTICAST'] + (['UP'] if link['up'] else []),
                        'link_type': 'ether', 'address': '02:00:00:00:00:01'}
                if link['master']:
                    item['master'] = link['master']
                if link['kind']:
                    info = {'info_kind': link['kind']}
                    if link['kind'] == 'vlan':
                        info['info_data'] = {'protocol': '802.1Q', 'id': int(link['data']['id'])}
                        item['link'] = link['parent']
                    if link['kind'] == 'bond':
                        # As the kernel reports them: ARP targets are a list, numbers are numbers.
                        info['info_data'] = dict((k, v.split(',') if k == 'arp_ip_target' else int(v) if v.isdigit() else v)
                                                 for k, v in link['data'].items())
                    item['linkinfo'] = info
                else:
                    item['linkinfo'] = {'info_kind': 'veth'}
                out.append(item)
            return out
        if args == ['addr', 'show']:
            out = []
            for name, link in self.devs.items():
                infos = []
                for address in link['addresses']:
                    local, prefix = address.split('/')
                    infos.append({'family': 'inet6' if ':' in local else 'inet', 'local': local, 'prefixlen': int(prefix),
                                  'scope': 'global'})
                infos.append({'family': 'inet6', 'local': 'fe80::1', 'prefixlen': 64, 'scope': 'link'})
                out.append({'ifname': name, 'addr_info': infos})
            return out
        raise ValueError(args)

    def links(self):
        return self.json(['-d', 'link', 'show'])

    def addresses(self):
        return self.json(['addr', 'show'])

    def routes(self, family):
        return [dict({'dst': 'default'}, **r) for r in self.rts[family]]

    def supports_kind(self, kind, parent=None, probe_name='vnprobe0'):
        if kind in self.supported:
            return True, ''
        return False, 'Error: Unknown device type.'
