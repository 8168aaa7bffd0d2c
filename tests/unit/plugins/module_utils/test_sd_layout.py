# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
IMG = '6f2b8d8e-8f0b-4c52-a2b5-0d9d2d9f1a01'
VOL = '9a3c1e55-2b7e-4d61-8f0e-5b1a7c3d2e4f'
SP = '5d928855-b09b-47a7-b920-bd2d2eb5808c'
MiB = 1024 ** 2


@pytest.mark.parametrize('remote, name', [
    ('server:/export/data', 'server:_export_data'),
    ('server:/export/my_data', 'server:_export_my__data'),
    ('server:/export/data/', 'server:_export_data'),
    ('server://export//data', 'server:_export_data'),
    ('server:2049:/export', 'server:2049:_export'),
    ('[fd00::1]:/export', '[fd00::1]:_export'),
    ('/data/local_sd', '_data_local__sd'),
    ('//data/local/', '_data_local'),
    ('gluster.example:vol_1', 'gluster.example:vol__1'),
])
def test_mount_point(remote, name):
    assert sd_layout.mount_point(remote) == '/rhev/data-center/mnt/' + name


@pytest.mark.parametrize('remote', ['', '..', '.', '-o', 'a\0b', None, 'x' * 300])
def test_mount_point_rejects(remote):
    with pytest.raises(VirtnodeError):
        sd_layout.mount_point(remote)


def test_paths():
    mount = '/rhev/data-center/mnt/server:_export'
    assert sd_layout.domain_dir(mount, SD) == mount + '/' + SD
    assert sd_layout.dom_md_dir(mount, SD) == mount + '/' + SD + '/dom_md'
    assert sd_layout.images_dir(mount, SD) == mount + '/' + SD + '/images'
    assert sd_layout.image_dir(mount, SD, IMG) == mount + '/' + SD + '/images/' + IMG
    base = mount + '/' + SD + '/images/' + IMG + '/' + VOL
    assert sd_layout.volume_paths(mount, SD, IMG, VOL) == (base, base + '.meta', base + '.lease')
    assert sd_layout.removed_image_name(IMG) == '_remove_me_' + IMG
    assert sd_layout.pool_dir(SP) == '/rhev/data-center/' + SP
    assert sd_layout.ISO_IMAGE_UUID == '11111111-1111-1111-1111-111111111111'


@pytest.mark.parametrize('call', [
    lambda: sd_layout.domain_dir('/m', '..'),
    lambda: sd_layout.image_dir('/m', SD, '../../etc'),
    lambda: sd_layout.volume_paths('/m', SD, IMG, 'a/b'),
    lambda: sd_layout.removed_image_name(IMG.upper()),
    lambda: sd_layout.pool_dir('mastersd'),
])
def test_paths_refuse_non_uuids(call):
    with pytest.raises(VirtnodeError, match='is not a valid UUID'):
        call()


@pytest.mark.parametrize('version, sd_type, expected', [
    (5, 'NFS', ['ids', 'leases', 'inbox', 'outbox', 'xleases']),
    (4, 'POSIXFS', ['ids', 'leases', 'inbox', 'outbox', 'xleases']),
    (5, 'LOCALFS', ['ids', 'leases', 'inbox', 'outbox']),
    (3, 'NFS', ['ids', 'leases', 'inbox', 'outbox']),
])
def test_dom_md_files(version, sd_type, expected):
    assert [entry.name for entry in sd_layout.dom_md_files(version, sd_type)] == expected


