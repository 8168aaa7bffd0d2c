# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A typed VM specification: validation, and comparison with a parsed domain.

Pure: no libvirt calls and no file system access of its own, so the module,
the node agent and the unit tests share it.

* :func:`normalize` turns module options into a spec dict (sizes in KiB,
  disk targets assigned, MAC addresses lower case) or raises VirtnodeError.
  What it needs to know of the host (does a path exist, where is a storage
  volume) it asks the functions it is given (:mod:`volumes` has the real ones).
* :func:`compare` lists the differences between a spec and a domain parsed
  by :func:`domxml.parse_live`, each marked as appliable live or needing a
  restart; :func:`diff_view` shows them.

Only fields the user set are compared: what libvirt fills in by itself
(MAC addresses of NICs given without one, PCI addresses, aliases, default
controllers, the expanded machine type) never counts as a difference.

Disks are matched by source path, NICs by MAC address (or, without one, by
source in order), so reordering or auto-assigned names never cause churn.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.validate import abs_path, safe_name, size_bytes, uuid_str
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import cloud_init

DISK_BUSES = ('virtio', 'sata', 'scsi', 'ide')
DISK_FORMATS = ('raw', 'qcow2')
DISK_CACHES = ('none', 'writeback', 'writethrough', 'directsync', 'unsafe', 'default')
DISK_IO = ('threads', 'native', 'io_uring')
ERROR_POLICIES = ('stop', 'report', 'ignore', 'enospace')
# Argument spec of a storage-domain volume given by its three UUIDs (saved_volume, snapshot volumes).
VOLUME_REF_OPTIONS = dict(domain_id=dict(type='str', required=True), image_id=dict(type='str', required=True),
                          volume_id=dict(type='str', required=True))
NIC_MODELS = ('virtio', 'e1000', 'e1000e', 'rtl8139')
NIC_LINK_STATES = ('up', 'down')
DISK_DISCARD = ('unmap', 'ignore')
DISK_DETECT_ZEROES = ('off', 'on', 'unmap')
# libvirt's <iotune> limits the spec takes (bytes and operations per second; 0 is no limit).
IOTUNE_KEYS = ('total_bytes_sec', 'read_bytes_sec', 'write_bytes_sec', 'total_iops_sec', 'read_iops_sec',
               'write_iops_sec')
# A disk's settings compared with the live domain when given; a change needs a restart.
DISK_RESTART_KEYS = ('io', 'serial', 'discard', 'detect_zeroes')
NIC_RESTART_KEYS = ('model', 'mtu', 'queues')
BOOT_DEVICES = ('hd', 'cdrom', 'network')
GRAPHICS_TYPES = ('vnc', 'spice')
DOMAIN_TYPES = ('kvm', 'qemu')
# Watchdog models libvirt 9.0 offers on x86 (a PCI and an ISA card), and its actions when one fires.
WATCHDOG_MODELS = ('i6300esb', 'ib700')
WATCHDOG_ACTIONS = ('reset', 'shutdown', 'poweroff', 'pause', 'none', 'dump', 'inject-nmi')
VIDEO_MODELS = ('virtio', 'qxl', 'vga', 'bochs', 'none')
# Entropy sources an RNG device may read on the host.
RNG_BACKENDS = ('/dev/urandom', '/dev/random', '/dev/hwrng')
CPU_MODES = ('host-passthrough', 'host-model')
FIRMWARES = ('bios', 'uefi')
NUMA_MODES = ('strict', 'preferred', 'interleave', 'restrictive')
HUGEPAGE_SIZES_KIB = (2048, 1048576)
# DIMMs are added in whole memory blocks of the guest (Linux x86: 128 MiB), so it can online them.
MEMORY_HOTPLUG_STEP_KIB = 128 * 1024
DEFAULT_MEMORY_SLOTS = 16
TPM_MODELS = ('crb', 'tis')
# libvirt keeps each VM's UEFI variables here (the directory its qemu driver creates and labels).
NVRAM_DIR = '/var/lib/libvirt/qemu/nvram'

_MAC_RE = re.compile(r'\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z')
_ENV_RE = re.compile(r'\A[A-Za-z_][A-Za-z0-9_]*\Z')
_TARGET_RE = re.compile(r'\A(vd|sd|hd)[a-z]{1,2}\Z')
_CPUSET_RE = re.compile(r'\A\^?\d{1,4}(-\d{1,4})?(,\^?\d{1,4}(-\d{1,4})?)*\Z')
_FILTER_NAME_RE = re.compile(r'\A[A-Za-z0-9_.:-]{1,64}\Z')
_FILTER_PARAM_RE = re.compile(r'\A[A-Za-z0-9_]{1,64}\Z')
_VALID_TO_RE = re.compile(r'\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\Z')
_TARGET_PREFIX = {'virtio': 'vd', 'sata': 'sd', 'scsi': 'sd', 'ide': 'hd'}
KIB = 1024
# Stands in for the UUID of a VM libvirt has not named yet when input is checked.
NIL_UUID = '00000000-0000-0000-0000-000000000000'
MIB_IN_KIB = 1024

# Fields compared at top level, and whether a running domain can take a change live.
RESTART_FIELDS = ('domain_type', 'machine', 'max_memory', 'max_vcpus', 'cpu_topology', 'cpu_model', 'numa_cells',
                  'numa_tune', 'memory_hotplug', 'hugepages',
                  'boot_order', 'kernel', 'initrd', 'cmdline', 'console_log', 'lease', 'watchdog', 'rng', 'video',
                  'tablet', 'guest_agent', 'firmware', 'secure_boot', 'tpm')
