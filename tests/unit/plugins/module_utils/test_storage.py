# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import info as storage_info
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import xlease
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
SD2 = '8a1b7e1c-5d2f-4c3a-9e6b-7f0a1d2c3b4e'
SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
V1, V2 = '9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21', '1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10'
HAS_QEMU_IMG = shutil.which('qemu-img') is not None


@pytest.fixture
def mount_root(tmp_path, monkeypatch):
    root = tmp_path / 'mnt'
    (root / 'server:_export').mkdir(parents=True)
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    monkeypatch.setattr(storage, 'scan_domains', lambda mount_root=str(root), mount=None, unreachable=None, block=True, _orig=storage.scan_domains:
                        _orig(mount_root=str(root), mount=mount, unreachable=unreachable, block=block))
    calls = []
    for name in ('write_lockspace', 'write_resource'):
        monkeypatch.setattr(sanlock_lock, name, lambda *args, _name=name: calls.append((_name,) + args))
    return root, calls


def test_create_domain_layout_and_leases(mount_root):
    root, calls = mount_root
    mount = str(root / 'server:_export')
    dom_dir = storage.create_domain(mount, SD, 'NFS', 'Data', 'data', 'server:/export', 5, 1)
    md = storage.read_md(dom_dir)
    assert md.version == 5 and md.io_op_timeout_sec == 1 and md.sd_type == 'NFS'
    assert sorted(os.listdir(os.path.join(dom_dir, 'dom_md'))) == ['ids', 'inbox', 'leases', 'metadata', 'outbox', 'xleases']
    ids = os.path.join(dom_dir, 'dom_md', 'ids')
    leases = os.path.join(dom_dir, 'dom_md', 'leases')
    assert calls == [('write_lockspace', SD, ids, 1, 1048576, 512), ('write_resource', SD, 'SDM', leases, 1048576, 1048576, 512)]
    assert xlease.read_index(os.path.join(dom_dir, 'dom_md', 'xleases'), 1048576)[0]['lockspace'] == SD
    assert storage.find_domain(SD) == dom_dir


def test_local_domain_uses_no_sanlock(mount_root):
    root, calls = mount_root
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'LOCALFS', 'Data', '', '/srv/x', 5, 10)
    assert calls == []
    assert 'xleases' not in os.listdir(os.path.join(dom_dir, 'dom_md'))


def test_remove_refused_with_images_or_pool(mount_root):
    root, _calls = mount_root
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', '', 'server:/export', 5, 1)
    os.makedirs(os.path.join(dom_dir, 'images', IMG))
    with pytest.raises(VirtnodeError, match='image'):
        storage.remove_domain(dom_dir)
    storage.update_md(dom_dir, {'POOL_UUID': '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'})
    with pytest.raises(VirtnodeError, match='detach it first'):
        storage.remove_domain(dom_dir, force=True)
    storage.update_md(dom_dir, {'POOL_UUID': ''})
    storage.remove_domain(dom_dir, force=True)
    assert storage.find_domain(SD, required=False) is None


def test_order_chain():
    vols = {'c': {'parent': 'b'}, 'a': {'parent': '0'}, 'b': {'parent': 'a'}}
    assert [v['parent'] for v in storage.order_chain(vols)] == ['0', 'a', 'b']


@pytest.mark.skipif(not HAS_QEMU_IMG, reason='qemu-img not installed')
def test_volume_create_snapshot_extend_delete(mount_root):
    root, calls = mount_root
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', '', 'server:/export', 5, 1)
    md = storage.read_md(dom_dir)
    base = volumes.create_volume(dom_dir, md, IMG, V1, 'RAW', 'SPARSE', 1048576)
    assert base.legality == 'LEGAL' and base.role == 'LEAF'
    assert calls[-1][:3] == ('write_resource', SD, V1)
    top = volumes.create_volume(dom_dir, md, IMG, V2, 'COW', 'SPARSE', None, V1)
    assert top.parent == V1 and top.capacity == 1048576
    assert volumes.read_volume(dom_dir, IMG, V1).role == 'INTERNAL'
    with pytest.raises(VirtnodeError, match='child'):
        volumes.delete_volume(dom_dir, md, IMG, V1)
    assert volumes.extend_volume(dom_dir, md, IMG, V2, 2 * 1048576)
    with pytest.raises(VirtnodeError, match='shrinking'):
        volumes.extend_volume(dom_dir, md, IMG, V2, 1048576)
    assert volumes.delete_volume(dom_dir, md, IMG, V2)
    assert volumes.read_volume(dom_dir, IMG, V1).role == 'LEAF'
    assert volumes.delete_image(dom_dir, IMG)
    assert not os.path.exists(os.path.join(dom_dir, 'images', IMG))
    assert not os.path.exists(os.path.join(dom_dir, 'images', '_remove_me_' + IMG))


