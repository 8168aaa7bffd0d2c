# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volumes given to a guest: only regular files inside their domain, never an ILLEGAL chain."""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes

SD = '11111111-2222-4333-8444-555555555555'
IMG = '21111111-2222-4333-8444-555555555555'
BASE = '31111111-2222-4333-8444-555555555555'
TOP = '41111111-2222-4333-8444-555555555555'
MIB = 1024 ** 2


def write_volume(img_dir, vol, parent=vmd.BLANK_UUID, legality='LEGAL'):
    # Real qcow2 images: their headers are checked against the metadata's chain.
    if parent == vmd.BLANK_UUID:
        qemu_img.create(str(img_dir / vol), 'COW', size=MIB)
    else:
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-b', parent, '-F', 'qcow2', str(img_dir / vol), str(MIB)],
                       check=True)
    md = vmd.VolumeMetadata(domain=SD, image=IMG, capacity=MIB, volume_format='COW', allocation='SPARSE',
                            role='LEAF', disk_type='DATA', parent=parent, legality=legality)
    vmd.write_volume_metadata(str(img_dir / (vol + '.meta')), md)


@pytest.fixture
def mount_root(tmp_path, monkeypatch):
    root = tmp_path / 'mnt'
    img_dir = root / 'server:_export' / SD / 'images' / IMG
    img_dir.mkdir(parents=True)
    write_volume(img_dir, BASE)
    write_volume(img_dir, TOP, parent=BASE)
    outside = tmp_path / 'etc'
    outside.mkdir()
    (outside / 'shadow').write_bytes(b'root:secret\n')
    for vol in (BASE, TOP):
        # A copy of the volume outside the domain, as a planted link would find it.
        (outside / vol).write_bytes(b'host file')
        (outside / (vol + '.meta')).write_bytes((img_dir / (vol + '.meta')).read_bytes())
    monkeypatch.setattr(paths, 'MOUNT_ROOT', str(root))
    return root


def image_dir(mount_root):
    return mount_root / 'server:_export' / SD / 'images' / IMG


def test_a_legal_volume_in_its_domain_is_resolved(mount_root):
    assert vm_volumes.resolve_volume(SD, IMG, TOP) == str(image_dir(mount_root) / TOP)
    assert vm_volumes.resolve_legal_volume(SD, IMG, TOP) == str(image_dir(mount_root) / TOP)
    assert vm_volumes.check_volume_chain_legal(str(mount_root / 'server:_export' / SD), IMG, TOP) == [TOP, BASE]


@pytest.mark.parametrize('variant', ['volume-to-host-file', 'volume-to-device', 'image-dir-to-etc', 'images-to-elsewhere',
                                     'domain-dir-to-elsewhere', 'meta-to-host-file', 'parent-meta-to-host-file',
                                     'volume-fifo', 'volume-directory'])
def test_a_volume_that_leaves_its_domain_is_never_given_to_a_guest(mount_root, tmp_path, variant):
    img_dir = image_dir(mount_root)
    outside = tmp_path / 'etc'
    if variant == 'volume-to-host-file':
        (img_dir / TOP).unlink()
        (img_dir / TOP).symlink_to(outside / 'shadow')
    elif variant == 'volume-to-device':
        (img_dir / TOP).unlink()
        (img_dir / TOP).symlink_to('/dev/null')
    elif variant == 'image-dir-to-etc':
        os.rename(str(img_dir), str(tmp_path / 'moved'))
        img_dir.symlink_to(outside)
    elif variant == 'images-to-elsewhere':
        os.rename(str(img_dir.parent), str(tmp_path / 'images'))
        img_dir.parent.symlink_to(tmp_path / 'images')
    elif variant == 'domain-dir-to-elsewhere':
        os.rename(str(img_dir.parent.parent), str(tmp_path / 'dom'))
        img_dir.parent.parent.symlink_to(tmp_path / 'dom')
    elif variant == 'meta-to-host-file':
        (img_dir / (TOP + '.meta')).unlink()
        (img_dir / (TOP + '.meta')).symlink_to(outside / (TOP + '.meta'))
    elif variant == 'parent-meta-to-host-file':
        (img_dir / (BASE + '.meta')).unlink()
        (img_dir / (BASE + '.meta')).symlink_to(outside / (BASE + '.meta'))
    elif variant == 'volume-fifo':
        (img_dir / TOP).unlink()
        os.mkfifo(str(img_dir / TOP))
    elif variant == 'volume-directory':
        (img_dir / TOP).unlink()
        (img_dir / TOP).mkdir()
    # Metadata is read only for the chain check of what a guest is given.
    resolvers = [vm_volumes.resolve_legal_volume] + ([] if 'meta' in variant else [vm_volumes.resolve_volume])
    for resolve in resolvers:
        with pytest.raises(VirtnodeError, match='refusing') as info:
            resolve(SD, IMG, TOP)
        assert 'symbolic link' in str(info.value) or 'not a regular file' in str(info.value)


