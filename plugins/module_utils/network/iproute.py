# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one wrapper around iproute2's ``ip`` command.

Every read of kernel network state goes through :meth:`IpRoute.json`
(``ip -j ...``) and every change through :meth:`IpRoute.run`, so tests can
replace this single object with a fake kernel. Failures raise
:class:`VirtnodeError` carrying the command line, exit code and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SEARCH_PATH = ('/usr/sbin', '/sbin', '/usr/bin', '/bin')
COMMAND_TIMEOUT = 30


def find_ip():
    for directory in SEARCH_PATH:
        candidate = os.path.join(directory, 'ip')
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def format_command(args):
    return 'ip ' + ' '.join(str(a) for a in args)


class IpRoute(object):
    """Runs ``ip`` with a C locale; raises VirtnodeError on any failure."""

    def __init__(self, binary=None, timeout=COMMAND_TIMEOUT):
        self.binary = binary or find_ip()
        self.timeout = timeout

    def run(self, args):
        """Run ``ip ARGS``; return its stdout as text."""
        args = [str(a) for a in args]
        if self.binary is None:
            raise VirtnodeError('iproute2 is not installed: no ip command in %s' % ':'.join(SEARCH_PATH),
                                {'command': format_command(args)})
        env = dict(os.environ, LC_ALL='C', LANG='C')
        try:
            proc = subprocess.run([self.binary] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise VirtnodeError('%s timed out after %ss' % (format_command(args), self.timeout),
                                {'command': format_command(args)})
        except OSError as err:
            raise VirtnodeError('cannot run %s: %s' % (format_command(args), err.strerror or err),
                                {'command': format_command(args)})
        stderr = proc.stderr.decode('utf-8', 'replace').strip()
        if proc.returncode != 0:
            raise VirtnodeError('%s failed (exit %d): %s' % (format_command(args), proc.returncode, stderr or 'no message'),
                                {'command': format_command(args), 'rc': proc.returncode, 'stderr': stderr})
        return proc.stdout.decode('utf-8', 'replace')

    def json(self, args):
        """Run ``ip -j ARGS`` and return the parsed JSON (a list)."""
        out = self.run(['-j'] + list(args))
        if not out.strip():
            return []
        try:
            return json.loads(out)
        except ValueError as err:
            raise VirtnodeError('%s printed invalid JSON: %s' % (format_command(['-j'] + list(args)), err),
                                {'command': format_command(['-j'] + list(args))})

    # Convenience readers, all built on json().
    def links(self):
        return self.json(['-d', 'link', 'show'])

    def addresses(self):
        return self.json(['addr', 'show'])

    def routes(self, family):
        return self.json(['-%d' % family, 'route', 'show', 'table', 'main'])

    def supports_kind(self, kind, parent=None, probe_name='vnprobe0'):
        """Whether the kernel can create links of ``kind`` (bond, vlan, ...).

        Returns (True, '') or (False, the kernel's message). A VLAN probe
        needs an existing ``parent`` device.
        """
        if kind == 'vlan':
            add = ['link', 'add', 'link', parent, 'name', probe_name, 'type', 'vlan', 'id', '4094']
        else:
            add = ['link', 'add', 'name', probe_name, 'type', kind]
        try:
            self.run(add)
        except VirtnodeError as err:
            return False, err.details.get('stderr') or str(err)
        try:
            self.run(['link', 'del', 'dev', probe_name])
        except VirtnodeError:
            pass
        return True, ''

    def detailed_addresses(self):
        """Every link with its addresses and link details (kind, VLAN id): ``ip -d addr show``."""
        return self.json(['-d', 'addr', 'show'])


def interface_addresses(entries):
    """``ip -j -d addr show`` entries -> ``{ifname: {'ipv4', 'ipv6', 'link_kind', 'vlan_id', 'link'}}``.

    Addresses are ``address/prefix`` strings. Entries that are not links
    (anything but a list of objects with an ``ifname``) are skipped.
    """
    result = {}
    if not isinstance(entries, list):
        return result
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get('ifname'):
            continue
        ipv4, ipv6 = [], []
        for addr in entry.get('addr_info') or []:
            if not isinstance(addr, dict) or 'local' not in addr:
                continue
            cidr = '%s/%s' % (addr['local'], addr.get('prefixlen', 32 if addr.get('family') == 'inet' else 128))
            if addr.get('family') == 'inet':
                ipv4.append(cidr)
            elif addr.get('family') == 'inet6':
                ipv6.append(cidr)
        linkinfo = entry.get('linkinfo') or {}
        info_data = linkinfo.get('info_data') or {}
        result[entry['ifname']] = {
            'ipv4': ipv4,
            'ipv6': ipv6,
            'link_kind': linkinfo.get('info_kind'),
            'vlan_id': info_data.get('id') if linkinfo.get('info_kind') == 'vlan' else None,
            'link': entry.get('link'),
        }
    return result
