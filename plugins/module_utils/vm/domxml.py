# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt domain XML of a typed VM spec, and back: building and parsing, no libvirt calls.

* :func:`build_xml` renders a spec (:mod:`spec`) as domain XML (lxml), and
  the ``*_element`` functions the devices a running domain takes live.
* :func:`parse_live` reads a live or persistent domain XML back into the
  spec's shape, for :func:`spec.compare`.
* :func:`updated_persistent_xml` merges a spec over an existing definition.

Our own data (balloon target, the machine type asked for, custom properties)
lives in the domain's ``<metadata>`` under :data:`METADATA_NS`.
"""

from __future__ import annotations

import copy
import html
import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import cloud_init
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.spec import (
    CPU_MODES, IOTUNE_KEYS, KIB, MIB_IN_KIB, cdrom_device, machine_matches, match_nics, nvram_path, parse_cpuset,
    seed_device)

try:
    from lxml import etree
    HAS_LXML = True
except ImportError:
    etree = None
    HAS_LXML = False

METADATA_NS = 'http://virtnode.kvm/xmlns/vm/1.0'
METADATA_PREFIX = 'virtnode'
CONSOLE_LOG_DIR = '/var/log/libvirt/qemu'
GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0'


def require_lxml():
    if not HAS_LXML:
        raise VirtnodeError('python lxml is required on the managed host (Debian: python3-lxml)')


def to_text(elem):
    """An element as XML text, the form libvirt's device calls take."""
    return etree.tostring(elem, encoding='unicode')


def console_log_path(name):
    return os.path.join(CONSOLE_LOG_DIR, '%s-console.log' % name)


# --------------------------------------------------------------------------
# XML building

def _sub(parent, tag, text=None, **attrs):
    elem = etree.SubElement(parent, tag, dict((k, str(v)) for k, v in attrs.items() if v is not None))
    if text is not None:
        elem.text = str(text)
    return elem


def disk_element(disk):
    require_lxml()
    if disk.get('lun'):
        # sgio filtered: the guest's SCSI commands reach the LUN, the unsafe ones filtered by the host kernel.
        elem = etree.Element('disk', type='block', device='lun', sgio='filtered')
    else:
        elem = etree.Element('disk', type=disk['type'], device='disk')
    driver = _sub(elem, 'driver', name='qemu', type=disk['format'], cache=disk['cache'],
                  error_policy=disk['error_policy'], io=disk['io'], discard=disk.get('discard'),
                  detect_zeroes=disk.get('detect_zeroes'))
    if disk['error_policy'] in ('stop', 'enospace'):
        driver.set('rerror_policy', 'stop')
    _sub(elem, 'source', **{'file' if disk['type'] == 'file' else 'dev': disk['path']})
    if disk.get('backing') is not None and disk['format'] == 'qcow2':
        backing_store_elements(elem, disk['backing'])
    _sub(elem, 'target', dev=disk['target'], bus=disk['bus'])
    if disk['readonly']:
        _sub(elem, 'readonly')
    if disk['serial']:
        _sub(elem, 'serial', disk['serial'])
    iotune = dict((key, value) for key, value in (disk.get('iotune') or {}).items() if value)
    if iotune:
        tune = _sub(elem, 'iotune')
        for key in sorted(iotune):
            _sub(tune, key, iotune[key])
    return elem


def scsi_controller_element(index=0):
    """The virtio-scsi controller SCSI disks and direct LUNs sit on (VDSM's; libvirt's default is an emulated one)."""
    require_lxml()
    return etree.Element('controller', type='scsi', index=str(index), model='virtio-scsi')


def backing_store_elements(disk_elem, layers):
    """The backing chain ``[(path, format)]`` (top first) as nested ``<backingStore>``, closed by an empty one.

    Named explicitly, the chain is what libvirt gives QEMU: neither reads a
    backing file name from an image header, which another host can rewrite.
    """
    parent = disk_elem
    for path, fmt in layers:
        parent = _sub(parent, 'backingStore', type='block' if path.startswith('/dev/') else 'file')
        _sub(parent, 'format', type=fmt)
        _sub(parent, 'source', **{'dev' if path.startswith('/dev/') else 'file': path})
    _sub(parent, 'backingStore')