# Devices the spec owns one of each: None leaves what the domain has, false (or video none) removes it.
DEVICE_FIELDS = ('watchdog', 'rng', 'video', 'tablet', 'guest_agent', 'tpm')


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


def _missing_resolver(*_ids):
    raise VirtnodeError('storage volumes cannot be resolved here: no resolver given', {'field': 'disks'})


def _exists_by_stat(stat_fn):
    """An ``lexists`` made of ``stat_fn``, for callers that give only that."""
    def exists(path):
        try:
            stat_fn(path)
        except OSError:
            return False
        return True
    return exists


def _volume_disk_path(what, disk, vol_keys, resolver, block_resolver, lexists):
    """``(path, ids, planned_block, backing)`` of a disk given as a storage-domain volume.

    ``resolver`` returns the volume's path, or ``{'path', 'backing'}`` with
    its checked backing chain (see vm/volumes.py).
    """
    if len(vol_keys) != 3:
        raise VirtnodeError('%s: a storage volume needs domain_id, image_id and volume_id' % what, {'field': what})
    ids = [uuid_str(disk[k], '%s %s' % (what, k)) for k in ('domain_id', 'image_id', 'volume_id')]
    # type=block presents the volume through the block backend (LV activation, or a loop
    # device over a file domain's volume): what thin provisioning watches and extends.
    if disk.get('type') == 'block':
        path = (block_resolver or _missing_resolver)(*ids)
        # In check mode nothing is activated: the device that would appear is not there yet.
        return path, ids, not lexists(path), None
    resolved = (resolver or _missing_resolver)(*ids)
    if isinstance(resolved, dict):
        return resolved['path'], ids, False, resolved.get('backing')
    return resolved, ids, False, None


def _disk_target(what, disk, bus):
    target = disk.get('target')
    if target is not None and not _TARGET_RE.match(target):
        raise VirtnodeError('%s target must look like vda, sdb or hdc: %r' % (what, target), {'field': what})
    if target is not None and not target.startswith(_TARGET_PREFIX[bus]):
        raise VirtnodeError('%s target %s does not fit bus %s (use %sX)' % (what, target, bus, _TARGET_PREFIX[bus]),
                            {'field': what})
    return target


def _normalize_disk(index, disk, stat_fn, resolver, block_resolver, lexists):
    what = 'disks[%d]' % index
    planned_block = False
    ids = None
    backing = None
    if not isinstance(disk, dict):
        raise VirtnodeError('%s must be a dict' % what, {'field': what})
    vol_keys = [k for k in ('domain_id', 'image_id', 'volume_id') if disk.get(k)]
    path = disk.get('path')
    if path and vol_keys:
        raise VirtnodeError('%s: give either path or domain_id/image_id/volume_id, not both' % what, {'field': what})
    if vol_keys:
        path, ids, planned_block, backing = _volume_disk_path(what, disk, vol_keys, resolver, block_resolver, lexists)
    if not path:
        raise VirtnodeError('%s needs a path (or domain_id/image_id/volume_id)' % what, {'field': what})
    if not os.path.isabs(path) or '\0' in path:
        raise VirtnodeError('%s path must be absolute: %r' % (what, path), {'field': what})
    abs_path(path, what)
    kind = 'block' if planned_block else _path_kind(path, stat_fn)
    if disk.get('type') and disk['type'] != kind:
        raise VirtnodeError('%s: %s is a %s, not a %s' % (what, path, kind, disk['type']), {'field': what})
    bus = _choice(disk.get('bus') or 'virtio', DISK_BUSES, what + ' bus')
    target = _disk_target(what, disk, bus)
    lun = bool(disk.get('lun'))
    if lun and (kind != 'block' or bus != 'scsi' or (disk.get('format') or 'raw') != 'raw'):
        # SCSI commands go to the device itself (VDSM's direct LUN): only a block device on the SCSI bus, as it is.
        raise VirtnodeError('%s lun: a direct LUN must be a block device (a multipath device of a LUN) on bus scsi, '
                            'format raw; %s is a %s on bus %s' % (what, path, kind, bus), {'field': what})
    return {
        'lun': lun,
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
        'serial': _disk_serial(what, disk.get('serial')),
        'discard': _choice(disk['discard'], DISK_DISCARD, what + ' discard') if disk.get('discard') else None,
        'detect_zeroes': _detect_zeroes(what, disk.get('detect_zeroes'), disk.get('discard')),
        'iotune': _normalize_iotune(what, disk.get('iotune')),
        'volume': dict(zip(('domain_id', 'image_id', 'volume_id'), ids)) if ids else None,
        # The checked chain below a storage volume, named in the domain XML (None: not known here).
        'backing': backing,
    }


def _disk_serial(what, serial):
    if serial is None or serial == '':
        return None
    serial = str(serial)
    # What QEMU takes as a drive serial: 20 characters for virtio-blk, printable, no separators of its own.
    if len(serial) > 20 or not re.match(r'\A[A-Za-z0-9_.+-]+\Z', serial):
        raise VirtnodeError('%s serial must be at most 20 letters, digits or _ . + -, got %r' % (what, serial),
                            {'field': what})
    return serial


