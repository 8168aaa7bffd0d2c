# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VMs of a set of libvirt hosts, read for the ``virtnode.kvm.vms`` inventory plugin.

Runs on the controller. :func:`read_hosts` opens one connection per host URI
(through the collection's one wrapper, ``libvirt/connection.py``), reads every
domain's state, definition and guest addresses, and returns plain data (JSON
safe, so the inventory cache can keep it). :func:`inventory_entries` turns that
data into inventory hosts, their variables and their groups; it does no I/O, so
the plugin's cache and the unit tests share it.

A host that cannot be reached gives an entry with ``error`` instead of ``vms``:
one host down never hides the others.

Where a disk is on storage is read from its path, as VDSM lays volumes out:
``.../<sd>/images/<img>/<vol>`` (under the mount root, a pool directory or
``blockSD``) or ``/run/virtnode/block/<sd>/<img>/<vol>`` give the storage domain,
image and volume; a path under a pool's directory,
``/rhev/data-center/<sp>/<sd or mastersd>/images/...``, gives the pool too. A
path under the mount root does not name its pool: such disks group by storage
domain only.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats

# Where guest addresses come from, in the order tried by default.
IP_SOURCES = ('agent', 'lease', 'arp')
_IP_SOURCE_CONSTANTS = {
    'agent': 'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT',
    'lease': 'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE',
    'arp': 'VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP',
}
# Default ports of the remote transports, probed before libvirt connects (libvirt has no connect timeout).
TRANSPORT_PORTS = {'tcp': 16509, 'tls': 16514, 'ssh': 22, 'libssh': 22, 'libssh2': 22}
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_PARALLEL_HOSTS = 8

_UUID = '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'
_IMAGES_RE = re.compile(r'(?:\A|/)(%s|mastersd)/images/(%s)/(%s)\Z' % (_UUID, _UUID, _UUID))
_BLOCK_RE = re.compile(r'\A/run/virtnode/block/(%s)/(%s)/(%s)\Z' % (_UUID, _UUID, _UUID))
_POOL_RE = re.compile(r'\A%s/(%s)/(?:%s|mastersd)/images/' % (re.escape(paths.DATA_CENTER_ROOT), _UUID, _UUID))
_UNSAFE_GROUP_CHARS = re.compile(r'[^A-Za-z0-9_]')
# Links to the VDSM master domain name no domain: the pool is known, the domain is not.
MASTER_LINK = 'mastersd'


# --------------------------------------------------------------------------
# pure helpers

def disk_location(path):
    """``{'pool', 'domain', 'image', 'volume'}`` of a storage-domain volume's path (UUIDs lower case), else None.

    ``pool`` is None unless the path runs through a pool's directory; ``domain``
    is None for a path through the pool's ``mastersd`` link.
    """
    if not path:
        return None
    path = re.sub('/+', '/', path)
    match = _BLOCK_RE.match(path) or _IMAGES_RE.search(path)
    if match is None:
        return None
    domain, image, volume = (part.lower() for part in match.groups())
    pool = _POOL_RE.match(path)
    return {'pool': pool.group(1).lower() if pool else None, 'domain': None if domain == MASTER_LINK else domain,
            'image': image, 'volume': volume}


def safe_group_name(*parts):
    """A group name Ansible takes as it is: letters, digits and ``_``, not starting with a digit."""
    name = _UNSAFE_GROUP_CHARS.sub('_', '_'.join(str(p) for p in parts if p not in (None, ''))).lower()
    return '_' + name if name[:1].isdigit() else name


def uri_host(uri):
    """The host part of a libvirt URI (None for a local one such as ``qemu:///system``)."""
    try:
        return urlsplit(uri).hostname
    except ValueError:
        return None