@pytest.mark.parametrize('ids', [(SD, '../../../etc', TOP), (SD, IMG, '..'), ('*', IMG, TOP), (SD, IMG + '/..', TOP),
                                 (SD, IMG, TOP + '\u2028')])
def test_ids_that_are_not_uuids_never_become_paths(mount_root, ids):
    with pytest.raises(VirtnodeError, match='UUID'):
        vm_volumes.resolve_volume(*ids)


def test_the_mount_point_itself_may_be_a_link(mount_root, tmp_path):
    # VDSM links a local storage directory into the mount root; that one link is trusted.
    os.rename(str(mount_root / 'server:_export'), str(tmp_path / 'local'))
    (mount_root / '_local').symlink_to(tmp_path / 'local')
    assert vm_volumes.resolve_volume(SD, IMG, TOP) == str(mount_root / '_local' / SD / 'images' / IMG / TOP)


@pytest.mark.parametrize('target', ['/dev/sda', '/etc/shadow', '/dev/%s/%s' % (SD, BASE), '../../etc/shadow'])
def test_a_block_domain_volume_must_be_this_hosts_link_to_its_logical_volume(mount_root, target):
    link_dir = mount_root / 'blockSD' / SD / 'images' / IMG
    link_dir.mkdir(parents=True)
    (link_dir / TOP).symlink_to(target)
    for other in os.listdir(str(mount_root)):
        if other != 'blockSD':
            os.rename(str(mount_root / other), str(mount_root.parent / other))
    with pytest.raises(VirtnodeError, match='refusing'):
        vm_volumes.resolve_volume(SD, IMG, TOP)


@pytest.mark.parametrize('illegal', [TOP, BASE])
def test_an_illegal_volume_or_chain_is_refused(mount_root, illegal):
    img_dir = image_dir(mount_root)
    write_volume(img_dir, illegal, parent=BASE if illegal == TOP else vmd.BLANK_UUID, legality='ILLEGAL')
    with pytest.raises(VirtnodeError, match='ILLEGAL') as info:
        vm_volumes.resolve_legal_volume(SD, IMG, TOP)
    assert info.value.details['volume_id'] == illegal
    assert info.value.details['field'] == 'disks'
    # What the vm module does with a disk given as a volume.
    with pytest.raises(VirtnodeError, match='ILLEGAL'):
        vm_volumes.normalize_on_host({'name': 'v', 'disks': [{'domain_id': SD, 'image_id': IMG, 'volume_id': TOP}]})
    # Finding the volume (to delete a merged-away one) still works.
    assert vm_volumes.resolve_volume(SD, IMG, TOP) == str(image_dir(mount_root) / TOP)


def rebase_header(path, backing, backing_format):
    """What another host with write access to the domain can do to a volume's qcow2 header."""
    argv = ['qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-b', backing] + (['-F', backing_format] if backing_format else [])
    subprocess.run(argv + [str(path)], check=True)


@pytest.mark.parametrize('header', ['host-file', 'relative-escape', 'protocol', 'other-volume-of-the-image',
                                    'base-as-raw', 'no-backing'])
