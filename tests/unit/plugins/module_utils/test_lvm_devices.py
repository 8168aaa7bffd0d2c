# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm_devices: lvm.conf editing and which PVs are the host's own (real LVM: test_kernel_lvm_devices.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm_devices

DEBIAN_CONF = '''config {
\tchecks = 1
}
devices {
\tdir = "/dev"
\t# Configuration option devices/use_devicesfile.
\t# Enable or disable the use of a devices file.
\t# use_devicesfile = 0

\t# devicesfile = "system.devices"
}
allocation {
\t# use_devicesfile = 7 is not in the devices section
}
'''


def test_the_commented_default_in_the_devices_section_is_replaced():
    assert lvm_devices.configured(DEBIAN_CONF) is None
    enabled = lvm_devices.with_setting(DEBIAN_CONF, 1)
    assert '\tuse_devicesfile = 1\n\n\t# devicesfile' in enabled
    assert '# use_devicesfile = 7 is not in the devices section' in enabled
    assert lvm_devices.configured(enabled) == 1
    disabled = lvm_devices.with_setting(enabled, 0)
    assert lvm_devices.configured(disabled) == 0 and disabled.count('use_devicesfile = ') == 2
    assert lvm_devices.with_setting(disabled, 0) == disabled


def test_a_setting_is_added_where_there_is_none():
    text = 'devices {\n\tdir = "/dev"\n}\n'
    assert lvm_devices.with_setting(text, 1) == 'devices {\n\tuse_devicesfile = 1\n\tdir = "/dev"\n}\n'
    assert lvm_devices.configured(lvm_devices.with_setting('global {\n}\n', 1)) == 1


@pytest.fixture
def sysfs(tmp_path):
    def dm(name, uuid):
        (tmp_path / 'sys' / 'block' / name / 'dm').mkdir(parents=True)
        (tmp_path / 'sys' / 'block' / name / 'dm' / 'uuid').write_text(uuid + '\n')
    dm('dm-0', 'mpath-36001405aa')
    dm('dm-1', 'part1-mpath-36001405aa')
    dm('dm-2', 'LVM-abcdef')
    dm('dm-3', 'CRYPT-LUKS2-1234-luks')
    return str(tmp_path)


def test_only_local_devices_are_the_hosts_own(sysfs):
    kinds = {dev: lvm_devices.device_kind(dev, sysfs) for dev in ('/dev/sda2', '/dev/md0', '/dev/dm-0', '/dev/dm-1',
                                                                  '/dev/dm-2', '/dev/dm-3', '/dev/dm-9')}
    assert kinds == {'/dev/sda2': 'local', '/dev/md0': 'local', '/dev/dm-0': 'lun', '/dev/dm-1': 'lun',
                     '/dev/dm-2': 'lv', '/dev/dm-3': 'local', '/dev/dm-9': 'local'}


def test_plan_lists_local_pvs_drops_luns_and_enables_last(sysfs, tmp_path, monkeypatch):
    devices_file = tmp_path / 'system.devices'
    devices_file.write_text('VERSION=1.1.1\n')
    monkeypatch.setattr(lvm_devices, 'DEVICES_FILE', str(devices_file))
    calls = []

    def runner(argv, timeout=None, label=None, install_hint=None):
        calls.append(argv)
        if '--adddev' in argv or '--deldev' in argv:
            return ''
        if argv[:2] == ['lvm', 'lvmdevices']:
            return '  Device /dev/sdb1 IDTYPE=devname IDNAME=/dev/sdb1 DEVNAME=/dev/sdb1 PVID=pvidlocalb\n' \
                   '  Device /dev/dm-0 IDTYPE=mpath_uuid IDNAME=mpath-36001405aa DEVNAME=/dev/dm-0 PVID=pvidlun\n'
        assert argv[0] == 'pvs' and 'filter=' not in argv[2] and 'use_devicesfile=0' in argv[2], argv
        return ('  /dev/sda2|aaaa-bbbb|vgroot|\n  /dev/sdb1|pvid-localb|vgdata|\n'
                '  /dev/dm-0|lun-pv|5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f|RHAT_storage_domain,MDT_X=1\n'
                '  /dev/dm-2|guest-pv|guestvg|\n  /dev/sdc|orphan-pv||\n')
    lvm = lvm_cmd.Lvm(lvm_cmd.ALL_DEVICES, runner)
    work = lvm_devices.plan(lvm, DEBIAN_CONF, root=sysfs)
    assert work['add'] == ['/dev/sda2', '/dev/sdc'] and work['remove'] == ['/dev/dm-0'], work
    assert work['devices'] == ['/dev/sda2', '/dev/sdb1', '/dev/sdc'] and work['setting'] == (None, 1)
    assert not work['create_file']
    conf = tmp_path / 'lvm.conf'
    conf.write_text(DEBIAN_CONF)
    monkeypatch.setattr(lvm_devices, 'LVM_CONF', str(conf))
    calls.clear()
    order = []
    real_write = lvm_devices.fileio.write_atomic
    monkeypatch.setattr(lvm_devices.fileio, 'write_atomic', lambda path, data, mode: order.append(path) or real_write(path, data, mode))
    lvm_devices.apply(lvm, work, DEBIAN_CONF)
    assert [c[-2:] for c in calls] == [['--adddev', '/dev/sda2'], ['--adddev', '/dev/sdc'], ['--deldev', '/dev/dm-0']]
    assert order == [str(conf)] and lvm_devices.configured(conf.read_text()) == 1


def test_a_host_without_local_pvs_gets_an_empty_devices_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lvm_devices, 'DEVICES_FILE', str(tmp_path / 'devices' / 'system.devices'))
    lvm = lvm_cmd.Lvm(lvm_cmd.ALL_DEVICES, lambda argv, *a, **kw: '')
    work = lvm_devices.plan(lvm, DEBIAN_CONF)
    assert work['create_file'] and work['add'] == [] and work['setting'] == (None, 1)
    monkeypatch.setattr(lvm_devices, 'LVM_CONF', str(tmp_path / 'lvm.conf'))
    lvm_devices.apply(lvm, work, DEBIAN_CONF)
    assert (tmp_path / 'devices' / 'system.devices').read_text().endswith('VERSION=1.1.1\n')
    assert lvm_devices.plan(lvm, lvm_devices.with_setting(DEBIAN_CONF, 1))['setting'] == (1, 1)


def test_absent_turns_the_setting_off_and_keeps_the_file():
    work = lvm_devices.plan(None, lvm_devices.with_setting(DEBIAN_CONF, 1), state='absent')
    assert work['setting'] == (1, 0) and not work['add'] and not work['create_file']
    assert lvm_devices.plan(None, DEBIAN_CONF, state='absent')['setting'] == (None, None)
