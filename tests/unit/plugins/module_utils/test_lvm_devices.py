# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm_devices: the host's LVM confined to its own disks (devices file, lvm.conf, multipath blacklist)."""

from __future__ import annotations

import json
import os
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm_devices

SD = '8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41'
DEBIAN_DEVICES = '''devices {
\t# Configuration option devices/use_devicesfile.
\t# use_devicesfile = 0
\tscan = [ "/dev" ]
}
activation {
\tudev_sync = 1
}
'''


class FakeLvmHost:
    """A host with a root LV on vg0 (/dev/sda2, a SCSI disk), an unmounted local VG, a storage domain's VG on a
    LUN, and LVM's configuration in files under ``root`` (lvmconfig reads lvm.conf; lvmlocal may override)."""

    def __init__(self, root, vgs=None, mounts=None, local_override=None):
        self.root = root
        self.calls = []
        self.vgs = vgs if vgs is not None else {
            'vg0': {'pvs': [('/dev/sda2', 'AAAAAA-1111-2222-3333-4444-5555-666666')], 'tags': []},
            'localstore': {'pvs': [('/dev/sdb', 'BBBBBB-1111-2222-3333-4444-5555-666666')], 'tags': []},
            SD: {'pvs': [('/dev/mapper/36001405aa', 'CCCCCC-1111-2222-3333-4444-5555-666666')],
                 'tags': ['RHAT_storage_domain', 'MDT_VERSION=5']},
        }
        self.mounts = mounts if mounts is not None else [('/dev/mapper/vg0-root', '/', 'vg0'),
                                                         ('/dev/mapper/vg0-swap', '[SWAP]', 'vg0')]
        self.local_override = local_override
        os.makedirs(os.path.join(root, 'proc'))
        with open(os.path.join(root, 'proc/devices'), 'w') as f:
            f.write('Block devices:\n  8 sd\n253 device-mapper\n')
        os.makedirs(os.path.join(root, 'etc/lvm'))
        with open(os.path.join(root, 'etc/lvm/lvm.conf'), 'w') as f:
            f.write(DEBIAN_DEVICES)
        os.makedirs(os.path.join(root, 'sys/bus/scsi'))
        os.makedirs(os.path.join(root, 'sys/block/sda/device'))
        os.symlink(os.path.join(root, 'sys/bus/scsi'), os.path.join(root, 'sys/block/sda/device/subsystem'))
        self.host = lvm_devices.Host(runner=self.run, root=root)

    def _file(self, path):
        return os.path.join(self.root, path.lstrip('/'))

    def run(self, argv, timeout=None, install_hint=None):  # pylint: disable=unused-argument
        self.calls.append(argv)
        if argv[0] == 'lvm':  # lvm <command>: the commands without a link of their own
            argv = argv[1:]
        name = argv[0]
        if name == 'lvmconfig':
            key = argv[-1].split('/')[1]
            if key == 'devicesfile':
                return 'devicesfile="system.devices"\n'
            with open(self._file('/etc/lvm/lvm.conf')) as f:
                text = f.read()
            value = '1' if '\tuse_devicesfile = 1' in text else '0'
            return 'use_devicesfile=%s\n' % (self.local_override or value)
        if name == 'lsblk' and '--raw' in argv:
            rows = ['lvm %s %s' % (lv, mountpoint) for lv, mountpoint, _vg in self.mounts]
            return '\n'.join(rows + ['lvm /dev/mapper/vg0-unused ', 'mpath /dev/mapper/36001405aa ']) + '\n'
        if name == 'lsblk':
            return json.dumps({'blockdevices': [{'name': '/dev/sda2', 'type': 'part',
                                                 'children': [{'name': '/dev/sda', 'type': 'disk'}]}]})
        if name == 'lvs':
            vg = next(vg for lv, _mp, vg in self.mounts if lv == argv[-1])
            return '  %s|%s\n' % (vg, ','.join(self.vgs[vg]['tags']))
        if name == 'vgs' and argv[-1] == 'vg_name,vg_tags':
            return ''.join('  %s|%s\n' % (vg, ','.join(info['tags'])) for vg, info in sorted(self.vgs.items()))
        if name == 'vgs':
            return ''.join('  %s|%s\n' % pv for pv in self.vgs[argv[-1]]['pvs'])
        if name == 'vgimportdevices':
            vg = argv[1]
            with open(self._file('/etc/lvm/devices/system.devices'), 'a') as f:
                for device, uuid in self.vgs[vg]['pvs']:
                    f.write('IDTYPE=sys_wwid IDNAME=x DEVNAME=%s PVID=%s\n' % (device, uuid.replace('-', '')))
            return ''
        if name == 'udevadm':
            return 'DEVNAME=/dev/sda\nID_SERIAL=0QEMU_QEMU_HARDDISK_drive-scsi0\n'
        if name == 'lvmdevices':
            return ''
        raise AssertionError(argv)

    def changes(self):
        return [argv for argv in self.calls if argv[:2] == ['lvm', 'vgimportdevices']]


def module(check_mode=False, **params):
    warnings = []
    return types.SimpleNamespace(params=dict({'vgs': [], 'multipath_blacklist': True}, **params), check_mode=check_mode,
                                 _diff=True, warn=warnings.append, warnings=warnings)


