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
    assert argv == ['mount', '-t', 'nfs', '-o', 'soft,nosharecache,timeo=600,retrans=6',
                    'nfs.example.com:/exports/data', NFS_TARGET]


def test_nfs_mount_command_with_version_timeo_retrans_and_extra_options():
    argv = storage_conn.mount_argv('nfs', 'nfs.example.com:/exports/data', NFS_TARGET, options='noatime',
                                   nfs_version='4.2', timeo=100, retrans=3)
    assert argv[4] == 'soft,nosharecache,timeo=100,retrans=3,vers=4.2,noatime'


def test_user_options_override_nfs_defaults():
    assert storage_conn.mount_options('nfs', 'timeo=50') == 'soft,nosharecache,retrans=6,timeo=50'


def test_posixfs_bind_mount_command():
    argv = storage_conn.mount_argv('posixfs', '/srv/shared', '/rhev/data-center/mnt/_srv_shared', vfstype='none', options='bind')
    assert argv == ['mount', '-t', 'none', '-o', 'bind', '/srv/shared', '/rhev/data-center/mnt/_srv_shared']


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