@pytest.mark.skipif(not HAS_QEMU_IMG or os.geteuid() != 0, reason='needs qemu-img and root')
def test_volumes_belong_to_vdsm_kvm(mount_root):
    """Image directory, data, .meta and .lease of a new volume, and a rewritten .meta, are 36:36 as VDSM's."""
    root, _calls = mount_root
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', '', 'server:/export', 5, 1)
    md = storage.read_md(dom_dir)
    volumes.create_volume(dom_dir, md, IMG, V1, 'RAW', 'SPARSE', 1048576)
    volumes.create_volume(dom_dir, md, IMG, V2, 'COW', 'SPARSE', None, V1)  # rewrites V1's .meta
    volumes.extend_volume(dom_dir, md, IMG, V2, 2 * 1048576)
    img_dir = os.path.join(dom_dir, 'images', IMG)
    entries = [img_dir] + [os.path.join(img_dir, name) for name in os.listdir(img_dir)]
    assert len(entries) == 7
    assert {path: (os.lstat(path).st_uid, os.lstat(path).st_gid) for path in entries} == \
        {path: (36, 36) for path in entries}


# ------------------------------------------------------------------ one writer: leases and master choice

class FakeSanlockError(Exception):
    def __init__(self, number, text='fake sanlock error'):
        super().__init__(number, text)
        self.errno = number


class FakeSanlock:
    """sanlock's formatting calls as marker bytes in real files; ``fail[call] = errno`` makes a call fail."""

    SanlockException = FakeSanlockError

    def __init__(self):
        self.writes = []
        self.fail = {}

    def _check(self, call):
        if call in self.fail:
            raise FakeSanlockError(self.fail[call])

    @staticmethod
    def _put(path, offset, data, size):
        with open(path, 'r+b') as stream:
            stream.seek(offset)
            stream.write(data)
            stream.truncate(max(size, os.fstat(stream.fileno()).st_size))

    @staticmethod
    def _get(path, offset, length):
        try:
            with open(path, 'rb') as stream:
                stream.seek(offset)
                return stream.read(length)
        except OSError as err:
            raise FakeSanlockError(-err.errno) from err

    def write_lockspace(self, lockspace, path, iotimeout=0, align=1048576, sector=512):
        self.writes.append(('write_lockspace', path))
        self._check('write_lockspace')
        self._put(path, 0, b'LS' + lockspace.ljust(64, b'\0'), align)

    def read_lockspace(self, path, align=1048576, sector=512):
        self._check('read_lockspace')
        data = self._get(path, 0, 66)
        if not data.startswith(b'LS'):
            raise FakeSanlockError(sanlock_lock.SANLK_LEADER_MAGIC)
        return {'lockspace': data[2:].rstrip(b'\0'), 'iotimeout': 10}

    def write_resource(self, lockspace, resource, disks, align=1048576, sector=512):
        path, offset = disks[0]
        self.writes.append(('write_resource', path))
        self._check('write_resource')
        self._put(path, offset, b'RS' + lockspace.ljust(64, b'\0') + resource.ljust(64, b'\0'), offset + align)

    def read_resource(self, path, offset=0, align=1048576, sector=512):
        self._check('read_resource')
        data = self._get(path, offset, 130)
        if not data.startswith(b'RS'):
            raise FakeSanlockError(sanlock_lock.SANLK_LEADER_MAGIC)
        return {'lockspace': data[2:66].rstrip(b'\0'), 'resource': data[66:].rstrip(b'\0'), 'version': 0}

    @staticmethod
    def get_lockspaces():
        return []

    def add_lockspace(self, *args, **kwargs):
        self.writes.append(('add_lockspace', args[2]))

    @staticmethod
    def register():
        return os.open(os.devnull, os.O_RDONLY)

    def acquire(self, lockspace, resource, disks, slkfd=None):
        self.writes.append(('acquire', resource))

    def release(self, lockspace, resource, disks, slkfd=None):
        self.writes.append(('release', resource))


