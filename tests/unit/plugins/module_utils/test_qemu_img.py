# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

HAS_QEMU_IMG = shutil.which('qemu-img') is not None


def test_create_argv_raw_sparse_and_preallocated():
    assert qemu_img.create_argv('/d/v', 'RAW', 1048576) == ['qemu-img', 'create', '-f', 'raw', '/d/v', '1048576']
    assert qemu_img.create_argv('/d/v', 'RAW', 1048576, preallocation='falloc')[4:6] == ['-o', 'preallocation=falloc']


def test_create_argv_snapshot_uses_relative_backing_and_format():
    argv = qemu_img.create_argv('/d/child', 'COW', None, backing='parent-uuid', backing_format='RAW')
    assert argv == ['qemu-img', 'create', '-f', 'qcow2', '-o', 'compat=1.1', '-b', 'parent-uuid', '-F', 'raw', '/d/child']


def test_create_argv_refuses_raw_with_backing_and_missing_size():
    with pytest.raises(VirtnodeError, match='COW'):
        qemu_img.create_argv('/d/v', 'RAW', None, backing='p')
    with pytest.raises(VirtnodeError, match='size'):
        qemu_img.create_argv('/d/v', 'COW')
    with pytest.raises(VirtnodeError, match='unknown volume format'):
        qemu_img.create_argv('/d/v', 'VMDK', 1)


@pytest.mark.skipif(not HAS_QEMU_IMG, reason='qemu-img not installed')
def test_create_info_resize_convert_roundtrip(tmp_path):
    base, top, copy = (str(tmp_path / name) for name in ('base', 'top', 'copy'))
    qemu_img.create(base, 'RAW', 1048576)
    qemu_img.create(top, 'COW', backing='base', backing_format='RAW')
    qemu_img.resize(top, 2 * 1048576, 'COW')
    chain = qemu_img.info(top, backing_chain=True)
    assert [layer['format'] for layer in chain] == ['qcow2', 'raw']
    assert chain[0]['virtual-size'] == 2 * 1048576
    qemu_img.convert(top, copy, 'COW', 'RAW')
    assert qemu_img.virtual_size(copy) == 2 * 1048576


@pytest.mark.skipif(not HAS_QEMU_IMG, reason='qemu-img not installed')
def test_errors_carry_qemu_img_message(tmp_path):
    with pytest.raises(VirtnodeError, match='qemu-img info failed'):
        qemu_img.info(str(tmp_path / 'missing'))


# A qcow2 header is written by whoever has the volume: a guest's own image, another host, an NFS
# client. Its backing file name must never make qemu-img open anything but a volume of the same
# image directory. These tests plant such headers with real qemu-img (-u: without opening them).
needs_qemu_img = pytest.mark.skipif(not HAS_QEMU_IMG, reason='qemu-img not installed')
SECRET = b'SECRET-HOST-FILE-' * 4096
PATTERN = b'GUEST-DATA-' * 100


def _drop_backing_format(path):
    """Turn the qcow2 backing format header extension into an unknown one, as an old qemu-img wrote it."""
    with open(path, 'r+b') as stream:
        head = stream.read(4096)
        offset = struct.unpack('>I', head[100:104])[0]
        while offset + 8 <= len(head):
            magic, length = struct.unpack('>II', head[offset:offset + 8])
            if magic == 0:
                raise AssertionError('no backing format extension in %s' % path)
            if magic == 0xE2792ACA:
                stream.seek(offset)
                stream.write(struct.pack('>I', 0x7A7A7A7A))
                return
            offset += 8 + (length + 7) // 8 * 8


def _plant(path, backing, backing_format='raw'):
    argv = ['qemu-img', 'create', '-q', '-u', '-f', 'qcow2', '-b', backing, '-F', backing_format or 'raw']
    subprocess.run(argv + [str(path), '1048576'], check=True, capture_output=True)
    if not backing_format:
        _drop_backing_format(str(path))


@pytest.fixture
def image(tmp_path, monkeypatch):
    """An image directory of a domain, a sibling image and a host file outside the domain."""
    # A qemu-img that opens a FIFO hangs: fail in seconds, not in an hour.
    monkeypatch.setattr(qemu_img, 'DEFAULT_TIMEOUT', 30)
    secret = tmp_path / 'secret'
    secret.write_bytes(SECRET)
    img = tmp_path / 'sd' / 'images' / 'img-a'
    other = tmp_path / 'sd' / 'images' / 'img-b'
    img.mkdir(parents=True)
    other.mkdir(parents=True)
    (other / 'vol-b').write_bytes(SECRET)
    base = img / 'base'
    base.write_bytes(PATTERN + b'\0' * (1048576 - len(PATTERN)))
    return {'dir': img, 'secret': secret, 'other': other / 'vol-b', 'base': base}


def _evil_backings(env):
    """(name, backing, backing_format, setup) of every kind of backing that leaves the image."""
    img = env['dir']

    def fifo():
        os.mkfifo(str(img / 'pipe'))

    def link():
        os.symlink(str(env['secret']), str(img / 'link'))

    def looped():
        _plant(img / 'loop-b', 'loop-a', 'qcow2')

    def deep():
        _plant(img / 'mid', str(env['secret']), 'raw')

    return [
        ('absolute', str(env['secret']), 'raw', None),
        ('absolute-etc', '/etc/shadow', 'raw', None),
        ('relative-up', '../../../secret', 'raw', None),
        ('sibling-image', '../img-b/vol-b', 'raw', None),
        ('dot-slash', './base', 'raw', None),
        ('json', 'json:{"driver":"file","filename":"%s"}' % env['secret'], 'raw', None),
        ('nbd', 'nbd://127.0.0.1:1/export', 'raw', None),
        ('nbd-colon', 'nbd:127.0.0.1:1', 'raw', None),
        ('file-protocol', 'file:base', 'raw', None),
        ('missing', 'nothere', 'raw', None),
        ('fifo', 'pipe', 'raw', fifo),
        ('symlink-out', 'link', 'raw', link),
        ('no-format', 'base', None, None),
        ('vmdk-format', 'base', 'vmdk', None),
        ('loop', 'loop-b', 'qcow2', looped),
        ('self', 'evil', 'qcow2', None),
        ('second-level', 'mid', 'qcow2', deep),
        ('newline', 'base\nx', 'raw', None),
        ('dotdot', '..', 'raw', None),
    ]