def test_a_header_that_is_not_the_metadata_chain_is_refused(mount_root, tmp_path, header):
    img_dir = image_dir(mount_root)
    other = '51111111-2222-4333-8444-555555555555'
    write_volume(img_dir, other)
    backing, fmt = {'host-file': (str(tmp_path / 'etc' / 'shadow'), 'raw'),
                    'relative-escape': ('../../../../../etc/' + BASE, 'qcow2'),
                    'protocol': ('nbd://10.0.0.1/export', 'raw'),
                    'other-volume-of-the-image': (other, 'qcow2'),
                    'base-as-raw': (BASE, 'raw'),
                    'no-backing': ('', None)}[header]
    rebase_header(img_dir / TOP, backing, fmt)
    with pytest.raises(VirtnodeError, match='refusing storage volume %s' % TOP) as info:
        vm_volumes.resolve_legal_volume(SD, IMG, TOP)
    assert info.value.details['field'] == 'disks'
    with pytest.raises(VirtnodeError, match='refusing'):
        vm_volumes.normalize_on_host({'name': 'v', 'disks': [{'domain_id': SD, 'image_id': IMG, 'volume_id': TOP}]})
    # The volume named by its parent alone is still fine.
    assert vm_volumes.resolve_legal_volume(SD, IMG, BASE) == str(img_dir / BASE)


def test_the_vm_module_uses_a_legal_volume(mount_root):
    spec = vm_volumes.normalize_on_host({'name': 'v', 'disks': [{'domain_id': SD, 'image_id': IMG, 'volume_id': TOP}]})
    assert spec['disks'][0]['path'] == str(image_dir(mount_root) / TOP)


def test_the_checked_chain_is_named_in_the_domain_xml(mount_root):
    """libvirt gets the chain from the XML, closed by an empty backingStore: it reads no header for it."""
    from lxml import etree
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
    disk_option = {'domain_id': SD, 'image_id': IMG, 'volume_id': TOP, 'format': 'qcow2'}
    spec = vm_volumes.normalize_on_host({'name': 'v', 'disks': [disk_option]})
    assert spec['disks'][0]['backing'] == [[str(image_dir(mount_root) / BASE), 'qcow2']]
    disk = etree.fromstring(domxml.build_xml(spec)).find('devices/disk')
    assert disk.find('source').get('file') == str(image_dir(mount_root) / TOP)
    base = disk.find('backingStore')
    assert base.get('type') == 'file' and base.find('format').get('type') == 'qcow2'
    assert base.find('source').get('file') == str(image_dir(mount_root) / BASE)
    end = base.find('backingStore')
    assert end is not None and len(end) == 0 and not end.attrib


@pytest.mark.parametrize('damage', ['missing-meta', 'missing-parent-meta', 'cleared', 'loop', 'bad-parent'])
def test_a_volume_whose_chain_cannot_be_read_is_refused(mount_root, damage):
    img_dir = image_dir(mount_root)
    if damage == 'missing-meta':
        (img_dir / (TOP + '.meta')).unlink()
    elif damage == 'missing-parent-meta':
        (img_dir / (BASE + '.meta')).unlink()
    elif damage == 'cleared':
        (img_dir / (BASE + '.meta')).write_bytes(b'NONE=######\nEOF\n')
    elif damage == 'loop':
        write_volume(img_dir, BASE, parent=TOP)
    elif damage == 'bad-parent':
        text = (img_dir / (TOP + '.meta')).read_bytes().replace(BASE.encode(), b'../../../../etc/shadow')
        (img_dir / (TOP + '.meta')).write_bytes(text)
    with pytest.raises(VirtnodeError, match='refusing'):
        vm_volumes.resolve_legal_volume(SD, IMG, TOP)


class Runner:
    def __init__(self):
        self.calls = []

    def __call__(self, argv, timeout=None):  # pylint: disable=unused-argument
        self.calls.append(argv)
        return '{"loopdevices": []}' if argv[:2] == ['losetup', '--list'] else '/dev/loop5\n'


@pytest.mark.parametrize('activate', [True, False])
def test_an_illegal_volume_is_never_presented_as_a_block_device(mount_root, tmp_path, monkeypatch, activate):
    dom_dir = str(mount_root / 'server:_export' / SD)
    runner = Runner()
    backend = thin_block.LoopBackend(runner=runner, link_root=str(tmp_path / 'block'),
                                     find_domain=lambda sd, required=True: dom_dir if sd == SD else None)
    monkeypatch.setattr(thin_block, 'backend_for', lambda sd, find_domain=None: backend)
    write_volume(image_dir(mount_root), BASE, legality='ILLEGAL')
    present = vm_volumes.activate_block_volume if activate else vm_volumes.planned_block_volume
    with pytest.raises(VirtnodeError, match='ILLEGAL'):
        present(SD, IMG, TOP)
    assert not runner.calls
    assert not os.path.lexists(str(tmp_path / 'block'))
