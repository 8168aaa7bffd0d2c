# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SPM mailbox in motion: hosts ask the SPM to extend volumes through storage.

The message format is in ``mailbox``; this module does the I/O on the master
domain's ``dom_md/inbox`` (hosts -> SPM) and ``dom_md/outbox`` (SPM -> hosts).

Life of one request in slot *i* of host *h*'s 4 KiB mailbox:

1. the host writes the extend message into inbox slot *i* (its whole block,
   with the checksum, one aligned 4 KiB write, then ``fdatasync``) and
   "pokes" the SPM by writing block 0, which belongs to no host (host ids
   start at 1);
2. the SPM sees slot content it has not seen before, runs the extension in a
   worker thread and writes the same message with the size it reached (0 =
   failed) into outbox slot *i* of host *h*;
3. the host sees the reply, returns the size to its caller and writes the
   "clean" marker (64 x ``0x01``) into its inbox slot;
4. the SPM echoes the clean marker into the outbox slot; the host, seeing
   the echo, may use the slot again (it zeroes it with its next write), and
   the SPM zeroes its outbox slot once the inbox slot is empty.

The SPM remembers the last content it saw in every slot, so a message is
served once however often it is read. A block whose checksum is wrong (torn
or foreign write) is ignored as a whole and its remembered content kept, so a
request is neither lost nor served twice when the block is whole again.

Polling: the SPM reads every host's block (``(max_hosts + 1) x 4 KiB``, 1 MiB
for VDSM's 250 hosts) every ``interval`` seconds (2, VDSM's monitor interval,
which also serves hosts that never poke) and block 0 alone every
``event_interval`` seconds (0.1 here, VDSM checks every 0.5): a changed block 0
triggers a full read at once. Reading 4 KiB ten times a second costs nothing
measurable, and it puts the SPM's pick-up delay (about half the event interval
on average) well below the time a guest needs to fill a chunk. A host polls
its 4 KiB outbox block every ``poll_interval`` seconds (0.05) only while it
waits for a reply.

Every storage access runs in a daemon worker and is waited for at most
``io_timeout`` seconds (as in ``agent_storage``): storage that stops answering
costs a failed round or a failed request, never a hung agent.

