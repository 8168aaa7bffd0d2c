# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import shutil

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