def cdrom_element(path, machine, device=None):
    """A read-only CD-ROM drive with ``path`` (None or '': empty) on ``device`` (bus, target), by default the
    one of :func:`spec.cdrom_device`."""
    require_lxml()
    bus, target = device or cdrom_device(machine)
    elem = etree.Element('disk', type='file', device='cdrom')
    _sub(elem, 'driver', name='qemu', type='raw')
    if path:
        _sub(elem, 'source', file=path)
    _sub(elem, 'target', dev=target, bus=bus)
    _sub(elem, 'readonly')
    return elem


def nic_element(nic):
    require_lxml()
    elem = etree.Element('interface', type=nic['source_type'])
    if nic['mac']:
        _sub(elem, 'mac', address=nic['mac'])
    _sub(elem, 'source', **{nic['source_type']: nic['source']})
    _sub(elem, 'model', type=nic['model'])
    if nic.get('queues'):
        _sub(elem, 'driver', queues=nic['queues'])
    if nic.get('mtu'):
        _sub(elem, 'mtu', size=nic['mtu'])
    if nic.get('link_state'):
        _sub(elem, 'link', state=nic['link_state'])
    if nic.get('filter'):
        elem.append(filterref_element(nic['filter']))
    return elem


def filterref_element(nwfilter):
    elem = etree.Element('filterref', filter=nwfilter['name'])
    for name in sorted(nwfilter['parameters']):
        for value in nwfilter['parameters'][name]:
            _sub(elem, 'parameter', name=name, value=value)
    return elem


def _filter_from_elem(elem):
    if elem is None:
        return False
    params = {}
    for param in elem.findall('parameter'):
        params.setdefault(param.get('name'), []).append(param.get('value'))
    return {'name': elem.get('filter'), 'parameters': dict((k, sorted(v)) for k, v in params.items())}


def graphics_element(graphics, port=None):
    require_lxml()
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


def metadata_element(spec, namespaced=True):
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


def _cpuset_text(cpus):
    return ','.join(str(cpu) for cpu in cpus)


def _cputune_element(root, spec):
    pins, emulator = spec.get('cpu_pinning') or {}, spec.get('emulator_pinning')
    if not pins and not emulator:
        return
    tune = _sub(root, 'cputune')
    for vcpu in sorted(pins):
        _sub(tune, 'vcpupin', vcpu=vcpu, cpuset=_cpuset_text(pins[vcpu]))
    if emulator:
        _sub(tune, 'emulatorpin', cpuset=_cpuset_text(emulator))


def _device_elements(devices, spec):
    """The one-of-a-kind devices the spec owns (see ``vm_spec.DEVICE_FIELDS``); False or None adds none."""
    if spec.get('video'):
        video = _sub(devices, 'video')
        _sub(video, 'model', type=spec['video'])
    if spec.get('tablet'):
        _sub(devices, 'input', type='tablet', bus='usb')
    if spec.get('watchdog'):
        _sub(devices, 'watchdog', model=spec['watchdog']['model'], action=spec['watchdog']['action'])
    rng = spec.get('rng')
    if rng:
        elem = _sub(devices, 'rng', model='virtio')
        if rng['rate_bytes']:
            _sub(elem, 'rate', bytes=rng['rate_bytes'], period=rng['rate_period_ms'])
        _sub(elem, 'backend', rng['backend'], model='random')
    if spec.get('tpm'):
        # persistent_state: a transient VM (VDSM's kind) keeps its TPM across restarts too.
        tpm = _sub(devices, 'tpm', model='tpm-%s' % spec['tpm']['model'])
        _sub(tpm, 'backend', type='emulator', version='2.0', persistent_state='yes' if spec.get('transient') else None)
    if spec.get('guest_agent') is not False:
        # New domains get the agent's port unless it is refused; libvirt gives the socket its own path.
        channel = _sub(devices, 'channel', type='unix')
        _sub(channel, 'target', type='virtio', name=GUEST_AGENT_CHANNEL)