@pytest.fixture
def lab_sanlock(tmp_path, monkeypatch):
    """A mount root with one connected server and a sanlock that formats real files."""
    root = tmp_path / 'mnt'
    (root / 'server:_export').mkdir(parents=True)
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    monkeypatch.setattr(storage, 'scan_domains', lambda mount_root=str(root), mount=None, unreachable=None, block=True, _orig=storage.scan_domains:
                        _orig(mount_root=str(root), mount=mount, unreachable=unreachable, block=block))
    monkeypatch.setattr(storage, 'POOL_STATE_DIR', str(tmp_path / 'pools'))
    monkeypatch.setattr(sd_layout, 'pool_dir', lambda sp_uuid: str(tmp_path / 'dc' / sp_uuid))
    fake = FakeSanlock()
    monkeypatch.setattr(sanlock_lock, 'sanlock', fake)
    monkeypatch.setattr(sanlock_lock, 'HAS_SANLOCK', True)
    monkeypatch.setattr(sanlock_lock, 'SanlockException', FakeSanlockError)
    return str(root / 'server:_export'), fake


def _module(**params):
    base = dict(sd_uuid=SD, server='server:/export', type='nfs', domain_class='Data', description='data', version=5,
                io_timeout=10, block_size=512, alignment=1048576, pool_uuid=None, force=False, state='imported')
    base.update(params)
    return types.SimpleNamespace(params=base, check_mode=False, _diff=False, warn=lambda msg: None)


def _blank_domain(mount, sd_uuid=SD):
    """A domain as a crash right after the directory rename leaves it: metadata, no lockspace, no leases."""
    pairs = sdm.new_domain_metadata(sd_uuid, 'NFS', 'Data', 'data', 'server:/export', 5, 512, 1048576)
    pairs[sdm.IOOPTIMEOUTSEC] = '10'
    return sd_layout.create_domain_tree(mount, sd_uuid, pairs, 'NFS')


def _area_bytes(dom_dir):
    out = {}
    for name in ('ids', 'leases', 'xleases'):
        with open(os.path.join(dom_dir, 'dom_md', name), 'rb') as stream:
            out[name] = stream.read(4 * 1024 ** 2)    # xleases is a 1 GiB sparse file
    return out


def _planted_symlink(dom_dir, tmp_path):
    blank = tmp_path / 'blank'
    blank.write_bytes(b'')
    ids = os.path.join(dom_dir, 'dom_md', 'ids')
    os.unlink(ids)
    os.symlink(str(blank), ids)


def _eio_on_area_reads(monkeypatch):
    for name in ('pread', 'preadv', 'read'):
        def failing(fd, *args, _real=getattr(os, name)):
            if os.path.basename(os.readlink('/proc/self/fd/%d' % fd)) in ('ids', 'leases'):
                raise OSError(errno.EIO, 'Input/output error')
            return _real(fd, *args)
        monkeypatch.setattr(os, name, failing)


# Each way of failing to read a live domain's leases; none of them may lead to formatting.
READ_FAULTS = {
    'lockspace EIO': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_lockspace=errno.EIO),
    'lockspace timeout': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_lockspace=-202),
    'lockspace ENODEV': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_lockspace=-errno.ENODEV),
    'SDM lease EIO': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_resource=errno.EIO),
    'SDM lease timeout': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_resource=-202),
    'SDM lease garbage': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_resource=sanlock_lock.SANLK_LEADER_MAGIC),
    'lockspace garbage': lambda fake, dom_dir, tmp_path, mp: fake.fail.update(read_lockspace=sanlock_lock.SANLK_LEADER_MAGIC),
    'ids missing': lambda fake, dom_dir, tmp_path, mp: os.unlink(os.path.join(dom_dir, 'dom_md', 'ids')),
    'ids is a link to a blank file': lambda fake, dom_dir, tmp_path, mp: _planted_symlink(dom_dir, tmp_path),
    'ids and leases EIO': lambda fake, dom_dir, tmp_path, mp: _eio_on_area_reads(mp),
}