def tree(root):
    """Return {relative path: (kind, mode, size)} for everything under root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = 'dir' if stat.S_ISDIR(st.st_mode) else 'file'
            found[os.path.relpath(path, root)] = (kind, stat.S_IMODE(st.st_mode), None if kind == 'dir' else st.st_size)
    return found


def metadata(sd_type='NFS', domain_class='Data'):
    return sd_metadata.new_domain_metadata(SD, sd_type, domain_class, 'my domain', 'server:/export')


def test_create_nfs_domain_tree(tmp_path):
    old_umask = os.umask(0o077)
    try:
        created = sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    finally:
        os.umask(old_umask)
    assert created == str(tmp_path / SD)
    layout = tree(str(tmp_path))
    md_size = layout.pop(SD + '/dom_md/metadata')
    assert md_size[:2] == ('file', 0o660)
    assert layout == {
        SD: ('dir', 0o755, None),
        SD + '/dom_md': ('dir', 0o775, None),
        SD + '/dom_md/ids': ('file', 0o660, 0),
        SD + '/dom_md/leases': ('file', 0o660, 0),
        SD + '/dom_md/xleases': ('file', 0o660, 0),
        SD + '/dom_md/inbox': ('file', 0o660, 16 * MiB),
        SD + '/dom_md/outbox': ('file', 0o660, 16 * MiB),
        SD + '/images': ('dir', 0o755, None),
    }
    assert sd_metadata.read_domain_metadata(str(tmp_path / SD / 'dom_md' / 'metadata')) == metadata()
    assert (tmp_path / SD / 'dom_md' / 'inbox').read_bytes() == b'\0' * (16 * MiB)


def test_create_local_iso_domain_tree(tmp_path):
    sd_layout.create_domain_tree(str(tmp_path), SD, metadata('LOCALFS', 'Iso'), 'LOCALFS')
    layout = tree(str(tmp_path))
    assert SD + '/dom_md/xleases' not in layout
    assert layout[SD + '/images/' + sd_layout.ISO_IMAGE_UUID] == ('dir', 0o755, None)


def test_create_refuses_existing_domain(tmp_path):
    (tmp_path / SD).mkdir()
    with pytest.raises(VirtnodeError, match='already exists'):
        sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    assert os.listdir(tmp_path) == [SD]


def test_create_refuses_inconsistent_arguments(tmp_path):
    with pytest.raises(VirtnodeError, match='not %s of type LOCALFS' % SD):
        sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'LOCALFS')
    with pytest.raises(VirtnodeError, match='not a directory'):
        sd_layout.create_domain_tree(str(tmp_path / 'missing'), SD, metadata(), 'NFS')
    with pytest.raises(VirtnodeError, match='CLASS must be one of'):
        sd_layout.create_domain_tree(str(tmp_path), SD, dict(metadata(), CLASS='x'), 'NFS')
    assert os.listdir(tmp_path) == []


def test_failure_while_building_leaves_nothing(tmp_path, monkeypatch):
    real_ftruncate = os.ftruncate

    def failing_ftruncate(fd, size):
        if size:
            raise OSError(28, 'No space left on device')
        real_ftruncate(fd, size)

    monkeypatch.setattr(os, 'ftruncate', failing_ftruncate)
    with pytest.raises(VirtnodeError, match='No space left on device'):
        sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    assert os.listdir(tmp_path) == []


def test_failure_at_final_rename_leaves_nothing(tmp_path, monkeypatch):
    def failing_rename(src, dst):
        raise OSError(5, 'Input/output error', dst)

    monkeypatch.setattr(os, 'rename', failing_rename)
    with pytest.raises(VirtnodeError, match='Input/output error'):
        sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    assert os.listdir(tmp_path) == []


def test_crash_leaves_only_a_hidden_directory(tmp_path, monkeypatch):
    # A process killed mid-way cannot clean up: what is left must not look like a domain.
    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'rename', killed)
    monkeypatch.setattr('shutil.rmtree', lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith('.')
    assert not (tmp_path / SD).exists()


# ------------------------------------------------------------------ shared storage is written by other hosts

VOL = '9a3c1e55-2b7e-4d61-8f0e-5b1a7c3d2e4f'


@pytest.mark.parametrize('variant', ['ids-to-device', 'leases-to-host-file', 'dom-md-to-etc', 'lease-link', 'images-to-etc',
                                     'xleases-fifo', 'dot-dot'])
def test_files_handed_to_sanlock_must_be_regular_files_inside_the_domain(tmp_path, variant):
    dom = tmp_path / SD
    (dom / 'dom_md').mkdir(parents=True)
    img = dom / 'images' / IMG
    img.mkdir(parents=True)
    for name in ('ids', 'leases', 'xleases'):
        (dom / 'dom_md' / name).write_bytes(b'')
    (img / (VOL + '.lease')).write_bytes(b'')
    outside = tmp_path / 'etc'
    outside.mkdir()
    for name in ('ids', 'leases', 'xleases', VOL + '.lease', 'shadow'):
        (outside / name).write_bytes(b'host file')
    (outside / IMG).mkdir()
    (outside / IMG / (VOL + '.lease')).write_bytes(b'host file')
    assert sd_layout.dom_md_file(str(dom), 'ids') == str(dom / 'dom_md' / 'ids')
    assert sd_layout.volume_lease_file(str(dom), IMG, VOL) == str(img / (VOL + '.lease'))
    if variant == 'ids-to-device':
        (dom / 'dom_md' / 'ids').unlink()
        (dom / 'dom_md' / 'ids').symlink_to('/dev/null')
        call = (sd_layout.dom_md_file, str(dom), 'ids')
    elif variant == 'leases-to-host-file':
        (dom / 'dom_md' / 'leases').unlink()
        (dom / 'dom_md' / 'leases').symlink_to(outside / 'shadow')
        call = (sd_layout.dom_md_file, str(dom), 'leases')
    elif variant == 'dom-md-to-etc':
        os.rename(str(dom / 'dom_md'), str(tmp_path / 'moved'))
        (dom / 'dom_md').symlink_to(outside)
        call = (sd_layout.dom_md_file, str(dom), 'ids')
    elif variant == 'lease-link':
        (img / (VOL + '.lease')).unlink()
        (img / (VOL + '.lease')).symlink_to(outside / 'shadow')
        call = (sd_layout.volume_lease_file, str(dom), IMG, VOL)
    elif variant == 'images-to-etc':
        os.rename(str(dom / 'images'), str(tmp_path / 'images'))
        (dom / 'images').symlink_to(outside.parent / 'etc')
        call = (sd_layout.volume_lease_file, str(dom), IMG, VOL)
    elif variant == 'xleases-fifo':
        (dom / 'dom_md' / 'xleases').unlink()
        os.mkfifo(str(dom / 'dom_md' / 'xleases'))
        call = (sd_layout.dom_md_file, str(dom), 'xleases')
    else:
        call = (sd_layout.domain_file, str(dom), 'dom_md', '..', '..', 'etc', 'shadow')
    with pytest.raises(VirtnodeError, match='refusing'):
        call[0](*call[1:])


def test_create_removes_staging_trees_a_crashed_create_left(tmp_path):
    # A create killed while staging leaves a hidden tree; the next create of the domain clears it
    # (and only it: another domain's staging tree, and a link named like one, stay).
    other = '0f6f7b3c-1c2d-4e5f-8a9b-0c1d2e3f4a5b'
    (tmp_path / ('.%s.x1y2z3.creating' % SD) / 'dom_md').mkdir(parents=True)
    (tmp_path / ('.%s.a1b2c3.creating' % other)).mkdir()
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'keep').write_text('kept')
    os.symlink(str(outside), str(tmp_path / ('.%s.link.creating' % SD)))
    sd_layout.create_domain_tree(str(tmp_path), SD, metadata(), 'NFS')
    assert sorted(os.listdir(tmp_path)) == sorted([SD, '.%s.a1b2c3.creating' % other, 'outside', '.%s.link.creating' % SD])
    assert (outside / 'keep').read_text() == 'kept'


@pytest.mark.skipif(os.geteuid() != 0, reason='giving files to uid 36 needs root')
@pytest.mark.parametrize('sd_type, domain_class', [('NFS', 'Data'), ('LOCALFS', 'Iso')])
def test_the_whole_domain_tree_belongs_to_vdsm_kvm(tmp_path, sd_type, domain_class):
    """VDSM hosts sharing the storage run as vdsm:kvm (36:36): every entry of a new domain is theirs."""
    sd_layout.create_domain_tree(str(tmp_path), SD, metadata(sd_type, domain_class), sd_type)
    owners = {}
    for d, dirs, files in os.walk(str(tmp_path)):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            owners[os.path.relpath(os.path.join(d, name), str(tmp_path))] = (st.st_uid, st.st_gid)
    assert owners and set(owners.values()) == {(36, 36)}, owners
