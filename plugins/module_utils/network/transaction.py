# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pending network transactions and the detached watcher that rolls them back.

Before a network change is applied with a connectivity check, a record of
the transaction (the snapshot to restore, the running config before and
after) is written under :data:`TRANSACTION_DIR` with state ``pending``, and
a watcher process is detached from the caller (double fork, new session,
every inherited descriptor closed). The watcher needs nobody: when the
deadline passes and the record is still ``pending`` it restores the
snapshot and marks the record ``rolled_back``. A confirmation that comes in
time marks it ``confirmed`` and the watcher exits. Both sides take an
exclusive lock on the record, so exactly one of them wins.

The watcher is a fork of the running module, so it uses code that is
already imported; it never imports anything after the fork (the module's
payload may be gone by then).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import time
import traceback

from ansible_collections.virtnode.kvm.plugins.module_utils.common.detached import process_start_time, spawn_detached
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.fileio import read_json, write_json
from ansible_collections.virtnode.kvm.plugins.module_utils.network.store import STATE_DIR

TRANSACTION_DIR = STATE_DIR + '/transactions'
POLL_INTERVAL = 0.2
KEEP_FINISHED = 20
PENDING_STATES = ('pending', 'rolling_back')


def boot_id():
    try:
        with open('/proc/sys/kernel/random/boot_id') as handle:
            return handle.read().strip()
    except OSError:
        return None


