# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host capabilities of a virtualization node, and host_info's whole report.

The facts are the ones a VDSM style management engine asks a node for as
its capabilities: CPU, memory, NUMA, networks, storage, software versions.
Statistics (the ``stats`` section) come from ``host/stats.py``. This file
holds no AnsibleModule code, so the node agent can use it too.

Conventions:

* every reader takes ``root`` (default ``/``) under which ``/proc``, ``/sys``,
  ``/etc`` and ``/dev`` are looked up, so tests can point it at a fake tree;
* readers fail soft (see ``host/readers.py``): an unreadable or missing file
  gives ``None`` (or an empty list), never an exception. Only libvirt
  connection errors are raised, as ``VirtnodeError``;
* helper commands (``qemu-img``, ``sanlock``) are run through a ``run``
  callable (see ``readers.run_probe``) and ``ip`` through an ``IpRoute``
  (``network/iproute.py``); tests can replace either.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import uuid

from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common import scsi_sysfs
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.host import readers
from ansible_collections.virtnode.kvm.plugins.module_utils.host.capabilities import (
    caps_domain_types, caps_machine_types, cpu_info, normalize_uuid, numa_info, parse_capabilities)
from ansible_collections.virtnode.kvm.plugins.module_utils.host import stats as host_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.common.readers import host_path, list_dir, read_int, read_optional_text
from ansible_collections.virtnode.kvm.plugins.module_utils.host.readers import available_kib, mib
from ansible_collections.virtnode.kvm.plugins.module_utils.network import iproute

SECTIONS = ('cpu', 'memory', 'numa', 'network', 'storage', 'versions', 'libvirt', 'stats')
# Sections whose facts come (at least partly) from a libvirt connection.
LIBVIRT_SECTIONS = frozenset(('cpu', 'numa', 'versions', 'libvirt'))

HOST_UUID_FILE = '/etc/virtnode/host_uuid'
VDSM_MOUNT_ROOT = paths.MOUNT_ROOT
IMAGES_DIR = '/var/lib/libvirt/images'

# Firmware placeholders that are not a usable machine identity.
_BOGUS_DMI_UUIDS = frozenset((
    '00000000-0000-0000-0000-000000000000',
    'ffffffff-ffff-ffff-ffff-ffffffffffff',
    '03000200-0400-0500-0006-000700080009',
))
_ARPHRD_LOOPBACK = 772
_VERSION_RE = re.compile(r'(\d+(?:\.\d+)+)')


def _first_version(text):
    if not text:
        return None
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


# --------------------------------------------------------------------------
# identity, kernel, OS

def read_host_uuid(root='/'):
    """``(uuid, source)`` of this host; ``(None, None)`` when nothing usable exists.

    Order: the id written by the virtnode bootstrap, the firmware (DMI)
    product UUID, then ``/etc/machine-id`` formatted as a UUID.
    """
    value = normalize_uuid(read_optional_text(host_path(root, HOST_UUID_FILE)))
    if value:
        return value, 'virtnode'
    value = normalize_uuid(read_optional_text(host_path(root, '/sys/class/dmi/id/product_uuid')))
    if value and value not in _BOGUS_DMI_UUIDS:
        return value, 'dmi'
    machine_id = read_optional_text(host_path(root, '/etc/machine-id'))
    if machine_id and re.match(r'^[0-9a-fA-F]{32}$', machine_id):
        return str(uuid.UUID(hex=machine_id)), 'machine-id'
    return None, None


def read_hostname():
    """The kernel host name (what ``hostname`` prints)."""
    try:
        name = socket.gethostname()
    except OSError:
        name = None
    return name or os.uname().nodename


def read_kernel():
    """Running kernel release, version and machine architecture."""
    uname = os.uname()
    return {'release': uname.release, 'version': uname.version, 'machine': uname.machine}


