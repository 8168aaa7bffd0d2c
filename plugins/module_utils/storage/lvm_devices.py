# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's own LVM kept to the host's own disks, with LVM's devices file (oVirt's host deploy does this first).

A virtualization host sees two kinds of PVs that are not its own: LUNs (block
storage domains, whose VG metadata only the SPM may write) and PVs inside
LVs (a guest's disk holding the guest's LVM). Left visible, the host's LVM
scans them at boot, may activate the guest's LVs or "repair" a domain's VG.
With ``use_devicesfile = 1`` LVM uses only the devices listed in
``/etc/lvm/devices/system.devices``: the host's PVs (local disks, partitions,
RAID, encrypted devices), found before the setting is turned on. Commands
on block domains carry their own configuration (``lvm.py``) and are not
affected.

The devices file is completed before the setting is turned on, so LVM never
runs enabled with a file that lacks a PV the host boots from.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import readers
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd

LVM_CONF = '/etc/lvm/lvm.conf'
DEVICES_FILE = '/etc/lvm/devices/system.devices'
DOMAIN_TAG = 'RHAT_storage_domain'
ENABLED_CONFIG = 'devices { use_devicesfile=1 }'
# A devices file LVM accepts with no device in it (what lvmdevices writes, less the devices).
EMPTY_DEVICES_FILE = '# LVM uses devices listed in this file.\n# Created by virtnode.kvm lvm_devices\nVERSION=1.1.1\n'
_SETTING = re.compile(r'^(\s*)(#\s*)?use_devicesfile\s*=\s*(\d+)\s*(#.*)?$')
_SECTION = re.compile(r'^\s*devices\s*\{\s*$')
_ENTRY = re.compile(r'^\s*Device\s+(\S+)\s.*\bPVID=(\S+)')


def device_kind(device, root='/'):
    """``local``, ``lun`` (a multipath map or a partition of one) or ``lv`` (a logical volume) for a PV's device."""
    name = os.path.basename(os.path.realpath(device))
    if not name.startswith('dm-'):
        return 'local'
    uuid = readers.read_optional_text(os.path.join(readers.host_path(root, '/sys/block'), name, 'dm', 'uuid')) or ''
    if uuid.startswith('mpath-') or (uuid.startswith('part') and '-mpath-' in uuid):
        return 'lun'
    if uuid.startswith('LVM-'):
        return 'lv'
    return 'local'      # dm-crypt, a hand-made linear map: the host's own


def host_pvs(lvm):
    """Every PV the host's LVM would see without a devices file: ``[{'device', 'pvid', 'vg', 'tags'}]``."""
    rows = lvm.report('pvs', 'pv_name,pv_uuid,vg_name,vg_tags')
    return [{'device': row['pv_name'], 'pvid': row['pv_uuid'].replace('-', ''), 'vg': row['vg_name'],
             'tags': [tag for tag in row['vg_tags'].split(',') if tag]} for row in rows if row['pv_name']]


def wanted(pvs, root='/'):
    """The PVs that are the host's own: on local devices and not in a storage domain's VG."""
    return [pv for pv in pvs if device_kind(pv['device'], root) == 'local' and DOMAIN_TAG not in pv['tags']]


def file_entries(lvm):
    """``{pvid: device}`` listed in the devices file (empty when there is none)."""
    if not os.path.exists(DEVICES_FILE):
        return {}
    out = lvm.run_checked(['lvm', 'lvmdevices', '--config', ENABLED_CONFIG], lvm_cmd.COMMAND_TIMEOUT,
                          label='lvmdevices', install_hint=lvm_cmd.INSTALL_HINT)
    return {match.group(2): match.group(1) for match in map(_ENTRY.match, out.splitlines()) if match}


def _devices_section(lines):
    """``(first, last)`` line indexes inside the ``devices { }`` section, or None."""
    for start, line in enumerate(lines):
        if _SECTION.match(line):
            depth = 0
            for end in range(start, len(lines)):
                depth += lines[end].count('{') - lines[end].count('}')
                if depth == 0:
                    return start + 1, end
            return start + 1, len(lines)
    return None