def _detect_zeroes(what, value, discard):
    if not value:
        return None
    value = _choice(value, DISK_DETECT_ZEROES, what + ' detect_zeroes')
    if value == 'unmap' and discard != 'unmap':
        raise VirtnodeError('%s detect_zeroes unmap needs discard unmap' % what, {'field': what})
    return value


def _normalize_iotune(what, iotune):
    """``{key: int}`` of the limits given (None: not managed); unknown keys and negative values refused."""
    if iotune is None:
        return None
    if not isinstance(iotune, dict):
        raise VirtnodeError('%s iotune must be a dict of %s' % (what, ', '.join(IOTUNE_KEYS)), {'field': what})
    limits = {}
    for key, value in iotune.items():
        if key not in IOTUNE_KEYS:
            raise VirtnodeError('%s iotune: unknown limit %r (one of %s)' % (what, key, ', '.join(IOTUNE_KEYS)),
                                {'field': what})
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise VirtnodeError('%s iotune %s must be a non-negative integer, got %r' % (what, key, value), {'field': what})
        limits[key] = value
    for kind in ('bytes', 'iops'):
        if limits.get('total_%s_sec' % kind) and (limits.get('read_%s_sec' % kind) or limits.get('write_%s_sec' % kind)):
            raise VirtnodeError('%s iotune total_%s_sec cannot be combined with read_ or write_%s_sec (QEMU refuses it)'
                                % (what, kind, kind), {'field': what})
    return dict((key, limits.get(key, 0)) for key in IOTUNE_KEYS)


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
        'link_state': _choice(nic['link_state'], NIC_LINK_STATES, what + ' link_state') if nic.get('link_state') else None,
        'mtu': _bounded_int(nic.get('mtu'), 68, 65535, what + ' mtu'),
        'queues': _bounded_int(nic.get('queues'), 1, 256, what + ' queues'),
        'filter': _normalize_nic_filter(what, nic.get('filter'), nic.get('filter_parameters')),
    }


def _normalize_nic_filter(what, name, parameters):
    """A libvirt network filter on the NIC: ``{'name', 'parameters': {name: [sorted values]}}``; False for none
    (``filter: ''``); None when not managed."""
    if name is None:
        if parameters:
            raise VirtnodeError('%s filter_parameters needs filter' % what, {'field': what})
        return None
    if name == '':
        if parameters:
            raise VirtnodeError('%s filter_parameters needs a filter, not ""' % what, {'field': what})
        return False
    if not isinstance(name, str) or not _FILTER_NAME_RE.match(name):
        raise VirtnodeError('%s filter must be a network filter name (letters, digits, _ . : -), got %r' % (what, name),
                            {'field': what})
    if parameters is not None and not isinstance(parameters, dict):
        raise VirtnodeError('%s filter_parameters must be a dict of name -> value or list of values' % what,
                            {'field': what})
    params = {}
    for key, values in (parameters or {}).items():
        if not _FILTER_PARAM_RE.match(str(key)):
            raise VirtnodeError('%s filter parameter name %r is not a libvirt variable name' % (what, key), {'field': what})
        values = values if isinstance(values, list) else [values]
        if not values or any(isinstance(v, (dict, list, bool)) or v is None or str(v) == '' for v in values):
            raise VirtnodeError('%s filter parameter %s needs one or more plain values' % (what, key), {'field': what})
        params[str(key)] = sorted(str(v) for v in values)
    return {'name': name, 'parameters': params}


def _bounded_int(value, low, high, what):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise VirtnodeError('%s must be an integer from %d to %d, got %r' % (what, low, high, value), {'field': what})
    return value


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


def _normalize_watchdog(watchdog):
    """``{'model', 'action'}``, False (none wanted) or None (not managed)."""
    if watchdog is None:
        return None
    if watchdog is False or (isinstance(watchdog, dict) and watchdog.get('state') == 'absent'):
        return False
    if not isinstance(watchdog, dict):
        raise VirtnodeError('watchdog must be a dict (model, action) or false', {'field': 'watchdog'})
    return {'model': _choice(watchdog.get('model') or 'i6300esb', WATCHDOG_MODELS, 'watchdog model'),
            'action': _choice(watchdog.get('action') or 'reset', WATCHDOG_ACTIONS, 'watchdog action')}


def _normalize_rng(rng):
    """``{'backend', 'rate_bytes', 'rate_period_ms'}``, False or None."""
    if rng is None:
        return None
    if rng is False or (isinstance(rng, dict) and rng.get('state') == 'absent'):
        return False
    if rng is True:
        rng = {}
    if not isinstance(rng, dict):
        raise VirtnodeError('rng must be true, false or a dict (backend, rate_bytes, rate_period_ms)', {'field': 'rng'})
    rate_bytes, period = rng.get('rate_bytes'), rng.get('rate_period_ms')
    for value, what in ((rate_bytes, 'rng rate_bytes'), (period, 'rng rate_period_ms')):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise VirtnodeError('%s must be a positive integer, got %r' % (what, value), {'field': 'rng'})
    if period is not None and rate_bytes is None:
        raise VirtnodeError('rng rate_period_ms needs rate_bytes', {'field': 'rng'})
    return {'backend': _choice(rng.get('backend') or '/dev/urandom', RNG_BACKENDS, 'rng backend'),
            'rate_bytes': rate_bytes, 'rate_period_ms': (period or 1000) if rate_bytes else None}