def numa_cells_of(spec, vcpus):
    """The guest NUMA cells to render: the spec's; with memory hotplug and none given, one cell of every vCPU and
    the boot memory (QEMU plugs DIMMs into a NUMA node, and libvirt needs one to exist)."""
    if spec.get('numa_cells'):
        return spec['numa_cells']
    if spec.get('memory_hotplug'):
        count = max(spec.get('max_vcpus') or 0, vcpus)
        return [{'cpus': list(range(count)), 'memory': spec['max_memory'] or 128 * MIB_IN_KIB}]
    return None


def _memory_elements(root, spec):
    """The host side of guest memory: hugepage backing and the NUMA binding."""
    if spec.get('hugepages'):
        backing = _sub(root, 'memoryBacking')
        _sub(_sub(backing, 'hugepages'), 'page', size=spec['hugepages'], unit='KiB')
    if spec.get('numa_tune'):
        tune = _sub(root, 'numatune')
        _sub(tune, 'memory', mode=spec['numa_tune']['mode'], nodeset=_cpuset_text(spec['numa_tune']['nodeset']))


def dimm_element(kib, node=0):
    """A DIMM of ``kib`` KiB in guest NUMA node ``node``, as virDomainAttachDevice takes it."""
    require_lxml()
    elem = etree.Element('memory', model='dimm')
    target = _sub(elem, 'target')
    _sub(target, 'size', kib, unit='KiB')
    _sub(target, 'node', node)
    return elem


def _parse_memory(root, live):
    max_memory = root.find('maxMemory')
    live['memory_hotplug'] = ({'max': to_kib(max_memory), 'slots': int(max_memory.get('slots') or 0)}
                              if max_memory is not None else None)
    live['dimms'] = len(root.findall("devices/memory[@model='dimm']"))
    cells = []
    for cell in root.findall('cpu/numa/cell'):
        try:
            cpus = parse_cpuset(cell.get('cpus'), 'numa cell cpus')
        except VirtnodeError:
            cpus = None
        memory = etree.Element('memory', unit=cell.get('unit') or 'KiB')
        memory.text = cell.get('memory')
        cells.append({'cpus': cpus, 'memory': to_kib(memory)})
    live['numa_cells'] = cells or None
    tune = root.find('numatune/memory')
    nodeset = None
    if tune is not None and tune.get('nodeset'):
        try:
            nodeset = parse_cpuset(tune.get('nodeset'), 'numatune nodeset')
        except VirtnodeError:
            nodeset = None
    live['numa_tune'] = {'mode': tune.get('mode') or 'strict', 'nodeset': nodeset} if tune is not None else None
    page = root.find('memoryBacking/hugepages/page')
    if page is not None:
        size = etree.Element('size', unit=page.get('unit') or 'KiB')
        size.text = page.get('size')
        live['hugepages'] = to_kib(size)
    else:
        live['hugepages'] = 2048 if root.find('memoryBacking/hugepages') is not None else 0


def _firmware_elements(os_elem, spec):
    """UEFI through libvirt's firmware autoselection (the OVMF build that has the features asked for), with
    the VM's own variable store."""
    if spec.get('firmware') != 'uefi':
        return
    os_elem.set('firmware', 'efi')
    firmware = _sub(os_elem, 'firmware')
    secure = 'yes' if spec.get('secure_boot') else 'no'
    _sub(firmware, 'feature', enabled=secure, name='enrolled-keys')
    _sub(firmware, 'feature', enabled=secure, name='secure-boot')
    nvram = spec.get('nvram') or (nvram_path(spec['uuid']) if spec.get('uuid') else None)
    if nvram:
        _sub(os_elem, 'nvram', nvram)