def probe_target(uri):
    """``(host, port)`` to try before connecting to a remote ``uri``, or None (local, or a transport not probed)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    transport = parts.scheme.partition('+')[2] or 'tls'  # qemu://host/system is TLS
    if transport not in TRANSPORT_PORTS:
        return None
    return parts.hostname, port or TRANSPORT_PORTS[transport]


def flatten_addresses(interfaces, source):
    """libvirt's ``interfaceAddresses`` answer as a list of dicts; the loopback is left out."""
    found = []
    for ifname in sorted(interfaces or {}):
        details = interfaces[ifname] or {}
        for addr in details.get('addrs') or []:
            text = addr.get('addr')
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if ip.is_loopback:
                continue
            found.append({'interface': ifname, 'mac': (details.get('hwaddr') or '').lower() or None,
                          'address': str(ip), 'prefix': addr.get('prefix'),
                          'family': 'ipv4' if ip.version == 4 else 'ipv6', 'source': source})
    return found


def preferred_address(addresses, family='ipv4'):
    """The address ``ansible_host`` gets: the first global one of ``family``, then of the other family."""
    usable = [a for a in addresses if not ipaddress.ip_address(a['address']).is_link_local]
    for wanted in (family, 'ipv6' if family == 'ipv4' else 'ipv4'):
        for addr in usable:
            if addr['family'] == wanted:
                return addr['address']
    return None


# --------------------------------------------------------------------------
# reading a host

def _guest_addresses(dom, sources, binding):
    """``(source, addresses)`` from the first source in ``sources`` that gives any, else ``(None, [])``."""
    for source in sources:
        try:
            answer = dom.interfaceAddresses(constants.value(_IP_SOURCE_CONSTANTS[source], binding))
        except libvirt_conn.LibvirtError:
            # No guest agent, no libvirt network lease, no neighbour entry: try the next source.
            continue
        addresses = flatten_addresses(answer, source)
        if addresses:
            return source, addresses
    return None, []


def _status(dom, state, reason):
    active = state in (vm_stats.RUNNING, vm_stats.BLOCKED, vm_stats.PAUSED, vm_stats.SHUTDOWN, vm_stats.PMSUSPENDED)
    job_op = vm_stats.current_job_operation(dom) if active and not vm_stats.job_busy(dom) else None
    return vm_stats.vdsm_status(state, reason, job_op), active


def read_domain(dom, ip_sources=IP_SOURCES, binding=None):
    """One domain as plain data: identity, status, CPUs, memory, disks, NICs and guest addresses."""
    state, reason = dom.state()
    status, active = _status(dom, state, reason)
    live = domxml.parse_live(dom.XMLDesc(0))
    info = dom.info()
    disks = []
    for disk in live['disks']:
        entry = {'target': disk['target'], 'path': disk['path'], 'format': disk['format'], 'bus': disk['bus'],
                 'pool': None, 'domain': None, 'image': None, 'volume': None}
        entry.update(disk_location(disk['path']) or {})
        disks.append(entry)
    source, addresses = _guest_addresses(dom, ip_sources, binding) if active and ip_sources else (None, [])
    return {
        'name': dom.name(),
        'uuid': dom.UUIDString().lower(),
        'status': status,
        'active': active,
        'persistent': bool(dom.isPersistent()),
        'vcpus': info[3] if active else live['vcpus'],
        'memory_mib': (live['max_memory'] or info[1]) // 1024,
        'disks': disks,
        'nics': [{'mac': nic['mac'], 'source_type': nic['source_type'], 'source': nic['source'],
                  'model': nic['model'], 'device': nic['target_dev']} for nic in live['nics']],
        'ips': addresses,
        'ips_source': source,
    }


def _probe(uri, timeout):
    target = probe_target(uri)
    if target is None or not timeout:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        raise VirtnodeError('cannot connect to libvirt at %s: %s port %d does not answer within %ss (%s)'
                            % (uri, target[0], target[1], timeout, err.strerror or err), {'uri': uri}) from err


