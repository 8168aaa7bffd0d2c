# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lun_info's reading of sysfs and pvs (the real ones: test_kernel_block.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import devices
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41'
USED, FREE = '36001405aaaaaaaaaaaaaaaaaaaaaaaa1', '36001405bbbbbbbbbbbbbbbbbbbbbbbb2'
SESSIONS = [{'id': 1, 'target': 'iqn.2026-12.lab:t', 'address': '10.0.0.1', 'port': 3260, 'state': 'LOGGED_IN'},
            {'id': 2, 'target': 'iqn.2026-12.lab:t', 'address': '10.0.1.1', 'port': 3260, 'state': 'LOGGED_IN'}]


def sysfs(tmp_path):
    block, devs = tmp_path / 'sys' / 'block', tmp_path / 'sys' / 'devices'
    block.mkdir(parents=True)
    for session in SESSIONS:
        base = tmp_path / 'sys' / 'class' / 'iscsi_session' / ('session%d' % session['id'])
        base.mkdir(parents=True)
        (base / 'targetname').write_text(session['target'] + '\n')
        (base / 'state').write_text('LOGGED_IN\n')
        connection = tmp_path / 'sys' / 'class' / 'iscsi_connection' / ('connection%d:0' % session['id'])
        connection.mkdir(parents=True)
        (connection / 'persistent_address').write_text(session['address'] + '\n')
        (connection / 'persistent_port').write_text('3260\n')

    def disk(name, session, lun, state='running', serial=b'serial-' + b'x' * 4):
        real = devs / 'platform' / 'host3' / ('session%d' % session) / 'target3:0:0' / ('3:0:0:%d' % lun)
        real.mkdir(parents=True)
        (real / 'vendor').write_text('LIO-ORG \n')
        (real / 'model').write_text('lun%d            \n' % lun)
        (real / 'state').write_text(state + '\n')
        (real / 'vpd_pg80').write_bytes(bytes([0, 0x80, 0, len(serial)]) + serial)
        (real / 'scsi_device').mkdir()
        (block / name).mkdir()
        (block / name / 'device').symlink_to(real)

    def mpath(dm, guid, slaves, holders=(), size=4194304):
        (block / dm / 'dm').mkdir(parents=True)
        (block / dm / 'dm' / 'uuid').write_text('mpath-%s\n' % guid)
        (block / dm / 'dm' / 'name').write_text(guid + '\n')
        (block / dm / 'size').write_text('%d\n' % size)
        (block / dm / 'queue').mkdir()
        (block / dm / 'queue' / 'logical_block_size').write_text('512\n')
        (block / dm / 'queue' / 'physical_block_size').write_text('4096\n')
        (block / dm / 'slaves').mkdir()
        (block / dm / 'holders').mkdir()
        for slave in slaves:
            (block / dm / 'slaves' / slave).symlink_to(block / slave)
        for holder in holders:
            (block / dm / 'holders' / holder).mkdir()

    disk('sdb', 1, 0)
    disk('sdc', 2, 0, state='offline')
    disk('sdd', 1, 1)
    mpath('dm-0', USED, ['sdb', 'sdc'], holders=['dm-2'])
    mpath('dm-1', FREE, ['sdd'])
    # Not multipath: an LV map and a plain disk.
    (block / 'dm-2' / 'dm').mkdir(parents=True)
    (block / 'dm-2' / 'dm' / 'uuid').write_text('LVM-abc\n')
    (block / 'vda').mkdir()
    return str(tmp_path)


def pvs_output(argv, timeout, label=None, install_hint=None):
    # Only the multipath devices are let through LVM's filter.
    assert argv[:2] == ['pvs', '--config'] and argv[3] == '--readonly', argv
    assert '"a|^/dev/mapper/%s$|"' % USED in argv[2] and '"r|.*|"' in argv[2], argv[2]
    return '  /dev/mapper/%s|pvuuid-1|%s|vguuid-1\n  /dev/vda2|pvuuid-2|debian-vg|vguuid-2\n' % (USED, SD)


def test_luns_with_their_paths_sizes_and_the_domain_that_uses_them(tmp_path):
    block = sysfs(tmp_path)
    found = devices.lun_list(None, block, pvs_output)
    assert found['missing'] == []
    used, free = found['luns']
    assert used['guid'] == USED and used['device'] == '/dev/mapper/' + USED and used['dm'] == 'dm-0'
    assert used['capacity'] == 4194304 * 512
    assert (used['logical_block_size'], used['physical_block_size']) == (512, 4096)
    assert (used['vendor_id'], used['product_id'], used['serial']) == ('LIO-ORG', 'lun0', 'serial-xxxx')
    assert used['paths'] == [
        {'name': 'sdb', 'lun': 0, 'state': 'active', 'device_state': 'running', 'type': 'iscsi',
         'target': 'iqn.2026-12.lab:t', 'address': '10.0.0.1', 'port': 3260},
        {'name': 'sdc', 'lun': 0, 'state': 'failed', 'device_state': 'offline', 'type': 'iscsi',
         'target': 'iqn.2026-12.lab:t', 'address': '10.0.1.1', 'port': 3260}]
    assert used['paths_active'] == 1
    assert (used['status'], used['vg_name'], used['sd_uuid'], used['pv_uuid']) == ('used', SD, SD, 'pvuuid-1')
    assert (free['status'], free['vg_name'], free['sd_uuid'], free['holders']) == ('free', '', '', [])