def configured(text):
    """The ``use_devicesfile`` value ``lvm.conf`` sets (None when it is left to LVM's default)."""
    lines = text.split('\n')
    section = _devices_section(lines)
    values = [int(m.group(3)) for m in map(_SETTING.match, lines[section[0]:section[1]] if section else []) if m and not m.group(2)]
    return values[-1] if values else None


def with_setting(text, value):
    """``lvm.conf`` text with ``use_devicesfile = value`` in its devices section (the commented default replaced)."""
    lines = text.split('\n')
    section = _devices_section(lines)
    line = 'use_devicesfile = %d' % value
    if section is None:
        return text.rstrip('\n') + '\ndevices {\n\t%s\n}\n' % line
    first, last = section
    matches = [(i, m) for i, m in ((i, _SETTING.match(lines[i])) for i in range(first, last)) if m]
    active = [(i, m) for i, m in matches if not m.group(2)]
    if active or matches:
        index, match = (active or matches)[-1]
        lines[index] = '%s%s' % (match.group(1), line)
    else:
        lines.insert(first, '\t' + line)
    return '\n'.join(lines)


def plan(lvm, conf_text, root='/', state='present'):
    """What to do: ``{'add': [devices], 'remove': [devices], 'create_file': bool, 'setting': (before, after)}``."""
    before = configured(conf_text)
    if state == 'absent':
        return {'add': [], 'remove': [], 'create_file': False, 'setting': (before, 0 if before == 1 else before),
                'devices': []}
    pvs = host_pvs(lvm)
    keep = wanted(pvs, root)
    entries = file_entries(lvm)
    add = [pv['device'] for pv in keep if pv['pvid'] not in entries]
    remove = sorted(device for device in entries.values() if device_kind(device, root) != 'local')
    return {'add': add, 'remove': remove, 'create_file': not os.path.exists(DEVICES_FILE) and not add,
            'setting': (before, 1), 'devices': sorted(pv['device'] for pv in keep)}


def apply(lvm, work, conf_text):
    """Carry out :func:`plan`'s ``work``: the devices file first, then ``lvm.conf``."""
    for device in work['add']:
        lvm.run_checked(['lvm', 'lvmdevices', '--config', ENABLED_CONFIG, '--adddev', device], lvm_cmd.COMMAND_TIMEOUT,
                        label='lvmdevices --adddev %s' % device, install_hint=lvm_cmd.INSTALL_HINT)
    for device in work['remove']:
        lvm.run_checked(['lvm', 'lvmdevices', '--config', ENABLED_CONFIG, '--deldev', device], lvm_cmd.COMMAND_TIMEOUT,
                        label='lvmdevices --deldev %s' % device, install_hint=lvm_cmd.INSTALL_HINT)
    if work['create_file']:
        os.makedirs(os.path.dirname(DEVICES_FILE), mode=0o755, exist_ok=True)
        fileio.write_atomic(DEVICES_FILE, EMPTY_DEVICES_FILE.encode('ascii'), 0o600)
    before, after = work['setting']
    if before != after:
        fileio.write_atomic(LVM_CONF, with_setting(conf_text, after).encode('utf-8'), 0o644)


def read_conf():
    try:
        with open(LVM_CONF, encoding='utf-8') as stream:
            return stream.read()
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s (is lvm2 installed?)' % (LVM_CONF, err.strerror or err), {'path': LVM_CONF}) from err


def run_module(module):
    """The work of the ``lvm_devices`` module."""
    state = module.params['state']
    lvm = lvm_cmd.Lvm(lvm_cmd.ALL_DEVICES)
    conf_text = read_conf()
    work = plan(lvm, conf_text, state=state)
    actions = []
    if work['add']:
        actions.append('add_devices')
    if work['remove']:
        actions.append('remove_devices')
    if work['create_file']:
        actions.append('create_devices_file')
    if work['setting'][0] != work['setting'][1]:
        actions.append('enable' if work['setting'][1] == 1 else 'disable')
    if actions and not module.check_mode:
        apply(lvm, work, conf_text)
    result = {'changed': bool(actions), 'actions': actions, 'devices': work['devices'], 'added': work['add'],
              'removed': work['remove'], 'devices_file': DEVICES_FILE}
    if module._diff:
        result['diff'] = {'before': {'use_devicesfile': work['setting'][0]}, 'after': {'use_devicesfile': work['setting'][1]}}
    return result