def _normalize_tpm(tpm):
    """``{'model'}`` of a TPM 2.0 emulated by swtpm, False (none wanted) or None (not managed)."""
    if tpm is None:
        return None
    if tpm is False or (isinstance(tpm, dict) and tpm.get('state') == 'absent'):
        return False
    if tpm is True:
        tpm = {}
    if not isinstance(tpm, dict):
        raise VirtnodeError('tpm must be true, false or a dict (model)', {'field': 'tpm'})
    return {'model': _choice(tpm.get('model') or 'crb', TPM_MODELS, 'tpm model')}


def _normalize_firmware(params, spec):
    """``firmware`` (bios, uefi) and ``secure_boot``; Secure Boot needs UEFI and SMM, which only q35 has."""
    firmware = _choice(params['firmware'], FIRMWARES, 'firmware') if params.get('firmware') else None
    secure = params.get('secure_boot')
    if secure and firmware != 'uefi':
        raise VirtnodeError('secure_boot needs firmware: uefi', {'field': 'secure_boot'})
    if secure and not (spec['machine'] and 'q35' in spec['machine']):
        raise VirtnodeError('secure_boot needs a q35 machine (machine: q35): OVMF keeps its variables safe in SMM, '
                            'which i440fx machines lack', {'field': 'secure_boot'})
    spec['firmware'] = firmware
    spec['secure_boot'] = bool(secure) if firmware == 'uefi' else (False if firmware == 'bios' else None)


def _normalize_memory(params):
    """(memory, max_memory) in KiB; max_memory defaults to memory and is whole MiB."""
    memory = params.get('memory')
    max_memory = params.get('max_memory')
    memory = _kib(memory, 'memory', minimum_bytes=1) if memory is not None else None
    max_memory = _kib(max_memory, 'max_memory', minimum_bytes=1) if max_memory is not None else None
    if memory is not None and max_memory is None:
        max_memory = memory
    if max_memory is not None:
        max_memory = _round_mib(max_memory)
    if memory is not None and memory > max_memory:
        raise VirtnodeError('memory (%d KiB) must not exceed max_memory (%d KiB)' % (memory, max_memory),
                            {'field': 'memory'})
    return memory, max_memory