@pytest.mark.parametrize('fault', sorted(READ_FAULTS))
@pytest.mark.parametrize('state', ['imported', 'present'])
def test_leases_never_initialised_after_a_read_error(lab_sanlock, tmp_path, monkeypatch, fault, state):
    mount, fake = lab_sanlock
    dom_dir = storage.create_domain(mount, SD, 'NFS', 'Data', 'data', 'server:/export', 5, 10)
    before = _area_bytes(dom_dir) if fault not in ('ids missing', 'ids is a link to a blank file') else None
    fake.writes.clear()
    READ_FAULTS[fault](fake, dom_dir, tmp_path, monkeypatch)
    with pytest.raises(VirtnodeError):
        domain_state.run_module(_module(state=state))
    assert fake.writes == []
    if before is not None:
        monkeypatch.undo()
        assert _area_bytes(dom_dir) == before


@pytest.mark.parametrize('state', ['imported', 'present'])
def test_leases_of_a_domain_left_blank_by_a_crash_are_initialised_once(lab_sanlock, state):
    mount, fake = lab_sanlock
    dom_dir = _blank_domain(mount)
    first = domain_state.run_module(_module(state=state))
    assert first['actions'] == ['init_leases'] and first['changed']
    assert sorted(call for call, _path in fake.writes) == ['write_lockspace', 'write_resource']
    assert xlease.read_index(os.path.join(dom_dir, 'dom_md', 'xleases'), 1048576)[0]['lockspace'] == SD
    fake.writes.clear()
    again = domain_state.run_module(_module(state=state))
    assert again['actions'] == [] and not again['changed'] and fake.writes == []


def test_only_the_blank_area_is_initialised(lab_sanlock):
    mount, fake = lab_sanlock
    dom_dir = _blank_domain(mount)
    sanlock_lock.write_lockspace(SD, os.path.join(dom_dir, 'dom_md', 'ids'), 10)
    ids = _area_bytes(dom_dir)['ids']
    fake.writes.clear()
    assert domain_state.run_module(_module())['actions'] == ['init_leases']
    assert fake.writes == [('write_resource', os.path.join(dom_dir, 'dom_md', 'leases'))]
    assert _area_bytes(dom_dir)['ids'] == ids


def test_area_with_data_sanlock_does_not_recognise_is_refused(lab_sanlock):
    mount, fake = lab_sanlock
    dom_dir = _blank_domain(mount)
    with open(os.path.join(dom_dir, 'dom_md', 'ids'), 'wb') as stream:
        stream.write(b'\0' * 4096 + b'x')
    with pytest.raises(VirtnodeError, match='ids'):
        domain_state.run_module(_module())
    assert fake.writes == []


def test_lockspace_of_another_domain_is_refused(lab_sanlock):
    mount, fake = lab_sanlock
    dom_dir = _blank_domain(mount)
    sanlock_lock.write_lockspace(SD2, os.path.join(dom_dir, 'dom_md', 'ids'), 10)
    fake.writes.clear()
    with pytest.raises(VirtnodeError, match=SD2):
        domain_state.run_module(_module())
    assert fake.writes == []


def _pool_master(mount, sd_uuid, version=1, sealed=True, members=None, role='Master', dir_name=None):
    """A domain claiming to be a master of pool SP, its metadata sealed or not."""
    dom_dir = _blank_domain(mount, sd_uuid)
    sanlock_lock.write_lockspace(sd_uuid, os.path.join(dom_dir, 'dom_md', 'ids'), 10)
    sanlock_lock.write_resource(sd_uuid, 'SDM', os.path.join(dom_dir, 'dom_md', 'leases'), 1048576)
    members = members or {sd_uuid: 'Active'}
    storage.update_md(dom_dir, {'ROLE': role, 'POOL_UUID': SP, 'POOL_DOMAINS': storage.encode_pool_domains(members),
                                'MASTER_VERSION': version, 'POOL_DESCRIPTION': 'pool', 'POOL_SPM_ID': -1, 'POOL_SPM_LVER': -1})
    path = storage.md_path(dom_dir)
    if not sealed:
        with open(path) as stream:
            lines = [line for line in stream if not line.startswith('_SHA_CKSUM=')]
        with open(path, 'w') as stream:
            stream.writelines(lines)
    if dir_name:
        target = os.path.join(os.path.dirname(dom_dir), dir_name)
        os.rename(dom_dir, target)
        dom_dir = target
    return dom_dir


