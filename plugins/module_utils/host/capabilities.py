# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the host can virtualize: libvirt's capabilities XML, CPUs, NUMA and /dev/kvm.

Kept apart from the rest of the host facts because the ``vm`` module needs
it too (to pick the domain type); it reads files and parses XML, and
imports nothing above ``common`` and the host's own readers.
"""

from __future__ import annotations

import os
import re
import uuid
import xml.etree.ElementTree as ET

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.readers import host_path, list_dir, read_int, read_optional_text
from ansible_collections.virtnode.kvm.plugins.module_utils.host.readers import mib


def normalize_uuid(text):
    """``text`` as a canonical UUID string, or None when it is not one."""
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def parse_cpu_list(text):
    """``'0-3,8,10-11'`` -> ``[0, 1, 2, 3, 8, 10, 11]``; invalid text gives ``[]``."""
    cpus = []
    if not text:
        return cpus
    try:
        for part in text.strip().split(','):
            part = part.strip()
            if not part:
                continue
            if '-' in part:
                first, last = part.split('-', 1)
                cpus.extend(range(int(first), int(last) + 1))
            else:
                cpus.append(int(part))
    except ValueError:
        return []
    return sorted(set(cpus))


# --------------------------------------------------------------------------
# libvirt capabilities XML

def _int_attr(elem, name):
    try:
        return int(elem.get(name))
    except (TypeError, ValueError):
        return None


def _kib(elem):
    """Value of a libvirt ``<memory unit='KiB'>`` style element in KiB."""
    if elem is None or elem.text is None:
        return None
    try:
        value = int(elem.text.strip())
    except ValueError:
        return None
    factors = {'b': 1.0 / 1024, 'bytes': 1.0 / 1024, 'kib': 1, 'k': 1, 'kb': 1000.0 / 1024,
               'mib': 1024, 'm': 1024, 'gib': 1024 * 1024, 'g': 1024 * 1024}
    factor = factors.get((elem.get('unit') or 'KiB').lower(), 1)
    return int(value * factor)


def parse_capabilities(xml_text):
    """The parts of ``virConnectGetCapabilities`` XML that this collection uses.

    Returns ``{'host_uuid', 'arch', 'cpu_model', 'cpu_vendor', 'numa_cells',
    'guests'}``; ``numa_cells`` is a list of ``{'id', 'memory_mib', 'cpus',
    'topology'}`` and ``guests`` a list of ``{'os_type', 'arch', 'emulator',
    'domain_types', 'machines'}``.
    """
    try:
        tree = ET.fromstring(xml_text)
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise VirtnodeError('cannot parse libvirt capabilities XML: %s' % exc) from exc

    def text_of(path):
        value = tree.findtext(path)
        return value.strip() if value and value.strip() else None

    result = {
        'host_uuid': normalize_uuid(text_of('host/uuid')) or text_of('host/uuid'),
        'arch': text_of('host/cpu/arch'),
        'cpu_model': text_of('host/cpu/model'),
        'cpu_vendor': text_of('host/cpu/vendor'),
        'numa_cells': [],
        'guests': [],
    }
    for cell in tree.findall('host/topology/cells/cell'):
        cpus = []
        topology = []
        for cpu in cell.findall('cpus/cpu'):
            cpu_id = _int_attr(cpu, 'id')
            if cpu_id is None:
                continue
            cpus.append(cpu_id)
            topology.append({'id': cpu_id, 'socket_id': _int_attr(cpu, 'socket_id'),
                             'core_id': _int_attr(cpu, 'core_id')})
        result['numa_cells'].append({
            'id': _int_attr(cell, 'id'),
            'memory_mib': mib(_kib(cell.find('memory'))),
            'cpus': sorted(cpus),
            'topology': topology,
        })
    for guest in tree.findall('guest'):
        arch = guest.find('arch')
        if arch is None:
            continue
        domain_types = []
        machines = [m.text.strip() for m in arch.findall('machine') if m.text and m.text.strip()]
        for domain in arch.findall('domain'):
            if domain.get('type'):
                domain_types.append(domain.get('type'))
            machines.extend(m.text.strip() for m in domain.findall('machine') if m.text and m.text.strip())
        result['guests'].append({
            'os_type': (guest.findtext('os_type') or '').strip() or None,
            'arch': arch.get('name'),
            'emulator': (arch.findtext('emulator') or '').strip() or None,
            'domain_types': sorted(set(domain_types)),
            'machines': sorted(set(machines)),
        })
    return result


def caps_domain_types(caps):
    """All domain types (``kvm``, ``qemu``, ...) libvirt offers for any guest."""
    types = set()
    for guest in (caps or {}).get('guests', []):
        types.update(guest['domain_types'])
    return sorted(types)


def natural_key(text):
    """Sort key that orders ``pc-q35-2.9`` before ``pc-q35-2.10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text))


def caps_machine_types(caps, arch='x86_64'):
    """Machine types (with aliases such as ``pc``/``q35``) for ``hvm`` guests of ``arch``."""
    machines = set()
    for guest in (caps or {}).get('guests', []):
        if guest['arch'] == arch and guest['os_type'] in (None, 'hvm'):
            machines.update(guest['machines'])
    return sorted(machines, key=natural_key)


