# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage pool manager (SPM) role, held by a small resident process.

sanlock releases a resource lease as soon as the process that acquired it
exits, and an Ansible module lives for one task. So the ``SDM`` lease of the
master domain is held by a *holder*: a detached process (double fork,
``setsid``, stdio on /dev/null) forked from the caller, which

1. registers with sanlock and acquires ``SDM`` at 1 x ALIGNMENT of the
   master domain's ``dom_md/leases`` (sanlock decides who wins a race),
2. mounts a block master's file system (the ``master`` LV, checked with
   ``e2fsck -p`` first, as VDSM does), bumps ``POOL_SPM_LVER``, writes
   ``POOL_SPM_ID`` = its host id, creates ``master/{vms,tasks,hosts}``,
3. writes its state to ``/run/virtnode/spm/<spUUID>.json`` and tells the
   caller (through a pipe) whether it became SPM,
4. every ``check_interval`` seconds (VDSM: 20) asks sanlock whether it still
   holds the lease; if not, it stops being SPM at once (state ``lost``) and exits,
5. on SIGTERM (the stop request) writes ``POOL_SPM_ID=-1``, unmounts the
   master file system, releases the lease, removes its state file and exits.

Everything runs on the stdlib and the sanlock bindings, so the node agent
can host :func:`run_holder` in a thread-free child of its own instead.
Status is never taken from files alone: the holder's pid (and its start
time, against pid reuse) must be alive and sanlock must report that the
pid holds ``SDM``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import uuid

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import detached
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

STATE_DIR = os.path.join(storage.RUN_DIR, 'spm')
LOG_DIR = '/var/log/virtnode'
DEFAULT_CHECK_INTERVAL = 20.0
MIN_CHECK_INTERVAL = 0.1
MAX_CHECK_INTERVAL = 300.0
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 60.0
TASKS_DIR = os.path.join(STATE_DIR, 'tasks')
INQUIRE_TIMEOUT = 5.0

SPM = 'SPM'
CONTEND = 'Contend'
FREE = 'Free'
LOST = 'lost'