def read_host(uri, ip_sources=IP_SOURCES, include_inactive=True, connect_timeout=DEFAULT_CONNECT_TIMEOUT):
    """``{'uri', 'hostname', 'vms'}`` of one host, or ``{'uri', 'hostname', 'error'}`` when it cannot be read.

    A VM that cannot be read (other than one gone meanwhile) is left out with a
    line in ``warnings``.

    The connection is read-only unless the guest agent is asked for addresses
    (libvirt refuses agent calls on a read-only connection).
    """
    result = {'uri': uri, 'hostname': uri_host(uri)}
    try:
        _probe(uri, connect_timeout)
        with libvirt_conn.connect(uri, readonly='agent' not in ip_sources) as conn:
            result['hostname'] = conn.getHostname() or result['hostname']
            vms = []
            for dom in conn.listAllDomains(0):
                try:
                    vm = read_domain(dom, ip_sources, libvirt_conn.libvirt)
                except libvirt_conn.LibvirtError as err:
                    # Gone while being read (undefined, migrated away): it is simply not there.
                    if err.get_error_code() != constants.value('VIR_ERR_NO_DOMAIN', libvirt_conn.libvirt):
                        result.setdefault('warnings', []).append(
                            'cannot read a VM on %s: %s' % (uri, libvirt_conn.error_text(err)))
                    continue
                if vm['active'] or include_inactive:
                    vms.append(vm)
            result['vms'] = sorted(vms, key=lambda vm: (vm['name'], vm['uuid']))
    except VirtnodeError as err:
        result['error'] = str(err)
    return result


def read_hosts(uris, ip_sources=IP_SOURCES, include_inactive=True, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
               max_parallel=MAX_PARALLEL_HOSTS):
    """:func:`read_host` of every URI, several at a time; the answers in the order of ``uris``."""
    uris = list(dict.fromkeys(uris))
    if not uris:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(uris)))) as pool:
        return list(pool.map(lambda uri: read_host(uri, ip_sources, include_inactive, connect_timeout), uris))


# --------------------------------------------------------------------------
# inventory entries

def _rank(vm):
    # Where a VM is twice (a migration's two ends, or defined on one host and running on another),
    # the one running wins; among equals, the first host listed.
    return 0 if vm['status'] == vm_stats.UP else 1 if vm['active'] else 2


def inventory_entries(hosts, hostname='name', vars_prefix='virtnode_', group_prefix='virtnode_',
                      set_ansible_host=False, address_family='ipv4'):
    """``(entries, warnings)``: each entry ``{'name', 'vars', 'groups'}``, one per VM, in a stable order."""
    chosen = {}
    order = []
    warnings = []
    for host in hosts:
        if 'error' in host:
            continue
        for vm in host['vms']:
            key = vm['uuid'] if hostname == 'uuid' else vm['name']
            candidate = (vm, host)
            if key not in chosen:
                chosen[key] = candidate
                order.append(key)
                continue
            kept = chosen[key]
            winner = candidate if _rank(vm) < _rank(kept[0]) else kept
            chosen[key] = winner
            warnings.append('VM %s is on %s (%s) and on %s (%s): listed from %s'
                            % (key, kept[1]['hostname'], kept[0]['status'], host['hostname'], vm['status'],
                               winner[1]['hostname']))
    entries = []
    for key in order:
        vm, host = chosen[key]
        variables = dict((vars_prefix + field, vm[field]) for field in
                         ('name', 'uuid', 'status', 'persistent', 'vcpus', 'memory_mib', 'disks', 'nics', 'ips'))
        variables[vars_prefix + 'host'] = host['hostname']
        variables[vars_prefix + 'host_uri'] = host['uri']
        if set_ansible_host:
            address = preferred_address(vm['ips'], address_family)
            if address:
                variables['ansible_host'] = address
        groups = [group_prefix + 'vms',
                  safe_group_name(group_prefix + 'host', host['hostname'] or host['uri']),
                  safe_group_name(group_prefix + 'status', vm['status'])]
        for disk in vm['disks']:
            if disk['pool']:
                groups.append(safe_group_name(group_prefix + 'pool', disk['pool']))
            if disk['domain']:
                groups.append(safe_group_name(group_prefix + 'storage_domain', disk['domain']))
        entries.append({'name': key, 'vars': variables, 'groups': list(dict.fromkeys(groups))})
    return entries, warnings
