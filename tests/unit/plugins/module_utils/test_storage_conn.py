# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection as storage_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

NFS_TARGET = '/rhev/data-center/mnt/nfs.example.com:_exports_data'


def test_nfs_mount_command_has_vdsm_defaults():
    argv = storage_conn.mount_argv('nfs', 'nfs.example.com:/exports/data', NFS_TARGET)
    assert argv == ['mount', '-t', 'nfs', '-o', 'soft,nosharecache,timeo=600,retrans=6', '-o', 'nosuid,nodev',
                    'nfs.example.com:/exports/data', NFS_TARGET]


def test_nfs_mount_command_with_version_timeo_retrans_and_extra_options():
    argv = storage_conn.mount_argv('nfs', 'nfs.example.com:/exports/data', NFS_TARGET, options='noatime',
                                   nfs_version='4.2', timeo=100, retrans=3)
    assert argv[4] == 'soft,nosharecache,timeo=100,retrans=3,vers=4.2,noatime'


def test_user_options_override_nfs_defaults():
    assert storage_conn.mount_options('nfs', 'timeo=50') == 'soft,nosharecache,retrans=6,timeo=50'


def test_posixfs_bind_mount_command():
    argv = storage_conn.mount_argv('posixfs', '/srv/shared', '/rhev/data-center/mnt/_srv_shared', vfstype='none', options='bind')
    assert argv == ['mount', '-t', 'none', '-o', 'bind', '-o', 'nosuid,nodev', '/srv/shared', '/rhev/data-center/mnt/_srv_shared']


@pytest.mark.parametrize('conn_type, spec, words', [
    ('nfs', '/no/server', 'server:/export'),
    ('localfs', 'relative/dir', 'absolute'),
    ('posixfs', '/a/../etc', '..'),
    ('posixfs', '-oremount', '..'),
    ('cifs', '/x', 'must be one of'),
])
def test_bad_specs_are_refused(conn_type, spec, words):
    with pytest.raises(VirtnodeError, match=words.replace('.', r'\.')):
        storage_conn.validate_spec(conn_type, spec)


def test_posixfs_needs_vfstype_and_options_are_checked():
    with pytest.raises(VirtnodeError, match='vfstype'):
        storage_conn.mount_argv('posixfs', '/dev/sdb1', '/mnt/x')
    with pytest.raises(VirtnodeError, match='unexpected characters'):
        storage_conn.mount_argv('posixfs', '/dev/sdb1', '/mnt/x', vfstype='xfs', options='rw;reboot')
    with pytest.raises(VirtnodeError, match='NFS version'):
        storage_conn.mount_options('nfs', nfs_version='5')


def test_mountinfo_targets_are_unescaped(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text('36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n'
                    '37 35 98:0 / /rhev/data-center/mnt/_srv rw - ext4 /dev/sda rw\n')
    assert storage_conn.mounted_targets(str(info)) == {'/mnt/with space', '/rhev/data-center/mnt/_srv'}


# Storage is written by other hosts and NFS clients: a set-uid binary or a device node planted
# there must not work on this host, whatever the mount options given.
@pytest.mark.parametrize('conn_type, spec, vfstype, options', [
    ('nfs', 'nfs.example.com:/exports/data', None, None),
    ('nfs', 'nfs.example.com:/exports/data', None, 'noatime'),
    ('nfs', 'nfs.example.com:/exports/data', None, 'defaults'),
    ('posixfs', '/dev/vg0/vmstore', 'xfs', None),
    ('posixfs', '/dev/vg0/vmstore', 'ext4', 'defaults,noatime'),
    ('posixfs', '/srv/shared', 'none', 'bind'),
    ('posixfs', '/srv/shared', 'none', 'rbind'),
    ('posixfs', 'server:/gluster', 'glusterfs', 'backup-volfile-servers=a:b'),
])
def test_every_mount_is_nosuid_nodev_and_they_come_last(conn_type, spec, vfstype, options):
    argv = storage_conn.mount_argv(conn_type, spec, '/rhev/data-center/mnt/x', vfstype=vfstype, options=options)
    assert argv[-2:] == [spec, '/rhev/data-center/mnt/x']
    # mount(8) joins every -o in order; the last word on an option wins, so these win over 'defaults'.
    merged = ','.join(argv[i + 1] for i, arg in enumerate(argv) if arg == '-o').split(',')
    assert merged[-2:] == ['nosuid', 'nodev']
    assert 'suid' not in merged and 'dev' not in merged


@pytest.mark.parametrize('conn_type, vfstype', [('nfs', None), ('posixfs', 'xfs'), ('posixfs', 'none')])
@pytest.mark.parametrize('options', ['suid', 'dev', 'bind,suid', 'noatime,dev', 'dev,nosuid'])
def test_options_that_undo_nosuid_nodev_are_refused(conn_type, vfstype, options):
    spec = 'nfs.example.com:/e' if conn_type == 'nfs' else '/srv/shared'
    with pytest.raises(VirtnodeError, match='nosuid,nodev') as info:
        storage_conn.mount_argv(conn_type, spec, '/mnt/x', vfstype=vfstype, options=options)
    assert info.value.details['field'] == 'options'


MOUNTINFO = (
    '36 35 98:0 / /rhev/data-center/mnt/_srv_old rw,relatime shared:1 - ext4 /dev/sda rw\n'
    '37 35 98:0 / /rhev/data-center/mnt/_srv_new rw,nosuid,nodev,relatime shared:1 - ext4 /dev/sda rw\n'
    '38 35 98:0 / /rhev/data-center/mnt/_srv_half rw,nodev - ext4 /dev/sda rw\n'
)


def test_missing_hardening_is_read_from_mountinfo(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    assert storage_conn.missing_options('/rhev/data-center/mnt/_srv_old', str(info)) == ['nosuid', 'nodev']
    assert storage_conn.missing_options('/rhev/data-center/mnt/_srv_new', str(info)) == []
    assert storage_conn.missing_options('/rhev/data-center/mnt/_srv_half', str(info)) == ['nosuid']


class _Module(object):
    check_mode = False
    _diff = False

    def __init__(self, **params):
        self.params = dict(dict(vfstype=None, options=None, nfs_version=None, timeo=None, retrans=None, state='connected'), **params)


@pytest.mark.parametrize('check_mode', [False, True])
def test_a_connected_mount_without_nosuid_nodev_is_remounted(monkeypatch, tmp_path, check_mode):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    ran = []
    monkeypatch.setattr(storage_conn, 'MOUNTINFO', str(info))
    monkeypatch.setattr(storage_conn, '_run', ran.append)
    module = _Module(type='posixfs', path='/srv/old', vfstype='none', options='bind')
    module.check_mode = check_mode
    result = storage_conn.run_module(module)
    assert result['changed'] and result['connected']
    assert result['remounted'] == ['nosuid', 'nodev']
    assert ran == ([] if check_mode else [['mount', '-o', 'remount,bind,nosuid,nodev', '/rhev/data-center/mnt/_srv_old']])
    ran[:] = []
    result = storage_conn.run_module(_Module(type='posixfs', path='/srv/new', vfstype='none', options='bind'))
    assert not result['changed'] and ran == [] and 'remounted' not in result
