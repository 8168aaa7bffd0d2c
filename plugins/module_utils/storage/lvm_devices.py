# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's own LVM kept to the host's own disks, as VDSM's ``vdsm-tool config-lvm-filter`` does it.

A hypervisor sees every LUN of the data centre, and on them the block domains'
VGs and, inside the volumes, whatever LVM the guests made. Left alone, the
host's LVM scans all of it, and event activation may activate a guest's LVs
on the host (or a domain's, behind the SPM's back). oVirt's host deploy
therefore confines LVM before anything else, with the devices file method
(VDSM's ``lvm/config_method = devices``):

- the VGs that back the host's mounts (``lsblk``: device-mapper devices of
  type ``lvm`` with a mount point, swap included) are imported into the
  devices file (``vgimportdevices``); storage domain VGs (tag
  ``RHAT_storage_domain``) never are;
- while the devices file has no entry yet, every other VG LVM can see (but
  storage domains) is imported too, so a local VG that is not mounted now is
  not lost; with no VG at all the file gets a header only, so LVM with the
  devices file on sees no device rather than scanning all;
- ``devices/use_devicesfile = 1`` in lvm.conf; ``lvmdevices --check`` runs
  and what it reports is returned as warnings;
- the local disks under those mounts are kept out of dm-multipath by WWID
  (``/etc/multipath/conf.d/vdsm_blacklist.conf``, VDSM's file), since VDSM's
  multipath.conf takes every disk.

The collection's own LVM commands on shared storage carry their own
configuration (:mod:`lvm`: multipath devices only, ``use_devicesfile=0``), so
they are not affected. Nothing is ever removed from the devices file.
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LVM_CONF = '/etc/lvm/lvm.conf'
DEVICES_DIR = '/etc/lvm/devices'
BLACKLIST = '/etc/multipath/conf.d/vdsm_blacklist.conf'
STORAGE_DOMAIN_TAG = 'RHAT_storage_domain'
INSTALL_HINT = 'Debian: lvm2 and util-linux'
COMMAND_TIMEOUT = 120
# Seeing every device whatever the host's configuration says (reads), and writing the devices file.
_SEE_ALL = 'devices { use_devicesfile=0 hints="none" filter=["a|.*|"] }'
_IMPORT = 'devices { use_devicesfile=1 filter=["a|.*|"] }'
# The udev property multipath takes a WWID from, by the disk's bus (VDSM's table).
_WWID_KEYS = {'scsi': 'ID_SERIAL', 'nvme': 'ID_WWN', 'ccw': 'ID_UID'}
_VG_NAME = re.compile(r'\A[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}\Z')
_SECTION = re.compile(r'^\s*devices\s*\{\s*(#.*)?$')
_SETTING = re.compile(r'^(\s*)use_devicesfile\s*=\s*(\S+)')
_BLACKLIST_WWID = re.compile(r'^\s*wwid\s+"([^"]+)"', re.M)
BLACKLIST_HEADER = ('# Local disks of this host that dm-multipath must not take (virtnode.kvm lvm_devices,\n'
                    '# as vdsm-tool config-lvm-filter writes it). Rewritten by the next run.\n')


def check_vg_name(name):
    if not isinstance(name, str) or not _VG_NAME.match(name) or name in ('.', '..'):
        raise VirtnodeError('not a volume group name: %r' % (name,), {'field': 'vgs'})
    return name


def set_use_devicesfile(text):
    """lvm.conf ``text`` with ``devices/use_devicesfile = 1``: the setting replaced where it is, or added at
    the top of the devices section (a file with none gets one); comments and everything else kept."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line)), None)
    if start is None:
        return text + ('' if not text or text.endswith('\n') else '\n') + 'devices {\n\tuse_devicesfile = 1\n}\n'
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith('}')), len(lines))
    for i in range(start + 1, end):
        match = _SETTING.match(lines[i])
        if match:
            lines[i] = '%suse_devicesfile = 1\n' % match.group(1)
            return ''.join(lines)
    lines.insert(start + 1, '\tuse_devicesfile = 1\n')
    return ''.join(lines)


def devices_file_pvids(text):
    """PVIDs (PV UUIDs without dashes) the devices file lists; entries are lines with ``IDTYPE=``."""
    pvids = set()
    for line in text.splitlines():
        fields = dict(item.split('=', 1) for item in line.split() if '=' in item)
        if 'IDTYPE' in fields and fields.get('PVID') not in (None, '', '.'):
            pvids.add(fields['PVID'])
    return pvids


def blacklist_text(wwids):
    body = ''.join('    wwid "%s"\n' % wwid for wwid in sorted(wwids))
    return BLACKLIST_HEADER + '\nblacklist {\n' + body + '}\n'


class Host:
    """What the work reads of and runs on this host (``runner`` and ``root`` replaceable in tests)."""

    def __init__(self, runner=command.run_checked, root='/'):
        self.runner = runner
        self.root = root
        self._pvs = {}

    def path(self, path):
        return os.path.join(self.root, path.lstrip('/'))

    def run(self, *argv):
        return self.runner(list(argv), COMMAND_TIMEOUT, install_hint=INSTALL_HINT)

    def read(self, path):
        try:
            with open(self.path(path)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err), {'path': path}) from err

    def dm_major(self):
        text = self.read('/proc/devices') or ''
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == 'device-mapper':
                return parts[0]
        return None

    def config_value(self, key):
        """``devices/<key>`` as LVM resolves it (lvm.conf, lvmlocal.conf, defaults), unquoted."""
        out = self.run('lvmconfig', '--typeconfig', 'full', 'devices/%s' % key).strip()
        return out.split('=', 1)[1].strip().strip('"') if '=' in out else ''

    def vg_of(self, lv_path):
        """``(vg name, [tags])`` of the LV at ``lv_path``."""
        out = self.run('lvs', '--noheadings', '--readonly', '--config', _SEE_ALL, '--separator', '|',
                       '-o', 'vg_name,vg_tags', lv_path).strip()
        name, _sep, tags = out.partition('|')
        return name.strip(), [tag for tag in tags.strip().split(',') if tag]

    def vg_pvs(self, vg):
        """``[(pv name, pv uuid)]`` of VG ``vg``, read once per run (root and swap share a VG)."""
        if vg not in self._pvs:
            out = self.run('vgs', '--noheadings', '--readonly', '--config', _SEE_ALL, '--separator', '|',
                           '-o', 'pv_name,pv_uuid', vg)
            self._pvs[vg] = sorted(tuple(part.strip() for part in line.split('|')) for line in out.splitlines() if '|' in line)
        return self._pvs[vg]

    def visible_vgs(self):
        """Every VG LVM sees with no filter and no devices file, but storage domains'."""
        out = self.run('vgs', '--noheadings', '--readonly', '--config', _SEE_ALL, '--separator', '|', '-o', 'vg_name,vg_tags')
        names = set()
        for line in out.splitlines():
            name, _sep, tags = line.strip().partition('|')
            if name.strip() and STORAGE_DOMAIN_TAG not in tags.split(','):
                names.add(name.strip())
        return sorted(names)

    def lvm_mounts(self):
        """``[{'lv', 'mountpoint', 'vg', 'devices'}]``: mounted LVs (swap included) but storage domains'."""
        major = self.dm_major()
        if major is None:
            return []  # no device-mapper: no LV can be mounted
        out = self.run('lsblk', '--raw', '--noheadings', '--paths', '--inverse', '--include', major, '--nodeps',
                       '--output', 'type,name,mountpoint')
        mounts = []
        for line in out.splitlines():
            parts = line.rstrip('\n').split(' ')
            if len(parts) < 3 or parts[0] != 'lvm' or not parts[2]:
                continue
            vg, tags = self.vg_of(parts[1])
            if STORAGE_DOMAIN_TAG in tags:
                continue
            mounts.append({'lv': parts[1], 'mountpoint': parts[2].replace('\\x20', ' '), 'vg': vg,
                           'devices': [name for name, _uuid in self.vg_pvs(vg)]})
        return sorted(mounts, key=lambda mount: mount['lv'])

    def local_disk_wwids(self, devices):
        """WWIDs, as multipath names them, of the disks under ``devices`` (not through a multipath map)."""
        if not devices:
            return set()
        tree = json.loads(self.run('lsblk', '--json', '--inverse', '--paths', '--output', 'NAME,TYPE', *sorted(devices)))
        disks = set()

        def walk(nodes):
            for node in nodes:
                if node.get('type') == 'mpath':
                    continue
                if node.get('type') == 'disk':
                    disks.add(node['name'])
                walk(node.get('children') or [])
        walk(tree.get('blockdevices') or [])
        wwids = set()
        for disk in sorted(disks):
            bus = os.path.basename(os.path.realpath(self.path('/sys/block/%s/device/subsystem' % os.path.basename(disk))))
            key = _WWID_KEYS.get(bus)
            if key is None:
                continue
            found = re.search(r'^%s=(.+)$' % key, self.run('udevadm', 'info', '--query=property', '--name', disk), re.M)
            if found:
                wwids.add(found.group(1).strip())
        return wwids

    def write(self, path, text, mode=0o644):
        fileio.make_dirs(self.path(os.path.dirname(path)), 0o755)
        fileio.write_atomic(self.path(path), text.encode(), mode=mode)


def plan(host, extra_vgs=(), blacklist=True):
    """What the host has and what it needs: ``(state, actions)``; nothing changed."""
    extra_vgs = [check_vg_name(name) for name in extra_vgs or ()]
    mounts = host.lvm_mounts()
    devices_file = os.path.join(DEVICES_DIR, host.config_value('devicesfile') or 'system.devices')
    current = host.read(devices_file)
    listed = devices_file_pvids(current or '')
    visible = host.visible_vgs()
    for vg in extra_vgs:
        if vg not in visible:
            raise VirtnodeError('volume group %s is not on this host, or is a storage domain\'s (those never go in the '
                                'host\'s devices file)' % vg, {'field': 'vgs', 'vg': vg})
    wanted = {mount['vg'] for mount in mounts} | set(extra_vgs)
    if not listed:
        wanted |= set(visible)
    pvs = {vg: host.vg_pvs(vg) for vg in sorted(wanted)}
    to_import = [vg for vg in sorted(wanted) if any(uuid.replace('-', '') not in listed for _name, uuid in pvs[vg])]
    enabled = host.config_value('use_devicesfile') == '1'
    state = {'mounts': mounts, 'vgs': sorted(wanted), 'devices_file': devices_file, 'use_devicesfile': enabled,
             'imported': to_import, 'wwids': [], 'warnings': []}
    actions = []
    if to_import:
        actions.append('import_vgs')
    elif current is None:
        actions.append('create_devices_file')
    if not enabled:
        actions.append('enable_devices_file')
    if blacklist:
        devices = {device for mount in mounts for device in mount['devices']}
        wwids = sorted(host.local_disk_wwids(devices))
        state['wwids'] = wwids
        current_blacklist = host.read(BLACKLIST)
        if sorted(set(_BLACKLIST_WWID.findall(current_blacklist or ''))) != wwids and (wwids or current_blacklist):
            actions.append('multipath_blacklist')
    return state, actions


def apply(host, state, actions):
    """Carry out :func:`plan`'s actions, devices file first, then lvm.conf (LVM must never be told to use
    a devices file that is not there: it would see no device at all)."""
    if 'create_devices_file' in actions:
        host.write(state['devices_file'], '# Created by virtnode.kvm lvm_devices: this host\'s LVM has no local device\n')
    for vg in state['imported'] if 'import_vgs' in actions else ():
        fileio.make_dirs(host.path(DEVICES_DIR), 0o755)
        host.run('lvm', 'vgimportdevices', vg, '--config', _IMPORT)  # Debian ships no vgimportdevices link
    if 'enable_devices_file' in actions:
        text = host.read(LVM_CONF)
        host.write(LVM_CONF, set_use_devicesfile(text or ''))
        if host.config_value('use_devicesfile') != '1':
            raise VirtnodeError('%s now sets devices/use_devicesfile = 1, but LVM still reads 0: another file '
                                '(lvmlocal.conf?) sets it' % LVM_CONF, {'path': LVM_CONF})
    if 'multipath_blacklist' in actions:
        host.write(BLACKLIST, blacklist_text(state['wwids']))
    if actions:
        try:
            host.run('lvm', 'lvmdevices', '--check')
        except VirtnodeError as err:
            state['warnings'].append('lvmdevices --check: %s' % err.message)


def run_module(module, host=None):
    """The work of the ``lvm_devices`` module."""
    host = host or Host()
    state, actions = plan(host, module.params['vgs'], module.params['multipath_blacklist'])
    if not module.check_mode:
        apply(host, state, actions)
    result = {'changed': bool(actions), 'actions': actions, 'lvm': state}
    for warning in state['warnings']:
        module.warn(warning)
    if module._diff:
        result['diff'] = {'before': {'use_devicesfile': state['use_devicesfile']},
                          'after': {'use_devicesfile': True, 'vgs_imported': state['imported'],
                                    'multipath_blacklist': state['wwids']}}
    return result
