# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat
import threading

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


def test_write_creates_file_with_exact_mode(tmp_path):
    target = tmp_path / 'metadata'
    old_umask = os.umask(0o077)
    try:
        fileio.write_atomic(str(target), b'A=1\n')
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b'A=1\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o660
    assert sorted(os.listdir(tmp_path)) == ['metadata']


def test_write_replaces_existing_content(tmp_path):
    target = tmp_path / 'metadata'
    target.write_bytes(b'old content that is longer\n')
    fileio.write_atomic(str(target), b'new\n', mode=0o644)
    assert target.read_bytes() == b'new\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_overwrites_leftover_temp_file(tmp_path):
    target = tmp_path / 'metadata'
    (tmp_path / 'metadata.new').write_bytes(b'half written garbage from a crash')
    fileio.write_atomic(str(target), b'good\n')
    assert target.read_bytes() == b'good\n'
    assert not (tmp_path / 'metadata.new').exists()


def test_write_uses_vdsm_temp_name_and_syncs_before_rename(tmp_path, monkeypatch):
    target = tmp_path / 'metadata'
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append('fsync')
        real_fsync(fd)

    def replace(src, dst):
        events.append(('replace', os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    fileio.write_atomic(str(target), b'x\n')
    # File data synced, then renamed, then the directory synced.
    assert events == ['fsync', ('replace', 'metadata.new', 'metadata'), 'fsync']


@pytest.mark.parametrize('failing', ['replace', 'fsync', 'write'])
def test_crash_before_rename_leaves_target_untouched(tmp_path, monkeypatch, failing):
    target = tmp_path / 'metadata'
    target.write_bytes(b'OLD=1\n')

    def boom(*args, **kwargs):
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(VirtnodeError) as info:
        fileio.write_atomic(str(target), b'NEW=2\n')
    assert 'Input/output error' in str(info.value)
    assert info.value.details['path'] == str(target)
    assert target.read_bytes() == b'OLD=1\n'
    assert sorted(os.listdir(tmp_path)) == ['metadata']


def test_write_refuses_text(tmp_path):
    with pytest.raises(VirtnodeError, match='must be bytes'):
        fileio.write_atomic(str(tmp_path / 'x'), 'text')


def test_write_into_missing_directory_raises_virtnode_error(tmp_path):
    with pytest.raises(VirtnodeError, match='cannot write'):
        fileio.write_atomic(str(tmp_path / 'missing' / 'x'), b'')


def test_read_text(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes('DESCRIPTION=caf\u00e9\n'.encode('utf-8'))
    assert fileio.read_text(str(path)) == 'DESCRIPTION=caf\u00e9\n'
    assert fileio.read_text(str(path), timeout=5) == 'DESCRIPTION=caf\u00e9\n'


def test_read_text_errors(tmp_path):
    with pytest.raises(VirtnodeError, match='cannot read'):
        fileio.read_text(str(tmp_path / 'missing'), timeout=5)
    bad = tmp_path / 'bad'
    bad.write_bytes(b'\xff\xfe')
    with pytest.raises(VirtnodeError, match='not valid UTF-8'):
        fileio.read_text(str(bad))


def test_read_text_times_out_on_hung_storage(tmp_path, monkeypatch):
    release = threading.Event()
    real_open = open

    def hanging_open(*args, **kwargs):
        release.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr('builtins.open', hanging_open)
    try:
        with pytest.raises(VirtnodeError, match='timed out'):
            fileio.read_text(str(tmp_path / 'f'), timeout=0.1)
    finally:
        release.set()
