# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SPM's part of a thin volume extend, as a fenced SPM task in a process of its own.

An SPM task (``spm.task``) registers its process with sanlock and holds a
lease in the master domain's lockspace: when the host loses the lockspace,
sanlock kills the process before another host can become SPM, and every
write first checks that this host still holds the SPM lease. The agent is
long-lived and serves every pool of the host, so it never registers itself:
each extend it does as SPM (for its own VMs, or asked through the mailbox)
runs in a child process that is such a task, and writes only while this
host is the SPM.

The child is kept (one per pool, serving one request at a time over a
pipe): starting an interpreter and acquiring a sanlock lease cost about
100 ms, several times the extension itself, and a guest writing fast needs
one every few hundred milliseconds. The agent starts it as soon as it sees
this host become SPM (:func:`keep_ready`), so even the first extension
finds it ready. It checks the SPM lease before every write as a one-shot
task does, and it ends when ``spm state=stopped`` begins (which waits for
the SPM's tasks), when it finds itself fenced, when the agent closes the
pipe (the agent stops, or the host is no longer SPM), or after
``IDLE_SECONDS`` without a request.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

DEFAULT_TIMEOUT = 60.0
# A worker this long without a request ends (the agent starts another while this host is SPM).
IDLE_SECONDS = 600.0
# How often an idle worker looks for a stopping SPM.
POLL_SECONDS = 0.2
_MODULE = 'ansible_collections.virtnode.kvm.plugins.module_utils.agent.spm_extend'


def _collections_root():
    """The directory holding ``ansible_collections`` that this code was loaded from."""
    parts = os.path.abspath(__file__).split(os.sep)
    return os.sep.join(parts[:len(parts) - 1 - parts[::-1].index('ansible_collections')]) or os.sep


class _Gone(Exception):
    """The worker ended before it answered (idle exit, fenced and killed, crashed)."""


def _granted(outcome, sd_uuid, vol_uuid):
    """The size a worker's answer grants, or its failure raised."""
    if outcome.get('ok'):
        return outcome['size_mib']
    raise VirtnodeError(outcome.get('msg') or 'the SPM extend failed',
                        {'sd_uuid': sd_uuid, 'volume_uuid': vol_uuid, 'fenced': bool(outcome.get('fenced'))})


class Worker:
    """The agent's end of one pool's extend worker."""

    def __init__(self, sp_uuid, idle_seconds=IDLE_SECONDS):
        self.sp_uuid = sp_uuid
        self.idle_seconds = idle_seconds
        self.proc = None
        self._buffer = b''

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def argv(self):
        return [sys.executable, '-m', _MODULE, '--serve', self.sp_uuid, '--idle', str(self.idle_seconds)]

    def start(self, timeout):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (_collections_root(), env.get('PYTHONPATH')) if p)
        argv = self.argv()
        self._buffer = b''
        # Its stderr is the agent's (the journal): a traceback there explains an exit.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        try:
            ready = self._read(timeout)
        except _Gone as err:
            raise VirtnodeError('the SPM extend worker of pool %s exited %s before it was ready (see the agent log)'
                                % (self.sp_uuid, self.proc.returncode), {'sp_uuid': self.sp_uuid, 'fenced': False}) from err
        if not ready.get('ok'):
            self.close()
            raise VirtnodeError(ready.get('msg') or 'the SPM extend worker did not start',
                                {'sp_uuid': self.sp_uuid, 'fenced': bool(ready.get('fenced'))})

    def request(self, sd_uuid, vol_uuid, size_mib, timeout):
        line = json.dumps({'sd_uuid': sd_uuid, 'vol_uuid': vol_uuid, 'size_mib': int(size_mib)}) + '\n'
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise _Gone() from err
        return self._read(timeout)

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        out = self.proc.stdout.fileno()
        while b'\n' not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise VirtnodeError('the SPM extend worker of pool %s did not answer within %ss and was stopped'
                                    % (self.sp_uuid, timeout), {'sp_uuid': self.sp_uuid, 'fenced': False})
            if select.select([out], [], [], left)[0]:
                chunk = os.read(out, 65536)
                if not chunk:
                    self.proc.wait()
                    raise _Gone()
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b'\n', 1)
        try:
            return json.loads(line)
        except ValueError:
            return {'ok': False, 'msg': 'the SPM extend worker answered %r' % line[:200]}

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.close()

    def close(self):
        """Close the pipe (the worker ends and releases its lease) and reap it."""
        if self.proc is None:
            return
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Extenders:
    """This host's extend workers, one per pool, each serving one request at a time."""

    def __init__(self, idle_seconds=IDLE_SECONDS, pool_of=None, worker_class=Worker):
        self.idle_seconds = idle_seconds
        self._pool_of = pool_of
        self._worker_class = worker_class
        self._workers = {}
        self._locks = {}
        self._lock = threading.Lock()

    def _pool(self, sd_uuid):
        if self._pool_of is None:
            # Imported here: agent.thin imports this module.
            from ansible_collections.virtnode.kvm.plugins.module_utils.agent import thin  # pylint: disable=import-outside-toplevel
            self._pool_of = thin.pool_of_domain
        sp_uuid = self._pool_of(sd_uuid)
        if sp_uuid is None:
            raise VirtnodeError('storage domain %s is in no storage pool this host is connected to' % sd_uuid,
                                {'sd_uuid': sd_uuid, 'fenced': False})
        return sp_uuid

    def extend(self, sd_uuid, vol_uuid, size_mib, timeout=DEFAULT_TIMEOUT, sp_uuid=None):
        """Grow the volume to ``size_mib`` MiB as this host's SPM, in a fenced child; its size in MiB after.

        Raises VirtnodeError (details ``fenced``: True when this host is not, or
        no longer, the SPM).
        """
        sp_uuid = sp_uuid or self._pool(sd_uuid)
        with self._lock:
            pool_lock = self._locks.setdefault(sp_uuid, threading.Lock())
        with pool_lock:
            worker = self._workers.get(sp_uuid)
            if worker is not None and worker.alive():
                try:
                    outcome = worker.request(sd_uuid, vol_uuid, size_mib, timeout)
                except _Gone:
                    outcome = None  # ended since its last request (idle, killed)
                if outcome is not None and (outcome.get('ok') or not outcome.get('fenced')):
                    return _granted(outcome, sd_uuid, vol_uuid)
                # Gone, or fenced since it began: a new worker is a new task, if this host is SPM now.
            worker = self._replace_worker(sp_uuid, timeout)
            try:
                outcome = worker.request(sd_uuid, vol_uuid, size_mib, timeout)
            except _Gone as err:
                raise VirtnodeError('the SPM extend worker of pool %s exited %s without an answer (see the agent log)'
                                    % (sp_uuid, worker.proc and worker.proc.returncode),
                                    {'sd_uuid': sd_uuid, 'volume_uuid': vol_uuid, 'fenced': False}) from err
            return _granted(outcome, sd_uuid, vol_uuid)

    def _replace_worker(self, sp_uuid, timeout):
        """A newly started worker for the pool in place of the old one; the caller holds the pool's lock."""
        old = self._workers.get(sp_uuid)
        if old is not None:
            old.close()
        worker = self._workers[sp_uuid] = self._worker_class(sp_uuid, self.idle_seconds)
        worker.start(timeout)
        return worker

    def keep_ready(self, sp_uuids, timeout=DEFAULT_TIMEOUT):
        """A running worker for each pool of ``sp_uuids`` (those this host is SPM of); none for the others.

        Returns ``{sp_uuid: error message}`` for the workers that could not start.
        """
        wanted = set(sp_uuids)
        with self._lock:
            for sp_uuid in wanted:
                self._locks.setdefault(sp_uuid, threading.Lock())
            locks = dict(self._locks)
        failed = {}
        for sp_uuid, pool_lock in sorted(locks.items()):
            with pool_lock:
                worker = self._workers.get(sp_uuid)
                if sp_uuid not in wanted:
                    if worker is not None:
                        worker.close()
                        del self._workers[sp_uuid]
                    continue
                if worker is not None and worker.alive():
                    continue
                try:
                    self._replace_worker(sp_uuid, timeout)
                except VirtnodeError as err:
                    failed[sp_uuid] = err.message
        return failed

    def close(self):
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.close()


