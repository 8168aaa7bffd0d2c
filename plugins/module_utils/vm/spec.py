# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A typed VM specification: validation, libvirt domain XML, comparison with a live domain.

Three steps, all pure (no libvirt calls), so the module, the node agent and
the unit tests share them:

* :func:`normalize` turns module options into a spec dict (sizes in KiB,
  disk targets assigned, MAC addresses lower case) or raises VirtnodeError.
* :func:`build_xml` renders that spec as libvirt domain XML (lxml).
* :func:`parse_live` reads a live or persistent domain XML back into the
  same shape, and :func:`compare` lists the differences, each marked as
  appliable live or needing a restart.

Only fields the user set are compared: what libvirt fills in by itself
(MAC addresses of NICs given without one, PCI addresses, aliases, default
controllers, the expanded machine type) never counts as a difference.

Disks are matched by source path, NICs by MAC address (or, without one, by
source in order), so reordering or auto-assigned names never cause churn.
"""

from __future__ import annotations

import glob
import os
import re
import stat

from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.validate import safe_name, size_bytes, uuid_str

try:
    from lxml import etree
    HAS_LXML = True
except ImportError:
    etree = None
    HAS_LXML = False

METADATA_NS = 'http://virtnode.kvm/xmlns/vm/1.0'
METADATA_PREFIX = 'virtnode'
CONSOLE_LOG_DIR = '/var/log/libvirt/qemu'
VDSM_MOUNT_ROOT = paths.MOUNT_ROOT

DISK_BUSES = ('virtio', 'sata', 'scsi', 'ide')
DISK_FORMATS = ('raw', 'qcow2')
DISK_CACHES = ('none', 'writeback', 'writethrough', 'directsync', 'unsafe', 'default')
DISK_IO = ('threads', 'native', 'io_uring')
ERROR_POLICIES = ('stop', 'report', 'ignore', 'enospace')
# Argument spec of a storage-domain volume given by its three UUIDs (saved_volume, snapshot volumes).
VOLUME_REF_OPTIONS = dict(domain_id=dict(type='str', required=True), image_id=dict(type='str', required=True),
                          volume_id=dict(type='str', required=True))
NIC_MODELS = ('virtio', 'e1000', 'e1000e', 'rtl8139')
BOOT_DEVICES = ('hd', 'cdrom', 'network', 'fd')
GRAPHICS_TYPES = ('vnc', 'spice')
DOMAIN_TYPES = ('kvm', 'qemu')
CPU_MODES = ('host-passthrough', 'host-model')

_MAC_RE = re.compile(r'\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z')
_ENV_RE = re.compile(r'\A[A-Za-z_][A-Za-z0-9_]*\Z')
_TARGET_RE = re.compile(r'\A(vd|sd|hd)[a-z]{1,2}\Z')
_VALID_TO_RE = re.compile(r'\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\Z')
_TARGET_PREFIX = {'virtio': 'vd', 'sata': 'sd', 'scsi': 'sd', 'ide': 'hd'}
KIB = 1024
MIB_IN_KIB = 1024

# Fields compared at top level, and whether a running domain can take a change live.
RESTART_FIELDS = ('domain_type', 'machine', 'max_memory', 'vcpus', 'cpu_topology', 'cpu_model',
                  'boot_order', 'kernel', 'initrd', 'cmdline', 'console_log', 'lease')


def _require_lxml():
    if not HAS_LXML:
        raise VirtnodeError('python lxml is required on the managed host (Debian: python3-lxml)')


# --------------------------------------------------------------------------
# validation

def _kib(value, what, minimum_bytes=0):
    size = size_bytes(value, what, minimum=minimum_bytes)
    return (size + KIB - 1) // KIB


def _round_mib(kib):
    """QEMU's memory sizes are aligned by libvirt to whole MiB on x86."""
    return ((kib + MIB_IN_KIB - 1) // MIB_IN_KIB) * MIB_IN_KIB


def _choice(value, choices, what):
    if value not in choices:
        raise VirtnodeError('%s must be one of %s, got %r' % (what, ', '.join(choices), value), {'field': what})
    return value


def normalize_mac(value, what='nic mac'):
    mac = str(value).strip().lower().replace('-', ':')
    if not _MAC_RE.match(mac):
        raise VirtnodeError('%s is not a MAC address (six hex pairs separated by ":"): %r' % (what, value), {'field': what})
    if int(mac[:2], 16) & 1:
        raise VirtnodeError('%s is a multicast address, a NIC needs a unicast one: %s' % (what, mac), {'field': what})
    return mac


def volume_path_candidates(domain_id, image_id, volume_id, mount_root=VDSM_MOUNT_ROOT):
    """Paths a storage-domain volume may have under VDSM's mount root (file and block domains)."""
    return sorted(glob.glob(os.path.join(glob.escape(mount_root), '*', domain_id, 'images', image_id, volume_id)))


def resolve_volume(domain_id, image_id, volume_id):
    """Default resolver for disks given as ``{domain_id, image_id, volume_id}``.

    It finds an already prepared volume (mounted file domain, or an active
    block volume linked under the mount root). The storage layer replaces
    this with its own prepare step (activate the LV, check legality) by
    passing ``resolver=`` to :func:`normalize`.
    """
    found = volume_path_candidates(domain_id, image_id, volume_id)
    if not found:
        raise VirtnodeError('storage volume %s/%s/%s is not prepared on this host (no %s/*/%s/images/%s/%s)'
                            % (domain_id, image_id, volume_id, VDSM_MOUNT_ROOT, domain_id, image_id, volume_id),
                            {'field': 'disks'})
    return found[0]


def _path_kind(path, stat_fn):
    try:
        st = stat_fn(path)
    except OSError as err:
        raise VirtnodeError('disk path %s cannot be used: %s' % (path, err.strerror or err), {'field': 'disks', 'path': path})
    if stat.S_ISBLK(st.st_mode):
        return 'block'
    if stat.S_ISREG(st.st_mode):
        return 'file'
    raise VirtnodeError('disk path %s is neither a regular file nor a block device' % path, {'field': 'disks', 'path': path})


def activate_block_volume(domain_id, image_id, volume_id):
    """Default block resolver: the volume activated as a block device on this host."""
    # Imported here: only VMs with block disks pay for the storage layer's import.
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block  # pylint: disable=import-outside-toplevel
    return thin_block.present_volume(domain_id, image_id, volume_id, activate=True)


def planned_block_volume(domain_id, image_id, volume_id):
    """Block resolver for check mode: where the volume would appear, activating nothing."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block  # pylint: disable=import-outside-toplevel
    return thin_block.present_volume(domain_id, image_id, volume_id, activate=False)


def _normalize_disk(index, disk, stat_fn, resolver, block_resolver=activate_block_volume):
    what = 'disks[%d]' % index
    planned_block = False
    if not isinstance(disk, dict):
        raise VirtnodeError('%s must be a dict' % what, {'field': what})
    vol_keys = [k for k in ('domain_id', 'image_id', 'volume_id') if disk.get(k)]
    path = disk.get('path')
    if path and vol_keys:
        raise VirtnodeError('%s: give either path or domain_id/image_id/volume_id, not both' % what, {'field': what})
    if vol_keys:
        if len(vol_keys) != 3:
            raise VirtnodeError('%s: a storage volume needs domain_id, image_id and volume_id' % what, {'field': what})
        ids = [uuid_str(disk[k], '%s %s' % (what, k)) for k in ('domain_id', 'image_id', 'volume_id')]
        # type=block presents the volume through the block backend (LV activation, or a loop
        # device over a file domain's volume): what thin provisioning watches and extends.
        path = block_resolver(*ids) if disk.get('type') == 'block' else resolver(*ids)
        if disk.get('type') == 'block' and not os.path.lexists(path):
            planned_block = True
    if not path:
        raise VirtnodeError('%s needs a path (or domain_id/image_id/volume_id)' % what, {'field': what})
    if not os.path.isabs(path) or '\0' in path:
        raise VirtnodeError('%s path must be absolute: %r' % (what, path), {'field': what})
    kind = 'block' if planned_block else _path_kind(path, stat_fn)
    if disk.get('type') and disk['type'] != kind:
        raise VirtnodeError('%s: %s is a %s, not a %s' % (what, path, kind, disk['type']), {'field': what})
    bus = _choice(disk.get('bus') or 'virtio', DISK_BUSES, what + ' bus')
    target = disk.get('target')
    if target is not None and not _TARGET_RE.match(target):
        raise VirtnodeError('%s target must look like vda, sdb or hdc: %r' % (what, target), {'field': what})
    if target is not None and not target.startswith(_TARGET_PREFIX[bus]):
        raise VirtnodeError('%s target %s does not fit bus %s (use %sX)' % (what, target, bus, _TARGET_PREFIX[bus]),
                            {'field': what})
    return {
        'path': path,
        'type': kind,
        'format': _choice(disk.get('format') or 'raw', DISK_FORMATS, what + ' format'),
        'bus': bus,
        'target': target,
        'target_auto': target is None,
        'cache': _choice(disk.get('cache') or 'none', DISK_CACHES, what + ' cache'),
        'io': _choice(disk['io'], DISK_IO, what + ' io') if disk.get('io') else None,
        'error_policy': _choice(disk.get('error_policy') or 'stop', ERROR_POLICIES, what + ' error_policy'),
        'readonly': bool(disk.get('readonly', False)),
        'serial': disk.get('serial') or None,
        'volume': dict(zip(('domain_id', 'image_id', 'volume_id'), ids)) if vol_keys else None,
    }


def _target_name(prefix, index):
    letters = 'abcdefghijklmnopqrstuvwxyz'
    if index < 26:
        return prefix + letters[index]
    return prefix + letters[index // 26 - 1] + letters[index % 26]


def assign_targets(disks, taken=()):
    """Give every disk without a target the first free name for its bus."""
    used = set(taken) | set(d['target'] for d in disks if d['target'])
    for disk in disks:
        if disk['target']:
            continue
        prefix = _TARGET_PREFIX[disk['bus']]
        index = 0
        while _target_name(prefix, index) in used:
            index += 1
        disk['target'] = _target_name(prefix, index)
        used.add(disk['target'])
    return disks


def _normalize_nic(index, nic):
    what = 'nics[%d]' % index
    if not isinstance(nic, dict):
        raise VirtnodeError('%s must be a dict' % what, {'field': what})
    if bool(nic.get('bridge')) == bool(nic.get('network')):
        raise VirtnodeError('%s needs exactly one of bridge or network' % what, {'field': what})
    return {
        'source_type': 'bridge' if nic.get('bridge') else 'network',
        'source': nic.get('bridge') or nic.get('network'),
        'mac': normalize_mac(nic['mac'], what + ' mac') if nic.get('mac') else None,
        'model': _choice(nic.get('model') or 'virtio', NIC_MODELS, what + ' model'),
    }


def _normalize_graphics(graphics):
    if not graphics:
        return None
    gtype = _choice(graphics.get('type') or 'vnc', GRAPHICS_TYPES, 'graphics type')
    valid_to = graphics.get('password_valid_to')
    if valid_to is not None:
        valid_to = str(valid_to).replace(' ', 'T').rstrip('Z')
        if not _VALID_TO_RE.match(valid_to):
            raise VirtnodeError('graphics password_valid_to must be a UTC time YYYY-MM-DDTHH:MM:SS, got %r'
                                % graphics.get('password_valid_to'), {'field': 'graphics'})
        if not graphics.get('password'):
            raise VirtnodeError('graphics password_valid_to needs a password', {'field': 'graphics'})
    if gtype == 'vnc' and graphics.get('password') and len(graphics['password']) > 8:
        raise VirtnodeError('a VNC password has at most 8 characters', {'field': 'graphics'})
    return {
        'type': gtype,
        'listen': graphics.get('listen') or '127.0.0.1',
        'password': graphics.get('password') or None,
        'password_valid_to': valid_to,
    }


def _normalize_lease(lease):
    if not lease:
        return None
    for key in ('sd_id', 'lease_id', 'path'):
        if not lease.get(key):
            raise VirtnodeError('lease needs %s' % key, {'field': 'lease'})
    return {
        'sd_id': uuid_str(lease['sd_id'], 'lease sd_id'),
        'lease_id': uuid_str(lease['lease_id'], 'lease lease_id'),
        'path': lease['path'],
        'offset': int(lease.get('offset') or 0),
    }


def normalize(params, stat_fn=os.stat, resolver=resolve_volume, block_resolver=activate_block_volume):
    """Validate module options; return the spec. Options left out (None) are not compared later."""
    spec = {}
    spec['name'] = safe_name(params.get('name'), 'name')
    spec['uuid'] = uuid_str(params['uuid'], 'uuid') if params.get('uuid') else None
    spec['domain_type'] = _choice(params['domain_type'], DOMAIN_TYPES, 'domain_type') if params.get('domain_type') else None
    spec['machine'] = params.get('machine') or None

    memory = params.get('memory')
    max_memory = params.get('max_memory')
    spec['memory'] = _kib(memory, 'memory', minimum_bytes=1) if memory is not None else None
    spec['max_memory'] = _kib(max_memory, 'max_memory', minimum_bytes=1) if max_memory is not None else None
    if spec['memory'] is not None and spec['max_memory'] is None:
        spec['max_memory'] = spec['memory']
    if spec['max_memory'] is not None:
        spec['max_memory'] = _round_mib(spec['max_memory'])
    if spec['memory'] is not None and spec['memory'] > spec['max_memory']:
        raise VirtnodeError('memory (%d KiB) must not exceed max_memory (%d KiB)' % (spec['memory'], spec['max_memory']),
                            {'field': 'memory'})

    vcpus = params.get('vcpus')
    if vcpus is not None and (not isinstance(vcpus, int) or isinstance(vcpus, bool) or vcpus < 1 or vcpus > 4096):
        raise VirtnodeError('vcpus must be a whole number from 1 to 4096, got %r' % (vcpus,), {'field': 'vcpus'})
    spec['vcpus'] = vcpus
    topology = params.get('cpu_topology')
    if topology:
        topo = {}
        for key in ('sockets', 'cores', 'threads'):
            value = topology.get(key) or 1
            if not isinstance(value, int) or value < 1:
                raise VirtnodeError('cpu_topology %s must be a positive integer' % key, {'field': 'cpu_topology'})
            topo[key] = value
        total = topo['sockets'] * topo['cores'] * topo['threads']
        if vcpus is not None and total != vcpus:
            raise VirtnodeError('cpu_topology gives %d vCPUs but vcpus is %d' % (total, vcpus), {'field': 'cpu_topology'})
        spec['cpu_topology'] = topo
    else:
        spec['cpu_topology'] = None
    spec['cpu_model'] = params.get('cpu_model') or None

    kernel = params.get('kernel')
    boot = params.get('boot_order')
    if kernel and boot:
        raise VirtnodeError('boot_order and kernel are mutually exclusive', {'field': 'boot_order'})
    if (params.get('initrd') or params.get('cmdline')) and not kernel:
        raise VirtnodeError('initrd and cmdline need kernel', {'field': 'kernel'})
    for key in ('kernel', 'initrd'):
        value = params.get(key)
        if value:
            if not os.path.isabs(value):
                raise VirtnodeError('%s must be an absolute path: %s' % (key, value), {'field': key})
            _path_kind(value, stat_fn)
    spec['kernel'] = kernel or None
    spec['initrd'] = params.get('initrd') or None
    spec['cmdline'] = params.get('cmdline') if kernel else None
    spec['boot_order'] = [_choice(d, BOOT_DEVICES, 'boot_order item') for d in boot] if boot else None

    disks = params.get('disks')
    if disks is not None:
        taken = [cdrom_device(spec['machine'])[1]] if params.get('cdrom') is not None else []
        spec['disks'] = assign_targets([_normalize_disk(i, d, stat_fn, resolver, block_resolver) for i, d in enumerate(disks)], taken)
        paths = [d['path'] for d in spec['disks']]
        if len(set(paths)) != len(paths):
            raise VirtnodeError('the same disk path is given twice', {'field': 'disks'})
        targets = [d['target'] for d in spec['disks']]
        if len(set(targets)) != len(targets):
            raise VirtnodeError('two disks have the same target', {'field': 'disks'})
    else:
        spec['disks'] = None

    nics = params.get('nics')
    spec['nics'] = [_normalize_nic(i, n) for i, n in enumerate(nics)] if nics is not None else None
    if spec['nics']:
        macs = [n['mac'] for n in spec['nics'] if n['mac']]
        if len(set(macs)) != len(macs):
            raise VirtnodeError('the same MAC address is given to two NICs', {'field': 'nics'})

    cdrom = params.get('cdrom')
    if cdrom:
        if not os.path.isabs(cdrom):
            raise VirtnodeError('cdrom must be an absolute path or "" for an empty drive: %s' % cdrom, {'field': 'cdrom'})
        _path_kind(cdrom, stat_fn)
    spec['cdrom'] = cdrom
    spec['graphics'] = _normalize_graphics(params.get('graphics'))
    console = params.get('console_log')
    spec['console_log'] = console
    props = params.get('custom_properties')
    if props is not None:
        for key in props:
            if not _ENV_RE.match(str(key)):
                raise VirtnodeError('custom property name %r cannot be an environment variable' % key,
                                    {'field': 'custom_properties'})
        props = dict((str(k), '' if v is None else str(v)) for k, v in props.items())
    spec['custom_properties'] = props
    spec['lease'] = _normalize_lease(params.get('lease'))
    return spec


def console_log_path(name):
    return os.path.join(CONSOLE_LOG_DIR, '%s-console.log' % name)


def cdrom_device(machine):
    """(bus, target) of the CD-ROM drive: SATA on q35 machines, IDE on the others."""
    if machine and 'q35' in machine:
        return 'sata', 'sdc'
    return 'ide', 'hdc'


# --------------------------------------------------------------------------
# XML building

def _sub(parent, tag, text=None, **attrs):
    elem = etree.SubElement(parent, tag, dict((k, str(v)) for k, v in attrs.items() if v is not None))
    if text is not None:
        elem.text = str(text)
    return elem


def disk_element(disk):
    _require_lxml()
    elem = etree.Element('disk', type=disk['type'], device='disk')
    driver = _sub(elem, 'driver', name='qemu', type=disk['format'], cache=disk['cache'],
                  error_policy=disk['error_policy'], io=disk['io'])
    if disk['error_policy'] in ('stop', 'enospace'):
        driver.set('rerror_policy', 'stop')
    _sub(elem, 'source', **{'file' if disk['type'] == 'file' else 'dev': disk['path']})
    _sub(elem, 'target', dev=disk['target'], bus=disk['bus'])
    if disk['readonly']:
        _sub(elem, 'readonly')
    if disk['serial']:
        _sub(elem, 'serial', disk['serial'])
    return elem


def cdrom_element(path, machine):
    _require_lxml()
    bus, target = cdrom_device(machine)
    elem = etree.Element('disk', type='file', device='cdrom')
    _sub(elem, 'driver', name='qemu', type='raw')
    if path:
        _sub(elem, 'source', file=path)
    _sub(elem, 'target', dev=target, bus=bus)
    _sub(elem, 'readonly')
    return elem


def nic_element(nic):
    _require_lxml()
    elem = etree.Element('interface', type=nic['source_type'])
    if nic['mac']:
        _sub(elem, 'mac', address=nic['mac'])
    _sub(elem, 'source', **{nic['source_type']: nic['source']})
    _sub(elem, 'model', type=nic['model'])
    return elem


def graphics_element(graphics, port=None):
    _require_lxml()
    elem = etree.Element('graphics', type=graphics['type'])
    if port:
        elem.set('port', str(port))
    else:
        elem.set('autoport', 'yes')
    elem.set('listen', graphics['listen'])
    elem.set('passwd', graphics['password'] or '')
    if graphics['password_valid_to']:
        elem.set('passwdValidTo', graphics['password_valid_to'])
    _sub(elem, 'listen', type='address', address=graphics['listen'])
    return elem


def _metadata(spec, namespaced=True):
    """Our metadata element; ``namespaced=False`` gives the bare form virDomainSetMetadata takes."""
    ns = '{%s}' % METADATA_NS if namespaced else ''
    meta = etree.Element(ns + 'vm', nsmap={METADATA_PREFIX: METADATA_NS} if namespaced else None)
    if spec['memory'] is not None:
        _sub(meta, ns + 'balloon_target', spec['memory'], unit='KiB')
    if spec['machine']:
        _sub(meta, ns + 'machine', spec['machine'])
    props = _sub(meta, ns + 'custom_properties')
    for key in sorted(spec['custom_properties'] or {}):
        _sub(props, ns + 'property', spec['custom_properties'][key], name=key)
    return meta


def build_xml(spec, domain_type='qemu', arch='x86_64'):
    """Render ``spec`` as domain XML text (defaults: 128 MiB, 1 vCPU, serial console logged)."""
    _require_lxml()
    root = etree.Element('domain', type=spec['domain_type'] or domain_type)
    _sub(root, 'name', spec['name'])
    if spec['uuid']:
        _sub(root, 'uuid', spec['uuid'])
    metadata = _sub(root, 'metadata')
    metadata.append(_metadata(spec))
    max_memory = spec['max_memory'] or 128 * MIB_IN_KIB
    _sub(root, 'memory', max_memory, unit='KiB')
    _sub(root, 'currentMemory', spec['memory'] or max_memory, unit='KiB')
    _sub(root, 'vcpu', spec['vcpus'] or 1, placement='static')
    if spec['cpu_model'] or spec['cpu_topology']:
        model = spec['cpu_model']
        cpu = _sub(root, 'cpu', mode=model if model in CPU_MODES else ('custom' if model else None),
                   match='exact' if model and model not in CPU_MODES else None)
        if model and model not in CPU_MODES:
            _sub(cpu, 'model', model, fallback='forbid')
        if spec['cpu_topology']:
            _sub(cpu, 'topology', **spec['cpu_topology'])
    os_elem = _sub(root, 'os')
    _sub(os_elem, 'type', 'hvm', arch=arch, machine=spec['machine'])
    if spec['kernel']:
        _sub(os_elem, 'kernel', spec['kernel'])
        if spec['initrd']:
            _sub(os_elem, 'initrd', spec['initrd'])
        if spec['cmdline']:
            _sub(os_elem, 'cmdline', spec['cmdline'])
    for dev in spec['boot_order'] or ():
        _sub(os_elem, 'boot', dev=dev)
    features = _sub(root, 'features')
    _sub(features, 'acpi')
    _sub(features, 'apic')
    _sub(root, 'on_poweroff', 'destroy')
    _sub(root, 'on_reboot', 'restart')
    _sub(root, 'on_crash', 'destroy')
    devices = _sub(root, 'devices')
    for disk in spec['disks'] or ():
        devices.append(disk_element(disk))
    if spec['cdrom'] is not None:
        devices.append(cdrom_element(spec['cdrom'], spec['machine']))
    for nic in spec['nics'] or ():
        devices.append(nic_element(nic))
    if spec['graphics']:
        devices.append(graphics_element(spec['graphics']))
    if spec['console_log'] is not False:
        serial = _sub(devices, 'serial', type='pty')
        _sub(serial, 'log', file=console_log_path(spec['name']), append='off')
        _sub(serial, 'target', port=0)
        console = _sub(devices, 'console', type='pty')
        _sub(console, 'target', type='serial', port=0)
    _sub(devices, 'memballoon', model='virtio')
    if spec['lease']:
        lease = _sub(devices, 'lease')
        _sub(lease, 'lockspace', spec['lease']['sd_id'])
        _sub(lease, 'key', spec['lease']['lease_id'])
        _sub(lease, 'target', path=spec['lease']['path'], offset=spec['lease']['offset'])
    return etree.tostring(root, pretty_print=True, encoding='unicode')


# --------------------------------------------------------------------------
# reading a live domain

def _parse(xml_text):
    _require_lxml()
    try:
        return etree.fromstring(xml_text.encode('utf-8') if isinstance(xml_text, str) else xml_text)
    except etree.XMLSyntaxError as err:
        raise VirtnodeError('cannot parse domain XML: %s' % err)


def _to_kib(elem):
    if elem is None or not (elem.text or '').strip():
        return None
    factors = {'b': 1.0 / KIB, 'bytes': 1.0 / KIB, 'k': 1, 'kib': 1, 'm': KIB, 'mib': KIB, 'g': KIB ** 2, 'gib': KIB ** 2}
    unit = (elem.get('unit') or 'KiB').lower()
    return int(int(elem.text.strip()) * factors.get(unit, 1))


def _disk_from_elem(elem):
    source = elem.find('source')
    path = None
    if source is not None:
        path = source.get('file') or source.get('dev')
    driver = elem.find('driver')
    driver = driver if driver is not None else etree.Element('driver')
    target = elem.find('target')
    serial = elem.find('serial')
    return {
        'path': path,
        'type': elem.get('type'),
        'format': driver.get('type') or 'raw',
        'bus': target.get('bus') if target is not None else None,
        'target': target.get('dev') if target is not None else None,
        'cache': driver.get('cache') or 'default',
        'io': driver.get('io'),
        'error_policy': driver.get('error_policy') or 'report',
        'readonly': elem.find('readonly') is not None,
        'serial': serial.text if serial is not None else None,
        'alias': elem.find('alias').get('name') if elem.find('alias') is not None else None,
    }


def parse_live(xml_text):
    """Read domain XML into the spec's shape (plus runtime details such as ports and aliases)."""
    root = _parse(xml_text)
    meta = root.find('metadata/{%s}vm' % METADATA_NS)
    live = {
        'name': root.findtext('name'),
        'uuid': root.findtext('uuid'),
        'domain_type': root.get('type'),
        'machine': root.find('os/type').get('machine') if root.find('os/type') is not None else None,
        'max_memory': _to_kib(root.find('memory')),
        'current_memory': _to_kib(root.find('currentMemory')),
        'vcpus': int(root.findtext('vcpu')) if root.findtext('vcpu') else None,
        'kernel': root.findtext('os/kernel'),
        'initrd': root.findtext('os/initrd'),
        'cmdline': root.findtext('os/cmdline'),
        'boot_order': [b.get('dev') for b in root.findall('os/boot')] or None,
    }
    live['memory'] = live['current_memory']
    live['balloon_target'] = None
    live['requested_machine'] = None
    live['custom_properties'] = {}
    if meta is not None:
        target = meta.find('{%s}balloon_target' % METADATA_NS)
        if target is not None and target.text:
            live['balloon_target'] = int(target.text)
            live['memory'] = live['balloon_target']
        live['requested_machine'] = meta.findtext('{%s}machine' % METADATA_NS)
        for prop in meta.findall('{%s}custom_properties/{%s}property' % (METADATA_NS, METADATA_NS)):
            live['custom_properties'][prop.get('name')] = prop.text or ''
    cpu = root.find('cpu')
    live['cpu_model'] = None
    live['cpu_topology'] = None
    if cpu is not None:
        mode = cpu.get('mode')
        live['cpu_model'] = mode if mode in CPU_MODES else cpu.findtext('model')
        topo = cpu.find('topology')
        if topo is not None:
            live['cpu_topology'] = dict((k, int(topo.get(k, 1))) for k in ('sockets', 'cores', 'threads'))
    live['disks'] = []
    live['cdrom'] = None
    live['cdrom_target'] = None
    for elem in root.findall('devices/disk'):
        if elem.get('device') == 'cdrom':
            disk = _disk_from_elem(elem)
            live['cdrom'] = disk['path'] or ''
            live['cdrom_target'] = disk['target']
            live['cdrom_bus'] = disk['bus']
        elif elem.get('device', 'disk') == 'disk':
            live['disks'].append(_disk_from_elem(elem))
    live['nics'] = []
    for elem in root.findall('devices/interface'):
        source = elem.find('source')
        kind = elem.get('type')
        model = elem.find('model')
        live['nics'].append({
            'source_type': kind,
            'source': source.get(kind) if source is not None else None,
            'mac': elem.find('mac').get('address').lower() if elem.find('mac') is not None else None,
            'model': model.get('type') if model is not None else None,
            'target_dev': elem.find('target').get('dev') if elem.find('target') is not None else None,
            'alias': elem.find('alias').get('name') if elem.find('alias') is not None else None,
        })
    live['graphics'] = None
    graphics = root.find('devices/graphics')
    if graphics is not None:
        listen = graphics.get('listen')
        if listen is None and graphics.find('listen') is not None:
            listen = graphics.find('listen').get('address')
        live['graphics'] = {
            'type': graphics.get('type'),
            'listen': listen,
            'password': graphics.get('passwd') or None,
            'password_valid_to': graphics.get('passwdValidTo'),
            'port': int(graphics.get('port')) if graphics.get('port') and graphics.get('port') != '-1' else None,
        }
    serial_log = root.find('devices/serial/log')
    live['console_log'] = serial_log is not None
    live['console_log_file'] = serial_log.get('file') if serial_log is not None else None
    lease = root.find('devices/lease')
    live['lease'] = None
    if lease is not None:
        target = lease.find('target')
        live['lease'] = {'sd_id': lease.findtext('lockspace'), 'lease_id': lease.findtext('key'),
                         'path': target.get('path') if target is not None else None,
                         'offset': int(target.get('offset') or 0) if target is not None else 0}
    return live


# --------------------------------------------------------------------------
# comparison

def machine_matches(wanted, live, requested=None, aliases=None):
    """True when the live (canonical) machine type is what ``wanted`` names.

    libvirt expands an alias such as ``q35`` to ``pc-q35-7.2``; ``aliases``
    maps alias -> canonical (from the capabilities XML) and the machine the
    domain was started with is also kept in the domain's metadata.
    """
    if wanted is None or wanted == live or wanted == requested:
        return True
    if aliases and aliases.get(wanted) == live:
        return True
    return False


def _disk_compare_keys(disk):
    return dict((k, disk[k]) for k in ('type', 'format', 'bus', 'cache', 'error_policy', 'readonly'))


def match_nics(wanted, live):
    """Pair wanted NICs with live ones: by MAC first, then by source in order. Returns (pairs, unmatched_live)."""
    remaining = list(range(len(live)))
    pairs = []
    for nic in wanted:
        if nic['mac']:
            found = next((i for i in remaining if live[i]['mac'] == nic['mac']), None)
            if found is not None:
                remaining.remove(found)
            pairs.append((nic, found))
        else:
            pairs.append((nic, None))
    for pos, (nic, found) in enumerate(pairs):
        if nic['mac']:
            continue
        found = next((i for i in remaining if live[i]['source'] == nic['source']
                      and live[i]['source_type'] == nic['source_type']), None)
        if found is not None:
            remaining.remove(found)
        pairs[pos] = (nic, found)
    return [(nic, live[i] if i is not None else None) for nic, i in pairs], [live[i] for i in remaining]


def compare(spec, live, aliases=None):
    """Differences between the spec and a parsed domain.

    Returns a dict with ``live`` (list of actions appliable to a running
    domain: dicts with ``action`` and its data), ``restart`` (names of fields
    that need a restart) and ``changed_fields`` (every differing field).
    """
    actions = []
    restart = []

    def differs(field, want, have):
        if want is not None and want != have:
            restart.append(field)

    differs('domain_type', spec['domain_type'], live['domain_type'])
    if not machine_matches(spec['machine'], live['machine'], live.get('requested_machine'), aliases):
        restart.append('machine')
    differs('max_memory', spec['max_memory'], live['max_memory'])
    differs('vcpus', spec['vcpus'], live['vcpus'])
    differs('cpu_topology', spec['cpu_topology'], live['cpu_topology'])
    differs('cpu_model', spec['cpu_model'], live['cpu_model'])
    differs('boot_order', spec['boot_order'], live['boot_order'])
    differs('kernel', spec['kernel'], live['kernel'])
    differs('initrd', spec['initrd'], live['initrd'])
    if spec['kernel'] is not None and (spec['cmdline'] or None) != (live['cmdline'] or None):
        restart.append('cmdline')
    if spec['console_log'] is not None and spec['console_log'] != live['console_log']:
        restart.append('console_log')
    differs('lease', spec['lease'], live['lease'])

    if spec['memory'] is not None and spec['memory'] != live['memory'] and 'max_memory' not in restart:
        actions.append({'action': 'set_memory', 'field': 'memory', 'kib': spec['memory']})
    elif spec['memory'] is not None and spec['memory'] != live['memory']:
        restart.append('memory')

    if spec['disks'] is not None:
        live_by_path = dict((d['path'], d) for d in live['disks'] if d['path'])
        taken = set(d['target'] for d in live['disks']) | set([live.get('cdrom_target')])
        wanted_paths = set()
        # A storage-volume disk is its image: after a live snapshot (vm_snapshot) the VM runs on a newer
        # volume of the same image directory, which is still the disk asked for.
        live_by_image = dict((os.path.dirname(d['path']), d) for d in live['disks'] if d['path'])
        for disk in spec['disks']:
            wanted_paths.add(disk['path'])
            have = live_by_path.get(disk['path'])
            if have is None and disk.get('volume'):
                have = live_by_image.get(os.path.dirname(disk['path']))
                if have is not None:
                    wanted_paths.add(have['path'])
            if have is None:
                actions.append({'action': 'attach_disk', 'field': 'disks', 'disk': disk, 'taken': sorted(t for t in taken if t)})
            elif _disk_compare_keys(disk) != _disk_compare_keys(have):
                restart.append('disks[%s]' % disk['path'])
        for have in live['disks']:
            if have['path'] not in wanted_paths:
                actions.append({'action': 'detach_disk', 'field': 'disks', 'disk': have})

    if spec['nics'] is not None:
        pairs, extra = match_nics(spec['nics'], live['nics'])
        for nic, have in pairs:
            if have is None:
                actions.append({'action': 'attach_nic', 'field': 'nics', 'nic': nic})
            elif nic['model'] != have['model']:
                restart.append('nics[%s]' % (have['mac'] or nic['source']))
        for have in extra:
            actions.append({'action': 'detach_nic', 'field': 'nics', 'nic': have})

    if spec['cdrom'] is not None:
        if live['cdrom'] is None:
            restart.append('cdrom')
        elif spec['cdrom'] != live['cdrom']:
            actions.append({'action': 'change_cd', 'field': 'cdrom', 'path': spec['cdrom']})

    if spec['graphics'] is not None:
        have = live['graphics']
        if have is None or have['type'] != spec['graphics']['type'] or have['listen'] != spec['graphics']['listen']:
            restart.append('graphics')
        elif (have['password'], have['password_valid_to']) != (spec['graphics']['password'], spec['graphics']['password_valid_to']):
            actions.append({'action': 'set_ticket', 'field': 'graphics', 'graphics': spec['graphics']})

    if spec['custom_properties'] is not None and spec['custom_properties'] != live['custom_properties']:
        actions.append({'action': 'set_metadata', 'field': 'custom_properties'})

    return {'live': actions, 'restart': restart}


def _public_disk(disk):
    return dict((k, disk.get(k)) for k in ('path', 'type', 'format', 'bus', 'target', 'cache', 'error_policy', 'readonly'))


def summary(spec_like, redact=True):
    """The comparable fields of a spec or parsed domain, for diffs and results (passwords hidden)."""
    out = {}
    for key in ('name', 'uuid', 'domain_type', 'machine', 'memory', 'max_memory', 'vcpus', 'cpu_topology', 'cpu_model',
                'boot_order', 'kernel', 'initrd', 'cmdline', 'cdrom', 'console_log', 'custom_properties', 'lease'):
        out[key] = spec_like.get(key)
    out['disks'] = [_public_disk(d) for d in spec_like['disks']] if spec_like.get('disks') is not None else None
    out['nics'] = ([dict((k, n.get(k)) for k in ('source_type', 'source', 'mac', 'model')) for n in spec_like['nics']]
                   if spec_like.get('nics') is not None else None)
    graphics = spec_like.get('graphics')
    if graphics:
        graphics = dict((k, graphics.get(k)) for k in ('type', 'listen', 'password', 'password_valid_to'))
        if redact and graphics['password']:
            graphics['password'] = 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'
    out['graphics'] = graphics
    return out


def diff_view(spec, live):
    """(before, after) limited to the fields the spec sets; ``live`` None means the domain does not exist."""
    after = dict((k, v) for k, v in summary(spec).items() if v is not None)
    if live is None:
        return {}, after
    have = summary(live)
    if spec['machine'] is not None and machine_matches(spec['machine'], live['machine'], live.get('requested_machine')):
        have['machine'] = spec['machine']
    before = dict((k, have.get(k)) for k in after)
    if 'disks' in after:
        # Auto-assigned targets of wanted disks follow the live ones, so they do not show as changes.
        live_targets = dict((d['path'], d['target']) for d in live['disks'])
        for disk in after['disks']:
            if disk['path'] in live_targets and spec_target_auto(spec, disk['path']):
                disk['target'] = live_targets[disk['path']]
    if 'nics' in after:
        pairs, dummy = match_nics(spec['nics'], live['nics'])
        for nic, pair in zip(after['nics'], pairs):
            if nic['mac'] is None and pair[1] is not None:
                nic['mac'] = pair[1]['mac']
    return before, after


def spec_target_auto(spec, path):
    for disk in spec['disks'] or ():
        if disk['path'] == path:
            return disk.get('target_auto', True)
    return True


def updated_persistent_xml(spec, persistent_xml, domain_type='qemu'):
    """A new persistent definition: the spec's fields applied over the existing definition.

    The existing definition is rebuilt from the spec with the fields the
    user left out taken from it, so libvirt's own additions (addresses,
    controllers) of devices that stay are kept by libvirt on redefine
    (it keeps the UUID; devices are re-addressed as needed).
    """
    live = parse_live(persistent_xml)
    merged = dict(spec)
    for key in ('domain_type', 'machine', 'vcpus', 'cpu_topology', 'cpu_model', 'boot_order', 'kernel', 'initrd',
                'cmdline', 'graphics', 'lease'):
        if merged.get(key) is None:
            merged[key] = live.get(key)
    if merged['machine'] is None or machine_matches(spec['machine'], live['machine'], live.get('requested_machine')):
        merged['machine'] = live.get('requested_machine') or live['machine'] if spec['machine'] is None else spec['machine']
    if merged['max_memory'] is None:
        merged['max_memory'] = live['max_memory']
    if merged['memory'] is None:
        merged['memory'] = live['memory']
    if merged['custom_properties'] is None:
        merged['custom_properties'] = live['custom_properties']
    if merged['console_log'] is None:
        merged['console_log'] = live['console_log']
    if merged['disks'] is None:
        merged['disks'] = [dict(d, volume=None) for d in live['disks']]
    if merged['nics'] is None:
        merged['nics'] = [dict((k, n[k]) for k in ('source_type', 'source', 'mac', 'model')) for n in live['nics']]
    else:
        pairs, dummy = match_nics(merged['nics'], live['nics'])
        merged['nics'] = [dict(nic, mac=nic['mac'] or (have['mac'] if have else None)) for nic, have in pairs]
    if merged['cdrom'] is None:
        merged['cdrom'] = live['cdrom']
    merged['uuid'] = live['uuid']
    return build_xml(merged, domain_type=domain_type)


def machine_aliases(caps_xml):
    """``{alias: canonical}`` machine types from the capabilities XML."""
    aliases = {}
    if not caps_xml:
        return aliases
    root = _parse(caps_xml)
    for machine in root.iter('machine'):
        if machine.get('canonical') and machine.text:
            aliases[machine.text.strip()] = machine.get('canonical')
    return aliases