def _copy_domain(dom_dir, mount):
    target = os.path.join(mount, os.path.basename(dom_dir))
    shutil.copytree(dom_dir, target, symlinks=True)
    return target


def test_unsealed_copy_with_a_higher_master_version_is_not_the_master(lab_sanlock):
    mount, _fake = lab_sanlock
    real = _pool_master(mount, SD)
    _pool_master(mount, SD2, version=99, sealed=False)
    assert storage.find_master(SP)[0] == real


def test_master_metadata_under_another_domain_s_name_is_not_the_master(lab_sanlock):
    mount, _fake = lab_sanlock
    real = _pool_master(mount, SD)
    # SD's metadata (sealed, SDUUID=SD) copied under the directory name SD2.
    copy = os.path.join(mount, SD2)
    shutil.copytree(real, copy)
    storage.update_md(copy, {'MASTER_VERSION': 99})
    assert storage.find_master(SP)[0] == real


def test_rival_sealed_master_is_refused_unless_this_host_knows_its_master(lab_sanlock, tmp_path):
    mount, _fake = lab_sanlock
    real = _pool_master(mount, SD)
    _pool_master(mount, SD2, version=99)
    with pytest.raises(VirtnodeError, match='claim to be the master'):
        storage.find_master(SP)
    storage.write_pool_state(SP, {'sp_uuid': SP, 'host_id': 1, 'master_sd': SD})
    assert storage.find_master(SP)[0] == real


def test_copy_of_the_master_on_another_server_is_refused_unless_linked(lab_sanlock, tmp_path):
    mount, _fake = lab_sanlock
    real = _pool_master(mount, SD)
    other = os.path.join(os.path.dirname(mount), 'a:_copy')
    os.mkdir(other)
    copy = _copy_domain(real, other)
    storage.update_md(copy, {'MASTER_VERSION': 99})
    with pytest.raises(VirtnodeError, match='claim to be the master'):
        storage.find_master(SP)
    link = os.path.join(sd_layout.pool_dir(SP), storage.MASTERSD_LINK)
    os.makedirs(os.path.dirname(link))
    os.symlink(real, link)
    storage.write_pool_state(SP, {'sp_uuid': SP, 'host_id': 1, 'master_sd': SD})
    assert storage.find_master(SP)[0] == real


def test_former_master_left_by_a_master_move_is_not_the_master(lab_sanlock):
    mount, _fake = lab_sanlock
    both = {SD: 'Active', SD2: 'Active'}
    _pool_master(mount, SD, version=1, members=both)
    new = _pool_master(mount, SD2, version=2, members=both)
    assert storage.find_master(SP)[0] == new


def test_find_master_reads_only_domain_directories_and_bounds_reads(lab_sanlock, monkeypatch):
    mount, _fake = lab_sanlock
    real = _pool_master(mount, SD)
    # Not a domain name: never read.
    os.makedirs(os.path.join(mount, 'not-a-domain', 'dom_md'))
    os.mkfifo(os.path.join(mount, 'not-a-domain', 'dom_md', 'metadata'))
    # A domain whose metadata is a FIFO or a link to an endless device: refused quickly, not read.
    for name, make in (('3d5c1f0e-7a6b-4c2d-8e9f-0a1b2c3d4e5f', os.mkfifo),
                       ('4e6d2a1f-8b7c-4d3e-9fa0-1b2c3d4e5f60', lambda path: os.symlink('/dev/zero', path))):
        os.makedirs(os.path.join(mount, name, 'dom_md'))
        make(os.path.join(mount, name, 'dom_md', 'metadata'))
    start = time.monotonic()
    assert storage.find_master(SP)[0] == real
    assert time.monotonic() - start < 5