def _parse_firmware(root, live):
    os_elem = root.find('os')
    loader = os_elem.find('loader') if os_elem is not None else None
    efi = os_elem is not None and (os_elem.get('firmware') == 'efi' or (loader is not None and loader.get('type') == 'pflash'))
    live['firmware'] = 'uefi' if efi else 'bios'
    feature = root.find("os/firmware/feature[@name='secure-boot']")
    live['secure_boot'] = bool(efi and ((feature is not None and feature.get('enabled') == 'yes')
                                        or (loader is not None and loader.get('secure') == 'yes')))
    live['nvram'] = (root.findtext('os/nvram') or '').strip() or None
    live['smm'] = root.find("features/smm[@state='on']") is not None


def _parse_devices(root, live):
    """The one-of-a-kind devices in the spec's shape: absent ones are False (never None: they are known)."""
    watchdog = root.find('devices/watchdog')
    live['watchdog'] = {'model': watchdog.get('model'), 'action': watchdog.get('action') or 'reset'} \
        if watchdog is not None else False
    rng = root.find("devices/rng[@model='virtio']")
    if rng is not None:
        rate = rng.find('rate')
        rate_bytes = int(rate.get('bytes')) if rate is not None and rate.get('bytes') else None
        live['rng'] = {'backend': (rng.findtext('backend') or '/dev/urandom').strip(), 'rate_bytes': rate_bytes,
                       'rate_period_ms': int(rate.get('period') or 1000) if rate_bytes else None}
    else:
        live['rng'] = False
    video = root.find('devices/video/model')
    live['video'] = video.get('type') if video is not None else None
    live['tablet'] = root.find("devices/input[@type='tablet']") is not None
    live['guest_agent'] = guest_agent_channel(root) is not None
    tpm = root.find('devices/tpm')
    live['tpm'] = {'model': (tpm.get('model') or 'tpm-tis').replace('tpm-', '')} if tpm is not None else False


def guest_agent_channel(root):
    for channel in root.findall('devices/channel'):
        target = channel.find('target')
        if target is not None and target.get('name') == GUEST_AGENT_CHANNEL:
            return channel
    return None


def build_xml(spec, domain_type='qemu', arch='x86_64'):
    """Render ``spec`` as domain XML text (defaults: 128 MiB, 1 vCPU, serial console logged)."""
    require_lxml()
    root = etree.Element('domain', type=spec['domain_type'] or domain_type)
    _sub(root, 'name', spec['name'])
    if spec['uuid']:
        _sub(root, 'uuid', spec['uuid'])
    metadata = _sub(root, 'metadata')
    metadata.append(metadata_element(spec))
    max_memory = spec['max_memory'] or 128 * MIB_IN_KIB
    hotplug = spec.get('memory_hotplug')
    if hotplug:
        _sub(root, 'maxMemory', hotplug['max'], slots=hotplug['slots'], unit='KiB')
    _sub(root, 'memory', max_memory, unit='KiB')
    _sub(root, 'currentMemory', spec['memory'] or max_memory, unit='KiB')
    _memory_elements(root, spec)
    vcpus, max_vcpus = spec['vcpus'] or 1, spec.get('max_vcpus')
    if max_vcpus and max_vcpus > vcpus:
        _sub(root, 'vcpu', max_vcpus, placement='static', current=vcpus)
    else:
        _sub(root, 'vcpu', vcpus, placement='static')
    _cputune_element(root, spec)
    cells = numa_cells_of(spec, vcpus)
    if spec['cpu_model'] or spec['cpu_topology'] or cells:
        model = spec['cpu_model']
        cpu = _sub(root, 'cpu', mode=model if model in CPU_MODES else ('custom' if model else None),
                   match='exact' if model and model not in CPU_MODES else None)
        if model and model not in CPU_MODES:
            _sub(cpu, 'model', model, fallback='forbid')
        if spec['cpu_topology']:
            _sub(cpu, 'topology', **spec['cpu_topology'])
        if cells:
            numa = _sub(cpu, 'numa')
            for index, cell in enumerate(cells):
                _sub(numa, 'cell', id=index, cpus=_cpuset_text(cell['cpus']), memory=cell['memory'], unit='KiB')
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
    _firmware_elements(os_elem, spec)
    features = _sub(root, 'features')
    _sub(features, 'acpi')
    _sub(features, 'apic')
    if spec.get('secure_boot') or spec.get('smm'):
        _sub(features, 'smm', state='on')
    _sub(root, 'on_poweroff', 'destroy')
    _sub(root, 'on_reboot', 'restart')
    _sub(root, 'on_crash', 'destroy')
    devices = _sub(root, 'devices')
    for disk in spec['disks'] or ():
        devices.append(disk_element(disk))
    if any(disk['bus'] == 'scsi' for disk in spec['disks'] or ()):
        devices.append(scsi_controller_element())
    if spec['cdrom'] is not None:
        devices.append(cdrom_element(spec['cdrom'], spec['machine']))
    if spec.get('cloud_init_seed'):
        devices.append(cdrom_element(spec['cloud_init_seed'], spec['machine'], seed_device(spec['machine'])))
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
    _device_elements(devices, spec)
    _sub(devices, 'memballoon', model='virtio')
    if spec['lease']:
        lease = _sub(devices, 'lease')
        _sub(lease, 'lockspace', spec['lease']['sd_id'])
        _sub(lease, 'key', spec['lease']['lease_id'])
        _sub(lease, 'target', path=spec['lease']['path'], offset=spec['lease']['offset'])
    return etree.tostring(root, pretty_print=True, encoding='unicode')