One ``ExtendRequester`` per host and pool: it owns the host's inbox block
(it writes an empty block when it starts, like VDSM's HSM mailbox).

Latency for benchmarks: ``ExtendRequester.request`` stores the seconds from
the request write to the reply in ``last_elapsed`` (and in the bounded
``elapsed`` history); the server reports each served request's extend time
in the ``mailbox_request_served`` event (``extend_seconds``).
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import mmap
import os
import threading
import time
import uuid
import queue

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import storage_monitor as agent_storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import mailbox
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOG = logging.getLogger('virtnode.mailbox')

INBOX = 'inbox'
OUTBOX = 'outbox'
BLOCK = mailbox.MAILBOX_SIZE
EVENT_BLOCK_OFFSET = 0
POKE_CODE = b'1evnt'
# A reply names the same domain and volume as its request: version, code, two packed UUIDs.
REPLY_PREFIX = 1 + 4 + 16 + 16

DEFAULT_MAX_HOSTS = mailbox.MAX_HOST_ID   # every host id a pool accepts
DEFAULT_INTERVAL = 2.0           # full read of every host's block (VDSM: 2 s)
DEFAULT_EVENT_INTERVAL = 0.1     # block 0 check (VDSM: 0.5 s)
DEFAULT_POLL_INTERVAL = 0.05     # a waiting host reads its outbox block
DEFAULT_IO_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_WORKERS = 4
CLEAN_TIMEOUT = 60.0             # a slot whose clean marker is never echoed is reused after this

# The events the server reports through ``on_event(name, **fields)``.
EVENT_SERVED = 'mailbox_request_served'
EVENT_REFUSED = 'mailbox_request_refused'
EVENT_MALFORMED = 'mailbox_slot_malformed'
EVENT_BAD_BLOCK = 'mailbox_block_invalid'
EVENT_IO_ERROR = 'mailbox_io_error'
EVENT_SERVING = 'mailbox_serving_started'
EVENT_NOT_SERVING = 'mailbox_serving_stopped'

_DIRECT = getattr(os, 'O_DIRECT', 0)


# ------------------------------------------------------------------ block I/O

def _buffer(size):
    # Anonymous mmaps are page aligned, as O_DIRECT wants.
    return mmap.mmap(-1, size)


def _open(path, flags, direct=True):
    """Open ``<domain>/dom_md/<box>`` (or a block domain's LV) with O_DIRECT, or without where the file
    system refuses it (tmpfs).

    Nothing below the domain directory is followed if it is a link, and only a
    regular file (or the LV itself) is opened: the mailbox files are on shared storage, and a link
    planted there would have this host write requests or replies into a host file.
    """
    root = os.path.dirname(os.path.dirname(path))
    if direct and _DIRECT:
        try:
            return fileio.open_storage(path, flags | _DIRECT, root=root), True
        except VirtnodeError as err:
            if err.details.get('errno') != errno.EINVAL:
                raise
    return fileio.open_storage(path, flags, root=root), False


def read_blocks(path, offset, size):
    """Read ``size`` bytes at ``offset`` (multiples of 4 KiB) bypassing the page cache."""
    fd, direct = _open(path, os.O_RDONLY)
    try:
        buf = _buffer(size)
        try:
            got = os.preadv(fd, [buf], offset)
        except OSError as err:
            if err.errno != errno.EINVAL or not direct:
                raise
            os.close(fd)
            fd, direct = _open(path, os.O_RDONLY, direct=False)
            got = os.preadv(fd, [buf], offset)
        data = buf[:got]
        buf.close()
    finally:
        os.close(fd)
    if got != size:
        raise VirtnodeError('short read of %s: %d of %d bytes at offset %d' % (path, got, size, offset),
                            {'path': path})
    return data


def write_block(path, offset, data):
    """Write whole aligned blocks at ``offset`` bypassing the page cache, then fdatasync."""
    fd, direct = _open(path, os.O_WRONLY)
    try:
        buf = _buffer(len(data))
        buf.write(data)
        try:
            written = os.pwrite(fd, buf, offset)
        except OSError as err:
            if err.errno != errno.EINVAL or not direct:
                raise
            os.close(fd)
            fd, direct = _open(path, os.O_WRONLY, direct=False)
            written = os.pwrite(fd, buf, offset)
        buf.close()
        if written != len(data):
            raise VirtnodeError('short write to %s: %d of %d bytes' % (path, written, len(data)), {'path': path})
        os.fdatasync(fd)
    finally:
        os.close(fd)


class _BoundedIO:
    """Storage calls in daemon workers, waited for at most ``timeout`` seconds.

    At most one call per key is in flight; a call still stuck from an earlier
    round is not joined (its result would be stale): the round fails instead.
    """

    def __init__(self, timeout):
        self.timeout = timeout
        self._workers = agent_storage.BoundedWorkers()

    def run(self, key, func, what):
        started = time.monotonic()
        job = self._workers.submit(key, func)
        if job['started'] < started:
            raise VirtnodeError('%s: an earlier access has not returned yet (storage not responding?)' % what,
                                {'errno': errno.ETIMEDOUT})
        job['done'].wait(self.timeout)
        if not job['done'].is_set():
            raise VirtnodeError('%s: no answer within %ss (storage not responding?)' % (what, self.timeout),
                                {'errno': errno.ETIMEDOUT})
        err = job['error']
        if err is not None:
            if isinstance(err, VirtnodeError):
                raise err
            raise VirtnodeError('%s: %s' % (what, getattr(err, 'strerror', None) or err),
                                {'errno': getattr(err, 'errno', None)})
        return job['result']

    def stuck(self):
        return self._workers.inflight()


class _Workers:
    """A fixed number of daemon threads running submitted calls (a hung one never blocks exit)."""

    def __init__(self, count, name):
        self._queue = queue.Queue()
        for number in range(count):
            threading.Thread(target=self._work, name='%s-%d' % (name, number), daemon=True).start()

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, args, done = item
            try:
                func(*args)
            except Exception:  # pylint: disable=broad-except
                LOG.exception('mailbox worker failed')
            finally:
                done.set()

    def submit(self, func, *args):
        done = threading.Event()
        self._queue.put((func, args, done))
        return done

    def shutdown(self, count):
        for _number in range(count):
            self._queue.put(None)


def _poke_block(host_id):
    body = POKE_CODE + b'%04d' % host_id + uuid.uuid4().hex.encode('ascii')
    return body.ljust(BLOCK, b'\x00')


def _slot(block, index):
    return bytes(block[index * mailbox.MESSAGE_SIZE:(index + 1) * mailbox.MESSAGE_SIZE])


def _check_interval(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise VirtnodeError('%s must be a positive number of seconds, got %r' % (what, value), {'field': what})
    return float(value)


def mailbox_paths(master_dom_dir):
    """The master domain's inbox and outbox: files in a file domain's ``dom_md``, a block domain's LVs."""
    if sd_layout.is_block_domain_dir(master_dom_dir):
        sd_uuid = os.path.basename(os.path.normpath(master_dom_dir))
        return block_domain.lv_path(sd_uuid, INBOX), block_domain.lv_path(sd_uuid, OUTBOX)
    return os.path.join(master_dom_dir, 'dom_md', INBOX), os.path.join(master_dom_dir, 'dom_md', OUTBOX)


def find_pool_mailbox(sp_uuid):
    """``(master domain directory, this host's id)`` of a pool this host is connected to."""
    state = storage.read_pool_state(sp_uuid)
    if not state or not state.get('host_id'):
        raise VirtnodeError('this host is not connected to pool %s' % sp_uuid, {'sp_uuid': sp_uuid})
    link = os.path.join(sd_layout.pool_dir(sp_uuid), storage.MASTERSD_LINK)
    try:
        master_dir = os.readlink(link)
    except OSError:
        master_dir, _md = storage.find_master(sp_uuid)
    return master_dir, state['host_id']


# ------------------------------------------------------------------ host side

class ExtendRequester:
    """A host's side: send extend requests to the SPM and wait for the replies.

    ``request`` may be called from several threads at once; each request takes
    its own slot (up to 63 in flight). One requester per host and pool.
    """

    def __init__(self, master_dom_dir, host_id, poll_interval=DEFAULT_POLL_INTERVAL, io_timeout=DEFAULT_IO_TIMEOUT,
                 poke=True, clean_timeout=CLEAN_TIMEOUT):
        self.inbox, self.outbox = mailbox_paths(master_dom_dir)
        self.host_id = host_id
        self.offset = mailbox.mailbox_offset(host_id)
        self.poll_interval = _check_interval(poll_interval, 'poll_interval')
        self.poke = poke
        self.clean_timeout = clean_timeout
        self._io = _BoundedIO(_check_interval(io_timeout, 'io_timeout'))
        self._lock = threading.Lock()
        self._outgoing = [None] * mailbox.MESSAGES_PER_MAILBOX
        # slot -> {'state': 'pending'|'cleaning', 'baseline': outbox bytes, 'message': bytes, 'since': t}
        self._slots = {}
        self._started = False
        self._outbox_cache = (0.0, None)
        self.elapsed = collections.deque(maxlen=1000)
        self.last_elapsed = None

    # I/O --------------------------------------------------------------

    def _write_inbox(self):
        block = mailbox.build_block(self._outgoing)
        self._io.run('inbox', lambda: write_block(self.inbox, self.offset, block), 'writing %s' % self.inbox)
        if self.poke:
            poke = _poke_block(self.host_id)
            try:
                self._io.run('poke', lambda: write_block(self.inbox, EVENT_BLOCK_OFFSET, poke), 'poking the SPM')
            except VirtnodeError as err:
                # The SPM still finds the request at its next full read.
                LOG.warning('%s', err)

    def _read_outbox(self, max_age=0.0):
        read_at, block = self._outbox_cache
        if block is not None and time.monotonic() - read_at <= max_age:
            return block
        block = self._io.run('outbox', lambda: read_blocks(self.outbox, self.offset, BLOCK),
                             'reading %s' % self.outbox)
        self._outbox_cache = (time.monotonic(), block)
        return block

    def _start(self):
        """Clear this host's inbox block once, as VDSM's HSM mailbox does when it starts."""
        if not self._started:
            self._outgoing = [None] * mailbox.MESSAGES_PER_MAILBOX
            self._write_inbox()
            self._started = True

    # slots ------------------------------------------------------------

    def _reap(self, outbox):
        """Free the slots whose clean marker the SPM echoed (or that waited too long)."""
        now = time.monotonic()
        for index, entry in list(self._slots.items()):
            if entry['state'] != 'cleaning':
                continue
            kind = mailbox.decode_message(_slot(outbox, index), index).kind
            if kind in (mailbox.CLEAN, mailbox.EMPTY) or now - entry['since'] > self.clean_timeout:
                del self._slots[index]
                self._outgoing[index] = None

    def _take_slot(self, message, outbox):
        prefix = message[:REPLY_PREFIX]
        for index in range(mailbox.MESSAGES_PER_MAILBOX):
            if index in self._slots:
                continue
            baseline = _slot(outbox, index)
            if baseline[:len(prefix)] == prefix:
                continue  # a stale reply for this very volume: its twin would go unnoticed
            return index, baseline
        raise VirtnodeError('all %d mailbox slots of host id %d are in use' % (mailbox.MESSAGES_PER_MAILBOX, self.host_id),
                            {'host_id': self.host_id})

    def _finish(self, index):
        """Acknowledge a reply (or withdraw a request): the clean marker goes into the slot."""
        with self._lock:
            entry = self._slots.get(index)
            if entry is None:
                return
            entry.update(state='cleaning', since=time.monotonic())
            self._outgoing[index] = mailbox.CLEAN_MESSAGE
            try:
                self._write_inbox()
            except VirtnodeError as err:
                LOG.warning('cannot acknowledge mailbox slot %d: %s', index, err)

    # public -----------------------------------------------------------

    def request(self, sd_uuid, vol_uuid, size_mib, timeout=DEFAULT_REQUEST_TIMEOUT):
        """Ask the SPM to extend ``vol_uuid`` of ``sd_uuid`` to ``size_mib``; return the MiB it reached.

        Raises VirtnodeError when the SPM refuses (replies 0), when no reply
        comes within ``timeout`` seconds, or when the storage does not answer.
        """
        message = mailbox.encode_extend(sd_uuid, vol_uuid, size_mib)
        timeout = _check_interval(timeout, 'timeout')
        prefix = message[:REPLY_PREFIX]
        with self._lock:
            self._start()
            outbox = self._read_outbox()
            self._reap(outbox)
            index, baseline = self._take_slot(message, outbox)
            self._slots[index] = {'state': 'pending', 'baseline': baseline, 'message': message,
                                  'since': time.monotonic()}
            self._outgoing[index] = message
            try:
                self._write_inbox()
            except VirtnodeError:
                del self._slots[index]
                self._outgoing[index] = None
                raise
        started = time.monotonic()
        deadline = started + timeout
        reply = None
        try:
            while reply is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise VirtnodeError('no reply from the SPM within %ss to the request to extend volume %s of domain %s '
                                        'to %d MiB (host id %d, slot %d)'
                                        % (timeout, vol_uuid, sd_uuid, size_mib, self.host_id, index),
                                        {'host_id': self.host_id, 'slot': index, 'errno': errno.ETIMEDOUT})
                time.sleep(min(self.poll_interval, remaining))
                try:
                    with self._lock:
                        outbox = self._read_outbox(max_age=self.poll_interval / 2)
                except VirtnodeError as err:
                    LOG.warning('%s', err)
                    continue
                raw = _slot(outbox, index)
                if raw != baseline and raw[:len(prefix)] == prefix:
                    reply = mailbox.decode_message(raw, index)
        except BaseException:
            self._finish(index)  # withdraw the request
            raise
        self.last_elapsed = time.monotonic() - started
        self.elapsed.append(self.last_elapsed)
        self._finish(index)
        if reply.kind != mailbox.EXTEND:
            raise VirtnodeError('unreadable reply from the SPM for volume %s: %s' % (vol_uuid, reply.error),
                                {'host_id': self.host_id, 'slot': index})
        if reply.size_mib == 0:
            raise VirtnodeError('the SPM could not extend volume %s of domain %s to %d MiB (it replied size 0)'
                                % (vol_uuid, sd_uuid, size_mib), {'host_id': self.host_id, 'slot': index})
        return reply.size_mib

    def pending(self):
        """Slots in use: ``{slot: 'pending'|'cleaning'}``."""
        with self._lock:
            return dict((index, entry['state']) for index, entry in self._slots.items())


# ------------------------------------------------------------------ SPM side

class MailboxServer:
    """The SPM's side: serve every host's extend requests.

    ``extend_fn(sd_uuid, vol_uuid, size_mib) -> granted_mib`` runs in a pool
    of ``workers`` threads; an exception or a result below 1 is a refusal
    (reply size 0). ``on_event(name, **fields)`` receives the ``EVENT_*``
    events; each broken block, malformed slot or I/O failure is reported
    once until it changes.
    """

    def __init__(self, master_dom_dir, extend_fn, on_event=None, interval=DEFAULT_INTERVAL,
                 event_interval=DEFAULT_EVENT_INTERVAL, max_hosts=DEFAULT_MAX_HOSTS, io_timeout=DEFAULT_IO_TIMEOUT,
                 workers=DEFAULT_WORKERS, clear_outbox=True):
        self.master_dom_dir = master_dom_dir
        self.inbox, self.outbox = mailbox_paths(master_dom_dir)
        self.extend_fn = extend_fn
        self.on_event = on_event or (lambda name, **fields: None)
        self.interval = _check_interval(interval, 'interval')
        self.event_interval = _check_interval(event_interval, 'event_interval')
        if isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or not 1 <= max_hosts <= mailbox.MAX_HOST_ID:
            raise VirtnodeError('max_hosts must be an integer from 1 to %d, got %r' % (mailbox.MAX_HOST_ID, max_hosts))
        self.max_hosts = max_hosts
        self.clear_outbox = clear_outbox
        self._io = _BoundedIO(_check_interval(io_timeout, 'io_timeout'))
        self._workers = workers
        self._pool = _Workers(workers, 'mailbox-extend')
        self._seen = [bytes(BLOCK)] * (max_hosts + 1)       # last content read per host block
        self._outgoing = [bytearray(BLOCK) for _host in range(max_hosts + 1)]
        self._out_lock = threading.Lock()
        self._bad_blocks = set()
        self._io_failing = False
        self._event_block = None
        self._initialised = False
        self._stop = threading.Event()
        self._thread = None
        self.counters = {'rounds': 0, 'served': 0, 'refused': 0, 'malformed': 0, 'bad_blocks': 0, 'io_errors': 0}

    # I/O --------------------------------------------------------------

    def _io_failed(self, err):
        self.counters['io_errors'] += 1
        if not self._io_failing:
            self._io_failing = True
            LOG.warning('SPM mailbox: %s', err)
            self.on_event(EVENT_IO_ERROR, path=self.inbox, reason=str(err))

    def _write_host_block(self, host_id):
        data = bytes(self._outgoing[host_id])
        offset = host_id * BLOCK
        self._io.run('out:%d' % host_id, lambda: write_block(self.outbox, offset, data), 'writing %s' % self.outbox)

    def _initialise(self):
        if self._initialised:
            return
        if self.clear_outbox:
            # A new SPM starts with an empty outbox; requests still waiting are served again.
            size = (self.max_hosts + 1) * BLOCK
            self._io.run('out:all', lambda: write_block(self.outbox, 0, bytes(size)), 'clearing %s' % self.outbox)
        self._initialised = True

    # serving ----------------------------------------------------------

    def poked(self):
        """Read block 0 alone; True when a host poked since the last look."""
        block = self._io.run('in:event', lambda: read_blocks(self.inbox, EVENT_BLOCK_OFFSET, BLOCK),
                             'reading %s' % self.inbox)
        changed = self._event_block is not None and block != self._event_block
        self._event_block = block
        return changed

    def serve_once(self, wait=False):
        """One full read of the inbox; returns the number of requests started.

        With ``wait`` the call returns only when those requests are answered.
        """
        try:
            self._initialise()
            data = self._io.run('in:all', lambda: read_blocks(self.inbox, 0, (self.max_hosts + 1) * BLOCK),
                                'reading %s' % self.inbox)
        except VirtnodeError as err:
            self._io_failed(err)
            return 0
        self._io_failing = False
        self.counters['rounds'] += 1
        self._event_block = data[:BLOCK]
        started = []
        dirty = set()
        for host_id in range(1, self.max_hosts + 1):
            block = data[host_id * BLOCK:(host_id + 1) * BLOCK]
            if block == self._seen[host_id]:
                continue
            try:
                messages = mailbox.parse_block(block)
            except VirtnodeError as err:
                if host_id not in self._bad_blocks:
                    self._bad_blocks.add(host_id)
                    self.counters['bad_blocks'] += 1
                    LOG.warning('SPM mailbox: host id %d: %s; block ignored', host_id, err)
                    self.on_event(EVENT_BAD_BLOCK, host_id=host_id, reason=str(err))
                continue
            self._bad_blocks.discard(host_id)
            old = self._seen[host_id]
            self._seen[host_id] = block
            for message in messages:
                slot = message.slot
                if message.raw == _slot(old, slot):
                    continue
                if message.kind == mailbox.EXTEND:
                    started.append(self._submit(host_id, message))
                elif message.kind in (mailbox.CLEAN, mailbox.EMPTY):
                    # Echo the host's clean marker; zero the reply once the host emptied its slot.
                    echo = mailbox.CLEAN_MESSAGE if message.kind == mailbox.CLEAN else mailbox.EMPTY_MESSAGE
                    if self._set_reply(host_id, slot, echo):
                        dirty.add(host_id)
                else:
                    self.counters['malformed'] += 1
                    LOG.warning('SPM mailbox: host id %d slot %d: %s; ignored', host_id, slot, message.error)
                    self.on_event(EVENT_MALFORMED, host_id=host_id, slot=slot, reason=message.error)
        for host_id in sorted(dirty):
            with self._out_lock:
                try:
                    self._write_host_block(host_id)
                except VirtnodeError as err:
                    self._io_failed(err)
        if wait:
            for done in started:
                done.wait()
        return len(started)

    def _set_reply(self, host_id, slot, message):
        """Put ``message`` in the host's outgoing block; True if that changed it."""
        with self._out_lock:
            block = self._outgoing[host_id]
            start = slot * mailbox.MESSAGE_SIZE
            if block[start:start + mailbox.MESSAGE_SIZE] == message:
                return False
            block[start:start + mailbox.MESSAGE_SIZE] = message
            block[mailbox.CHECKSUM_OFFSET:] = mailbox.block_checksum(block)
            return True

    def _submit(self, host_id, message):
        return self._pool.submit(self._serve, host_id, message)

    def _serve(self, host_id, message):
        started = time.monotonic()
        fields = {'host_id': host_id, 'slot': message.slot, 'sd_uuid': message.sd_uuid, 'vol_uuid': message.vol_uuid,
                  'size_mib': message.size_mib}
        granted, reason = 0, None
        try:
            granted = self.extend_fn(message.sd_uuid, message.vol_uuid, message.size_mib)
            if isinstance(granted, bool) or not isinstance(granted, int) or granted < 1:
                reason, granted = 'the extension returned %r' % (granted,), 0
            elif granted > mailbox.MAX_EXTEND_SIZE_MIB:
                reason, granted = 'the extension returned %d MiB, more than a reply can carry' % granted, 0
        except Exception as err:  # pylint: disable=broad-except
            reason = str(err) or err.__class__.__name__
        fields['extend_seconds'] = round(time.monotonic() - started, 6)
        reply = mailbox.encode_extend(message.sd_uuid, message.vol_uuid, granted)
        with self._out_lock:
            if _slot(self._seen[host_id], message.slot) != message.raw:
                # The host withdrew or replaced the request meanwhile: this answer is for no one.
                LOG.info('SPM mailbox: host id %d slot %d changed while served; reply dropped', host_id, message.slot)
                return granted
            start = message.slot * mailbox.MESSAGE_SIZE
            block = self._outgoing[host_id]
            block[start:start + mailbox.MESSAGE_SIZE] = reply
            block[mailbox.CHECKSUM_OFFSET:] = mailbox.block_checksum(block)
            try:
                self._write_host_block(host_id)
            except VirtnodeError as err:
                self._io_failed(err)
                reason = reason or 'reply not written: %s' % err
        if reason is None:
            self.counters['served'] += 1
            LOG.info('SPM mailbox: extended volume %s of %s to %d MiB for host id %d', message.vol_uuid,
                     message.sd_uuid, granted, host_id)
            self.on_event(EVENT_SERVED, granted_mib=granted, **fields)
        else:
            self.counters['refused'] += 1
            LOG.warning('SPM mailbox: request of host id %d to extend %s refused: %s', host_id, message.vol_uuid, reason)
            self.on_event(EVENT_REFUSED, reason=reason, **fields)
        return granted

    # thread -----------------------------------------------------------

    def run(self):
        next_full = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            full = now >= next_full
            if not full:
                try:
                    full = self.poked()
                except VirtnodeError as err:
                    self._io_failed(err)
            if full:
                try:
                    self.serve_once()
                except Exception:  # pylint: disable=broad-except
                    LOG.exception('SPM mailbox round failed')
                next_full = time.monotonic() + self.interval
            self._stop.wait(self.event_interval)

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name='spm-mailbox', daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.interval + self._io.timeout)
        self._pool.shutdown(self._workers)

    def alive(self):
        return self._thread is not None and self._thread.is_alive()


# ------------------------------------------------------------------ following the SPM role

def connected_pools(state_dir=storage.POOL_STATE_DIR):
    """UUIDs of the pools this host is connected to (local files only, no storage I/O)."""
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    return sorted(name[:-len('.json')] for name in names if name.endswith('.json'))


def spm_master(sp_uuid):
    """The master domain directory when this host's SPM holder holds the role of ``sp_uuid``, else None.

    Only the holder's state file and its pid are looked at: the holder checks
    the lease itself and marks the state ``lost`` as soon as it is gone.
    """
    state = spm.read_state(sp_uuid)
    if not state or not state.get('alive') or state.get('status') != spm.SPM:
        return None
    try:
        master_dir = os.readlink(os.path.join(sd_layout.pool_dir(sp_uuid), storage.MASTERSD_LINK))
    except OSError:
        return None
    if not os.path.basename(master_dir.rstrip('/')) == state.get('sd_uuid'):
        return None
    return master_dir


class SpmMailboxes:
    """Serve the mailbox of every pool this host is SPM of; ``check()`` follows role changes.

    ``check`` (every few seconds, from the node agent) starts a
    ``MailboxServer`` when this host became SPM of a pool and stops it when it
    is no longer (or the master domain moved).
    """

    def __init__(self, extend_fn, on_event=None, pools=connected_pools, master_of=spm_master, **server_options):
        self.extend_fn = extend_fn
        self.on_event = on_event or (lambda name, **fields: None)
        self._pools = pools
        self._master_of = master_of
        self._options = server_options
        self._servers = {}   # sp_uuid -> (master_dir, MailboxServer)
        self._lock = threading.Lock()

    def check(self):
        wanted = {}
        for sp_uuid in self._pools():
            try:
                master_dir = self._master_of(sp_uuid)
            except (VirtnodeError, OSError) as err:
                LOG.warning('SPM mailbox: cannot tell whether this host is SPM of %s: %s', sp_uuid, err)
                master_dir = None
            if master_dir and os.path.exists(mailbox_paths(master_dir)[0]):
                wanted[sp_uuid] = master_dir
        with self._lock:
            for sp_uuid, (master_dir, server) in list(self._servers.items()):
                if wanted.get(sp_uuid) != master_dir:
                    server.stop(timeout=0)
                    del self._servers[sp_uuid]
                    LOG.info('SPM mailbox of pool %s: no longer served', sp_uuid)
                    self.on_event(EVENT_NOT_SERVING, sp_uuid=sp_uuid, path=master_dir)
            for sp_uuid, master_dir in sorted(wanted.items()):
                if sp_uuid in self._servers:
                    continue
                record = functools.partial(self._record, sp_uuid)
                server = MailboxServer(master_dir, self.extend_fn, on_event=record, **self._options).start()
                self._servers[sp_uuid] = (master_dir, server)
                LOG.info('SPM mailbox of pool %s: serving %s', sp_uuid, master_dir)
                self.on_event(EVENT_SERVING, sp_uuid=sp_uuid, path=master_dir)
        return self.serving()

    def _record(self, sp_uuid, name, **fields):
        self.on_event(name, sp_uuid=sp_uuid, **fields)

    def serving(self):
        """``{sp_uuid: {path, counters}}`` of the mailboxes served now."""
        with self._lock:
            return dict((sp_uuid, {'path': master_dir, 'counters': dict(server.counters)})
                        for sp_uuid, (master_dir, server) in self._servers.items())

    def stop(self):
        with self._lock:
            for _sp_uuid, (_master_dir, server) in self._servers.items():
                server.stop(timeout=0)
            self._servers = {}