def test_guids_filter_and_missing_ones_are_named(tmp_path):
    block = sysfs(tmp_path)
    found = devices.lun_list([FREE, '36001405ffffffffffffffffffffffff9'], block, pvs_output)
    assert [lun['guid'] for lun in found['luns']] == [FREE]
    assert found['missing'] == ['36001405ffffffffffffffffffffffff9']


def test_something_built_on_a_map_makes_it_used_even_without_a_pv(tmp_path):
    block = sysfs(tmp_path)
    found = devices.lun_list([USED], block, lambda *a, **k: '')
    assert found['luns'][0]['status'] == 'used' and found['luns'][0]['vg_name'] == ''


def test_no_multipath_device_runs_no_pvs(tmp_path):
    (tmp_path / 'sys' / 'block').mkdir(parents=True)
    found = devices.lun_list(None, str(tmp_path), lambda *a, **k: pytest.fail('pvs ran'))
    assert found == {'luns': [], 'missing': []}


@pytest.mark.parametrize('guid', ['', '../dm-0', 'a b', 'x' * 129, 7, '36001405\n'])
def test_bad_guids_are_refused(guid):
    with pytest.raises(VirtnodeError, match='LUN GUID'):
        devices.validate_guids([guid])


# ---------------------------------------------------------------- a LUN lost while LVM or a write works on it

GONE = '36001405cccccccccccccccccccccccc3'


def dmsetup_status(states):
    """A fake ``dmsetup status`` whose paths are in ``states`` (``{map name: 'AF'...}``)."""
    def run(argv, timeout, label=None, install_hint=None):
        assert argv[:4] == ['dmsetup', 'status', '--target', 'multipath'], argv
        paths = ' '.join('8:%d %s 0 0 1' % (16 * n, state) for n, state in enumerate(states[argv[4]]))
        return '0 4194304 multipath 2 0 1 0 1 1 A 0 %d 2 %s\n' % (len(states[argv[4]]), paths)
    return run


def test_a_lun_is_lost_without_a_map_without_a_running_path_or_with_every_path_failed(tmp_path):
    root = sysfs(tmp_path)
    mapper = ['/dev/mapper/%s' % guid for guid in (USED, FREE, GONE)]
    assert lvm.unreachable_luns(mapper, root, dmsetup_status({USED: 'AF', FREE: 'A'})) == [GONE]
    # dm-multipath failed every path while their SCSI devices still run (the target withdrew the LUN).
    assert lvm.unreachable_luns(mapper, root, dmsetup_status({USED: 'FF', FREE: 'A'})) == [USED, GONE]
    # Devices that are not multipath maps are not the SAN's.
    assert lvm.unreachable_luns(['/dev/vda2'], root, dmsetup_status({})) == []


def test_a_failure_while_a_lun_is_lost_names_the_lun_once(tmp_path):
    root = sysfs(tmp_path)
    devices_of_vg = ['/dev/mapper/%s' % USED, '/dev/mapper/%s' % GONE]
    runner = dmsetup_status({USED: 'A'})
    with pytest.raises(VirtnodeError) as caught:
        with lvm.naming_lost_luns(devices_of_vg, root, runner):
            with lvm.naming_lost_luns(devices_of_vg, root, runner):
                raise VirtnodeError('lvcreate failed: Couldn\'t find device with uuid x')
    message = caught.value.message
    assert message.startswith('LUN(s) %s cannot be reached from this host' % GONE), message
    assert message.count('cannot be reached') == 1 and "Couldn't find device" in message, message
    assert caught.value.details['lost_luns'] == [GONE]
    with pytest.raises(VirtnodeError, match='Input/output error'):
        with lvm.naming_lost_luns(devices_of_vg, root, runner):
            raise OSError(5, 'Input/output error')
    # Every LUN reachable: the failure is LVM's own and stays as it was.
    with pytest.raises(VirtnodeError, match='^vgcreate failed: no space$'):
        with lvm.naming_lost_luns(['/dev/mapper/%s' % USED], root, runner):
            raise VirtnodeError('vgcreate failed: no space')