# --------------------------------------------------------------------------
# reading a live domain

def parse_xml(xml_text):
    require_lxml()
    try:
        return etree.fromstring(xml_text.encode('utf-8') if isinstance(xml_text, str) else xml_text)
    except etree.XMLSyntaxError as err:
        raise VirtnodeError('cannot parse domain XML: %s' % err)


def to_kib(elem):
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
        'discard': driver.get('discard'),
        'detect_zeroes': driver.get('detect_zeroes'),
        'iotune': _iotune_from_elem(elem.find('iotune')),
        'alias': elem.find('alias').get('name') if elem.find('alias') is not None else None,
    }


def _iotune_from_elem(tune):
    """The disk's limits as the spec has them (every key, 0 for none); None without an ``<iotune>``."""
    if tune is None:
        return None
    limits = dict.fromkeys(IOTUNE_KEYS, 0)
    for key in IOTUNE_KEYS:
        text = tune.findtext(key)
        if text and text.strip().isdigit():
            limits[key] = int(text.strip())
    return limits


def _parse_metadata(root, live):
    """Balloon target, machine asked for and custom properties, from our metadata element."""
    live['memory'] = live['current_memory']
    live['balloon_target'] = None
    live['requested_machine'] = None
    live['custom_properties'] = {}
    live['refused_custom_properties'] = []
    meta = root.find('metadata/{%s}vm' % METADATA_NS)
    if meta is None:
        return
    target = meta.find('{%s}balloon_target' % METADATA_NS)
    if target is not None and target.text:
        live['balloon_target'] = int(target.text)
        live['memory'] = live['balloon_target']
    live['requested_machine'] = meta.findtext('{%s}machine' % METADATA_NS)
    # Anyone with access to libvirt can edit the metadata: names are checked as when they were set,
    # and the ones hooks must not get are left out (the caller warns about them).
    props = dict((prop.get('name'), prop.text or '')
                 for prop in meta.findall('{%s}custom_properties/{%s}property' % (METADATA_NS, METADATA_NS)))
    live['custom_properties'], live['refused_custom_properties'] = hooks_utils.split_env(props)


_PASSWD_RE = re.compile(r'''\bpasswd\s*=\s*(?:"([^"]*)"|'([^']*)')''')


def graphics_passwords(xml_text):
    """Console passwords in a domain XML (as written and as decoded), to keep them out of hook output.

    Read from the text, not parsed: hooks may have rewritten it into something that does not parse.
    """
    found = set()
    for double, single in _PASSWD_RE.findall(xml_text or ''):
        raw = double or single
        if raw:
            found.update((raw, html.unescape(raw)))
    return sorted(found)