def _first_read_of(monkeypatch, victim, how):
    """The first read of ``victim`` fails (EIO), is torn (half the bytes) or stalls; later reads are fine."""
    real = os.read
    done = []

    def read(fd, length):
        try:
            target = os.readlink('/proc/self/fd/%d' % fd)
        except OSError:
            target = ''
        if target != victim or done:
            return real(fd, length)
        done.append(True)
        if how == 'eio':
            raise OSError(errno.EIO, 'Input/output error')
        if how == 'stall':
            time.sleep(3)
            return real(fd, length)
        data = real(fd, length)
        return data[:len(data) // 2]
    monkeypatch.setattr(os, 'read', read)
    monkeypatch.setattr(storage, 'MASTER_READ_TIMEOUT', 1, raising=False)


# A master hidden for a moment, or whose metadata cannot be trusted: the pool is never created (reset) over it.
HIDDEN_MASTER = {
    'EIO once': lambda dom_dir, mp: _first_read_of(mp, storage.md_path(dom_dir), 'eio'),
    'torn read once': lambda dom_dir, mp: _first_read_of(mp, storage.md_path(dom_dir), 'torn'),
    'stalled read once': lambda dom_dir, mp: _first_read_of(mp, storage.md_path(dom_dir), 'stall'),
    'unsealed': None,
}


@pytest.mark.parametrize('fault', sorted(HIDDEN_MASTER))
def test_pool_is_not_reset_when_its_master_cannot_be_read(lab_sanlock, monkeypatch, fault):
    mount, fake = lab_sanlock
    dom_dir = _pool_master(mount, SD, version=7, sealed=fault != 'unsealed', members={SD: 'Active', SD2: 'Active'})
    if HIDDEN_MASTER[fault]:
        HIDDEN_MASTER[fault](dom_dir, monkeypatch)
    path = storage.md_path(dom_dir)
    with open(path, 'rb') as stream:
        before = stream.read()
    fake.writes.clear()
    module = _module(pool_uuid=SP, master_sd_uuid=SD, description='new', host_id=1, hostname='h1', state='present')
    with pytest.raises(VirtnodeError):
        pool.run_module(module)
    monkeypatch.undo()
    with open(path, 'rb') as stream:
        assert stream.read() == before
    assert not [call for call in fake.writes if call[0] in ('write_lockspace', 'write_resource', 'acquire')]


def test_pool_is_created_when_no_domain_claims_it(lab_sanlock):
    mount, _fake = lab_sanlock
    _blank_domain(mount)
    domain_state.run_module(_module(state='present'))
    result = pool.run_module(_module(pool_uuid=SP, master_sd_uuid=SD, description='new', host_id=1, hostname='h1',
                                     state='present'))
    assert result['actions'][0] == 'create' and storage.find_master(SP)[1].sd_uuid == SD


@pytest.mark.parametrize('host_id', [251, 1000, 2000])
def test_host_ids_the_mailbox_cannot_serve_are_refused_at_connect(lab_sanlock, host_id):
    mount, fake = lab_sanlock
    _pool_master(mount, SD)
    fake.writes.clear()
    with pytest.raises(VirtnodeError, match='250') as err:
        pool.run_module(_module(pool_uuid=SP, master_sd_uuid=None, description='', host_id=host_id, hostname='h1',
                                state='connected'))
    assert err.value.details['field'] == 'host_id' and fake.writes == []
    assert storage.read_pool_state(SP) is None


def test_host_id_250_connects(lab_sanlock):
    mount, _fake = lab_sanlock
    _pool_master(mount, SD)
    result = pool.run_module(_module(pool_uuid=SP, master_sd_uuid=None, description='', host_id=250, hostname='h1',
                                     state='connected'))
    assert result['connected'] and result['host_id'] == 250


def test_the_host_id_bootstrap_wrote_is_the_default(lab_sanlock, tmp_path, monkeypatch):
    mount, _fake = lab_sanlock
    _pool_master(mount, SD)
    id_file = tmp_path / 'host_id'
    monkeypatch.setattr(paths, 'HOST_ID_FILE', str(id_file))
    connect = dict(pool_uuid=SP, master_sd_uuid=None, description='', host_id=None, hostname='h1', state='connected')
    with pytest.raises(VirtnodeError, match='bootstrap_sanlock_host_id') as err:
        pool.run_module(_module(**connect))
    assert err.value.details['field'] == 'host_id'
    for bad in ('', 'seven', '\u0667', '1 2', '251'):
        id_file.write_text(bad + '\n')
        with pytest.raises(VirtnodeError) as err:
            pool.run_module(_module(**connect))
        assert err.value.details['field'] == 'host_id' and storage.read_pool_state(SP) is None
    id_file.write_text('7\n')
    result = pool.run_module(_module(**connect))
    assert result['connected'] and result['host_id'] == 7
    assert storage.read_pool_state(SP)['host_id'] == 7


# ---------------------------------------------------------------- mounts that stopped answering

def _dead_mount(root, monkeypatch, how):
    """A second mount whose listing fails with EIO or hangs (a dead NFS server); returns (its path, listings, release)."""
    dead = os.path.join(str(root), 'dead:_export')
    os.makedirs(dead)
    real = storage._domains_in_mount
    listings = []
    release = threading.Event()

    def listing(mnt):
        if mnt != dead:
            return real(mnt)
        listings.append(mnt)
        if how == 'eio':
            raise OSError(errno.EIO, 'Input/output error')
        release.wait(30)
        return []
    monkeypatch.setattr(storage, '_domains_in_mount', listing)
    monkeypatch.setattr(storage, 'SCAN_TIMEOUT', 0.5)
    monkeypatch.setattr(storage, '_SCANS', {})
    return dead, listings, release


@pytest.mark.parametrize('how', ['eio', 'hang'])
def test_a_domain_behind_a_dead_mount_is_never_taken_for_absent(mount_root, monkeypatch, how):
    root, _calls = mount_root
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', 'data', 'server:/export', 5, 1)
    dead, listings, release = _dead_mount(root, monkeypatch, how)
    try:
        assert storage.find_domain(SD) == dom_dir  # found on a mount that answers
        start = time.monotonic()
        for _attempt in range(3):
            with pytest.raises(VirtnodeError, match='cannot tell whether storage domain %s exists: 1 storage mount' % SD2) as err:
                storage.find_domain(SD2, required=False)
        assert time.monotonic() - start < 3
        assert dead in err.value.message and err.value.details['unreachable'] == [dead]
        assert ('Input/output error' if how == 'eio' else 'no answer from') in err.value.message
        # A listing still waiting is not started again.
        assert len(listings) == (4 if how == 'eio' else 1)
        unreachable = {}
        assert storage.scan_domains(str(root), unreachable=unreachable) == {SD: dom_dir} and list(unreachable) == [dead]
    finally:
        release.set()


def test_storage_info_names_the_mount_that_does_not_answer(mount_root, monkeypatch):
    root, _calls = mount_root
    storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', 'data', 'server:/export', 5, 1)
    dead, _listings, release = _dead_mount(root, monkeypatch, 'hang')
    try:
        result = storage_info.run_module(types.SimpleNamespace(params=dict(sd_uuid=None, pool_uuid=None, images=True)))
        assert [d['sd_uuid'] for d in result['domains']] == [SD]
        assert result['unreachable'] == [{'mount_point': dead, 'error': 'no answer from %s within 0.5s (storage server '
                                          'not responding?)' % dead}]
        with pytest.raises(VirtnodeError, match='storage domain %s not found: 1 storage mount' % SD2):
            storage_info.run_module(types.SimpleNamespace(params=dict(sd_uuid=SD2, pool_uuid=None, images=True)))
    finally:
        release.set()


@pytest.mark.parametrize('planted', ['ids', 'leases', 'xleases'])
def test_lease_files_planted_as_links_never_reach_sanlock_or_the_index_writer(lab_sanlock, tmp_path, planted):
    # Every path handed to sanlock (join, SPM lease, formatting) or to the xleases index
    # writer is checked inside the domain: a link planted by another host or NFS client
    # would have this host's sanlock write its delta lease or paxos leader into a host file.
    mount, fake = lab_sanlock
    dom_dir = _blank_domain(mount)
    outside = tmp_path / 'host-file'
    outside.write_bytes(b'host file\n' * 1000)
    before = outside.read_bytes()
    link = os.path.join(dom_dir, 'dom_md', planted)
    os.unlink(link)
    os.symlink(str(outside), link)
    md = storage.read_md(dom_dir)
    calls = [lambda: storage.lease_areas(dom_dir, md),
             lambda: storage.format_missing_leases(dom_dir, md)]
    if planted == 'ids':
        calls.append(lambda: storage.join_lockspace(dom_dir, md, 1))
    if planted == 'leases':
        calls.append(lambda: storage.spm_lease(dom_dir, md))
    for call in calls:
        with pytest.raises(VirtnodeError, match='link'):
            call()
    assert fake.writes == []
    assert outside.read_bytes() == before
