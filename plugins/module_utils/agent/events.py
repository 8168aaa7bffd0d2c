# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's event log: an append-only JSON-lines file with a cursor.

Every line is one JSON object with at least ``seq`` (a strictly increasing
integer, the cursor), ``time`` (epoch seconds) and ``event`` (what happened).
VM events carry ``vm``, ``uuid`` and ``reason``; storage events carry
``sd_uuid``. A reader asks for everything after the last ``seq`` it saw.

When the file grows past ``max_bytes`` it is renamed to ``<file>.1`` (one
old generation is kept) and a new file is started; ``seq`` keeps counting,
so a reader that falls too far behind sees a gap (``gap: true``) instead of
events silently repeating or going missing.

The ``virtnode.kvm.event_info`` module reads the file directly, so events are
readable whether or not the agent runs.
"""

from __future__ import annotations

import json
import os
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

EVENTS_FILE = '/var/lib/virtnode/events.jsonl'
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
_TAIL_BYTES = 65536

# libvirt's virDomainEventType and, per type, the detail names (stable ABI).
LIFECYCLE_EVENTS = (
    ('defined', ('added', 'updated', 'renamed', 'from_snapshot')),
    ('undefined', ('removed', 'renamed')),
    ('started', ('booted', 'migrated', 'restored', 'from_snapshot', 'wakeup')),
    ('paused', ('paused', 'migrated', 'ioerror', 'watchdog', 'restored', 'from_snapshot', 'api_error',
                'postcopy', 'postcopy_failed')),
    ('resumed', ('unpaused', 'migrated', 'from_snapshot', 'postcopy', 'postcopy_failed')),
    ('stopped', ('shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from_snapshot')),
    ('shutdown', ('finished', 'guest', 'host')),
    ('pmsuspended', ('memory', 'disk')),
    ('crashed', ('panicked', 'crashloaded')),
)
_STARTED, _PAUSED, _RESUMED, _STOPPED = 2, 3, 4, 5
_DETAIL_MIGRATED = 1
_STOPPED_MIGRATED = 3


def lifecycle_event(event, detail):
    """``(event_name, reason, extra_fields)`` for a libvirt lifecycle (event, detail) pair.

    A migration is reported as ``migrated`` with ``direction``: ``out`` on the
    source when the VM stopped there, ``in`` on the destination when it
    resumed there. Unknown codes give ``unknown_<n>`` names rather than errors.
    """
    if 0 <= event < len(LIFECYCLE_EVENTS):
        name, details = LIFECYCLE_EVENTS[event]
    else:
        name, details = 'unknown_%d' % event, ()
    reason = details[detail] if 0 <= detail < len(details) else 'unknown_%d' % detail
    if event == _STOPPED and detail == _STOPPED_MIGRATED:
        return 'migrated', reason, {'direction': 'out'}
    if event == _RESUMED and detail == _DETAIL_MIGRATED:
        return 'migrated', reason, {'direction': 'in'}
    return name, reason, {}


def _parse_line(line):
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get('seq'), int):
        return None
    return record


def _last_seq_of(path):
    """Highest ``seq`` in the last complete lines of ``path`` (0 when none)."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return 0
    best = 0
    for raw in tail.splitlines():
        record = _parse_line(raw.decode('utf-8', 'replace'))
        if record is not None:
            best = max(best, record['seq'])
    return best


def last_seq(path=EVENTS_FILE):
    """The cursor of the newest event kept at ``path`` (or its rotated copy)."""
    return _last_seq_of(path) or _last_seq_of(path + '.1')


class EventLog:
    """Thread-safe writer of the event log; one per agent process."""

    def __init__(self, path=EVENTS_FILE, max_bytes=DEFAULT_MAX_BYTES, clock=None):
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock or time.time
        self._lock = threading.Lock()
        directory = os.path.dirname(path)
        try:
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as err:
            raise VirtnodeError('cannot create %s: %s' % (directory, err.strerror or err), {'path': directory}) from err
        self._seq = last_seq(path)

    @property
    def seq(self):
        """Cursor of the last event written."""
        return self._seq

    def append(self, event, **fields):
        """Write one event and return the record written (with its ``seq``)."""
        with self._lock:
            record = dict(fields)
            record['seq'] = self._seq + 1
            record['time'] = round(self._clock(), 3)
            record['event'] = event
            line = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
            try:
                self._rotate_if_needed(len(line))
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o640)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise VirtnodeError('cannot append to %s: %s' % (self.path, err.strerror or err),
                                    {'path': self.path, 'errno': err.errno}) from err
            self._seq = record['seq']
            return record

    def _rotate_if_needed(self, extra):
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return
        if size and size + extra > self.max_bytes:
            os.replace(self.path, self.path + '.1')


def _read_records(path):
    try:
        with open(path, 'rb') as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err), {'path': path, 'errno': err.errno}) from err
    records = []
    for raw in data.splitlines():
        record = _parse_line(raw.decode('utf-8', 'replace'))
        if record is not None:
            records.append(record)
    return records


def read_events(path=EVENTS_FILE, since=0, limit=None, events=None):
    """Events with ``seq > since``, oldest first.

    Returns ``{'events': [...], 'cursor': n, 'more': bool, 'gap': bool}``:
    ``cursor`` is what to pass as ``since`` next time (the last ``seq``
    returned, else ``since`` unchanged, or the newest ``seq`` when ``since``
    is ahead of the log, e.g. after it was wiped); ``more`` says ``limit`` cut
    the answer short; ``gap`` says events after ``since`` were already
    rotated away. ``events`` optionally keeps only the named event kinds
    (the cursor still advances past the others).
    """
    if since is None or since < 0:
        since = 0
    wanted = set(events) if events else None
    records = _read_records(path + '.1') + _read_records(path)
    records.sort(key=lambda record: record['seq'])
    newest = records[-1]['seq'] if records else 0
    oldest = records[0]['seq'] if records else None
    gap = oldest is not None and since < oldest - 1
    result = []
    cursor = since
    more = False
    for record in records:
        if record['seq'] <= since:
            continue
        if limit is not None and len(result) >= limit:
            more = True
            break
        cursor = record['seq']
        if wanted is None or record.get('event') in wanted:
            result.append(record)
    if since > newest:
        cursor = newest
    return {'events': result, 'cursor': cursor, 'more': more, 'gap': gap}


def event_info(module):
    """The event_info module's work: the events its options ask for, and the cursor to go on from."""
    params = module.params
    if params['limit'] < 1:
        raise VirtnodeError('limit must be at least 1, got %d' % params['limit'], {'field': 'limit'})
    result = read_events(params['path'], params['since'], params['limit'], params['events'])
    return dict(result, changed=False)
