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
