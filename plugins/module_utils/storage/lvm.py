# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one runner of LVM commands on shared storage, configured as VDSM configures them.

Block storage domains live on LUNs that every host of a data centre sees. The
host's own LVM configuration may keep them out of sight (a devices file or
filter: a host never scans or activates what it finds on a LUN or in
a guest's disk), so every command here carries its own ``--config``: the
multipath devices only, no hints, no udev device list, no devices file. Each
host reads VG metadata with ``--readonly`` (no lock, nothing written back);
only the SPM runs the commands that write it.

Tags are LVM's only free-form field and allow few characters: values are
escaped as VDSM escapes them (``&<ord>&`` for anything else).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import readers
from ansible_collections.virtnode.kvm.plugins.module_utils.common import scsi_sysfs
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

MIB = 1024 ** 2
COMMAND_TIMEOUT = 120
SEPARATOR = '|'
REPORT_FLAGS = ('--noheadings', '--units', 'b', '--nosuffix', '--separator', SEPARATOR)
NO_BACKUP = ('--autobackup', 'n')
MAPPER_DIR = '/dev/mapper'
INSTALL_HINT = 'Debian: lvm2'

_TAG_INVALID = re.compile(r'[^a-zA-Z0-9_+.\-/=!:#]')
_TAG_ESCAPE = re.compile(r'&(\d+)&')

_CONFIG = (
    'devices { preferred_names=["^/dev/mapper/"] ignore_suspended_devices=1 write_cache_state=0 '
    'disable_after_error_count=3 use_devicesfile=0 %s hints="none" obtain_device_list_from_udev=0 } '
    'global { prioritise_write_locks=1 wait_for_locks=1 use_lvmpolld=1 } '
    'backup { retain_min=50 retain_days=0 }')


def encode_tag(text):
    """``text`` as an LVM tag may hold it (VDSM's escaping)."""
    return _TAG_INVALID.sub(lambda match: '&%d&' % ord(match.group()), text)


def decode_tag(tag):
    return _TAG_ESCAPE.sub(lambda match: chr(int(match.group(1))), tag)


def shared_devices(root='/'):
    """The device path of every multipath map: the only devices block storage commands look at."""
    return ['%s/%s' % (MAPPER_DIR, found['name'] or found['wwid']) for found in scsi_sysfs.multipath_maps(root)]


# A multipath path in dmsetup's status: "<major>:<minor> <A|F> <fail count>" (A: active, F: failed).
_DM_PATH = re.compile(r'\b\d+:\d+ ([AF]) \d+')


def _map_has_active_path(name, runner):
    try:
        status = runner(['dmsetup', 'status', '--target', 'multipath', name], COMMAND_TIMEOUT,
                        label='dmsetup status %s' % name, install_hint='Debian: dmsetup')
    except VirtnodeError:
        return False
    return 'A' in _DM_PATH.findall(status)


def unreachable_luns(devices, root='/', runner=command.run_checked):
    """The GUIDs of the multipath ``devices`` this host cannot reach now: no map, or no path of it up.

    A path is up when its SCSI device runs (sysfs) and device-mapper has not failed it
    (``dmsetup status``): a LUN the target withdrew keeps running SCSI devices whose I/O fails.
    """
    maps = {'%s/%s' % (MAPPER_DIR, found['name'] or found['wwid']): found for found in scsi_sysfs.multipath_maps(root)}
    lost = []
    for device in devices:
        if not device.startswith(MAPPER_DIR + '/'):
            continue
        found = maps.get(device)
        if (found is None or not any(path['state'] == 'running' for path in found['paths'])
                or not _map_has_active_path(found['name'] or found['wwid'], runner)):
            lost.append(os.path.basename(device))
    return sorted(lost)


@contextlib.contextmanager
def naming_lost_luns(devices, root='/', runner=command.run_checked):
    """A step on shared storage that fails while a LUN of ``devices`` is unreachable says so.

    LVM then reports a missing PV or an I/O error, and a direct write an EIO: true, but
    the cause an administrator acts on is the LUN. LVM commits VG metadata in one write,
    so the step happened whole or not at all; the next run (with the LUN back) finishes
    or undoes the operation, as after a crash.
    """
    try:
        yield
    except (VirtnodeError, OSError) as err:
        if isinstance(err, VirtnodeError) and 'lost_luns' in err.details:
            raise  # said by an inner step already
        lost = unreachable_luns(devices, root, runner)
        if not lost:
            raise
        cause = err.message if isinstance(err, VirtnodeError) else (err.strerror or str(err))
        raise VirtnodeError('LUN(s) %s cannot be reached from this host (no path is up), so the operation stopped: '
                            '%s. Once the LUN is back (check the storage server, then multipath -ll), run the task '
                            'again: it finishes or undoes what this run began.' % (', '.join(lost), cause),
                            {'lost_luns': lost, 'cause': cause}) from err