def _normalize_numa_cells(cells, vcpus, max_memory, hotplug):
    """``[{'cpus': [..], 'memory': kib}]``: every vCPU in exactly one cell, and the cells' memory adding up to
    ``max_memory`` (with memory hotplug, at most it: the rest is plugged DIMMs)."""
    if cells is None:
        return None
    if not isinstance(cells, list) or not cells:
        raise VirtnodeError('numa_cells must be a non-empty list of cells, each with cpus and memory', {'field': 'numa_cells'})
    normalized, seen = [], set()
    for index, cell in enumerate(cells):
        what = 'numa_cells[%d]' % index
        if not isinstance(cell, dict) or cell.get('cpus') is None or cell.get('memory') is None:
            raise VirtnodeError('%s needs cpus and memory' % what, {'field': 'numa_cells'})
        cpus = parse_cpuset(str(cell['cpus']), what + ' cpus')
        overlap = seen & set(cpus)
        if overlap:
            raise VirtnodeError('%s gives vCPU(s) %s that another cell has' % (what, ','.join(map(str, sorted(overlap)))),
                                {'field': 'numa_cells'})
        seen.update(cpus)
        memory = _kib(cell['memory'], what + ' memory', minimum_bytes=MIB_IN_KIB * KIB)
        if memory % MIB_IN_KIB:
            raise VirtnodeError('%s memory must be whole MiB' % what, {'field': 'numa_cells'})
        normalized.append({'cpus': cpus, 'memory': memory})
    if vcpus is None or max_memory is None:
        raise VirtnodeError('numa_cells needs vcpus (or max_vcpus) and memory (or max_memory) to check the layout',
                            {'field': 'numa_cells'})
    if seen != set(range(vcpus)):
        raise VirtnodeError('numa_cells give vCPUs %s, but the VM has vCPUs 0-%d: each must be in exactly one cell'
                            % (','.join(map(str, sorted(seen))), vcpus - 1), {'field': 'numa_cells'})
    total = sum(cell['memory'] for cell in normalized)
    if total != max_memory and not (hotplug and total < max_memory):
        raise VirtnodeError('numa_cells hold %d MiB but the VM has %d MiB (max_memory): the cells must add up to it'
                            % (total // MIB_IN_KIB, max_memory // MIB_IN_KIB), {'field': 'numa_cells'})
    return normalized


def _normalize_numa_tune(tune, host_nodes):
    """``{'mode', 'nodeset': [host NUMA nodes]}`` of the guest memory's host binding, or None."""
    if tune is None:
        return None
    if not isinstance(tune, dict) or tune.get('nodeset') is None:
        raise VirtnodeError('numa_tune needs nodeset (host NUMA nodes, e.g. "0" or "0-1")', {'field': 'numa_tune'})
    nodes = parse_cpuset(str(tune['nodeset']), 'numa_tune nodeset')
    if host_nodes is not None and not set(nodes) <= set(host_nodes):
        raise VirtnodeError('numa_tune nodeset names NUMA node(s) %s that this host does not have (online: %s)'
                            % (','.join(map(str, sorted(set(nodes) - set(host_nodes)))),
                               ','.join(map(str, host_nodes))), {'field': 'numa_tune'})
    return {'mode': _choice(tune.get('mode') or 'strict', NUMA_MODES, 'numa_tune mode'), 'nodeset': nodes}


def _normalize_memory_hotplug(params, max_memory):
    """``{'max', 'slots'}`` (KiB, DIMM slots) up to which memory is plugged into the running VM, or None."""
    hotplug = params.get('memory_hotplug')
    if hotplug is None:
        return None
    if not isinstance(hotplug, dict) or hotplug.get('max') is None:
        raise VirtnodeError('memory_hotplug needs max (the most memory the VM may get while it runs)',
                            {'field': 'memory_hotplug'})
    maximum = _round_mib(_kib(hotplug['max'], 'memory_hotplug max', minimum_bytes=1))
    slots = _bounded_int(hotplug.get('slots') or DEFAULT_MEMORY_SLOTS, 1, 255, 'memory_hotplug slots')
    if max_memory is not None and maximum < max_memory:
        raise VirtnodeError('memory_hotplug max (%d MiB) is below max_memory (%d MiB)'
                            % (maximum // MIB_IN_KIB, max_memory // MIB_IN_KIB), {'field': 'memory_hotplug'})
    return {'max': maximum, 'slots': slots}


def _normalize_hugepages(value, host_hugepages):
    """The page size (KiB) guest memory is backed by, 0 for normal pages, None when not managed; a size the host
    reserves no pages of (``host_hugepages``: {size KiB: pages}, None: not checked) is refused."""
    if value is None:
        return None
    if value is False or value in ('', '0', 0):
        return 0
    size = _kib(value, 'hugepages')
    if size not in HUGEPAGE_SIZES_KIB:
        raise VirtnodeError('hugepages must be 2MiB or 1GiB (the x86 page sizes), got %r' % (value,),
                            {'field': 'hugepages'})
    if host_hugepages is not None and not host_hugepages.get(size):
        raise VirtnodeError('hugepages %d KiB: this host reserves no pages of that size (reserve them with the kernel\'s '
                            'hugepages= boot option or /sys/kernel/mm/hugepages/hugepages-%dkB/nr_hugepages)'
                            % (size, size), {'field': 'hugepages'})
    return size


def _normalize_numa(params, spec, host_nodes, host_hugepages):
    spec['memory_hotplug'] = _normalize_memory_hotplug(params, spec['max_memory'])
    spec['numa_cells'] = _normalize_numa_cells(params.get('numa_cells'), spec['max_vcpus'] or spec['vcpus'],
                                               spec['max_memory'], spec['memory_hotplug'])
    spec['numa_tune'] = _normalize_numa_tune(params.get('numa_tune'), host_nodes)
    spec['hugepages'] = _normalize_hugepages(params.get('hugepages'), host_hugepages)


def _normalize_topology(topology, vcpus):
    if not topology:
        return None
    topo = {}
    for key in ('sockets', 'cores', 'threads'):
        value = topology.get(key) or 1
        if not isinstance(value, int) or value < 1:
            raise VirtnodeError('cpu_topology %s must be a positive integer' % key, {'field': 'cpu_topology'})
        topo[key] = value
    total = topo['sockets'] * topo['cores'] * topo['threads']
    if vcpus is not None and total != vcpus:
        raise VirtnodeError('cpu_topology gives %d vCPUs but the VM has %d (max_vcpus, else vcpus)' % (total, vcpus),
                            {'field': 'cpu_topology'})
    return topo


def _vcpu_count(params, key):
    value = params.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > 4096):
        raise VirtnodeError('%s must be a whole number from 1 to 4096, got %r' % (key, value), {'field': key})
    return value


def parse_cpuset(text, what, host_cpus=None):
    """The sorted host CPUs of a libvirt cpuset (``0-3,6,^2``); refused when malformed, empty, or naming a CPU
    not in ``host_cpus`` (when known)."""
    cpus = set()
    if not isinstance(text, str) or not _CPUSET_RE.match(text.replace(' ', '')):
        raise VirtnodeError('%s must be a cpuset such as "0-3,6,^2", got %r' % (what, text), {'field': what})
    excluded = set()
    for part in text.replace(' ', '').split(','):
        target = excluded if part.startswith('^') else cpus
        first, _sep, last = part.lstrip('^').partition('-')
        if last and int(last) < int(first):
            raise VirtnodeError('%s: range %s runs backwards' % (what, part), {'field': what})
        target.update(range(int(first), int(last or first) + 1))
    cpus -= excluded
    if not cpus:
        raise VirtnodeError('%s %r names no CPU' % (what, text), {'field': what})
    if host_cpus is not None and not cpus <= set(host_cpus):
        raise VirtnodeError('%s names CPU(s) %s that this host does not have (online: %s)'
                            % (what, ','.join(str(c) for c in sorted(cpus - set(host_cpus))),
                               ','.join(str(c) for c in sorted(host_cpus))), {'field': what})
    return sorted(cpus)


def _normalize_pinning(params, max_vcpus, host_cpus):
    """``{vcpu: [host cpus]}`` of ``cpu_pinning`` and the emulator's ``[host cpus]`` (None: not managed)."""
    pinning = params.get('cpu_pinning')
    if pinning is not None:
        if not isinstance(pinning, dict):
            raise VirtnodeError('cpu_pinning must be a dict of vCPU number -> cpuset', {'field': 'cpu_pinning'})
        pins = {}
        for vcpu, cpuset in pinning.items():
            try:
                index = int(vcpu)
            except (TypeError, ValueError):
                index = -1
            if index < 0 or str(index) != str(vcpu).strip():
                raise VirtnodeError('cpu_pinning key %r is not a vCPU number' % (vcpu,), {'field': 'cpu_pinning'})
            if max_vcpus is not None and index >= max_vcpus:
                raise VirtnodeError('cpu_pinning pins vCPU %d but the VM has at most %d' % (index, max_vcpus),
                                    {'field': 'cpu_pinning'})
            pins[index] = parse_cpuset(str(cpuset), 'cpu_pinning[%d]' % index, host_cpus)
        pinning = pins
    emulator = params.get('emulator_pinning')
    if emulator is not None:
        emulator = parse_cpuset(str(emulator), 'emulator_pinning', host_cpus)
    return pinning, emulator


def _normalize_cpu(params, spec, host_cpus=None):
    vcpus, max_vcpus = _vcpu_count(params, 'vcpus'), _vcpu_count(params, 'max_vcpus')
    if max_vcpus is not None and vcpus is not None and vcpus > max_vcpus:
        raise VirtnodeError('vcpus %d is more than max_vcpus %d: vCPUs are hotplugged up to the maximum only'
                            % (vcpus, max_vcpus), {'field': 'vcpus'})
    if max_vcpus is not None and vcpus is None:
        raise VirtnodeError('max_vcpus needs vcpus (how many of them run)', {'field': 'vcpus'})
    spec['vcpus'] = vcpus
    spec['max_vcpus'] = max_vcpus
    spec['cpu_topology'] = _normalize_topology(params.get('cpu_topology'), max_vcpus or vcpus)
    spec['cpu_model'] = params.get('cpu_model') or None
    spec['cpu_pinning'], spec['emulator_pinning'] = _normalize_pinning(params, max_vcpus or vcpus, host_cpus)


def _normalize_boot(params, spec, stat_fn):
    """Direct kernel boot (kernel, initrd, cmdline) or a boot order, never both."""
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
            abs_path(value, key)
            _path_kind(value, stat_fn)
    spec['kernel'] = kernel or None
    spec['initrd'] = params.get('initrd') or None
    spec['cmdline'] = params.get('cmdline') if kernel else None
    if boot and 'fd' in boot:
        # Neither q35 nor VDSM's VMs have a floppy drive; images boot from a CD-ROM or a disk.
        raise VirtnodeError('boot_order fd: this module gives VMs no floppy drive; boot from cdrom or hd instead',
                            {'field': 'boot_order'})
    spec['boot_order'] = [_choice(d, BOOT_DEVICES, 'boot_order item') for d in boot] if boot else None


def _normalize_disks(params, machine, stat_fn, resolver, block_resolver, lexists):
    disks = params.get('disks')
    if disks is None:
        return None
    taken = [cdrom_device(machine)[1]] if params.get('cdrom') is not None else []
    if params.get('cloud_init') is not None:
        taken.append(seed_device(machine)[1])
    disks = assign_targets([_normalize_disk(i, d, stat_fn, resolver, block_resolver, lexists)
                            for i, d in enumerate(disks)], taken)
    paths = [d['path'] for d in disks]
    if len(set(paths)) != len(paths):
        raise VirtnodeError('the same disk path is given twice', {'field': 'disks'})
    targets = [d['target'] for d in disks]
    if len(set(targets)) != len(targets):
        raise VirtnodeError('two disks have the same target', {'field': 'disks'})
    return disks


def _normalize_nics(nics):
    if nics is None:
        return None
    nics = [_normalize_nic(i, n) for i, n in enumerate(nics)]
    macs = [n['mac'] for n in nics if n['mac']]
    if len(set(macs)) != len(macs):
        raise VirtnodeError('the same MAC address is given to two NICs', {'field': 'nics'})
    return nics


def _normalize_cdrom(cdrom, stat_fn):
    if cdrom:
        if not os.path.isabs(cdrom):
            raise VirtnodeError('cdrom must be an absolute path or "" for an empty drive: %s' % cdrom, {'field': 'cdrom'})
        abs_path(cdrom, 'cdrom')
        _path_kind(cdrom, stat_fn)
    return cdrom


def _normalize_custom_properties(props):
    """Custom properties as strings; hooks get them as environment variables, so names must fit one."""
    if props is None:
        return None
    for key in props:
        if not _ENV_RE.match(str(key)):
            raise VirtnodeError('custom property name %r cannot be an environment variable' % key,
                                {'field': 'custom_properties'})
    return dict((str(k), '' if v is None else str(v)) for k, v in props.items())


def normalize(params, stat_fn, resolver=None, block_resolver=None, lexists=None, host_cpus=None, host_nodes=None,
              host_hugepages=None):
    """Validate module options; return the spec. Options left out (None) are not compared later.

    The host is only seen through the functions given: ``stat_fn`` (os.stat)
    for paths, ``resolver`` and ``block_resolver`` for disks given as
    storage-domain volumes (``(domain_id, image_id, volume_id)`` -> path),
    ``lexists`` (default: through ``stat_fn``) for block devices that would
    appear, ``host_cpus`` (the host's online CPUs, None: not checked) for pinning,
    ``host_nodes`` (its online NUMA nodes, None: not checked) for ``numa_tune``,
    ``host_hugepages`` ({page size KiB: pages reserved}, None: not checked).
    :func:`volumes.normalize_on_host` gives the real ones.
    """
    spec = {}
    spec['name'] = safe_name(params.get('name'), 'name')
    spec['uuid'] = uuid_str(params['uuid'], 'uuid') if params.get('uuid') else None
    spec['domain_type'] = _choice(params['domain_type'], DOMAIN_TYPES, 'domain_type') if params.get('domain_type') else None
    spec['machine'] = params.get('machine') or None
    spec['memory'], spec['max_memory'] = _normalize_memory(params)
    _normalize_cpu(params, spec, host_cpus)
    _normalize_numa(params, spec, host_nodes, host_hugepages)
    _normalize_boot(params, spec, stat_fn)
    spec['disks'] = _normalize_disks(params, spec['machine'], stat_fn, resolver, block_resolver,
                                     lexists or _exists_by_stat(stat_fn))
    spec['nics'] = _normalize_nics(params.get('nics'))
    spec['cdrom'] = _normalize_cdrom(params.get('cdrom'), stat_fn)
    spec['graphics'] = _normalize_graphics(params.get('graphics'))
    spec['console_log'] = params.get('console_log')
    spec['custom_properties'] = _normalize_custom_properties(params.get('custom_properties'))
    spec['lease'] = _normalize_lease(params.get('lease'))
    spec['watchdog'] = _normalize_watchdog(params.get('watchdog'))
    spec['rng'] = _normalize_rng(params.get('rng'))
    spec['video'] = _choice(params['video'], VIDEO_MODELS, 'video') if params.get('video') else None
    spec['tablet'] = params.get('tablet')
    spec['guest_agent'] = params.get('guest_agent')
    _normalize_firmware(params, spec)
    spec['tpm'] = _normalize_tpm(params.get('tpm'))
    if params.get('cloud_init') is not None:
        # Checked now so bad input changes nothing; rendered again with the VM's UUID once it is known.
        cloud_init.normalize(params['cloud_init'], spec['uuid'] or NIL_UUID, spec['name'])
    spec['cloud_init'] = params.get('cloud_init')
    spec['cloud_init_seed'] = None  # the seed's path, set by whoever writes it
    return spec


def cdrom_device(machine):
    """(bus, target) of the CD-ROM drive: SATA on q35 machines, IDE on the others."""
    if machine and 'q35' in machine:
        return 'sata', 'sdc'
    return 'ide', 'hdc'


def nvram_path(vm_uuid):
    """The VM's own UEFI variable store, named by its UUID so it stays the VM's through a rename."""
    return os.path.join(NVRAM_DIR, '%s_VARS.fd' % uuid_str(vm_uuid, 'VM UUID'))


def seed_device(machine):
    """(bus, target) of the cloud-init seed's CD-ROM drive, next to the one of :func:`cdrom_device`."""
    bus, target = cdrom_device(machine)
    return bus, target[:-1] + 'd'


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


DISK_BASE_KEYS = ('type', 'format', 'bus', 'cache', 'error_policy', 'readonly', 'lun')


def disk_needs_restart(disk, have):
    """True if the live disk ``have`` differs from ``disk`` in a setting only a restart changes (the optional
    ones, DISK_RESTART_KEYS, only when given)."""
    return any(disk[key] != have.get(key) for key in DISK_BASE_KEYS) or \
        any(disk.get(key) is not None and disk.get(key) != have.get(key) for key in DISK_RESTART_KEYS)


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


def _restart_differences(spec, live, aliases):
    """Names of the fields that differ and only take effect at the next start."""
    restart = []

    def differs(field, want, have):
        if want is not None and want != have:
            restart.append(field)

    differs('domain_type', spec['domain_type'], live['domain_type'])
    if not machine_matches(spec['machine'], live['machine'], live.get('requested_machine'), aliases):
        restart.append('machine')
    if spec['max_memory'] is not None and spec['max_memory'] != live['max_memory'] and \
            memory_to_plug(spec, live) is None:
        restart.append('max_memory')
    differs('numa_cells', spec.get('numa_cells'), live.get('numa_cells'))
    differs('numa_tune', spec.get('numa_tune'), live.get('numa_tune'))
    differs('memory_hotplug', spec.get('memory_hotplug'), live.get('memory_hotplug'))
    differs('hugepages', spec.get('hugepages'), live.get('hugepages'))
    differs('max_vcpus', spec.get('max_vcpus'), live.get('max_vcpus'))
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
    differs('cloud_init', spec.get('cloud_init_seed'), live.get('cloud_init_seed'))
    differs('firmware', spec.get('firmware'), live.get('firmware'))
    differs('secure_boot', spec.get('secure_boot'), live.get('secure_boot'))
    for field in DEVICE_FIELDS:
        differs(field, spec.get(field), live.get(field))
    return restart


def _compare_disks(spec, live, actions, restart):
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
            continue
        if disk_needs_restart(disk, have):
            restart.append('disks[%s]' % disk['path'])
        if disk.get('iotune') is not None and disk['iotune'] != (have.get('iotune') or dict.fromkeys(IOTUNE_KEYS, 0)):
            actions.append({'action': 'set_iotune', 'field': 'disks', 'target': have['target'], 'iotune': disk['iotune']})
    for have in live['disks']:
        if have['path'] not in wanted_paths:
            actions.append({'action': 'detach_disk', 'field': 'disks', 'disk': have})


def _compare_nics(spec, live, actions, restart):
    pairs, extra = match_nics(spec['nics'], live['nics'])
    for nic, have in pairs:
        if have is None:
            actions.append({'action': 'attach_nic', 'field': 'nics', 'nic': nic})
            continue
        if any(nic.get(key) is not None and nic.get(key) != have.get(key) for key in NIC_RESTART_KEYS):
            restart.append('nics[%s]' % (have['mac'] or nic['source']))
        # libvirt moves a NIC to another bridge or network, and sets its link, on the running VM.
        moved = (nic['source_type'], nic['source']) != (have['source_type'], have['source'])
        link = nic.get('link_state') is not None and nic['link_state'] != (have.get('link_state') or 'up')
        # libvirt re-instantiates a changed network filter on the running NIC.
        nwfilter = nic.get('filter') is not None and nic['filter'] != (have.get('filter') or False)
        if moved or link or nwfilter:
            actions.append({'action': 'update_nic', 'field': 'nics', 'mac': have['mac'], 'nic': nic})
    for have in extra:
        actions.append({'action': 'detach_nic', 'field': 'nics', 'nic': have})


def _compare_graphics(spec, live, actions, restart):
    have = live['graphics']
    if have is None or have['type'] != spec['graphics']['type'] or have['listen'] != spec['graphics']['listen']:
        restart.append('graphics')
    elif (have['password'], have['password_valid_to']) != (spec['graphics']['password'], spec['graphics']['password_valid_to']):
        actions.append({'action': 'set_ticket', 'field': 'graphics', 'graphics': spec['graphics']})


def memory_to_plug(spec, live):
    """KiB of DIMM to plug into the running VM for ``spec['max_memory']``, or None when that needs a restart:
    more memory, within the VM's hotplug maximum, a free slot, whole guest memory blocks."""
    hotplug = live.get('memory_hotplug')
    if not hotplug or spec['max_memory'] is None or live['max_memory'] is None:
        return None
    more = spec['max_memory'] - live['max_memory']
    if more <= 0 or spec['max_memory'] > hotplug['max'] or more % MEMORY_HOTPLUG_STEP_KIB:
        return None
    if live.get('dimms', 0) >= hotplug['slots']:
        return None
    return more


def _compare_vcpus(spec, live, actions, restart):
    """vCPUs are hotplugged up to the maximum the VM was started with; pinning is set live."""
    if spec['vcpus'] is not None and spec['vcpus'] != live['vcpus']:
        if 'max_vcpus' not in restart and spec['vcpus'] <= (live.get('max_vcpus') or live['vcpus']):
            actions.append({'action': 'set_vcpus', 'field': 'vcpus', 'count': spec['vcpus']})
        else:
            restart.append('vcpus')
    for vcpu, cpus in sorted((spec.get('cpu_pinning') or {}).items()):
        if (live.get('cpu_pinning') or {}).get(vcpu) != cpus:
            actions.append({'action': 'pin_vcpu', 'field': 'cpu_pinning', 'vcpu': vcpu, 'cpus': cpus})
    if spec.get('emulator_pinning') is not None and spec['emulator_pinning'] != live.get('emulator_pinning'):
        actions.append({'action': 'pin_emulator', 'field': 'emulator_pinning', 'cpus': spec['emulator_pinning']})


def compare(spec, live, aliases=None):
    """Differences between the spec and a parsed domain.

    Returns a dict with ``live`` (list of actions appliable to a running
    domain: dicts with ``action`` and its data) and ``restart`` (names of
    fields that need a restart).
    """
    actions = []
    restart = _restart_differences(spec, live, aliases)
    _compare_vcpus(spec, live, actions, restart)
    plug = memory_to_plug(spec, live) if spec['max_memory'] != live['max_memory'] else None
    if plug:
        actions.append({'action': 'plug_memory', 'field': 'max_memory', 'kib': plug})
    if spec['memory'] is not None and spec['memory'] != live['memory']:
        # The balloon moves live only within an unchanged maximum.
        if 'max_memory' not in restart:
            actions.append({'action': 'set_memory', 'field': 'memory', 'kib': spec['memory']})
        else:
            restart.append('memory')
    if spec['disks'] is not None:
        _compare_disks(spec, live, actions, restart)
    if spec['nics'] is not None:
        _compare_nics(spec, live, actions, restart)
    if spec['cdrom'] is not None:
        if live['cdrom'] is None:
            restart.append('cdrom')
        elif spec['cdrom'] != live['cdrom']:
            actions.append({'action': 'change_cd', 'field': 'cdrom', 'path': spec['cdrom']})
    if spec['graphics'] is not None:
        _compare_graphics(spec, live, actions, restart)
    if spec['custom_properties'] is not None and spec['custom_properties'] != live['custom_properties']:
        actions.append({'action': 'set_metadata', 'field': 'custom_properties'})
    return {'live': actions, 'restart': restart}


def _public_disk(disk):
    return dict((k, disk.get(k)) for k in ('path', 'type', 'format', 'bus', 'target', 'cache', 'error_policy', 'readonly'))


def summary(spec_like, redact=True):
    """The comparable fields of a spec or parsed domain, for diffs and results (passwords hidden)."""
    out = {}
    for key in ('name', 'uuid', 'domain_type', 'machine', 'memory', 'max_memory', 'vcpus', 'max_vcpus', 'cpu_topology',
                'cpu_model', 'cpu_pinning', 'emulator_pinning',
                'boot_order', 'kernel', 'initrd', 'cmdline', 'cdrom', 'console_log', 'custom_properties', 'lease',
                'firmware', 'secure_boot', 'numa_cells', 'numa_tune', 'memory_hotplug', 'hugepages') + DEVICE_FIELDS:
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