def parse_os_release(text):
    """Key/value pairs of an os-release file (quotes removed)."""
    values = {}
    for line in (text or '').splitlines():
        line = line.strip()
        if not line or line.startswith('#') or '=' not in line:
            continue
        key, value = line.split('=', 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in '"\'':
            value = value[1:-1]
            value = re.sub(r'\\(.)', r'\1', value)
        values[key.strip()] = value
    return values


def read_os_release(root='/'):
    """``id``, ``version_id``, ``pretty_name`` (and friends) from os-release."""
    text = read_optional_text(host_path(root, '/etc/os-release'))
    if text is None:
        text = read_optional_text(host_path(root, '/usr/lib/os-release'))
    values = parse_os_release(text)
    return {
        'id': values.get('ID'),
        'version_id': values.get('VERSION_ID'),
        'version_codename': values.get('VERSION_CODENAME'),
        'name': values.get('NAME'),
        'pretty_name': values.get('PRETTY_NAME'),
    }


# --------------------------------------------------------------------------
# memory

def memory_info(meminfo):
    """The ``memory`` section (MiB, hugepage counts)."""
    return {
        'total_mib': mib(meminfo.get('MemTotal')),
        'free_mib': mib(meminfo.get('MemFree')),
        'available_mib': mib(available_kib(meminfo)),
        'swap_total_mib': mib(meminfo.get('SwapTotal')),
        'swap_free_mib': mib(meminfo.get('SwapFree')),
        'hugepages_total': meminfo.get('HugePages_Total'),
        'hugepages_free': meminfo.get('HugePages_Free'),
        'hugepage_size_kib': meminfo.get('Hugepagesize'),
    }


# --------------------------------------------------------------------------
# network

_LINK_KINDS = {
    'bridge': 'bridge',
    'bond': 'bond',
    'vlan': 'vlan',
    'veth': 'veth',
    'tun': 'tun',
    'tap': 'tun',
}


def read_ip_addresses(ip=None):
    """Addresses and link kinds per interface from ``ip`` (an IpRoute); ``{}`` when it is missing or fails."""
    try:
        return iproute.interface_addresses((ip or iproute.IpRoute()).detailed_addresses())
    except VirtnodeError:
        return {}


def _uevent(sysdir):
    values = {}
    for line in (read_optional_text(os.path.join(sysdir, 'uevent')) or '').splitlines():
        if '=' in line:
            key, value = line.split('=', 1)
            values[key] = value
    return values


def classify_interface(name, sysdir, link_kind=None):
    """One of nic, bridge, bond, vlan, veth, loopback, tun, other."""
    if name == 'lo' or read_int(os.path.join(sysdir, 'type')) == _ARPHRD_LOOPBACK:
        return 'loopback'
    if link_kind in _LINK_KINDS:
        return _LINK_KINDS[link_kind]
    devtype = _uevent(sysdir).get('DEVTYPE')
    if os.path.isdir(os.path.join(sysdir, 'bridge')) or devtype == 'bridge':
        return 'bridge'
    if os.path.isdir(os.path.join(sysdir, 'bonding')) or devtype == 'bond':
        return 'bond'
    if devtype == 'vlan':
        return 'vlan'
    if os.path.exists(os.path.join(sysdir, 'tun_flags')):
        return 'tun'
    if link_kind:
        return 'other'
    if os.path.exists(os.path.join(sysdir, 'device')):
        return 'nic'
    ifindex = read_int(os.path.join(sysdir, 'ifindex'))
    iflink = read_int(os.path.join(sysdir, 'iflink'))
    if ifindex is not None and iflink is not None and ifindex != iflink:
        # A virtual link whose peer lives elsewhere, the usual veth shape.
        return 'veth'
    return 'other'


def _proc_vlan(root, name):
    text = read_optional_text(host_path(root, '/proc/net/vlan/%s' % name)) or ''
    vid = re.search(r'VID:\s*(\d+)', text)
    dev = re.search(r'Device:\s*(\S+)', text)
    return (int(vid.group(1)) if vid else None), (dev.group(1) if dev else None)


def read_interface(root, name, ip_info=None):
    """Facts of one interface under /sys/class/net."""
    sysdir = os.path.join(host_path(root, '/sys/class/net'), name)
    ip_info = ip_info or {}
    kind = classify_interface(name, sysdir, ip_info.get('link_kind'))
    speed = read_int(os.path.join(sysdir, 'speed'))
    master = None
    try:
        master = os.path.basename(os.readlink(os.path.join(sysdir, 'master')))
    except OSError:
        pass
    # A bond gives its slaves its own address: a slave is known by its permanent one, as VDSM reports it.
    slave_dir = os.path.join(sysdir, 'bonding_slave')
    mac = (read_optional_text(os.path.join(slave_dir, 'perm_hwaddr'))
           or read_optional_text(os.path.join(sysdir, 'address')))
    iface = {
        'name': name,
        'kind': kind,
        'mac': mac or None,
        'mtu': read_int(os.path.join(sysdir, 'mtu')),
        'operstate': read_optional_text(os.path.join(sysdir, 'operstate')),
        'speed': speed if speed is not None and speed > 0 else None,
        'master': master,
        'ipv4': list(ip_info.get('ipv4', [])),
        'ipv6': list(ip_info.get('ipv6', [])),
    }
    if os.path.isdir(slave_dir):
        iface['bond_slave_state'] = read_optional_text(os.path.join(slave_dir, 'state'))
    if kind == 'bridge':
        iface['ports'] = list_dir(os.path.join(sysdir, 'brif'))
        stp = read_int(os.path.join(sysdir, 'bridge', 'stp_state'))
        iface['stp'] = None if stp is None else stp != 0
    elif kind == 'bond':
        iface['slaves'] = sorted((read_optional_text(os.path.join(sysdir, 'bonding', 'slaves')) or '').split())
        mode = read_optional_text(os.path.join(sysdir, 'bonding', 'mode'))
        iface['mode'] = mode.split()[0] if mode else None
        iface['active_slave'] = read_optional_text(os.path.join(sysdir, 'bonding', 'active_slave')) or None
        iface['miimon'] = read_int(os.path.join(sysdir, 'bonding', 'miimon'))
    elif kind == 'vlan':
        vlan_id, parent = ip_info.get('vlan_id'), ip_info.get('link')
        if vlan_id is None or parent is None:
            proc_id, proc_parent = _proc_vlan(root, name)
            vlan_id = proc_id if vlan_id is None else vlan_id
            parent = proc_parent if parent is None else parent
        iface['vlan_id'] = vlan_id
        iface['parent'] = parent
    return iface


def network_info(root='/', ip_addresses=None):
    """The ``network`` section: one dict per interface, sorted by name."""
    ip_addresses = ip_addresses or {}
    netdir = host_path(root, '/sys/class/net')
    names = [name for name in list_dir(netdir) if os.path.isdir(os.path.join(netdir, name))]
    return [read_interface(root, name, ip_addresses.get(name)) for name in names]


# --------------------------------------------------------------------------
# storage

def _unescape_mount(text):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text):
    """/proc/self/mountinfo -> list of ``{'mountpoint', 'source', 'fstype', 'options'}``."""
    mounts = []
    for line in (text or '').splitlines():
        fields = line.split()
        try:
            sep = fields.index('-', 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mounts.append({
            'mountpoint': _unescape_mount(fields[4]),
            'source': _unescape_mount(fields[sep + 2]),
            'fstype': fields[sep + 1],
            'options': fields[5],
        })
    return mounts


def read_vdsm_mounts(root='/', prefix=VDSM_MOUNT_ROOT):
    """Mounts at or below the VDSM storage mount root."""
    mounts = parse_mountinfo(read_optional_text(host_path(root, '/proc/self/mountinfo')))
    prefix = prefix.rstrip('/')
    return [m for m in mounts if m['mountpoint'] == prefix or m['mountpoint'].startswith(prefix + '/')]


def read_iscsi_initiator_name(root='/'):
    """InitiatorName from /etc/iscsi/initiatorname.iscsi, or None."""
    for line in (read_optional_text(host_path(root, '/etc/iscsi/initiatorname.iscsi')) or '').splitlines():
        line = line.strip()
        if line.startswith('#') or '=' not in line:
            continue
        key, value = line.split('=', 1)
        if key.strip() == 'InitiatorName' and value.strip():
            return value.strip()
    return None


def read_iscsi_sessions(root='/'):
    """iSCSI sessions: target, portal, state and the disks they carry (read by :mod:`common.scsi_sysfs`)."""
    return [{
        'id': session['name'],
        'target': session['target'],
        'portal': '%s:%s' % (session['address'], session['port']) if session['address'] and session['port'] else None,
        'iface': session['iface'],
        'state': session['state'],
        'devices': sorted(disk['name'] for disk in session['disks']),
    } for session in scsi_sysfs.iscsi_sessions(root)]


def read_multipath_devices(root='/'):
    """Multipath devices with their paths (read by :mod:`common.scsi_sysfs`)."""
    devices = [{
        'name': found['name'],
        'wwid': found['wwid'],
        'dm_device': found['dm'],
        'size_bytes': found['size_bytes'],
        'vendor': found['vendor'],
        'model': found['model'],
        'paths': [{'device': path['name'], 'hctl': path['hctl'], 'state': path['state']} for path in found['paths']],
    } for found in scsi_sysfs.multipath_maps(root)]
    return sorted(devices, key=lambda d: d['name'] or '')


def path_usage(path, root='/'):
    """Size and free space of the filesystem holding ``path`` (or its nearest existing parent)."""
    checked = path
    while checked != '/' and not os.path.exists(host_path(root, checked)):
        checked = os.path.dirname(checked) or '/'
    usage = {'path': path, 'checked_path': checked, 'total_bytes': None, 'free_bytes': None}
    try:
        st = os.statvfs(host_path(root, checked))
    except OSError:
        return usage
    usage['total_bytes'] = st.f_blocks * st.f_frsize
    usage['free_bytes'] = st.f_bavail * st.f_frsize
    return usage


def _pid_alive(root, pidfile):
    pid = read_int(host_path(root, pidfile))
    return pid is not None and pid > 0 and os.path.exists(host_path(root, '/proc/%d' % pid))


def multipath_info(root='/'):
    """Whether multipath tools are installed, configured and running, and the multipath devices."""
    installed = any(os.path.exists(host_path(root, os.path.join(d, 'multipath'))) for d in ('/usr/sbin', '/sbin'))
    return {
        'installed': installed,
        'config_present': os.path.exists(host_path(root, '/etc/multipath.conf')),
        'daemon_running': _pid_alive(root, '/run/multipathd.pid') or _pid_alive(root, '/var/run/multipathd.pid'),
        'devices': read_multipath_devices(root),
    }


def storage_info(root='/'):
    """The ``storage`` section."""
    return {
        'vdsm_mount_root': VDSM_MOUNT_ROOT,
        'mounts': read_vdsm_mounts(root),
        'iscsi_initiator_name': read_iscsi_initiator_name(root),
        'iscsi_sessions': read_iscsi_sessions(root),
        'images': path_usage(IMAGES_DIR, root),
        'device_mapper': os.path.exists(host_path(root, '/dev/mapper/control')),
        'multipath': multipath_info(root),
    }


# --------------------------------------------------------------------------
# versions and libvirt

def versions_info(conn, run=None):
    """The ``versions`` section; ``conn`` is an open libvirt connection."""
    run = run or readers.run_probe
    return {
        'libvirt': {
            'library': libvirt_conn.library_version(),
            'daemon': libvirt_conn.format_version(conn.getLibVersion()),
        },
        'qemu': libvirt_conn.format_version(conn.getVersion()),
        'qemu_img': _first_version(run(['qemu-img', '--version'])),
        'sanlock': _first_version(run(['sanlock', 'version'])),
        'python': platform.python_version(),
    }


def libvirt_info(conn, caps, uri):
    """The ``libvirt`` section."""
    return {
        'uri': conn.getURI() or uri,
        'hypervisor': conn.getType(),
        'arch': caps['arch'],
        'host_uuid': caps['host_uuid'],
        'domain_types': caps_domain_types(caps),
        'machine_types': caps_machine_types(caps, 'x86_64'),
    }


# --------------------------------------------------------------------------
# everything together

def normalize_sections(sections):
    """Expand ``all`` and validate section names; returns a frozenset."""
    if not sections:
        return frozenset(SECTIONS)
    wanted = set()
    for name in sections:
        if name == 'all':
            wanted.update(SECTIONS)
        elif name in SECTIONS:
            wanted.add(name)
        else:
            raise VirtnodeError('unknown section %r; choose from all, %s' % (name, ', '.join(SECTIONS)),
                                {'field': 'gather'})
    return frozenset(wanted)


def needs_libvirt(sections):
    """True when gathering ``sections`` opens a libvirt connection."""
    return bool(normalize_sections(sections) & LIBVIRT_SECTIONS)


def gather(sections=None, uri=libvirt_conn.DEFAULT_URI, sample_interval=1.0, root='/',
           run=None, sleep=None, stats=None, ip=None):
    """Collect the requested sections into one dict.

    ``host_uuid``, ``host_uuid_source``, ``hostname``, ``sections``, ``kernel``
    and ``os`` are always present. A libvirt connection is opened only when a
    section needs one; failing to connect raises ``VirtnodeError``. ``run``,
    ``ip`` and ``sleep`` default to ``readers.run_probe``, an ``IpRoute`` and
    ``time.sleep``. ``stats``, when given (the node agent's cached sample), is
    used instead of sampling.
    """
    run = run or readers.run_probe
    wanted = normalize_sections(sections)
    interval = validate.sample_interval(sample_interval)
    host_uuid, source = read_host_uuid(root)
    result = {
        'host_uuid': host_uuid,
        'host_uuid_source': source,
        'hostname': read_hostname(),
        'sections': [name for name in SECTIONS if name in wanted],
        'kernel': read_kernel(),
        'os': read_os_release(root),
    }
    caps = None
    if wanted & LIBVIRT_SECTIONS:
        with libvirt_conn.connect(uri) as conn:
            caps = parse_capabilities(conn.getCapabilities())
            if 'versions' in wanted:
                result['versions'] = versions_info(conn, run)
            if 'libvirt' in wanted:
                result['libvirt'] = libvirt_info(conn, caps, uri)
    if 'cpu' in wanted:
        result['cpu'] = cpu_info(root, caps)
    if 'memory' in wanted:
        result['memory'] = memory_info(readers.read_meminfo(root))
    if 'numa' in wanted:
        result['numa'] = numa_info(caps)
    if 'network' in wanted:
        result['network'] = network_info(root, read_ip_addresses(ip))
    if 'storage' in wanted:
        result['storage'] = storage_info(root)
    if 'stats' in wanted:
        result['stats'] = stats if stats is not None else host_stats.stats_info(root, interval, sleep=sleep)
    return result


def host_info(module, query_agent):
    """The host_info module's work: the sections its options ask for, and where ``stats`` came from.

    ``query_agent(kind)`` is the node agent's answer for ``kind`` (None when
    the agent does not run). Its cached ``stats`` are used when the options
    ask for no sample of their own.
    """
    params = module.params
    asked_interval = params['sample_interval']
    interval = validate.sample_interval(1.0 if asked_interval is None else asked_interval)
    if needs_libvirt(params['gather']):
        libvirt_conn.require_libvirt(module)
    cached = None
    if params['source'] == 'auto' and asked_interval is None and 'stats' in normalize_sections(params['gather']):
        cached = query_agent('host')
    host = gather(sections=params['gather'], uri=params['uri'], sample_interval=interval,
                  stats=cached['data']['stats'] if cached else None)
    return {'changed': False, 'host': host, 'source': 'agent' if cached else 'direct'}