def reporting_lost_luns(method):
    """Method decorator: :func:`naming_lost_luns` over the devices of ``self.lvm`` (block domains and volumes)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with naming_lost_luns(self.lvm.devices):
            return method(self, *args, **kwargs)
    return wrapper


def config(devices):
    """The ``--config`` text that lets LVM see ``devices`` and nothing else."""
    accept = ''.join('"a|^%s$|", ' % re.escape(device).replace('"', '') for device in sorted(set(devices)))
    return _CONFIG % ('filter=[%s"r|.*|"]' % accept)


class Lvm:
    """LVM commands over a given set of devices (default: every multipath device of this host)."""

    def __init__(self, devices=None, runner=command.run_checked):
        self._devices = None if devices is None else list(devices)
        self.run_checked = runner

    @property
    def devices(self):
        if self._devices is None:
            self._devices = shared_devices()
        return self._devices

    def add_devices(self, devices):
        self._devices = sorted(set(self.devices) | set(devices))

    def run(self, name, *args, timeout=COMMAND_TIMEOUT):
        argv = [name, '--config', config(self.devices)] + [str(arg) for arg in args]
        with naming_lost_luns(self.devices):
            return self.run_checked(argv, timeout, label=' '.join([name] + [str(arg) for arg in args]), install_hint=INSTALL_HINT)

    def report(self, name, fields, *names):
        """Rows of ``pvs``/``vgs``/``lvs`` read without locks or writes: ``[{field: text}]``."""
        keys = fields.split(',')
        out = self.run(name, '--readonly', *REPORT_FLAGS, '-o', fields, *names)
        rows = []
        for line in out.splitlines():
            values = [value.strip() for value in line.strip().split(SEPARATOR)]
            if len(values) == len(keys) and any(values):
                rows.append(dict(zip(keys, values)))
        return rows

    def vg(self, vg_name):
        """The VG ``vg_name`` (tags decoded into a list, PV names a list), or None if no device holds it."""
        fields = 'vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,vg_tags,vg_mda_size,' \
                 'vg_mda_free,pv_name,pv_uuid,pv_pe_count,pv_mda_used_count'
        rows = [row for row in self.report('pvs', fields) if row['vg_name'] == vg_name]
        if not rows:
            return None
        first = rows[0]
        found = {key: first[key] for key in ('vg_name', 'vg_uuid')}
        found.update((key, int(first[key])) for key in ('vg_size', 'vg_free', 'vg_extent_size', 'vg_extent_count',
                                                        'vg_free_count', 'vg_mda_size', 'vg_mda_free'))
        found['tags'] = [tag for tag in first['vg_tags'].split(',') if tag]
        found['pvs'] = [{'name': row['pv_name'], 'uuid': row['pv_uuid'], 'pe_count': int(row['pv_pe_count'] or 0),
                         'mda_used_count': int(row['pv_mda_used_count'] or 0)} for row in rows]
        return found

    def vgs_tagged(self, tag):
        """Names of the VGs carrying ``tag``."""
        return sorted({row['vg_name'] for row in self.report('vgs', 'vg_name,vg_tags')
                       if tag in row['vg_tags'].split(',')})

    def pvs(self):
        """``{device: vg name or ''}`` of every PV on the devices."""
        return {row['pv_name']: row['vg_name'] for row in self.report('pvs', 'pv_name,vg_name')}

    def lvs(self, vg_name):
        """``{lv name: {'size', 'tags', 'active', 'devices'}}`` of a VG.

        Whether an LV is active on this host comes from device-mapper (sysfs):
        a read-only report cannot tell.
        """
        active = dm_names()
        found = {}
        for row in self.report('lvs', 'lv_name,lv_size,lv_tags,devices', vg_name):
            found[row['lv_name']] = {'size': int(row['lv_size']), 'tags': [t for t in row['lv_tags'].split(',') if t],
                                     'active': dm_name(vg_name, row['lv_name']) in active, 'devices': row['devices']}
        return found

    def first_extent(self, vg_name, lv_name):
        """``(device, first physical extent)`` of an LV."""
        rows = self.report('lvs', 'seg_pe_ranges', '%s/%s' % (vg_name, lv_name))
        if not rows:
            raise VirtnodeError('logical volume %s/%s not found' % (vg_name, lv_name))
        device, _colon, extents = rows[0]['seg_pe_ranges'].split()[0].rpartition(':')
        return device, int(extents.split('-')[0])

    # ---------------------------------------------------------------- writers (the SPM, or a domain's creator)

    def create_pvs(self, devices, metadata_size_mib, force=False):
        # Two metadata areas on every PV, ignored until enabled on the first one: VG metadata lives on one PV only.
        self.add_devices(devices)
        options = ['-y', '-ff'] if force else []
        self.run('pvcreate', *options, '--metadatasize', '%dm' % metadata_size_mib, '--metadatacopies', '2',
                 '--metadataignore', 'y', *devices)

    def enable_metadata(self, device):
        self.run('pvchange', '--metadataignore', 'n', device)

    def create_vg(self, vg_name, devices, extent_size, tag):
        self.run('vgcreate', '--setautoactivation', 'n', '--physicalextentsize', '%dm' % (extent_size // MIB),
                 '--addtag', tag, vg_name, *devices)

    def extend_vg(self, vg_name, devices):
        self.run('vgextend', vg_name, *devices)

    def change_vg_tags(self, vg_name, remove=(), add=()):
        """Remove and add tags in one VG metadata commit: no reader sees half of the change."""
        args = _tag_args(remove, add)
        if args:
            self.run('vgchange', *args, vg_name)

    def create_lv(self, vg_name, lv_name, size_mib, tags=(), device=None):
        args = [*NO_BACKUP, '--contiguous', 'n', '--size', '%dm' % size_mib, '--wipesignatures', 'n']
        for tag in tags:
            args += ['--addtag', tag]
        args += ['--name', lv_name, vg_name]
        if device:
            args.append(device)
        self.run('lvcreate', *args)

    def change_lv_tags(self, vg_name, lv_name, remove=(), add=()):
        """Remove and add an LV's tags in one VG metadata commit."""
        args = _tag_args(remove, add)
        if args:
            self.run('lvchange', *NO_BACKUP, *args, '%s/%s' % (vg_name, lv_name))

    def extend_lv(self, vg_name, lv_name, size_mib):
        self.run('lvextend', *NO_BACKUP, '--size', '%dm' % size_mib, '%s/%s' % (vg_name, lv_name))

    def remove_lvs(self, vg_name, lv_names):
        names = ['%s/%s' % (vg_name, name) for name in lv_names]
        if names:
            self.run('lvremove', *NO_BACKUP, '--force', *names)

    def activate(self, vg_name, lv_names, refresh=False):
        """Activate LVs on this host (device-mapper only: no VG metadata is written)."""
        names = ['%s/%s' % (vg_name, name) for name in lv_names]
        if names:
            self.run('lvchange', '--activate', 'y', *names)
            if refresh:
                self.refresh(vg_name, lv_names)

    def refresh(self, vg_name, lv_names):
        """Reload active LVs' device-mapper tables from the VG metadata (another host, the SPM, grew them)."""
        names = ['%s/%s' % (vg_name, name) for name in lv_names]
        if names:
            self.run('lvchange', '--refresh', *names)

    def deactivate(self, vg_name, lv_names):
        names = ['%s/%s' % (vg_name, name) for name in lv_names]
        if names:
            self.run('lvchange', '--activate', 'n', *names)

    def deactivate_vg(self, vg_name):
        self.run('vgchange', '--activate', 'n', vg_name)

    def remove_vg(self, vg_name, devices):
        self.run('vgremove', '--force', vg_name)
        if devices:
            self.run('pvremove', '--force', '--force', '--yes', *devices)