def _parse_cpu(root, live):
    cpu = root.find('cpu')
    live['cpu_model'] = None
    live['cpu_topology'] = None
    if cpu is not None:
        mode = cpu.get('mode')
        live['cpu_model'] = mode if mode in CPU_MODES else cpu.findtext('model')
        topo = cpu.find('topology')
        if topo is not None:
            live['cpu_topology'] = dict((k, int(topo.get(k, 1))) for k in ('sockets', 'cores', 'threads'))


def _parse_cputune(root, live):
    tune = root.find('cputune')
    live['cpu_pinning'] = {}
    live['emulator_pinning'] = None
    if tune is None:
        return
    for pin in tune.findall('vcpupin'):
        try:
            live['cpu_pinning'][int(pin.get('vcpu'))] = parse_cpuset(pin.get('cpuset'), 'vcpupin')
        except (TypeError, ValueError, VirtnodeError):
            continue  # a pin libvirt wrote that this spec cannot express is left alone
    emulator = tune.find('emulatorpin')
    if emulator is not None:
        try:
            live['emulator_pinning'] = parse_cpuset(emulator.get('cpuset'), 'emulatorpin')
        except VirtnodeError:
            pass


def _parse_drives(root, live):
    """Disks, and the CD-ROM drive (``cdrom`` is '' for an empty drive, None for none)."""
    live['disks'] = []
    live['cdrom'] = None
    live['cdrom_target'] = None
    live['cloud_init_seed'] = None
    for elem in root.findall('devices/disk'):
        if elem.get('device') == 'cdrom' and _is_seed_drive(_disk_from_elem(elem)):
            seed = _disk_from_elem(elem)
            live['cloud_init_seed'] = seed['path'] or None
            live['cloud_init_seed_drive'] = (seed['bus'], seed['target'])
        elif elem.get('device') == 'cdrom':
            disk = _disk_from_elem(elem)
            live['cdrom'] = disk['path'] or ''
            live['cdrom_target'] = disk['target']
            live['cdrom_bus'] = disk['bus']
        elif elem.get('device', 'disk') in ('disk', 'lun'):
            live['disks'].append(dict(_disk_from_elem(elem), lun=elem.get('device') == 'lun'))
    live['scsi_controller'] = root.find("devices/controller[@type='scsi']") is not None


def _is_seed_drive(disk):
    """The cloud-init seed's drive: it holds a seed, or it is empty (ejected before a migration) on the seed's
    target, which the spec's own CD-ROM never takes."""
    if cloud_init.is_seed_path(disk['path']):
        return True
    return not disk['path'] and disk['target'] in (seed_device('q35')[1], seed_device(None)[1])


def _nic_from_elem(elem):
    source = elem.find('source')
    kind = elem.get('type')
    model = elem.find('model')
    return {
        'source_type': kind,
        'source': source.get(kind) if source is not None else None,
        'mac': elem.find('mac').get('address').lower() if elem.find('mac') is not None else None,
        'model': model.get('type') if model is not None else None,
        'link_state': elem.find('link').get('state') if elem.find('link') is not None else 'up',
        'mtu': int(elem.find('mtu').get('size')) if elem.find('mtu') is not None and elem.find('mtu').get('size') else None,
        'queues': int(elem.find('driver').get('queues'))
        if elem.find('driver') is not None and elem.find('driver').get('queues') else None,
        'filter': _filter_from_elem(elem.find('filterref')),
        'target_dev': elem.find('target').get('dev') if elem.find('target') is not None else None,
        'alias': elem.find('alias').get('name') if elem.find('alias') is not None else None,
    }


def _graphics_from_elem(graphics):
    if graphics is None:
        return None
    listen = graphics.get('listen')
    if listen is None and graphics.find('listen') is not None:
        listen = graphics.find('listen').get('address')
    return {
        'type': graphics.get('type'),
        'listen': listen,
        'password': graphics.get('passwd') or None,
        'password_valid_to': graphics.get('passwdValidTo'),
        'port': int(graphics.get('port')) if graphics.get('port') and graphics.get('port') != '-1' else None,
    }


