# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's local query socket (the protocol is described in ``agent_client``).

Both of the agent's listeners (this socket and the metrics endpoint) are
:class:`BoundedThreadingMixIn` servers: one thread per connection, at most
``max_connections`` of them (more are answered "busy" and closed at once), each
connection closed ``connection_timeout`` seconds after it was accepted whatever
the client does, and closing the server hangs up on the clients still
connected, so idle or slow clients hold neither threads nor a stopping agent.

One agent owns the socket path: it holds an exclusive lock on ``<path>.lock``
for its lifetime, and a new agent refuses to start while the lock is held or
a listener answers on the path (an agent that predates the lock). Only a
stale socket (connect refused) is removed; anything else at the path is left
alone. A stopping agent removes the socket only if it is still its own.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOG = logging.getLogger('virtnode.agent.server')
MAX_REQUEST_BYTES = 65536
MAX_CONNECTIONS = 32
CONNECTION_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0


def _hang_up(sock):
    # shutdown, not close: the handler thread still owns the descriptor and closes it itself.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class BoundedThreadingMixIn(socketserver.ThreadingMixIn):
    """A threading server with a connection cap, a deadline per connection and a close that does not wait."""

    daemon_threads = True
    block_on_close = False
    # A burst of clients waits in the backlog instead of being refused before accept() sees it.
    request_queue_size = 64
    busy_reply = b''

    def __init__(self, *args, max_connections=MAX_CONNECTIONS, connection_timeout=CONNECTION_TIMEOUT, **kwargs):
        if max_connections < 1 or connection_timeout <= 0:
            raise VirtnodeError('max_connections must be at least 1 and connection_timeout positive')
        self.max_connections = max_connections
        self.connection_timeout = float(connection_timeout)
        self.rejected = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active = {}
        self._active_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            LOG.debug('%s: %d connections open, refusing one', type(self).__name__, self.max_connections)
            try:
                request.send(self.busy_reply, socket.MSG_DONTWAIT)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._active_lock:
            self._active[request] = time.monotonic() + self.connection_timeout
        try:
            super().process_request(request, client_address)
        except BaseException:
            # No thread started (the caller hangs up): give the slot back.
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request):
        with self._active_lock:
            self._active.pop(request, None)
            super().shutdown_request(request)

    def service_actions(self):
        # serve_forever calls this at least every poll interval: hang up on connections past their deadline.
        super().service_actions()
        now = time.monotonic()
        with self._active_lock:
            for sock, deadline in list(self._active.items()):
                if now >= deadline:
                    _hang_up(sock)

    def server_close(self):
        super().server_close()
        with self._active_lock:
            for sock in list(self._active):
                _hang_up(sock)

    def handle_error(self, request, client_address):
        LOG.debug('%s: connection failed', type(self).__name__, exc_info=True)


class _Handler(socketserver.StreamRequestHandler):

    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()

    def handle(self):
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES)
        except OSError:
            return      # timed out or hung up on
        try:
            request = json.loads(line.decode('utf-8')) if line.strip() else None
            if not isinstance(request, dict):
                answer = {'ok': False, 'error': 'request must be one JSON object on one line'}
            else:
                answer = self.server.answer(request)
        except ValueError as err:
            answer = {'ok': False, 'error': 'bad request: %s' % err}
        except Exception as err:  # pylint: disable=broad-except
            LOG.exception('query failed')
            answer = {'ok': False, 'error': 'internal error: %s' % err}
        try:
            self.wfile.write((json.dumps(answer, separators=(',', ':')) + '\n').encode('utf-8'))
        except OSError:
            pass


def _lock(path):
    """The open, exclusively locked ``<path>.lock``; VirtnodeError when another agent holds it."""
    lock_path = path + '.lock'
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise VirtnodeError('cannot open the agent lock %s: %s' % (lock_path, err.strerror), {'path': lock_path}) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise VirtnodeError('another virtnode-agent serves %s (it holds %s); not starting a second one'
                                % (path, lock_path), {'path': path}) from err
        raise VirtnodeError('cannot lock %s: %s' % (lock_path, err.strerror), {'path': lock_path}) from err
    return fd


def _remove_stale(path):
    """Remove ``path`` if it is a socket nobody listens on; refuse a live one and anything not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise VirtnodeError('%s exists and is not a socket; not replacing it' % path, {'path': path})
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        LOG.info('removing the stale socket %s', path)
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except (socket.timeout, BlockingIOError):
        pass        # a listener with a full backlog is alive
    except OSError as err:
        raise VirtnodeError('cannot tell whether an agent serves %s: %s' % (path, err.strerror), {'path': path}) from err
    finally:
        probe.close()
    raise VirtnodeError('another virtnode-agent answers on %s; not starting a second one' % path, {'path': path})


def _claim(path):
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = _lock(path)
    try:
        _remove_stale(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_free(path):
    """Raise VirtnodeError when a live agent owns ``path`` (checked before a daemon detaches)."""
    os.close(_claim(path))


class _Server(BoundedThreadingMixIn, socketserver.UnixStreamServer):
    busy_reply = b'{"ok":false,"error":"agent busy: too many connections"}\n'

    def __init__(self, path, answer, **bounds):
        self.answer = answer
        self._identity = None
        self.lock_fd = None        # handed over by serve() once the server exists
        super().__init__(path, _Handler, **bounds)
        info = os.stat(path)
        self._identity = (info.st_dev, info.st_ino)

    def server_close(self):
        # Unlink before closing and only our own file: a successor may already have bound the path.
        try:
            info = os.lstat(self.server_address)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.server_address)
        except OSError:
            pass
        super().server_close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def serve(path, answer, mode=0o660, max_connections=MAX_CONNECTIONS, connection_timeout=CONNECTION_TIMEOUT):
    """Listen on the unix socket ``path``; ``answer(request_dict) -> dict`` builds each reply.

    Refuses (VirtnodeError) when another agent owns ``path``; a stale socket
    is replaced. Returns the server (``shutdown()`` then ``server_close()``
    stop it and remove the socket).
    """
    lock_fd = _claim(path)
    old_umask = os.umask(0o177)
    try:
        server = _Server(path, answer, max_connections=max_connections, connection_timeout=connection_timeout)
    except BaseException:
        os.close(lock_fd)
        raise
    finally:
        os.umask(old_umask)
    server.lock_fd = lock_fd
    os.chmod(path, mode)
    thread = threading.Thread(target=server.serve_forever, name='query-socket', daemon=True)
    thread.start()
    return server