def _tag_args(remove, add):
    return [arg for tag in remove for arg in ('--deltag', tag)] + [arg for tag in add for arg in ('--addtag', tag)]


def dm_name(vg_name, lv_name):
    """The device-mapper name LVM gives an active LV (``-`` doubled in each part)."""
    return '%s-%s' % (vg_name.replace('-', '--'), lv_name.replace('-', '--'))


def dm_names(root='/'):
    """Names of this host's device-mapper devices (one sysfs read each, no command)."""
    block = readers.host_path(root, '/sys/block')
    return {name for name in (readers.read_optional_text(os.path.join(block, dev, 'dm', 'name'))
                              for dev in readers.list_dir(block) if dev.startswith('dm-')) if name}


def stale_mappings(vg_name, root='/'):
    """This host's device-mapper devices of LVs of ``vg_name`` (what is left when the VG went away elsewhere)."""
    prefix = vg_name.replace('-', '--') + '-'
    return sorted(name for name in dm_names(root) if name.startswith(prefix) and '-' not in name[len(prefix):].replace('--', ''))


def remove_mappings(names, runner=command.run_checked):
    """Remove device-mapper devices by name (``dmsetup remove``): the VG's metadata no longer lists them."""
    for name in names:
        runner(['dmsetup', 'remove', name], COMMAND_TIMEOUT, label='dmsetup remove %s' % name, install_hint='Debian: dmsetup')


def lv_path(vg_name, lv_name):
    """LVM's link to an active LV: ``/dev/<vg>/<lv>``."""
    return os.path.join('/dev', vg_name, lv_name)
