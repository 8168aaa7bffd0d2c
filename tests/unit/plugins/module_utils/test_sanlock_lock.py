# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import time
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


class FakeSanlockException(Exception):
    def __init__(self, number, message, text=''):
        super().__init__(number, message, text)
        self.errno = number


@pytest.fixture
def fake_sanlock(monkeypatch):
    calls = []
    module = types.SimpleNamespace(SanlockException=FakeSanlockException)
    monkeypatch.setattr(sanlock_lock, 'sanlock', module)
    monkeypatch.setattr(sanlock_lock, 'HAS_SANLOCK', True)
    monkeypatch.setattr(sanlock_lock, 'SanlockException', FakeSanlockException)
    # No daemon to ask: lease files are left as they are.
    monkeypatch.setattr(sanlock_lock, 'SANLOCK_PIDFILE', '/nonexistent/sanlock.pid')
    module.calls = calls
    return module


def test_acquire_held_names_owner(fake_sanlock):
    def acquire(*args, **kwargs):
        raise FakeSanlockException(sanlock_lock.SANLK_ACQUIRE_IDLIVE, 'Sanlock resource not acquired')
    fake_sanlock.acquire = acquire
    fake_sanlock.read_resource_owners = lambda *a, **k: [{'host_id': 3}]
    with pytest.raises(VirtnodeError) as info:
        sanlock_lock.acquire('sd', 'SDM', '/p', 1048576, 5)
    assert 'held by host 3' in str(info.value)
    assert info.value.details['owner_host_id'] == 3


def test_names_are_sent_as_bytes(fake_sanlock):
    seen = {}

    def write_resource(lockspace, resource, disks, align, sector):
        seen.update(lockspace=lockspace, resource=resource, disks=disks, align=align)
    fake_sanlock.write_resource = write_resource
    sanlock_lock.write_resource('sd', 'SDM', '/leases', 1048576)
    assert seen == {'lockspace': b'sd', 'resource': b'SDM', 'disks': [('/leases', 1048576)], 'align': 1048576}


def test_add_lockspace_twice_is_not_an_error(fake_sanlock):
    def add(*args, **kwargs):
        raise FakeSanlockException(errno.EEXIST, 'Sanlock lockspace add failure')
    fake_sanlock.add_lockspace = add
    assert sanlock_lock.add_lockspace('sd', 1, '/ids') is False


def test_errno_meanings():
    assert 'live host' in sanlock_lock.meaning(sanlock_lock.SANLK_ACQUIRE_IDLIVE)
    assert 'daemon' in sanlock_lock.meaning(errno.ECONNREFUSED)
    assert sanlock_lock.meaning(errno.EIO) == 'EIO'
    err = sanlock_lock.to_error(FakeSanlockException(errno.EBUSY, 'x'), 'acquiring')
    assert str(err) == 'acquiring failed: busy: held by another host'


def test_host_id_range():
    assert sanlock_lock.check_host_id(2000) == 2000
    for bad in (0, 2001, True, '1'):
        with pytest.raises(VirtnodeError, match='1 to 2000'):
            sanlock_lock.check_host_id(bad)


def test_missing_bindings(monkeypatch):
    monkeypatch.setattr(sanlock_lock, 'HAS_SANLOCK', False)
    with pytest.raises(VirtnodeError, match='python3-sanlock'):
        sanlock_lock.lockspaces()


def test_area_is_blank_only_when_every_byte_was_read_and_is_zero(tmp_path):
    path = tmp_path / 'leases'
    path.write_bytes(b'\0' * 5000)
    assert sanlock_lock.area_is_blank(str(path), 0, 1048576)            # zeros, then past the end
    assert sanlock_lock.area_is_blank(str(path), 1048576, 1048576)      # wholly past the end
    path.write_bytes(b'\0' * 4999 + b'x')
    assert not sanlock_lock.area_is_blank(str(path), 0, 5000)            # the last byte of the area counts
    assert sanlock_lock.area_is_blank(str(path), 0, 4999)
    assert not sanlock_lock.area_is_blank(str(path), 4096, 1048576)


@pytest.mark.parametrize('kind', ['missing', 'link', 'fifo', 'directory'])
def test_area_that_cannot_be_read_is_never_blank(tmp_path, kind):
    blank = tmp_path / 'blank'
    blank.write_bytes(b'')
    path = tmp_path / 'ids'
    if kind == 'link':
        path.symlink_to(blank)
    elif kind == 'fifo':
        os.mkfifo(str(path))
    elif kind == 'directory':
        path.mkdir()
    with pytest.raises(VirtnodeError):
        sanlock_lock.area_is_blank(str(path), 0, 1048576, timeout=5)


