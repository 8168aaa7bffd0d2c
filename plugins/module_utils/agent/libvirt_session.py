# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's long-lived libvirt connection, event loop and reconnection.

* The connection is opened through ``libvirt_conn.connect`` (the collection's
  one connection wrapper), held open with an ``ExitStack`` and closed through
  it, so opening errors come out as ``VirtnodeError`` as everywhere else.
* libvirt's default event loop implementation is registered once per process
  and driven by a daemon thread; it delivers domain lifecycle events, the
  connection's close callback and keepalive probes (a dead daemon is noticed
  within ``keepalive_interval * (keepalive_count + 1)`` seconds).
* When the connection closes (libvirtd restarted or killed) the session
  forgets it and reconnects on the next ``ensure()`` with exponential
  backoff, re-registering its callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOG = logging.getLogger('virtnode.agent.libvirt')
CLOSE_REASONS = ('error', 'eof', 'keepalive', 'client')

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP = {}


def start_event_loop(libvirt_module):
    """Register libvirt's default event loop (once) and run it in a daemon thread.

    Must run before the first connection is opened, as libvirt requires.
    Returns the thread.
    """
    with _EVENT_LOOP_LOCK:
        thread = _EVENT_LOOP.get('thread')
        if thread is not None and thread.is_alive():
            return thread
        libvirt_module.virEventRegisterDefaultImpl()

        def run():
            while True:
                try:
                    libvirt_module.virEventRunDefaultImpl()
                except Exception:  # pylint: disable=broad-except
                    LOG.exception('libvirt event loop iteration failed')
                    time.sleep(0.5)

        thread = threading.Thread(target=run, name='libvirt-events', daemon=True)
        thread.start()
        _EVENT_LOOP['thread'] = thread
        return thread


class LibvirtSession:
    """One reconnecting connection with lifecycle event delivery.

    ``on_lifecycle(dom, event, detail)`` runs on the event loop thread;
    ``on_state(connected, message)`` is told about connects and disconnects.
    """

    def __init__(self, uri=libvirt_conn.DEFAULT_URI, libvirt_module=None, on_lifecycle=None, on_state=None,
                 backoff_min=1.0, backoff_max=30.0, keepalive_interval=5, keepalive_count=3, clock=None,
                 domain_events=()):
        self.uri = uri
        # More domain events: (event id, callback taking libvirt's arguments), registered on every connection.
        self.domain_events = list(domain_events)
        self.libvirt = libvirt_module if libvirt_module is not None else libvirt_conn.libvirt
        self.on_lifecycle = on_lifecycle
        self.on_state = on_state
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.keepalive = (keepalive_interval, keepalive_count)
        self._clock = clock or time.monotonic
        self._lock = threading.RLock()
        self._stack = None
        self._conn = None
        self._callback_ids = []
        self._closed = threading.Event()
        self._backoff = backoff_min
        self._next_attempt = 0.0
        self.connects = 0
        self.last_error = None

    @property
    def connected(self):
        return self._conn is not None and not self._closed.is_set()

    def ensure(self):
        """The open connection, reconnecting if due; None while libvirtd is unreachable."""
        with self._lock:
            if self._conn is not None and self._closed.is_set():
                self._drop('connection closed')
            if self._conn is not None:
                return self._conn
            if self._clock() < self._next_attempt:
                return None
            return self._open()

    def _open(self):
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(libvirt_conn.connect(self.uri))
            self._closed.clear()
            self._setup(conn)
        except (VirtnodeError, libvirt_conn.LibvirtError) as err:
            stack.close()
            message = err.message if isinstance(err, VirtnodeError) else libvirt_conn.error_text(err)
            self._schedule_retry(message)
            return None
        self._stack, self._conn = stack, conn
        self._backoff = self.backoff_min
        self.connects += 1
        self.last_error = None
        LOG.info('connected to %s', self.uri)
        if self.on_state:
            self.on_state(True, 'connected to %s' % self.uri)
        return conn

    def _setup(self, conn):
        self._callback_ids = []
        try:
            conn.registerCloseCallback(self._close_callback, None)
        except libvirt_conn.LibvirtError as err:
            LOG.warning('cannot register a close callback: %s', libvirt_conn.error_text(err))
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt_conn.LibvirtError as err:
            LOG.warning('cannot enable keepalive: %s', libvirt_conn.error_text(err))
        if self.on_lifecycle is not None:
            event_id = constants.value('VIR_DOMAIN_EVENT_ID_LIFECYCLE', self.libvirt)
            self._callback_ids.append(conn.domainEventRegisterAny(None, event_id, self._lifecycle_callback, None))
        for event_id, callback in self.domain_events:
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(None, event_id, callback, None))
            except libvirt_conn.LibvirtError as err:
                LOG.warning('cannot register domain event %s: %s', event_id, libvirt_conn.error_text(err))

    def _schedule_retry(self, message):
        self.last_error = message
        delay = self._backoff
        self._next_attempt = self._clock() + delay
        self._backoff = min(self.backoff_max, self._backoff * 2)
        LOG.warning('libvirt unreachable (%s); next attempt in %.0fs', message, delay)

    def _close_callback(self, conn, reason, opaque):  # pylint: disable=unused-argument
        name = CLOSE_REASONS[reason] if 0 <= reason < len(CLOSE_REASONS) else str(reason)
        LOG.warning('libvirt connection closed (%s)', name)
        self._closed.set()

    def _lifecycle_callback(self, conn, dom, event, detail, opaque):  # pylint: disable=unused-argument
        try:
            self.on_lifecycle(dom, event, detail)
        except Exception:  # pylint: disable=broad-except
            LOG.exception('lifecycle event handler failed')

    def lost(self, message):
        """The caller saw the connection fail; drop it so the next ``ensure()`` reconnects."""
        with self._lock:
            if self._conn is not None:
                self._drop(message)

    def _release(self):
        """Deregister our callbacks and close the connection; the caller holds the lock."""
        conn, stack = self._conn, self._stack
        self._conn = self._stack = None
        callback_ids, self._callback_ids = self._callback_ids, []
        steps = [(conn.domainEventDeregisterAny, (callback_id,)) for callback_id in callback_ids]
        steps += [(conn.unregisterCloseCallback, ()), (stack.close, ())]
        for step, args in steps:
            try:
                step(*args)
            except Exception:  # pylint: disable=broad-except  # a dead connection refuses anything
                pass

    def _drop(self, message):
        self._release()
        # Try again at once: a restarted libvirtd is often back already; failures then back off.
        self.last_error = message
        self._next_attempt = 0.0
        LOG.warning('libvirt connection lost (%s)', message)
        if self.on_state:
            self.on_state(False, message)

    def alive(self):
        """True when the current connection answers."""
        conn = self._conn
        if conn is None or self._closed.is_set():
            return False
        try:
            return bool(conn.isAlive())
        except libvirt_conn.LibvirtError:
            return False

    def close(self):
        with self._lock:
            if self._conn is not None:
                self._release()