_EXTENDERS = Extenders()


def extend(sd_uuid, vol_uuid, size_mib, timeout=DEFAULT_TIMEOUT):
    """Grow a volume as this host's SPM through this process's workers (see :class:`Extenders`)."""
    return _EXTENDERS.extend(sd_uuid, vol_uuid, size_mib, timeout=timeout)


def keep_ready(sp_uuids, timeout=DEFAULT_TIMEOUT):
    """Workers ready for the pools this host is SPM of (see :meth:`Extenders.keep_ready`)."""
    return _EXTENDERS.keep_ready(sp_uuids, timeout=timeout)


def close():
    """End this process's workers (the agent stops)."""
    _EXTENDERS.close()


# ------------------------------------------------------------------ the worker process

def _reply(out_fd, outcome):
    os.write(out_fd, (json.dumps(outcome) + '\n').encode())


def _failure(err):
    return {'ok': False, 'msg': getattr(err, 'message', str(err)),
            'fenced': bool(getattr(err, 'details', {}).get('fenced'))}


def _lines(fd, idle_seconds, stop):
    """Request lines from ``fd`` until EOF, ``idle_seconds`` without one, or ``stop()``."""
    buffer = b''
    idle_since = time.monotonic()
    while True:
        while b'\n' in buffer:
            line, buffer = buffer.split(b'\n', 1)
            yield line
            idle_since = time.monotonic()
        if stop() or time.monotonic() - idle_since > idle_seconds:
            return
        if select.select([fd], [], [], POLL_SECONDS)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buffer += chunk