def check_interval_value(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_CHECK_INTERVAL <= value <= MAX_CHECK_INTERVAL:
        raise VirtnodeError('check_interval must be between %s and %s seconds, got %r'
                            % (MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL, value), {'field': 'check_interval'})
    return float(value)


def state_path(sp_uuid):
    return os.path.join(STATE_DIR, validate.uuid_str(sp_uuid, 'storage pool UUID') + '.json')


def read_state(sp_uuid):
    """The holder's state file, with ``alive`` telling whether that process still runs."""
    state = fileio.read_json(state_path(sp_uuid), lenient=True)
    if state is None:
        return None
    pid = state.get('pid')
    state['alive'] = isinstance(pid, int) and pid > 0 and detached.process_start_time(pid) == state.get('start_time')
    return state


def _write_state(sp_uuid, state):
    fileio.write_json(state_path(sp_uuid), state)


def _remove_state(sp_uuid):
    try:
        os.unlink(state_path(sp_uuid))
    except FileNotFoundError:
        pass


def _log(sp_uuid, message):
    try:
        os.makedirs(LOG_DIR, exist_ok=True)
        with open(os.path.join(LOG_DIR, 'spm-%s.log' % sp_uuid), 'a') as stream:
            stream.write('%s [%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), os.getpid(), message))
    except OSError:
        pass


# ------------------------------------------------------------------ status

def status(sp_uuid):
    """Return the SPM status of the pool as seen from this host.

    ``spm_status`` is this host's role (SPM, Contend or Free); ``spm_id`` the
    host id owning the SPM lease on storage (or POOL_SPM_ID when nobody
    owns it), ``lver`` the pool's POOL_SPM_LVER.
    """
    master_dir, md = storage.find_master(sp_uuid, required=False)
    local = read_state(sp_uuid) or {}
    pool_state = storage.read_pool_state(sp_uuid) or {}
    if md is None:
        if not (local.get('alive') or pool_state):
            storage.find_master(sp_uuid)  # raises, naming what is missing
        return _status_without_storage(sp_uuid, local, pool_state)
    role = FREE
    if local.get('alive'):
        if local.get('status') == SPM and (md.sd_uuid, storage.SPM_RESOURCE) in sanlock_lock.held_resources(pid=local['pid']):
            role = SPM
        elif local.get('status') in (CONTEND, SPM):
            role = CONTEND
    owners = []
    if storage.uses_sanlock(md.sd_type):
        path, offset = storage.spm_lease(master_dir, md)
        owners = sanlock_lock.resource_owners(md.sd_uuid, storage.SPM_RESOURCE, path, offset, md.alignment, md.block_size)
    spm_id = owners[0] if owners else (md.pool_spm_id if md.pool_spm_id is not None else sdm.SPM_ID_FREE)
    if not storage.uses_sanlock(md.sd_type) and role != SPM:
        spm_id = md.pool_spm_id if md.pool_spm_id is not None else sdm.SPM_ID_FREE
    return {
        'sp_uuid': sp_uuid,
        'master_sd_uuid': md.sd_uuid,
        'spm_status': role,
        'spm_id': spm_id,
        'spm_host': storage.host_name_of(master_dir, spm_id),
        'lver': md.pool_spm_lver if md.pool_spm_lver is not None else sdm.SPM_LVER_INVALID,
        'host_id': pool_state.get('host_id'),
        'holder_pid': local.get('pid') if local.get('alive') else None,
        'last_state': local.get('status'),
    }


def _status_without_storage(sp_uuid, local, pool_state):
    """Status of a connected pool whose storage is gone from view.

    A holder still running must be reported (and so be stoppable): it may
    hold the SDM lease on storage this host no longer mounts.
    """
    alive = bool(local.get('alive'))
    holds_lease = alive and any(resource == storage.SPM_RESOURCE
                                for _ls, resource in sanlock_lock.held_resources(pid=local['pid']))
    role = (SPM if local.get('status') == SPM and holds_lease else CONTEND) if alive else FREE
    return {
        'sp_uuid': sp_uuid,
        'master_sd_uuid': local.get('sd_uuid', pool_state.get('master_sd')),
        'spm_status': role,
        'spm_id': pool_state.get('host_id', sdm.SPM_ID_FREE) if role == SPM else sdm.SPM_ID_FREE,
        'spm_host': pool_state.get('hostname') if role == SPM else None,
        'lver': local.get('lver', sdm.SPM_LVER_INVALID),
        'host_id': pool_state.get('host_id'),
        'holder_pid': local['pid'] if alive else None,
        'last_state': local.get('status'),
    }


def describe_spm(st):
    if st['spm_id'] is None or st['spm_id'] < 1:
        return 'no host is SPM of pool %s' % st['sp_uuid']
    name = st.get('spm_host')
    return 'the SPM of pool %s is host id %d%s' % (st['sp_uuid'], st['spm_id'], ' (%s)' % name if name else '')


def require_spm(sp_uuid):
    """Return the status if this host is the pool's SPM, else raise naming the SPM host."""
    st = status(sp_uuid)
    if st['spm_status'] == SPM:
        return st
    raise VirtnodeError('this operation changes storage metadata and runs only on the SPM; this host%s is not the SPM: %s'
                        % (' (host id %s)' % st['host_id'] if st['host_id'] else '', describe_spm(st)),
                        {'spm_id': st['spm_id'], 'spm_host': st['spm_host'], 'sp_uuid': sp_uuid})


# ------------------------------------------------------------------ the holder

def _holds(fd, lockspace):
    try:
        return (lockspace, storage.SPM_RESOURCE) in sanlock_lock.held_resources(fd=fd)
    except VirtnodeError:
        return False


def _stop_requests():
    """Install the holder's signal handlers; the returned list fills when a stop is requested."""
    stop = []

    def request_stop(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return stop


def _acquire_spm_lease(sp_uuid, state, report):
    """Take the SDM lease of the pool's master domain: ``(master_dir, md, path, offset, fd)``, or None
    after reporting why not."""
    master_dir = None
    try:
        master_dir, md = storage.find_master(sp_uuid)
        state['sd_uuid'] = md.sd_uuid
        _write_state(sp_uuid, state)
        path, offset = storage.spm_lease(master_dir, md)
        fd = sanlock_lock.register()
        sanlock_lock.acquire(md.sd_uuid, storage.SPM_RESOURCE, path, offset, fd, md.alignment, md.block_size)
        crash_point('spm_start.lease')
    except VirtnodeError as err:
        owner = err.details.get('owner_host_id')
        _remove_state(sp_uuid)
        message = err.message
        if owner is not None:
            name = storage.host_name_of(master_dir, owner) if master_dir else None
            message = 'cannot become SPM of pool %s: the SPM lease is held by host id %s%s' % (
                sp_uuid, owner, ' (%s)' % name if name else '')
        _log(sp_uuid, 'start failed: %s' % message)
        report({'ok': False, 'msg': message, 'owner_host_id': owner})
        return None
    return master_dir, md, path, offset, fd


def _claim_pool_metadata(master_dir, host_id, hostname):
    """Write this host as the pool's SPM with the next POOL_SPM_LVER; returns that lver."""
    with domain_lock.dir_lock(master_dir):  # read, bump, write: no other writer in between
        return _claim_locked(master_dir, host_id, hostname)


def _claim_locked(master_dir, host_id, hostname):
    # Mounted first (a block master's file system, repaired if a dead SPM left it dirty): a master that
    # cannot be mounted leaves the pool metadata as it was.
    storage.mount_master(master_dir)
    raw = storage.read_raw(master_dir)
    try:
        old_lver = int(raw.get(sdm.POOL_SPM_LVER, sdm.SPM_LVER_INVALID))
    except ValueError:
        old_lver = sdm.SPM_LVER_INVALID
    lver = max(old_lver, 0) + 1
    storage.update_md(master_dir, {sdm.POOL_SPM_ID: host_id, sdm.POOL_SPM_LVER: lver})
    storage.ensure_master_tree(master_dir)
    if storage.master_tree_on_spm_only(master_dir):
        # Other hosts cannot write there (connect_pool records only on file masters): the SPM names itself.
        storage.record_host(master_dir, host_id, hostname)
    return lver


def _hold_until_stopped(fd, lockspace, check_interval, stop):
    """Check the lease every ``check_interval`` seconds until a stop request (True) or its loss (False)."""
    next_check = time.monotonic() + check_interval
    while not stop:
        time.sleep(min(0.2, max(0.0, next_check - time.monotonic())))
        if stop or time.monotonic() < next_check:
            continue
        next_check = time.monotonic() + check_interval
        if not _holds(fd, lockspace):
            return False
    return True


def _drop_master(sp_uuid, master_dir, lazy=False):
    """Unmount a block master's file system; a busy or hung one is detached lazily. Never raises."""
    try:
        storage.unmount_master(master_dir, lazy=lazy)
        return
    except VirtnodeError as err:
        _log(sp_uuid, 'could not unmount the master file system%s: %s' % (' lazily' if lazy else '', err))
    if not lazy:
        _drop_master(sp_uuid, master_dir, lazy=True)


def _step_down(sp_uuid, master_dir, md, path, offset, fd):
    """Mark the pool free of an SPM and release the lease, if it is still ours."""
    if not _holds(fd, md.sd_uuid):
        _drop_master(sp_uuid, master_dir, lazy=True)
        return
    try:
        storage.update_md(master_dir, {sdm.POOL_SPM_ID: sdm.SPM_ID_FREE})
    except VirtnodeError as err:
        _log(sp_uuid, 'could not clear POOL_SPM_ID: %s' % err)
    # While the lease is still ours: the next SPM mounts the master only after it is released.
    _drop_master(sp_uuid, master_dir)
    try:
        sanlock_lock.release(md.sd_uuid, storage.SPM_RESOURCE, path, offset, fd)
    except VirtnodeError as err:
        _log(sp_uuid, 'release failed (the lease goes with this process): %s' % err)


def run_holder(sp_uuid, host_id, check_interval, report=None):
    """Become SPM and hold the role until SIGTERM or until the lease is lost.

    ``report`` is called once with ``{'ok': bool, 'msg': str, ...}`` when the
    outcome of the start is known. Returns the final state string.
    """
    stop = _stop_requests()
    report = report or (lambda outcome: None)
    pid = os.getpid()
    state = {'pid': pid, 'start_time': detached.process_start_time(pid), 'sp_uuid': sp_uuid, 'host_id': host_id,
             'status': CONTEND, 'check_interval': check_interval, 'since': time.time()}
    lease = _acquire_spm_lease(sp_uuid, state, report)
    if lease is None:
        return 'failed'
    master_dir, md, path, offset, fd = lease
    try:
        lver = _claim_pool_metadata(master_dir, host_id, (storage.read_pool_state(sp_uuid) or {}).get('hostname'))
        crash_point('spm_start.metadata')
    except (VirtnodeError, OSError) as err:
        _drop_master(sp_uuid, master_dir)
        sanlock_lock.release(md.sd_uuid, storage.SPM_RESOURCE, path, offset, fd)
        _remove_state(sp_uuid)
        _log(sp_uuid, 'start failed after acquiring the lease: %s' % err)
        report({'ok': False, 'msg': 'became SPM but could not write the pool metadata: %s' % err})
        return 'failed'
    state.update(status=SPM, lver=lver, since=time.time())
    _write_state(sp_uuid, state)
    _log(sp_uuid, 'SPM as host id %d, lver %d' % (host_id, lver))
    report({'ok': True, 'msg': 'SPM', 'lver': lver, 'pid': pid})

    if not _hold_until_stopped(fd, md.sd_uuid, check_interval, stop):
        # The lease is gone (lockspace lost, storage unreachable): stop being SPM at once.
        state.update(status=LOST, since=time.time())
        _write_state(sp_uuid, state)
        _drop_master(sp_uuid, master_dir, lazy=True)
        _log(sp_uuid, 'lost the SPM lease; no longer SPM')
        return LOST
    _step_down(sp_uuid, master_dir, md, path, offset, fd)
    _remove_state(sp_uuid)
    _log(sp_uuid, 'stopped')
    return 'stopped'


def _read_report(read_fd, timeout):
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VirtnodeError('the SPM holder did not report within %ss' % timeout)
        ready, _w, _x = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    data = b''.join(chunks)
    if not data:
        raise VirtnodeError('the SPM holder exited without reporting (see %s)' % LOG_DIR)
    return json.loads(data.decode('utf-8'))


def _holder_main(sp_uuid, host_id, check_interval, report_fd):
    sent = []

    def report(outcome):
        if not sent:
            sent.append(True)
            os.write(report_fd, json.dumps(outcome).encode('utf-8'))
            os.close(report_fd)

    try:
        run_holder(sp_uuid, host_id, check_interval, report)
    except BaseException as err:  # pylint: disable=broad-except
        _log(sp_uuid, 'holder crashed: %r' % (err,))
        report({'ok': False, 'msg': 'the SPM holder failed: %s' % (err,)})
        raise


def spawn_holder(sp_uuid, host_id, check_interval, timeout=DEFAULT_START_TIMEOUT):
    """Fork a detached holder and return its report (``ok``, ``msg``, ``lver``, ``pid``)."""
    read_fd, write_fd = os.pipe()
    try:
        detached.spawn_detached(_holder_main, sp_uuid, host_id, check_interval, write_fd, keep_fds=(write_fd,))
    finally:
        os.close(write_fd)
    try:
        return _read_report(read_fd, timeout)
    finally:
        os.close(read_fd)


def start(sp_uuid, check_interval=DEFAULT_CHECK_INTERVAL, timeout=DEFAULT_START_TIMEOUT):
    """Become SPM (or fail naming the current SPM); returns the holder's report."""
    pool_state = storage.read_pool_state(sp_uuid)
    if not pool_state:
        raise VirtnodeError('this host is not connected to pool %s: connect it with virtnode.kvm.storage_pool first' % sp_uuid,
                            {'sp_uuid': sp_uuid})
    host_id = pool_state['host_id']
    master_dir, md = storage.find_master(sp_uuid)
    if storage.uses_sanlock(md.sd_type):
        held = sanlock_lock.lockspaces().get(md.sd_uuid)
        if held is None or held['host_id'] != host_id:
            raise VirtnodeError('this host has not joined the lockspace of master domain %s: reconnect pool %s'
                                % (md.sd_uuid, sp_uuid), {'sp_uuid': sp_uuid})
    local = read_state(sp_uuid)
    if local and local.get('alive'):
        raise VirtnodeError('an SPM holder (pid %s) for pool %s is already running in state %s'
                            % (local['pid'], sp_uuid, local.get('status')), {'sp_uuid': sp_uuid})
    try:
        os.unlink(_stopping_path(sp_uuid))  # left by a stop that was itself interrupted
    except FileNotFoundError:
        pass
    outcome = spawn_holder(sp_uuid, host_id, check_interval, timeout)
    if not outcome.get('ok'):
        raise VirtnodeError(outcome.get('msg') or 'cannot become SPM', {'owner_host_id': outcome.get('owner_host_id')})
    return outcome


def stop(sp_uuid, timeout=DEFAULT_STOP_TIMEOUT):
    """Ask this host's holder to stop being SPM; True if one was running."""
    local = read_state(sp_uuid)
    if not local:
        return False
    if not local.get('alive'):
        _remove_state(sp_uuid)
        return False
    pid = local['pid']
    # No new task may begin, and tasks in flight finish (or are killed) while the lease is still ours.
    fileio.write_json(_stopping_path(sp_uuid), {'pid': os.getpid(), 'since': time.time()})
    try:
        _wait_for_tasks(sp_uuid, timeout / 2.0)
        _stop_holder(sp_uuid, local, pid, timeout / 2.0)
    finally:
        try:
            os.unlink(_stopping_path(sp_uuid))
        except FileNotFoundError:
            pass
    return True


def _stop_holder(sp_uuid, local, pid, timeout):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _remove_state(sp_uuid)
        return False
    deadline = time.monotonic() + timeout
    while detached.process_start_time(pid) == local.get('start_time'):
        if time.monotonic() > deadline:
            raise VirtnodeError('the SPM holder (pid %d) did not stop within %ss' % (pid, timeout), {'pid': pid})
        time.sleep(0.1)


# ------------------------------------------------------------------ SPM tasks, fenced

def _tasks_dir(sp_uuid):
    return os.path.join(TASKS_DIR, validate.uuid_str(sp_uuid, 'storage pool UUID'))


def is_stopping(sp_uuid):
    """``spm state=stopped`` is under way here: tasks must end, none may begin."""
    return os.path.exists(_stopping_path(sp_uuid))


def _stopping_path(sp_uuid):
    return os.path.join(STATE_DIR, validate.uuid_str(sp_uuid, 'storage pool UUID') + '.stopping')


def running_tasks(sp_uuid):
    """The SPM tasks of this host still running in the pool (stale records are removed)."""
    directory = _tasks_dir(sp_uuid)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        record = fileio.read_json(path, lenient=True) if name.endswith('.json') else None
        pid = record.get('pid') if isinstance(record, dict) else None
        if isinstance(pid, int) and pid > 0 and detached.process_start_time(pid) == record.get('start_time'):
            found.append(record)
        elif name.endswith('.json'):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return found


def _fenced(sp_uuid, why):
    return VirtnodeError('no longer allowed to change the storage of pool %s: %s; nothing more was written' % (sp_uuid, why),
                         {'sp_uuid': sp_uuid, 'fenced': True})


class SpmTask:
    """A metadata-changing task of this host's SPM, fenced by the SPM lease.

    Entering it (the SPM must be running here):

    * records the task under ``/run/virtnode/spm/tasks/<spUUID>/`` so that
      ``spm state=stopped`` waits for it, or kills it, before giving up the lease;
    * on sanlock domains registers this process with sanlock and acquires a
      lease of its own in the master domain's lockspace (resource ``<task
      UUID>`` in ``master/tasks/<task UUID>.lease``): when this host loses
      the lockspace, sanlock kills this process, as it kills every holder of
      a lease there, before another host can take the SDM lease.

    :meth:`check` is called before every metadata write and after each long
    qemu-img step; it raises (details ``fenced``) unless the SPM holder still
    runs, still holds ``SDM`` according to sanlock (asked with a timeout: a
    frozen daemon is a lost lease), our own task lease is still held, the
    pool is not being stopped, and storage still names this host as SPM with
    the same ``POOL_SPM_LVER`` as when the task began.
    """

    def __init__(self, sp_uuid, what):
        self.sp_uuid = sp_uuid
        self.what = what
        self.task_id = str(uuid.uuid4())
        self.lver = self.holder = self.master_dir = self.md = None
        self.fd = self.lease_path = None
        self.record = None
        self.fenced = False

    def __enter__(self):
        try:
            self._begin()
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(self, *exc):
        self._end()
        return False

    def _begin(self):
        if is_stopping(self.sp_uuid):
            raise _fenced(self.sp_uuid, 'the SPM is stopping')
        require_spm(self.sp_uuid)
        self.holder = read_state(self.sp_uuid)
        if not self.holder or not self.holder.get('alive') or self.holder.get('status') != SPM:
            raise _fenced(self.sp_uuid, 'this host is not the SPM')
        self.lver = self.holder.get('lver')
        self.master_dir, self.md = storage.find_master(self.sp_uuid)
        pid = os.getpid()
        self.record = os.path.join(_tasks_dir(self.sp_uuid), '%d.json' % pid)
        fileio.write_json(self.record, {'pid': pid, 'start_time': detached.process_start_time(pid), 'what': self.what,
                                        'task_id': self.task_id, 'since': time.time()}, dir_mode=0o700)
        if storage.uses_sanlock(self.md.sd_type):
            self._acquire_task_lease()
        self.check()

    def _acquire_task_lease(self):
        tasks = os.path.join(self.master_dir, 'master', 'tasks')
        fileio.make_dirs(tasks, 0o755, fileio.STORAGE_OWNER)
        path = os.path.join(tasks, self.task_id + '.lease')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660)
        try:
            fileio.set_owner(fd, fileio.STORAGE_OWNER)
            os.fchmod(fd, 0o660)
        finally:
            os.close(fd)
        self.lease_path = path
        sanlock_lock.write_resource(self.md.sd_uuid, self.task_id, path, 0, self.md.alignment, self.md.block_size)
        self.fd = sanlock_lock.register()
        sanlock_lock.acquire(self.md.sd_uuid, self.task_id, path, 0, self.fd, self.md.alignment, self.md.block_size)

    def check(self):
        """Raise (details ``fenced``) unless this host is still the SPM that began the task."""
        try:
            self._check()
        except VirtnodeError:
            self.fenced = True
            raise

    def _check(self):
        sp_uuid = self.sp_uuid
        if is_stopping(sp_uuid):
            raise _fenced(sp_uuid, 'the SPM is stopping')
        now = read_state(sp_uuid)
        if not now or not now.get('alive') or now.get('pid') != self.holder.get('pid'):
            raise _fenced(sp_uuid, 'the SPM holder is gone')
        if now.get('status') != SPM or now.get('lver') != self.lver:
            raise _fenced(sp_uuid, 'the SPM holder is %s (lver %s, the task began with %s)' % (now.get('status'), now.get('lver'), self.lver))
        if storage.uses_sanlock(self.md.sd_type):
            try:
                held = sanlock_lock.held_resources_within(INQUIRE_TIMEOUT, pid=now['pid'])
                own = sanlock_lock.held_resources_within(INQUIRE_TIMEOUT, fd=self.fd)
            except VirtnodeError as err:
                raise _fenced(sp_uuid, 'cannot confirm the SPM lease with sanlock (%s)' % err.message) from err
            if (self.md.sd_uuid, storage.SPM_RESOURCE) not in held:
                raise _fenced(sp_uuid, 'sanlock says the SPM lease is no longer held')
            if (self.md.sd_uuid, self.task_id) not in own:
                raise _fenced(sp_uuid, "sanlock says this task's lease is no longer held")
        try:
            md = storage.read_md(self.master_dir)
        except VirtnodeError as err:
            raise _fenced(sp_uuid, 'cannot read the master domain metadata (%s)' % err.message) from err
        if md.pool_spm_lver != self.lver or md.pool_spm_id != now.get('host_id'):
            raise _fenced(sp_uuid, 'the pool metadata names SPM host id %s with lver %s' % (md.pool_spm_id, md.pool_spm_lver))

    def _release(self):
        try:
            sanlock_lock.release(self.md.sd_uuid, self.task_id, self.lease_path, 0, self.fd)
        except VirtnodeError:
            pass  # the lease goes with this process

    def _end(self):
        if self.fd is not None:
            # A frozen daemon must not hold the task forever: sanlock drops the lease when this process exits.
            releaser = threading.Thread(target=self._release, name='sanlock release', daemon=True)
            releaser.start()
            releaser.join(INQUIRE_TIMEOUT)
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        # A fenced task leaves its lease file on storage: it may no longer write there.
        for path in ((self.record,) if self.fenced else (self.lease_path, self.record)):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.lease_path = self.record = None


def task(sp_uuid, what):
    """``with task(sp_uuid, 'volume create') as t:`` run fenced SPM work; call ``t.check()`` before each write."""
    return SpmTask(sp_uuid, what)


def _wait_for_tasks(sp_uuid, timeout):
    """Wait up to ``timeout`` for this host's SPM tasks; kill those still running. Returns their records."""
    deadline = time.monotonic() + timeout
    tasks = running_tasks(sp_uuid)
    while tasks and time.monotonic() < deadline:
        time.sleep(0.1)
        tasks = running_tasks(sp_uuid)
    for record in tasks:
        # Every task is crash-safe (its leftover is ILLEGAL and healed by a re-run); a kill is fine.
        if detached.process_start_time(record['pid']) == record.get('start_time'):
            try:
                os.kill(record['pid'], signal.SIGKILL)
            except ProcessLookupError:
                pass
    kill_deadline = time.monotonic() + 10
    while running_tasks(sp_uuid) and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    return tasks


# ------------------------------------------------------------------ the spm module

def run_module(module):
    """The work of the ``spm`` module: start, stop or report this host's SPM role in a pool."""
    sanlock_lock.require_sanlock(module)
    params = module.params
    sp_uuid = validate.uuid_str(params['pool_uuid'], 'pool_uuid')
    interval = check_interval_value(params['check_interval'])
    if not 0 < params['timeout'] <= 3600:
        raise VirtnodeError('timeout must be between 0 and 3600 seconds', {'field': 'timeout'})
    before = status(sp_uuid)
    changed = False
    if params['state'] == 'started' and before['spm_status'] != SPM:
        changed = True
        if not module.check_mode:
            start(sp_uuid, interval, params['timeout'])
        elif before['spm_id'] not in (None, -1) and before['spm_id'] != before['host_id']:
            raise VirtnodeError('cannot become SPM: %s' % describe_spm(before))
    elif params['state'] == 'stopped' and (before['spm_status'] != FREE or before['holder_pid']):
        changed = True
        if not module.check_mode:
            stop(sp_uuid, params['timeout'])
    after = status(sp_uuid)
    result = {'changed': changed, 'spm': after}
    if module._diff:
        wanted = {'started': SPM, 'stopped': FREE}.get(params['state'], before['spm_status'])
        result['diff'] = {'before': {'spm_status': before['spm_status']},
                          'after': {'spm_status': wanted if module.check_mode else after['spm_status']}}
    return result