def _lease_from_elem(lease):
    if lease is None:
        return None
    target = lease.find('target')
    return {'sd_id': lease.findtext('lockspace'), 'lease_id': lease.findtext('key'),
            'path': target.get('path') if target is not None else None,
            'offset': int(target.get('offset') or 0) if target is not None else 0}


def parse_live(xml_text):
    """Read domain XML into the spec's shape (plus runtime details such as ports and aliases)."""
    root = parse_xml(xml_text)
    live = {
        'name': root.findtext('name'),
        'uuid': root.findtext('uuid'),
        'domain_type': root.get('type'),
        'machine': root.find('os/type').get('machine') if root.find('os/type') is not None else None,
        'max_memory': to_kib(root.find('memory')),
        'current_memory': to_kib(root.find('currentMemory')),
        'max_vcpus': int(root.findtext('vcpu')) if root.findtext('vcpu') else None,
        'vcpus': int(root.find('vcpu').get('current') or root.findtext('vcpu')) if root.findtext('vcpu') else None,
        'kernel': root.findtext('os/kernel'),
        'initrd': root.findtext('os/initrd'),
        'cmdline': root.findtext('os/cmdline'),
        'boot_order': [b.get('dev') for b in root.findall('os/boot')] or None,
    }
    _parse_metadata(root, live)
    _parse_cpu(root, live)
    _parse_cputune(root, live)
    _parse_drives(root, live)
    live['nics'] = [_nic_from_elem(elem) for elem in root.findall('devices/interface')]
    live['graphics'] = _graphics_from_elem(root.find('devices/graphics'))
    serial_log = root.find('devices/serial/log')
    live['console_log'] = serial_log is not None
    live['console_log_file'] = serial_log.get('file') if serial_log is not None else None
    live['lease'] = _lease_from_elem(root.find('devices/lease'))
    _parse_devices(root, live)
    _parse_firmware(root, live)
    _parse_memory(root, live)
    return live


DISK_KEPT_KEYS = ('io', 'serial', 'discard', 'detect_zeroes', 'iotune')
NIC_KEPT_KEYS = ('link_state', 'mtu', 'queues', 'filter')


def _kept(wanted, defined, keys):
    """``wanted`` with the ``keys`` it leaves out (None) taken from ``defined`` (the same device, or None)."""
    if defined is None:
        return wanted
    return dict(wanted, **dict((key, defined.get(key)) for key in keys if wanted.get(key) is None))


def updated_persistent_xml(spec, persistent_xml, domain_type='qemu'):
    """A new persistent definition: the spec's fields applied over the existing definition.

    The existing definition is rebuilt from the spec with the fields the
    user left out taken from it, so libvirt's own additions (addresses,
    controllers) of devices that stay are kept by libvirt on redefine
    (it keeps the UUID; devices are re-addressed as needed).
    """
    live = parse_live(persistent_xml)
    merged = dict(spec)
    for key in ('domain_type', 'machine', 'vcpus', 'max_vcpus', 'cpu_topology', 'cpu_model', 'cpu_pinning',
                'emulator_pinning', 'boot_order', 'kernel', 'initrd', 'cmdline', 'graphics', 'lease', 'watchdog', 'rng',
                'video', 'tablet', 'guest_agent', 'cloud_init_seed', 'firmware', 'secure_boot', 'tpm', 'nvram', 'smm',
                'numa_cells', 'numa_tune', 'memory_hotplug', 'hugepages'):
        if merged.get(key) is None:
            merged[key] = live.get(key)
    if merged['max_vcpus'] is not None and merged['vcpus'] is not None and merged['vcpus'] > merged['max_vcpus']:
        merged['max_vcpus'] = None  # more vCPUs than the old maximum: the new count is the maximum
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
    else:
        # Settings of a disk the spec leaves out stay as the definition has them.
        defined = dict((d['path'], d) for d in live['disks'])
        merged['disks'] = [_kept(disk, defined.get(disk['path']), DISK_KEPT_KEYS) for disk in merged['disks']]
    if merged['nics'] is None:
        merged['nics'] = [dict((k, n.get(k)) for k in ('source_type', 'source', 'mac', 'model') + NIC_KEPT_KEYS)
                          for n in live['nics']]
    else:
        pairs, dummy = match_nics(merged['nics'], live['nics'])
        merged['nics'] = [_kept(dict(nic, mac=nic['mac'] or (have['mac'] if have else None)), have, NIC_KEPT_KEYS)
                          for nic, have in pairs]
    if merged['cdrom'] is None:
        merged['cdrom'] = live['cdrom']
    merged['uuid'] = live['uuid']
    root = parse_xml(build_xml(merged, domain_type=domain_type))
    keep_unowned(root, parse_xml(persistent_xml))
    return etree.tostring(root, pretty_print=True, encoding='unicode')


