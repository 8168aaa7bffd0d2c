# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One metadata writer at a time per storage domain on this host.

Every read-check-write of a domain's metadata (``dom_md/metadata``, volume
``.meta`` files, the "no children" check before a snapshot) runs under
:func:`domain_lock`: an ``flock`` on ``/run/virtnode/locks/<sdUUID>.lock``.
The lock file is local (not on shared storage) because only the SPM host
writes a domain's metadata; between hosts the SPM lease decides who writes.

The lock is reentrant within a process (a thread that holds it may take it
again, e.g. ``update_md`` inside a longer update), and threads of one process
are serialised by an ``RLock`` because ``flock`` does not tell them apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.deadline import call_within as deadline_call
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOCK_DIR = '/run/virtnode/locks'
DEFAULT_TIMEOUT = 600.0
_POLL = 0.01
_LEASE_FORMAT_POLL = 0.1

_ENTRIES = {}
_ENTRIES_GUARD = threading.Lock()


class _Entry:
    """The per-process state of one domain's lock."""

    def __init__(self):
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = None
        self.pid = None


def lock_path(name):
    return os.path.join(LOCK_DIR, name + '.lock')


def _entry(sd_uuid):
    with _ENTRIES_GUARD:
        entry = _ENTRIES.get(sd_uuid)
        if entry is None or entry.pid != os.getpid():
            # A forked child must not believe it holds its parent's lock.
            entry = _ENTRIES[sd_uuid] = _Entry()
            entry.pid = os.getpid()
        return entry


def _flock_until(fd, deadline, poll, failed):
    """Take an exclusive flock on ``fd``, polling until ``deadline``; ``fd`` is closed and ``failed(err)`` raised if not."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                os.close(fd)
                raise failed(err) from err
        time.sleep(poll)


def _open_and_lock(path, deadline, sd_uuid):
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise VirtnodeError('cannot open the metadata lock %s: %s' % (path, err.strerror or err), {'path': path}) from err
    return _flock_until(fd, deadline, _POLL, lambda err: VirtnodeError(
        'another task is changing the metadata of storage domain %s (lock %s held); try again later' % (sd_uuid, path),
        {'path': path, 'sd_uuid': sd_uuid}))


def domain_lock(sd_uuid, timeout=DEFAULT_TIMEOUT):
    """Hold the metadata lock of storage domain ``sd_uuid`` for the ``with`` body."""
    return _locked(validate.uuid_str(sd_uuid, 'storage domain UUID'), timeout)


@contextlib.contextmanager
def _locked(sd_uuid, timeout):
    path = lock_path(sd_uuid)
    deadline = time.monotonic() + timeout
    entry = _entry(sd_uuid)
    if not entry.rlock.acquire(timeout=max(timeout, 0.001)):
        raise VirtnodeError('another task is changing the metadata of storage domain %s; try again later' % sd_uuid,
                            {'path': path, 'sd_uuid': sd_uuid})
    try:
        if entry.depth == 0:
            entry.fd = _open_and_lock(path, deadline, sd_uuid)
        entry.depth += 1
        try:
            yield
        finally:
            entry.depth -= 1
            if entry.depth == 0:
                fd, entry.fd = entry.fd, None
                os.close(fd)  # closing the descriptor releases the flock
    finally:
        entry.rlock.release()


def dir_lock(dom_dir, timeout=DEFAULT_TIMEOUT):
    """:func:`domain_lock` of the domain whose directory is ``dom_dir`` (named after its UUID)."""
    name = os.path.basename(os.path.normpath(dom_dir))
    try:
        validate.uuid_str(name, 'storage domain UUID')
    except VirtnodeError:
        # Not named after its UUID (never so in a pool): lock on its real path instead.
        name = 'path-' + hashlib.sha256(os.path.realpath(dom_dir).encode('utf-8', 'surrogateescape')).hexdigest()[:32]
    return _locked(name, timeout)


# Formatting a lease area takes well under io_timeout x a few writes; a holder slower than this is stuck.
LEASE_FORMAT_TIMEOUT = 120.0


@contextlib.contextmanager
def lease_format_lock(ids_path, timeout=LEASE_FORMAT_TIMEOUT):
    """Hold an exclusive ``flock`` on a domain's ``ids`` file for the ``with`` body, between hosts.

    A lease area is formatted only after it was read blank. Two hosts that
    both read it blank would both format it, and the later one would wipe the
    lockspace or SDM lease the earlier one already uses. The lock is on the
    shared file itself: NFS carries ``flock`` to its server, and hosts on one
    kernel (bind mounts) share its locks, so the read and the format are one
    step for every host. A dead holder's lock goes with it (its NFS state
    expires). ``ids`` is never replaced, so the lock stays on the live inode.
    """
    def acquire():
        # O_RDWR: NFS grants an exclusive flock only on a file open for writing.
        fd = fileio.open_storage(ids_path, os.O_RDWR, action='lock')
        return _flock_until(fd, time.monotonic() + timeout, _LEASE_FORMAT_POLL, lambda err: VirtnodeError(
            'cannot lock %s to format lease areas (another host formatting them for over %ss?): %s'
            % (ids_path, timeout, err.strerror or err), {'path': ids_path}))

    fd = deadline_call(timeout + 10, acquire, 'timed out locking %s (storage not responding?)' % ids_path, {'path': ids_path})
    try:
        yield
    finally:
        os.close(fd)  # releases the flock