def test_lvm_conf_gets_use_devicesfile_in_its_devices_section_and_keeps_the_rest():
    out = lvm_devices.set_use_devicesfile(DEBIAN_DEVICES)
    assert out.startswith('devices {\n\tuse_devicesfile = 1\n\t# Configuration option')
    assert out.replace('\tuse_devicesfile = 1\n', '', 1) == DEBIAN_DEVICES
    assert lvm_devices.set_use_devicesfile('devices {\n    use_devicesfile = 0 # off\n}\n') == \
        'devices {\n    use_devicesfile = 1\n}\n'
    assert lvm_devices.set_use_devicesfile('global {\n}') == 'global {\n}\ndevices {\n\tuse_devicesfile = 1\n}\n'
    assert lvm_devices.set_use_devicesfile(lvm_devices.set_use_devicesfile(DEBIAN_DEVICES)) == \
        lvm_devices.set_use_devicesfile(DEBIAN_DEVICES)


def test_devices_file_entries_are_the_idtype_lines():
    text = '# LVM uses devices listed in this file.\nVERSION=1.1.2\nIDTYPE=sys_wwid IDNAME=naa.1 DEVNAME=/dev/sda2 PVID=abc\n' \
           'IDTYPE=devname IDNAME=/dev/loop0 DEVNAME=/dev/loop0 PVID=def PART=1\n'
    assert lvm_devices.devices_file_pvids(text) == {'abc', 'def'}
    assert lvm_devices.devices_file_pvids('# only a header\n') == set()


def test_mounted_and_other_local_vgs_go_in_the_devices_file_storage_domains_never(tmp_path):
    fake = FakeLvmHost(str(tmp_path))
    result = lvm_devices.run_module(module(), fake.host)
    assert result['changed'] and result['actions'] == ['import_vgs', 'enable_devices_file', 'multipath_blacklist']
    state = result['lvm']
    assert [m['lv'] for m in state['mounts']] == ['/dev/mapper/vg0-root', '/dev/mapper/vg0-swap']
    assert state['mounts'][0]['devices'] == ['/dev/sda2'] and state['mounts'][1]['mountpoint'] == '[SWAP]'
    assert state['imported'] == ['localstore', 'vg0'] and SD not in state['vgs']
    assert fake.changes() == [['lvm', 'vgimportdevices', 'localstore', '--config', 'devices { use_devicesfile=1 filter=["a|.*|"] }'],
                              ['lvm', 'vgimportdevices', 'vg0', '--config', 'devices { use_devicesfile=1 filter=["a|.*|"] }']]
    with open(tmp_path / 'etc/lvm/lvm.conf') as f:
        assert '\tuse_devicesfile = 1\n' in f.read()
    with open(tmp_path / 'etc/multipath/conf.d/vdsm_blacklist.conf') as f:
        assert 'wwid "0QEMU_QEMU_HARDDISK_drive-scsi0"' in f.read()
    assert ['lvm', 'lvmdevices', '--check'] in fake.calls
    assert len([c for c in fake.calls if c[0] == 'vgs' and c[-1] == 'vg0']) == 1  # root and swap: one read of vg0
    # The second run finds everything in place.
    fake.calls.clear()
    again = lvm_devices.run_module(module(), fake.host)
    assert not again['changed'] and again['actions'] == [] and not fake.changes()
    assert again['lvm']['use_devicesfile'] is True


def test_a_new_mount_on_a_vg_not_yet_in_the_file_is_imported_alone(tmp_path):
    fake = FakeLvmHost(str(tmp_path))
    lvm_devices.run_module(module(), fake.host)
    fake.vgs['data'] = {'pvs': [('/dev/sdc', 'DDDDDD-1111-2222-3333-4444-5555-666666')], 'tags': []}
    fake.mounts.append(('/dev/mapper/data-lv', '/srv', 'data'))
    fake.calls.clear()
    result = lvm_devices.run_module(module(multipath_blacklist=False), fake.host)
    assert result['actions'] == ['import_vgs'] and result['lvm']['imported'] == ['data']


def test_check_mode_reports_and_changes_nothing(tmp_path):
    fake = FakeLvmHost(str(tmp_path))
    result = lvm_devices.run_module(module(check_mode=True), fake.host)
    assert result['changed'] and 'enable_devices_file' in result['actions']
    assert not fake.changes() and not os.path.exists(tmp_path / 'etc/lvm/devices')
    with open(tmp_path / 'etc/lvm/lvm.conf') as f:
        assert f.read() == DEBIAN_DEVICES


def test_a_host_without_any_vg_gets_a_devices_file_with_a_header_only(tmp_path):
    fake = FakeLvmHost(str(tmp_path), vgs={}, mounts=[])
    result = lvm_devices.run_module(module(), fake.host)
    assert result['actions'] == ['create_devices_file', 'enable_devices_file'] and not fake.changes()
    with open(tmp_path / 'etc/lvm/devices/system.devices') as f:
        header = f.read()
    assert header.startswith('#') and lvm_devices.devices_file_pvids(header) == set()
    assert not os.path.exists(tmp_path / 'etc/multipath/conf.d/vdsm_blacklist.conf')
    assert lvm_devices.run_module(module(), fake.host)['actions'] == []


@pytest.mark.parametrize('vgs, message', [([SD], 'is a storage domain'), (['nosuch'], 'is not on this host'),
                                          (['../etc'], 'not a volume group name'), (['-x'], 'not a volume group name')])
def test_a_storage_domain_or_unknown_vg_asked_for_is_refused_before_anything_changes(tmp_path, vgs, message):
    fake = FakeLvmHost(str(tmp_path))
    with pytest.raises(VirtnodeError, match=message):
        lvm_devices.run_module(module(vgs=vgs), fake.host)
    assert not fake.changes() and not os.path.exists(tmp_path / 'etc/lvm/devices')


def test_a_setting_lvm_does_not_use_is_an_error_not_a_success(tmp_path):
    fake = FakeLvmHost(str(tmp_path), local_override='0')
    with pytest.raises(VirtnodeError, match='another file'):
        lvm_devices.run_module(module(), fake.host)