EVIL_IDS = [case[0] for case in _evil_backings({'dir': None, 'secret': None, 'other': None})]


def _case(env, name):
    for case_name, backing, backing_format, setup in _evil_backings(env):
        if case_name == name:
            if setup:
                setup()
            top = env['dir'] / ('loop-a' if name == 'loop' else 'evil')
            _plant(top, backing, backing_format)
            return str(top)
    raise AssertionError(name)


def _refused(call, path):
    with pytest.raises(VirtnodeError) as info:
        call()
    assert 'backing' in str(info.value)
    # The layer whose header is refused: the image itself or a volume of its chain.
    assert os.path.dirname(info.value.details.get('path', '')) == os.path.dirname(path), info.value.details
    return info.value


@needs_qemu_img
@pytest.mark.parametrize('name', EVIL_IDS)
def test_info_does_not_follow_a_backing_outside_the_image(image, name):
    top = _case(image, name)
    _refused(lambda: qemu_img.info(top, backing_chain=True), top)
    _refused(lambda: qemu_img.backing_chain(top, 'COW'), top)
    # The top alone is readable: its header is reported, nothing behind it is opened.
    assert qemu_img.info(top, volume_format='COW')['format'] == 'qcow2'


@needs_qemu_img
@pytest.mark.parametrize('name', EVIL_IDS)
@pytest.mark.parametrize('dst_format', ['RAW', 'COW'])
def test_convert_refuses_a_backing_outside_the_image(image, name, dst_format):
    top = _case(image, name)
    dst = image['dir'].parent / 'img-c' / 'copy'
    dst.parent.mkdir()
    _refused(lambda: qemu_img.convert(top, str(dst), 'COW', dst_format), top)
    assert not dst.exists()


@needs_qemu_img
@pytest.mark.parametrize('name', EVIL_IDS)
def test_snapshot_on_a_parent_with_a_bad_backing_is_refused(image, name):
    parent = _case(image, name)
    child = image['dir'] / 'child'
    _refused(lambda: qemu_img.create(str(child), 'COW', None, os.path.basename(parent), 'COW'), parent)
    assert not child.exists()


@needs_qemu_img
@pytest.mark.parametrize('name', EVIL_IDS)
def test_resize_does_not_open_the_backing(image, name):
    top = _case(image, name)
    qemu_img.resize(top, 2 * 1048576, 'COW')
    assert qemu_img.virtual_size(top) == 2 * 1048576


@needs_qemu_img
@pytest.mark.parametrize('backing', ['/etc/shadow', '../img-b/vol-b', 'nbd:127.0.0.1:1', 'json:{}', 'a/b', '', '..', '-x'])
def test_create_refuses_a_backing_name_outside_the_image(image, backing):
    child = image['dir'] / 'child'
    with pytest.raises(VirtnodeError, match='backing'):
        qemu_img.create(str(child), 'COW', 1048576, backing, 'RAW')
    assert not child.exists()


@needs_qemu_img
@pytest.mark.parametrize('dst_format', ['RAW', 'COW'])
def test_a_volume_chain_of_the_image_is_copied(image, dst_format):
    img = image['dir']
    qemu_img.create(str(img / 'mid'), 'COW', None, 'base', 'RAW')
    qemu_img.create(str(img / 'top'), 'COW', None, 'mid', 'COW')
    chain = qemu_img.backing_chain(str(img / 'top'), 'COW')
    assert chain == [(str(img / 'top'), 'qcow2'), (str(img / 'mid'), 'qcow2'), (str(img / 'base'), 'raw')]
    layers = qemu_img.info(str(img / 'top'), backing_chain=True)
    assert [layer['format'] for layer in layers] == ['qcow2', 'qcow2', 'raw']
    dst = img.parent / 'copy'
    qemu_img.convert(str(img / 'top'), str(dst), 'COW', dst_format)
    raw = img.parent / 'copy.raw'
    subprocess.run(['qemu-img', 'convert', '-f', qemu_img.qemu_format(dst_format), '-O', 'raw', str(dst), str(raw)], check=True)
    assert raw.read_bytes()[:len(PATTERN)] == PATTERN
    assert qemu_img.info(str(dst), volume_format=dst_format).get('backing-filename') is None


@needs_qemu_img
def test_a_header_rewritten_after_the_check_is_not_followed(image, monkeypatch):
    """The chain is checked, then handed to qemu-img explicitly: a header changed in between is ignored."""
    img = image['dir']
    qemu_img.create(str(img / 'top'), 'COW', None, 'base', 'RAW')
    real_chain = qemu_img.backing_chain

    def chain_then_rewrite(path, volume_format):
        chain = real_chain(path, volume_format)
        subprocess.run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', str(image['secret']), '-F', 'raw', path], check=True)
        return chain

    monkeypatch.setattr(qemu_img, 'backing_chain', chain_then_rewrite)
    dst = img.parent / 'copy'
    qemu_img.convert(str(img / 'top'), str(dst), 'COW', 'RAW')
    data = dst.read_bytes()
    assert data[:len(PATTERN)] == PATTERN and b'SECRET' not in data
