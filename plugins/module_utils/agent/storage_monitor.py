# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage domain monitoring for the node agent (VDSM's repoStats).

Every ``interval`` the monitor looks for file domains under the VDSM mount
root (``<root>/<mount>/<sdUUID>/dom_md/metadata``) and reads each domain's
metadata. A domain is valid when its metadata was read within ``timeout``,
its seal is intact, its content is a domain this collection can read and
its SDUUID matches the directory name.

Block domains this host uses have their directory in ``<root>/blockSD``
(their ``dom_md`` entries link to the domain's LVs). As VDSM's monitor does,
each round reads the first 4 KiB of the ``metadata`` LV with direct I/O (the
read delay: the LUN answers); the domain's metadata, in the VG's tags, is
read with LVM at most every BLOCK_METADATA_TTL seconds.

Each round also reports, as VDSM's repoStats and getStorageDomainStats do,
whether this host holds its host id in the domain's sanlock lockspace
(``acquired``) and the domain's free and total bytes: the file system's for a
file domain (read in the same worker as the metadata), the VG's for a block
domain (read with its tags, so at most BLOCK_METADATA_TTL old).

Storage that stops answering must never block the agent: each read (and the
listing of each mount) runs in a daemon worker thread and is waited for at
most ``timeout`` seconds. A read that is still stuck at the next round is not
started again: at most one worker per domain or mount is ever in flight, so
a hung server costs one thread per domain, not one per round. The domain is
reported invalid (code ``ETIMEDOUT``) with a growing ``delay`` until that
read returns.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock

MOUNT_ROOT = paths.MOUNT_ROOT
DEFAULT_TIMEOUT = 5.0
MAX_METADATA_BYTES = 1024 * 1024
_UUID_RE = re.compile(r'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')

# VDSM refreshes a block domain's VG metadata every 5 minutes (or when a change invalidates it).
BLOCK_METADATA_TTL = 300.0
BLOCK_READ_SIZE = 4096
_block_metadata = {}          # sd_uuid -> (read at, raw metadata, (free bytes, total bytes))
_block_metadata_lock = threading.Lock()
CODE_OK = 0
CODE_TIMEOUT = errno.ETIMEDOUT
CODE_INVALID = errno.EINVAL
CODE_IO = errno.EIO
# sanlock's lockspace flags (get_lockspaces): still joining, or leaving.
LOCKSPACE_ADDING = 0x1
LOCKSPACE_REMOVING = 0x2


class BoundedWorkers:
    """Run callables in daemon threads, at most one in flight per key."""

    def __init__(self, clock=None):
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._inflight = {}

    def submit(self, key, func):
        """Start ``func`` for ``key`` unless one is still running; return its job."""
        with self._lock:
            job = self._inflight.get(key)
            if job is not None:
                return job
            job = {'started': self._clock(), 'done': threading.Event(), 'result': None, 'error': None,
                   'elapsed': None}
            self._inflight[key] = job

        def work():
            try:
                job['result'] = func()
            except Exception as err:  # pylint: disable=broad-except
                job['error'] = err
            finally:
                job['elapsed'] = self._clock() - job['started']
                with self._lock:
                    if self._inflight.get(key) is job:
                        del self._inflight[key]
                job['done'].set()

        thread = threading.Thread(target=work, name='storage-%s' % key, daemon=True)
        thread.start()
        return job

    def inflight(self):
        """Number of workers still running."""
        with self._lock:
            return len(self._inflight)


def wait_all(jobs, timeout, clock=None):
    """Wait until every job is done or ``timeout`` seconds passed in total."""
    clock = clock or time.monotonic
    deadline = clock() + timeout
    for job in jobs:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        job['done'].wait(remaining)


def is_uuid(name):
    return bool(_UUID_RE.match(name))


def list_domains_in_mount(mount_dir):
    """``{sd_uuid: metadata_path}`` of the domains in one mount directory (for ``blockSD``: their metadata LVs)."""
    found = {}
    block = os.path.basename(os.path.normpath(mount_dir)) == sd_layout.BLOCK_SD_DIR
    for name in sorted(os.listdir(mount_dir)):
        if not _UUID_RE.match(name):
            continue
        metadata = os.path.join(mount_dir, name, 'dom_md', 'metadata')
        if os.path.isdir(os.path.join(mount_dir, name, 'dom_md')):
            found[name.lower()] = block_domain.lv_path(name.lower(), 'metadata') if block else metadata
    return found


def _read_block_metadata(path):
    """The read delay of a block domain's ``metadata`` LV (4 KiB, direct) and its metadata from the VG's tags."""
    fd = fileio.open_storage_direct(path, os.O_RDONLY)
    buf = mmap.mmap(-1, BLOCK_READ_SIZE)  # page aligned, as O_DIRECT wants
    try:
        with memoryview(buf) as view:
            os.preadv(fd, [view], 0)
    finally:
        buf.close()
        os.close(fd)
    sd_uuid = _block_sd_uuid(path)
    now = time.monotonic()
    with _block_metadata_lock:
        cached = _block_metadata.get(sd_uuid)
    if cached is not None and now - cached[0] < BLOCK_METADATA_TTL:
        return cached[1]
    domain = block_domain.BlockDomain(sd_uuid)
    vg = domain.vg()
    pairs = domain.read_raw(vg)
    with _block_metadata_lock:
        _block_metadata[sd_uuid] = (now, pairs, (vg.get('vg_free'), vg.get('vg_size')))
    return pairs


def _block_sd_uuid(path):
    return os.path.normpath(path).split('/')[2]


def read_space(path):
    """``(free bytes, total bytes)`` of the domain whose metadata is ``path``.

    A file domain's file system is asked (statvfs of the domain directory); a
    block domain's VG figures come from its last tag read (see
    :func:`_read_block_metadata`), ``(None, None)`` before the first.
    """
    if fileio.is_lv_path(path):
        with _block_metadata_lock:
            cached = _block_metadata.get(_block_sd_uuid(path))
        return cached[2] if cached is not None else (None, None)
    st = os.statvfs(os.path.dirname(os.path.dirname(path)))
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def held_lockspaces():
    """``{sd_uuid: {'host_id', 'flags'}}`` the local sanlock daemon holds; None when it cannot be asked."""
    if not sanlock_lock.HAS_SANLOCK:
        return None
    try:
        return sanlock_lock.lockspaces()
    except VirtnodeError:
        return None


def read_metadata(path):
    """Read and check one domain's metadata (``<domain>/dom_md/metadata``, or a block domain's
    ``metadata`` LV: see :func:`_read_block_metadata`); returns the raw dict.

    Through the one reader of shared storage: no link below the domain is
    followed, a FIFO or device is refused, at most MAX_METADATA_BYTES are read.
    """
    if fileio.is_lv_path(path):
        return _read_block_metadata(path)
    text = fileio.read_text(path, limit=MAX_METADATA_BYTES, root=os.path.dirname(os.path.dirname(path)))
    pairs = sd_metadata.parse(text)
    sd_metadata.DomainMetadata.from_dict(pairs)
    return pairs


def _error_code(err):
    if isinstance(err, OSError):
        return err.errno or CODE_IO
    if isinstance(err, VirtnodeError):
        return err.details.get('errno') or CODE_INVALID
    return CODE_IO


class StorageMonitor:
    """Tracks every file domain under ``mount_root``; thread-safe ``stats()``.

    ``on_change(sd_uuid, status)`` is called when a domain turns invalid
    (after having been valid or unseen) or valid again; it is how the agent
    records ``storage_domain_unreachable`` / ``storage_domain_reachable`` events.
    """

    def __init__(self, mount_root=MOUNT_ROOT, timeout=DEFAULT_TIMEOUT, on_change=None, clock=None, wall=None,
                 reader=None, lister=None, space=None, lockspaces=None):
        self.mount_root = mount_root
        self.timeout = timeout
        self.on_change = on_change
        self._clock = clock or time.monotonic
        self._wall = wall or time.time
        self._reader = reader or read_metadata
        self._lister = lister or list_domains_in_mount
        self._space = space or read_space
        self._lockspaces = lockspaces or held_lockspaces
        self._workers = BoundedWorkers(self._clock)
        self._lock = threading.Lock()
        self._known = {}      # mount dir -> {sd_uuid: path}, kept while a mount does not answer
        self._status = {}     # sd_uuid -> status dict

    def _scan(self):
        try:
            mounts = sorted(os.listdir(self.mount_root))
        except OSError:
            mounts = []
        jobs = {}
        for name in mounts:
            mount_dir = os.path.join(self.mount_root, name)
            jobs[mount_dir] = self._workers.submit('list:' + mount_dir,
                                                   lambda mount_dir=mount_dir: self._lister(mount_dir))
        wait_all(list(jobs.values()), self.timeout, self._clock)
        for mount_dir, job in jobs.items():
            if job['done'].is_set() and job['error'] is None:
                self._known[mount_dir] = job['result']
            elif job['done'].is_set() and isinstance(job['error'], FileNotFoundError):
                self._known.pop(mount_dir, None)
            # A mount that does not answer keeps the domains seen last time.
        for mount_dir in list(self._known):
            if mount_dir not in jobs:
                del self._known[mount_dir]
        domains = {}
        for mount_dir in sorted(self._known):
            domains.update(self._known[mount_dir])
        return domains

    def check(self):
        """One monitoring round; returns the new ``stats()``."""
        domains = self._scan()
        jobs = {}
        for sd_uuid, path in domains.items():
            jobs[sd_uuid] = self._workers.submit('read:' + sd_uuid, lambda path=path: self._read(path))
        wait_all(list(jobs.values()), self.timeout, self._clock)
        held = self._lockspaces()
        changes = []
        with self._lock:
            for sd_uuid in list(self._status):
                if sd_uuid not in domains:
                    del self._status[sd_uuid]
            for sd_uuid, job in jobs.items():
                previous = self._status.get(sd_uuid)
                status = self._evaluate(sd_uuid, domains[sd_uuid], job, previous)
                status.update(_lockspace_status(held, sd_uuid))
                self._status[sd_uuid] = status
                was_valid = previous['valid'] if previous else None
                if was_valid is not status['valid'] and (previous is not None or not status['valid']):
                    changes.append((sd_uuid, dict(status)))
        if self.on_change:
            for sd_uuid, status in changes:
                self.on_change(sd_uuid, status)
        return self.stats()

    def _read(self, path):
        pairs = self._reader(path)
        return pairs, self._space(path)

    def _evaluate(self, sd_uuid, path, job, previous):
        now = self._clock()
        status = {'sd_uuid': sd_uuid, 'path': path, 'checked_at': round(self._wall(), 3)}
        if not job['done'].is_set():
            waited = now - job['started']
            status.update(valid=False, code=CODE_TIMEOUT, delay=round(waited, 6),
                          error='no answer after %.1fs reading %s' % (waited, path))
        elif job['error'] is not None:
            err = job['error']
            status.update(valid=False, code=_error_code(err), delay=round(job['elapsed'], 6),
                          error=str(err) if not isinstance(err, OSError) else '%s: %s' % (path, err.strerror or err))
        else:
            pairs, (free_bytes, total_bytes) = job['result']
            status.update(free_bytes=free_bytes, total_bytes=total_bytes)
            if pairs.get(sd_metadata.SDUUID, '').lower() != sd_uuid:
                status.update(valid=False, code=CODE_INVALID, delay=round(job['elapsed'], 6),
                              error='metadata SDUUID %r does not match directory %s' % (pairs.get(sd_metadata.SDUUID), sd_uuid))
            else:
                status.update(valid=True, code=CODE_OK, delay=round(job['elapsed'], 6), error=None)
            status.update(version=_to_int(pairs.get(sd_metadata.VERSION)), type=pairs.get(sd_metadata.TYPE),
                          domain_class=pairs.get(sd_metadata.CLASS), role=pairs.get(sd_metadata.ROLE))
        for key in ('version', 'type', 'domain_class', 'role', 'free_bytes', 'total_bytes'):
            status.setdefault(key, (previous or {}).get(key))
        status['last_success'] = round(self._wall(), 3) if status['valid'] else (previous or {}).get('last_success')
        return status

    def stats(self):
        """``{sd_uuid: {valid, code, delay, error, last_check, version, acquired, free_bytes, ...}}``.

        ``last_check`` is the age in seconds of the last completed check.
        """
        now = self._wall()
        with self._lock:
            result = {}
            for sd_uuid, status in self._status.items():
                entry = dict(status)
                entry['last_check'] = round(max(0.0, now - status['checked_at']), 3)
                result[sd_uuid] = entry
            return result

    def stuck_workers(self):
        """Worker threads still waiting for storage."""
        return self._workers.inflight()


def _lockspace_status(held, sd_uuid):
    """``acquired`` (True once this host's id is held in the domain's lockspace, None when sanlock
    cannot be asked) and ``host_id`` (None when not joined)."""
    if held is None:
        return {'acquired': None, 'host_id': None}
    entry = held.get(sd_uuid)
    if entry is None:
        return {'acquired': False, 'host_id': None}
    joined = not entry.get('flags', 0) & (LOCKSPACE_ADDING | LOCKSPACE_REMOVING)
    return {'acquired': joined, 'host_id': entry.get('host_id')}


def _to_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