# What the spec renders, by parent: the rest of a definition (devices a hook or an administrator added, libvirt's
# controllers, clock, features, security labels ...) is carried over as it was.
OWNED_TOP = ('name', 'uuid', 'memory', 'currentMemory', 'maxMemory', 'vcpu', 'memoryBacking', 'numatune', 'on_poweroff',
             'on_reboot', 'on_crash')
OWNED_CHILDREN = {
    'os': ('type', 'kernel', 'initrd', 'cmdline', 'boot', 'loader', 'nvram', 'firmware'),
    'cpu': ('model', 'topology', 'numa'),
    'cputune': ('vcpupin', 'emulatorpin'),
    'features': ('acpi', 'apic', 'smm'),
}
OWNED_ATTRIBUTES = {'os': ('firmware',)}
OWNED_DEVICES = ('interface', 'graphics', 'serial', 'console', 'video', 'watchdog', 'rng', 'memballoon', 'lease', 'tpm')


def _owned_device(elem, new_devices=None):
    if elem.tag in OWNED_DEVICES:
        return True
    if elem.tag == 'disk':
        return elem.get('device', 'disk') in ('disk', 'cdrom', 'lun')
    if elem.tag == 'controller' and new_devices is not None:
        # One controller per type and index: the spec's (its virtio-scsi one) replaces the old one.
        return new_devices.find("controller[@type='%s'][@index='%s']" % (elem.get('type'), elem.get('index', '0'))) \
            is not None
    if elem.tag == 'input':
        return elem.get('type') == 'tablet'
    if elem.tag == 'channel':
        target = elem.find('target')
        return target is not None and target.get('name') == GUEST_AGENT_CHANNEL
    return False


def _unowned_children(old_parent, owned):
    return [copy.deepcopy(child) for child in old_parent if not isinstance(child.tag, str) or child.tag not in owned]


def keep_unowned(root, old_root):
    """Copy into ``root`` (rendered from a spec) what ``old_root`` has that the spec does not render."""
    for old_child in old_root:
        if not isinstance(old_child.tag, str) or old_child.tag in OWNED_TOP:
            continue
        tag = old_child.tag
        new_child = root.find(tag)
        if tag == 'metadata':
            for item in old_child:
                if item.tag != '{%s}vm' % METADATA_NS:
                    new_child.append(copy.deepcopy(item))
        elif tag == 'devices':
            new_child.extend([copy.deepcopy(dev) for dev in old_child
                              if isinstance(dev.tag, str) and not _owned_device(dev, new_child)])
        elif tag in OWNED_CHILDREN:
            if new_child is None:
                new_child = _sub(root, tag)
            for key, value in old_child.attrib.items():
                if new_child.get(key) is None and key not in OWNED_ATTRIBUTES.get(tag, ()):
                    new_child.set(key, value)
            new_child.extend(_unowned_children(old_child, OWNED_CHILDREN[tag]))
        elif new_child is None:
            root.append(copy.deepcopy(old_child))


def machine_aliases(caps_xml):
    """``{alias: canonical}`` machine types from the capabilities XML."""
    aliases = {}
    if not caps_xml:
        return aliases
    root = parse_xml(caps_xml)
    for machine in root.iter('machine'):
        if machine.get('canonical') and machine.text:
            aliases[machine.text.strip()] = machine.get('canonical')
    return aliases