class _DomainDirs:
    """Where this worker found each domain: a pool's domains do not move while it is connected.

    A full look-up scans every mount (each read bounded by a timeout) and,
    for block domains, runs LVM: several times the cost of the extension.
    A directory that is gone is looked up again.
    """

    def __init__(self, find_domain):
        self._find = find_domain
        self._dirs = {}

    def __call__(self, sd_uuid, required=True):
        found = self._dirs.get(sd_uuid)
        if found is None or not os.path.isdir(found):
            found = self._find(sd_uuid, required=required)
            if found:
                self._dirs[sd_uuid] = found
        return found


def serve(sp_uuid, idle_seconds=IDLE_SECONDS, in_fd=0, out_fd=1):
    """The worker: one SPM task for as long as requests come; one JSON line out per line in."""
    # Imported here: the agent's parent process needs none of this to start a child.
    # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
    find_domain = _DomainDirs(storage.find_domain)
    backends = {}
    with spm.task(sp_uuid, 'volume extends') as task:
        domains = set(storage.pool_domains(task.md)) | {task.md.sd_uuid}
        _reply(out_fd, {'ok': True, 'ready': True, 'pid': os.getpid()})
        for line in _lines(in_fd, idle_seconds, lambda: spm.is_stopping(sp_uuid)):
            try:
                request = json.loads(line)
                sd_uuid, vol_uuid, size_mib = request['sd_uuid'], request['vol_uuid'], request['size_mib']
                if sd_uuid not in domains:
                    domains = set(storage.pool_domains(storage.read_md(task.master_dir))) | {task.md.sd_uuid}
                if sd_uuid not in domains:
                    raise VirtnodeError('storage domain %s is not in storage pool %s' % (sd_uuid, sp_uuid))
                backend = backends.get(sd_uuid) or backends.setdefault(
                    sd_uuid, thin_block.backend_for(sd_uuid, find_domain=find_domain))
                size = thin_block.extend_volume_on_spm(sd_uuid, vol_uuid, size_mib, backend=backend, check=task.check)
                outcome = {'ok': True, 'size_mib': size}
            except (VirtnodeError, ValueError, KeyError, TypeError) as err:
                outcome = _failure(err)
            _reply(out_fd, outcome)
            if outcome.get('fenced'):
                return


def main(argv):
    try:
        if len(argv) not in (2, 4) or argv[0] != '--serve' or (len(argv) == 4 and argv[2] != '--idle'):
            raise VirtnodeError('usage: spm_extend --serve SP_UUID [--idle SECONDS]')
        serve(argv[1], float(argv[3]) if len(argv) == 4 else IDLE_SECONDS)
    except (VirtnodeError, ValueError) as err:
        # Before the task began (not SPM, no pool): the agent reads this as the worker's answer.
        _reply(1, _failure(err))
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
