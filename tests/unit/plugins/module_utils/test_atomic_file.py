# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat
import threading
import time

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

    def replace(src, dst, **kwargs):
        events.append(('replace', os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    fileio.write_atomic(str(target), b'x\n')
    # File data synced, then renamed, then the directory synced.
    # Each write has a temp file of its own (concurrent writers must not share VDSM's metadata.new).
    assert events[0] == 'fsync' and events[2] == 'fsync' and len(events) == 3
    assert events[1][0] == 'replace' and events[1][2] == 'metadata'
    assert events[1][1] != 'metadata.new' and fileio.is_temp_name(events[1][1])


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
    real_open = os.open

    def hanging_open(*args, **kwargs):
        release.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, 'open', hanging_open)
    try:
        with pytest.raises(VirtnodeError, match='timed out'):
            fileio.read_text(str(tmp_path / 'f'), timeout=0.1)
    finally:
        release.set()


# ------------------------------------------------------------------ shared storage is written by other hosts

def _outside(tmp_path):
    """A local file and directory another host must never make the writer touch."""
    victim_dir = tmp_path / 'etc'
    victim_dir.mkdir()
    victim = victim_dir / 'motd'
    victim.write_bytes(b'local file\n')
    dom = tmp_path / 'dom'
    (dom / 'images').mkdir(parents=True)
    return dom, victim_dir, victim


@pytest.mark.parametrize('variant', ['target', 'vdsm-temp', 'own-temp-dir', 'directory', 'dot-dot', 'dot-dot-root'])
def test_write_never_follows_links_planted_on_shared_storage(tmp_path, monkeypatch, variant):
    dom, victim_dir, victim = _outside(tmp_path)
    img = dom / 'images' / 'img'
    target = img / 'vol.meta'
    if variant == 'directory':
        # images/<img> -> /etc: the write would land in /etc.
        img.symlink_to(victim_dir)
    else:
        img.mkdir()
    if variant == 'target':
        target.symlink_to(victim)
    elif variant == 'vdsm-temp':
        (img / 'vol.meta.new').symlink_to(victim)
    elif variant == 'own-temp-dir':
        # Even a predicted temp name planted as a link is never written through (O_EXCL|O_NOFOLLOW).
        monkeypatch.setattr(fileio.secrets, 'token_hex', lambda n: 'f' * 2 * n)
        (img / ('.vol.meta.%s.tmp' % ('f' * 16))).symlink_to(victim)
    if variant == 'dot-dot':
        target = dom / 'images' / 'img' / '..' / '..' / '..' / 'etc' / 'motd'
    elif variant == 'dot-dot-root':
        target = dom / 'images' / '..' / '..' / 'etc' / 'motd'
    try:
        fileio.write_atomic(str(target), b'VOLUME=metadata\n', root=str(dom))
    except VirtnodeError as err:
        assert 'refusing' in err.message or 'cannot write' in err.message
        written = False
    else:
        written = True
    assert victim.read_bytes() == b'local file\n'
    assert sorted(os.listdir(victim_dir)) == ['motd']
    if variant == 'vdsm-temp':
        # A leftover .new (here a link) must not break the write; the link itself is gone, the file behind it kept.
        assert written and target.read_bytes() == b'VOLUME=metadata\n'
        assert not os.path.lexists(str(img / 'vol.meta.new'))
    elif variant == 'own-temp-dir':
        assert not written or target.read_bytes() == b'VOLUME=metadata\n'
    else:
        assert not written


def test_write_refuses_a_target_that_is_a_link_or_not_a_file(tmp_path):
    _dom, _victim_dir, victim = _outside(tmp_path)
    link = tmp_path / 'metadata'
    link.symlink_to(victim)
    with pytest.raises(VirtnodeError, match='symbolic link'):
        fileio.write_atomic(str(link), b'x\n')
    assert os.readlink(str(link)) == str(victim) and victim.read_bytes() == b'local file\n'
    fifo = tmp_path / 'fifo'
    os.mkfifo(str(fifo))
    with pytest.raises(VirtnodeError, match='not a regular file'):
        fileio.write_atomic(str(fifo), b'x\n')


def test_write_is_not_broken_by_a_leftover_vdsm_temp_directory(tmp_path):
    (tmp_path / 'metadata.new').mkdir()
    fileio.write_atomic(str(tmp_path / 'metadata'), b'good\n')
    assert (tmp_path / 'metadata').read_bytes() == b'good\n'


def test_each_write_has_its_own_temp_file(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((path, flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, 'open', recording_open)
    for _attempt in range(3):
        fileio.write_atomic(str(tmp_path / 'metadata'), b'x\n')
    names = [os.path.basename(path) for path, _flags in created]
    assert len(set(names)) == 3 and 'metadata.new' not in names
    assert all(fileio.is_temp_name(name) for name in names)
    assert all(flags & os.O_EXCL and flags & os.O_NOFOLLOW for _path, flags in created)
    assert sorted(os.listdir(tmp_path)) == ['metadata']


def test_concurrent_writers_never_tear_the_file(tmp_path):
    target = tmp_path / 'metadata'
    target.write_bytes(b'0' * 65536)
    contents = [bytes([ord('a') + n]) * 65536 for n in range(4)]
    torn = []
    stop = threading.Event()

    def writer(data):
        for _attempt in range(30):
            try:
                fileio.write_atomic(str(target), data)
            except VirtnodeError as err:
                torn.append(err.message)

    def reader():
        while not stop.is_set():
            data = target.read_bytes()
            if data != b'0' * 65536 and data not in contents:
                torn.append(len(data))

    threads = [threading.Thread(target=writer, args=(data,)) for data in contents]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    assert not torn
    assert sorted(os.listdir(tmp_path)) == ['metadata']


def _special(tmp_path, kind):
    path = tmp_path / 'dom' / 'dom_md' / 'metadata'
    path.parent.mkdir(parents=True)
    if kind == 'dev-zero':
        path.symlink_to('/dev/zero')
    elif kind == 'link-to-file':
        (tmp_path / 'secret').write_bytes(b'SECRET=1\n')
        path.symlink_to(tmp_path / 'secret')
    elif kind == 'fifo':
        os.mkfifo(str(path))
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'too-large':
        path.write_bytes(b'A=1\n' * 2000)
    elif kind == 'link-in-directory':
        (tmp_path / 'elsewhere').mkdir()
        (tmp_path / 'elsewhere' / 'metadata').write_bytes(b'SECRET=1\n')
        path.parent.rmdir()
        path.parent.symlink_to(tmp_path / 'elsewhere')
    return path


@pytest.mark.parametrize('kind', ['dev-zero', 'link-to-file', 'fifo', 'directory', 'too-large', 'link-in-directory'])
@pytest.mark.parametrize('timeout', [None, 5])
def test_reads_of_shared_storage_are_bounded_and_refuse_special_files(tmp_path, kind, timeout):
    path = _special(tmp_path, kind)
    with pytest.raises(VirtnodeError, match='refusing|larger than') as info:
        fileio.read_text(str(path), timeout=timeout, limit=4096, root=str(tmp_path / 'dom'))
    assert info.value.details['path'] == str(path)


def test_bounded_read_reads_at_most_limit_plus_one(tmp_path, monkeypatch):
    path = tmp_path / 'f'
    path.write_bytes(b'x' * 100)
    asked = []
    real_read = os.read

    def read(fd, size):
        asked.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, 'read', read)
    assert fileio.read_bounded(str(path), limit=100) == b'x' * 100
    with pytest.raises(VirtnodeError, match='larger than the 99 bytes'):
        fileio.read_bounded(str(path), limit=99)
    assert max(asked) <= 101


def test_stuck_reads_do_not_pile_up_threads(tmp_path, monkeypatch):
    release = threading.Event()
    real_open = os.open

    def hanging_open(*args, **kwargs):
        release.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(fileio, '_PENDING_READS', threading.BoundedSemaphore(2))
    monkeypatch.setattr(os, 'open', hanging_open)
    threads_at_start = threading.active_count()
    try:
        for _attempt in range(2):
            with pytest.raises(VirtnodeError, match='timed out'):
                fileio.read_bounded(str(tmp_path / 'f'), timeout=0.05)
        before = threading.active_count()
        with pytest.raises(VirtnodeError, match='still stuck'):
            fileio.read_bounded(str(tmp_path / 'f'), timeout=0.05)
        assert threading.active_count() == before
    finally:
        release.set()
        # The released readers finish on their own; later tests count threads.
        deadline = time.monotonic() + 5
        while threading.active_count() > threads_at_start and time.monotonic() < deadline:
            time.sleep(0.01)


def test_a_fifo_costs_no_thread_and_no_wait(tmp_path):
    fifo = tmp_path / 'metadata'
    os.mkfifo(str(fifo))
    before = threading.active_count()
    started = time.monotonic()
    for _attempt in range(20):
        with pytest.raises(VirtnodeError, match='not a regular file'):
            fileio.read_text(str(fifo), timeout=5)
    assert time.monotonic() - started < 2
    time.sleep(0.05)
    # Never more threads than before (one that an earlier test left may have ended meanwhile).
    assert threading.active_count() <= before


@pytest.mark.skipif(os.geteuid() != 0, reason='giving files to another uid needs root')
def test_write_gives_the_file_its_owner(tmp_path):
    path = tmp_path / 'metadata'
    fileio.write_atomic(str(path), b'A=1\n', 0o660, owner=fileio.STORAGE_OWNER)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (36, 36, 0o660)
    fileio.write_atomic(str(path), b'A=2\n', 0o644)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (os.geteuid(), os.getegid())


def test_an_owner_the_storage_refuses_is_left_to_the_storage(tmp_path, monkeypatch):
    """Not root, or an NFS export squashing root: the file keeps what the server gave it."""
    def refuse(fd, uid, gid):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(os, 'fchown', refuse)
    fileio.write_atomic(str(tmp_path / 'metadata'), b'A=1\n', 0o660, owner=fileio.STORAGE_OWNER)
    assert (tmp_path / 'metadata').read_bytes() == b'A=1\n'


def test_an_owner_failing_otherwise_fails_the_write(tmp_path, monkeypatch):
    def broken(fd, uid, gid):
        raise OSError(5, 'Input/output error')
    monkeypatch.setattr(os, 'fchown', broken)
    with pytest.raises(VirtnodeError, match='Input/output error'):
        fileio.write_atomic(str(tmp_path / 'metadata'), b'A=1\n', 0o660, owner=fileio.STORAGE_OWNER)
    assert not list(tmp_path.iterdir())


def test_make_dirs_gives_each_new_directory_mode_and_owner(tmp_path):
    old_umask = os.umask(0o077)
    try:
        fileio.make_dirs(str(tmp_path / 'a' / 'b' / 'c'), 0o755, fileio.STORAGE_OWNER)
        fileio.make_dirs(str(tmp_path / 'a' / 'b' / 'c'), 0o700, fileio.STORAGE_OWNER)  # exists: left alone
    finally:
        os.umask(old_umask)
    expected_owner = fileio.STORAGE_OWNER if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    for path in (tmp_path / 'a', tmp_path / 'a' / 'b', tmp_path / 'a' / 'b' / 'c'):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)) == (0o755, expected_owner), path
    assert os.stat(tmp_path).st_uid == os.geteuid()  # what existed is not touched
    (tmp_path / 'file').write_text('')
    with pytest.raises(FileExistsError):
        fileio.make_dirs(str(tmp_path / 'file'), 0o755)