# --------------------------------------------------------------------------
# CPU

def read_cpuinfo(root='/'):
    """Model, vendor and flags of the first processor in /proc/cpuinfo."""
    text = read_optional_text(host_path(root, '/proc/cpuinfo'))
    info = {}
    for line in (text or '').splitlines():
        if not line.strip():
            if info:
                break
            continue
        if ':' not in line:
            continue
        key, value = line.split(':', 1)
        info.setdefault(key.strip().lower(), value.strip())
    model = info.get('model name') or info.get('cpu model') or info.get('cpu') or info.get('processor')
    if model is not None and model.isdigit():
        model = None
    flags = (info.get('flags') or info.get('features') or '').split()
    return {
        'model': model or None,
        'vendor': info.get('vendor_id') or info.get('vendor') or info.get('cpu implementer'),
        'flags': sorted(set(flags)),
    }


def read_cpu_topology(root='/', caps=None):
    """Online CPUs and socket/core/thread counts.

    ``cores`` counts physical cores on all sockets, ``threads`` counts online
    logical CPUs (VDSM's cpuCores / cpuThreads). sysfs is used first; the
    libvirt capabilities topology fills in what sysfs does not show.
    """
    cpu_dir = host_path(root, '/sys/devices/system/cpu')
    online = parse_cpu_list(read_optional_text(os.path.join(cpu_dir, 'online')))
    if not online:
        online = sorted(int(name[3:]) for name in list_dir(cpu_dir)
                        if name.startswith('cpu') and name[3:].isdigit())
    if not online and caps:
        online = sorted(cpu for cell in caps['numa_cells'] for cpu in cell['cpus'])

    placement = {}
    for cpu in online:
        topo = os.path.join(cpu_dir, 'cpu%d' % cpu, 'topology')
        package = read_int(os.path.join(topo, 'physical_package_id'))
        core = read_int(os.path.join(topo, 'core_id'))
        if package is not None and core is not None:
            placement[cpu] = (package, core)
    if len(placement) != len(online) and caps:
        for cell in caps['numa_cells']:
            for cpu in cell['topology']:
                if cpu['id'] in online and cpu['socket_id'] is not None and cpu['core_id'] is not None:
                    placement.setdefault(cpu['id'], (cpu['socket_id'], cpu['core_id']))

    sockets = cores = None
    if online and len(placement) == len(online):
        sockets = len(set(package for package, _core in placement.values()))
        cores = len(set(placement.values()))
    return {
        'online_cpus': online,
        'sockets': sockets,
        'cores': cores,
        'threads': len(online) or None,
        'threads_per_core': (len(online) // cores) if cores else None,
    }


def kvm_device_usable(root='/'):
    """True when /dev/kvm can be opened read-write (what QEMU needs for KVM)."""
    try:
        fd = os.open(host_path(root, '/dev/kvm'), os.O_RDWR | getattr(os, 'O_CLOEXEC', 0))
    except OSError:
        return False
    os.close(fd)
    return True


def virtualization_info(flags, domain_types, root='/'):
    """Hardware support, /dev/kvm usability and the domain type VMs should use.

    KVM is recommended only when the CPU shows vmx/svm too: some hypervisors
    hand guests a /dev/kvm that opens fine but cannot run a stock kernel.
    """
    flags = set(flags or ())
    hardware = 'vmx' if 'vmx' in flags else 'svm' if 'svm' in flags else None
    usable = kvm_device_usable(root)
    domain_types = set(domain_types or ())
    return {
        'hardware': hardware,
        'kvm_device_present': os.path.exists(host_path(root, '/dev/kvm')),
        'kvm_device_usable': usable,
        'kvm_offered': 'kvm' in domain_types,
        'software_emulation': 'qemu' in domain_types,
        'recommended_domain_type': 'kvm' if hardware and usable and 'kvm' in domain_types else 'qemu',
    }


def cpu_info(root='/', caps=None):
    """The ``cpu`` section."""
    info = read_cpuinfo(root)
    topology = read_cpu_topology(root, caps)
    return {
        'model': info['model'],
        'vendor': info['vendor'] or (caps or {}).get('cpu_vendor'),
        'libvirt_model': (caps or {}).get('cpu_model'),
        'sockets': topology['sockets'],
        'cores': topology['cores'],
        'threads': topology['threads'],
        'threads_per_core': topology['threads_per_core'],
        'online_cpus': topology['online_cpus'],
        'flags': info['flags'],
        'virtualization': virtualization_info(info['flags'], caps_domain_types(caps), root),
    }


def numa_info(caps):
    """The ``numa`` section: cells with their CPUs and memory."""
    cells = [{'id': cell['id'], 'cpus': cell['cpus'], 'memory_mib': cell['memory_mib']}
             for cell in (caps or {}).get('numa_cells', [])]
    return {'cells': cells, 'cell_count': len(cells)}