def utc_text(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


class Transactions(object):
    """Transaction records, one JSON file (plus a lock file) per transaction id."""

    def __init__(self, directory=None):
        self.directory = directory or TRANSACTION_DIR

    def path(self, txid):
        if not txid or '/' in txid or txid.startswith('.'):
            raise VirtnodeError('bad transaction id %r' % (txid,))
        return os.path.join(self.directory, txid + '.json')

    def write(self, record):
        write_json(self.path(record['id']), record, mode=0o600, dir_mode=0o700, indent=1)

    def load(self, txid):
        path = self.path(txid)
        try:
            return read_json(path)
        except VirtnodeError as err:
            raise VirtnodeError('cannot read transaction %s: %s' % (txid, err), err.details) from err

    def lock(self, txid):
        return _FileLock(self.path(txid)[:-len('.json')] + '.lock')

    def all(self):
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            if name.endswith('.json'):
                try:
                    record = self.load(name[:-len('.json')])
                except VirtnodeError:
                    continue
                if record:
                    records.append(record)
        return records

    def unfinished(self):
        return [r for r in self.all() if r.get('state') in PENDING_STATES]

    def prune(self, keep=KEEP_FINISHED):
        finished = sorted((r for r in self.all() if r.get('state') not in PENDING_STATES), key=lambda r: r.get('created', 0))
        for record in finished[:-keep] if keep else finished:
            for suffix in ('.json', '.lock'):
                try:
                    os.unlink(os.path.join(self.directory, record['id'] + suffix))
                except OSError:
                    pass


class _FileLock(object):
    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None
        return False


def watcher_alive(record):
    pid = record.get('watcher_pid')
    if not pid or record.get('boot_id') != boot_id():
        return False
    start = process_start_time(pid)
    return start is not None and start == record.get('watcher_start')


def new_record(txid, timeout, payload):
    now = time.time()
    record = {
        'id': txid,
        'state': 'pending',
        'created': now,
        'created_at': utc_text(now),
        'timeout': timeout,
        'deadline': now + timeout,
        'deadline_at': utc_text(now + timeout),
        'deadline_monotonic': time.monotonic() + timeout,
        'boot_id': boot_id(),
        'watcher_pid': None,
        'watcher_start': None,
        'result': None,
        # The module applying the change; it hands the change over (to the controller's confirmation)
        # only once it is applied. One that died before that can never be confirmed.
        'applier_pid': os.getpid(),
        'applier_start': process_start_time(os.getpid()),
        'handed_over': False,
    }
    record.update(payload)
    return record


def expire(store, txid, restore, log=None):
    """Roll the transaction back now if it is still pending. Returns the record."""
    with store.lock(txid):
        record = store.load(txid)
        if record is None or record.get('state') != 'pending':
            return record
        _mark_rolling_back(record)
        store.write(record)
        return _run_restore(store, record, restore, log)


def _mark_rolling_back(record):
    # Who rolls back is recorded, so a later run can tell a rollback in progress from one cut short by a crash.
    pid = os.getpid()
    record['state'] = 'rolling_back'
    record['rollback_started'] = time.time()
    record['rollback_pid'] = pid
    record['rollback_start'] = process_start_time(pid)


def roller_alive(record):
    """True if the process that set the record ``rolling_back`` is still running (same boot, same process)."""
    pid = record.get('rollback_pid')
    if not pid or record.get('boot_id') != boot_id():
        return False
    start = process_start_time(pid)
    return start is not None and start == record.get('rollback_start')


def resume(store, txid, restore, log=None):
    """Finish the rollback of a transaction that a crash left unfinished; returns the record.

    On the boot the transaction was made, its snapshot is restored now (a
    ``pending`` one whose watcher is gone, or a ``rolling_back`` one whose
    roller died). After a reboot the kernel state and the running config of
    the change are gone with it: the record is closed as rolled back without
    touching anything.
    """
    with store.lock(txid):
        record = store.load(txid)
        if record is None or record.get('state') not in PENDING_STATES:
            return record
        if record.get('boot_id') != boot_id():
            record['state'] = 'rolled_back'
            record['result'] = {'restored': True, 'differences': [], 'errors': [],
                                'reason': 'the host rebooted: the change was never saved and is gone with the reboot'}
            _mark_finished(record)
            store.write(record)
            return record
        if record.get('state') == 'rolling_back' and roller_alive(record):
            raise VirtnodeError('network transaction %s is being rolled back by process %s; try again once it is done'
                                % (txid, record['rollback_pid']), {'transaction': txid})
        record['rollback_interrupted'] = record.get('state') == 'rolling_back'
        _mark_rolling_back(record)
        store.write(record)
        return _run_restore(store, record, restore, log)


def _mark_finished(record):
    record['finished'] = time.time()
    record['finished_at'] = utc_text(record['finished'])


def _run_restore(store, record, restore, log):
    """Restore ``record``'s snapshot (its lock held) and store the outcome."""
    try:
        result = restore(record)
    except Exception as err:  # the watcher must record any failure, whatever it is
        result = {'restored': False, 'errors': ['%s: %s' % (type(err).__name__, err)],
                  'traceback': traceback.format_exc()}
    record['state'] = 'rolled_back' if result.get('restored') else 'rollback_failed'
    record['result'] = result
    _mark_finished(record)
    store.write(record)
    if log:
        log('transaction %s %s: %s' % (record['id'], 'rollback resumed after a crash' if record.get('rollback_interrupted')
                                       else 'not confirmed in %ss' % record['timeout'], record['state']))
    return record


def hand_over(store, txid):
    """The change is applied and returned to the controller: from now on only its confirmation or deadline counts."""
    with store.lock(txid):
        record = store.load(txid)
        if record is not None and record.get('state') == 'pending':
            record['handed_over'] = True
            store.write(record)


def orphaned(record):
    """True if the module applying ``record``'s change died before handing it over: no confirmation can come."""
    if record.get('state') != 'pending' or record.get('handed_over', True) or record.get('boot_id') != boot_id():
        return False
    start = process_start_time(record.get('applier_pid'))
    return start is None or start != record.get('applier_start')


def watch(store, txid, restore, log=None, poll=POLL_INTERVAL):
    """The watcher's loop: wait for confirmation or the deadline."""
    while True:
        record = store.load(txid)
        if record is None or record.get('state') not in PENDING_STATES:
            return record
        if time.monotonic() >= record['deadline_monotonic']:
            return expire(store, txid, restore, log)
        time.sleep(min(poll, max(0.0, record['deadline_monotonic'] - time.monotonic())))


def confirm(store, txid, on_confirm=None):
    """Mark the transaction confirmed if it is still pending; return the (updated) record.

    ``on_confirm(record)`` runs under the lock before the state changes, so
    the watcher cannot roll back in between; what it returns is stored in
    ``record['confirm_result']``.
    """
    if not os.path.exists(store.path(txid)):
        # Checked before locking, so that asking about an unknown id leaves no lock file behind.
        raise VirtnodeError('unknown network transaction %s' % txid)
    with store.lock(txid):
        record = store.load(txid)
        if record is None:
            raise VirtnodeError('unknown network transaction %s' % txid)
        if record.get('state') != 'pending':
            return record
        if on_confirm is not None:
            record['confirm_result'] = on_confirm(record)
        record['state'] = 'confirmed'
        record['finished'] = time.time()
        record['finished_at'] = utc_text(record['finished'])
        store.write(record)
    return record


def start_watcher(store, record, restore, log=None):
    """Write ``record`` and start its watcher; the record gets the watcher's pid."""
    store.write(record)
    pid = spawn_detached(_watcher_main, store, record['id'], restore, log)
    record['watcher_pid'] = pid
    deadline = time.monotonic() + 5
    start = process_start_time(pid)
    while start is None and time.monotonic() < deadline:
        time.sleep(0.01)
        start = process_start_time(pid)
    record['watcher_start'] = start
    with store.lock(record['id']):
        current = store.load(record['id'])
        if current and current.get('state') == 'pending':
            current['watcher_pid'] = pid
            current['watcher_start'] = start
            store.write(current)
    return pid


def _watcher_main(store, txid, restore, log):
    if log:
        log('watcher for transaction %s started' % txid)
    watch(store, txid, restore, log)


def take_over(store, txid):
    """The module rolls back in process: stop the watcher from acting. Returns False if it already did."""
    with store.lock(txid):
        record = store.load(txid)
        if record is None or record.get('state') != 'pending':
            return False
        _mark_rolling_back(record)
        store.write(record)
        return True


def finish(store, txid, state, result=None):
    """Mark a transaction finished by the module itself (rolled back in process)."""
    with store.lock(txid):
        record = store.load(txid)
        if record is None:
            return None
        if record.get('state') in PENDING_STATES:
            record['state'] = state
            record['result'] = result
            record['finished'] = time.time()
            record['finished_at'] = utc_text(record['finished'])
            store.write(record)
        return record
