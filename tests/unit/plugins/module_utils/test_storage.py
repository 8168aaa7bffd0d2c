# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import xlease
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
V1, V2 = '9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21', '1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10'
HAS_QEMU_IMG = shutil.which('qemu-img') is not None


@pytest.fixture
def mount_root(tmp_path, monkeypatch):
    root = tmp_path / 'mnt'
    (root / 'server:_export').mkdir(parents=True)
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    monkeypatch.setattr(storage, 'scan_domains', lambda mount_root=str(root), mount=None, _orig=storage.scan_domains:
                        _orig(mount_root=str(root), mount=mount))
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
    assert xlease.read_index(os.path.join(dom_dir, 'dom_md', 'xleases'))[0]['lockspace'] == SD
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