def test_area_read_that_hangs_times_out(tmp_path, monkeypatch):
    path = tmp_path / 'ids'
    path.write_bytes(b'')
    monkeypatch.setattr(os, 'preadv', lambda *args: time.sleep(3))
    with pytest.raises(VirtnodeError, match='timed out'):
        sanlock_lock.area_is_blank(str(path), 0, 4096, timeout=0.5)


def test_inquire_waits_out_a_process_busy_with_another_command(fake_sanlock):
    # The SPM holder checks its own lease while a module asks which leases it holds: sanlock
    # answers EBUSY for that moment, which is not a lease held by another host.
    answers = [FakeSanlockException(errno.EBUSY, 'Inquire error', 'Device or resource busy')] * 3
    answers.append([{'lockspace': b'sd', 'resource': b'SDM'}])

    def inquire(**kwargs):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    fake_sanlock.inquire = inquire
    assert sanlock_lock.held_resources(pid=42) == [('sd', 'SDM')]


def test_inquire_of_a_process_that_stays_busy_says_so(fake_sanlock, monkeypatch):
    def inquire(**kwargs):
        raise FakeSanlockException(errno.EBUSY, 'Inquire error', 'Device or resource busy')
    fake_sanlock.inquire = inquire
    monkeypatch.setattr(sanlock_lock, 'INQUIRE_BUSY_WAIT', 0.2)
    with pytest.raises(VirtnodeError) as info:
        sanlock_lock.held_resources(pid=42)
    assert 'busy with another sanlock command' in str(info.value)
    assert 'held by another host' not in str(info.value)


def _daemon(tmp_path, uid, gid, groups):
    (tmp_path / 'proc' / '4242').mkdir(parents=True)
    (tmp_path / 'proc' / '4242' / 'status').write_text(
        'Name:\tsanlock\nUid:\t%d\t%d\t%d\t%d\nGid:\t%d\t%d\t%d\t%d\nGroups:\t%s\n'
        % (uid, uid, uid, uid, gid, gid, gid, gid, ' '.join(str(g) for g in groups)))
    (tmp_path / 'sanlock.pid').write_text('4242\n')
    return sanlock_lock.daemon_credentials(str(tmp_path / 'sanlock.pid'), str(tmp_path / 'proc'))


def test_daemon_credentials_of_a_packaged_sanlock(tmp_path):
    assert _daemon(tmp_path, 103, 109, [6, 109]) == (103, 109, {6, 109})


def test_a_root_or_unknown_daemon_needs_nothing(tmp_path):
    assert _daemon(tmp_path, 0, 0, []) is None
    assert sanlock_lock.daemon_credentials(str(tmp_path / 'missing.pid')) is None


def test_a_lease_file_closed_to_the_daemon_gets_its_group(tmp_path):
    lease = tmp_path / 'ids'
    lease.write_bytes(b'')
    os.chmod(lease, 0o600)
    # Root may hand the file to any group; anyone else only to a group of their own.
    gid = os.getgid() + 1 if os.getuid() == 0 else os.getgid()
    sanlock_lock.give_to_daemon(str(lease), (os.getuid() + 1, gid, {gid}))
    st = os.stat(lease)
    assert st.st_gid == gid and st.st_mode & 0o777 == 0o660


def test_an_open_lease_file_is_left_alone_and_a_directory_is_refused(tmp_path):
    lease = tmp_path / 'leases'
    lease.write_bytes(b'')
    os.chmod(lease, 0o666)
    before = os.stat(lease)
    sanlock_lock.give_to_daemon(str(lease), (65000, 65000, {65000}))
    assert os.stat(lease) == before
    os.chmod(tmp_path, 0o700)
    with pytest.raises(VirtnodeError, match='cannot read and write .* mode 0700'):
        sanlock_lock.give_to_daemon(str(tmp_path), (65000, 65000, {65000}))


def test_enodev_from_sanlock_says_the_daemon_cannot_open_the_file(fake_sanlock, tmp_path, monkeypatch):
    lease = tmp_path / 'ids'
    lease.write_bytes(b'')
    os.chmod(lease, 0o600)
    monkeypatch.setattr(sanlock_lock, 'daemon_credentials', lambda: (65000, 65000, {65000}))
    monkeypatch.setattr(sanlock_lock, 'give_to_daemon', lambda path: None)

    def write_lockspace(*args, **kwargs):
        raise FakeSanlockException(errno.ENODEV, 'Sanlock lockspace write failure', 'No such device')
    fake_sanlock.write_lockspace = write_lockspace
    with pytest.raises(VirtnodeError, match=r'ENODEV \(the sanlock daemon \(uid 65000, groups 65000\) cannot read '
                                            r'and write .*ids \(owner \d+:\d+, mode 0600\)\)'):
        sanlock_lock.write_lockspace('ls', str(lease))
