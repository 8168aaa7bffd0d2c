# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``virtnode-agent`` daemon: configuration, main loop and process handling.

Threads of a running agent:

* main: samples the host and all VMs every ``interval`` seconds and
  publishes a new snapshot (never blocks on storage);
* ``libvirt-events``: libvirt's event loop (lifecycle events, close
  callback, keepalive);
* ``storage-monitor``: one monitoring round every ``storage_interval``,
  its reads in bounded worker threads (see ``agent_storage``);
* ``query-socket`` and ``metrics-http``: answer from the latest snapshot;
* ``thin-check`` and ``thin-extend-N``: thin provisioning of block COW
  volumes (see ``thin_monitor``), driven by libvirt's BLOCK_THRESHOLD and
  IO error events plus a check every ``thin_check_interval``;
* ``spm-role-check``: every ``mailbox_check_interval``, serves the mailbox
  of the pools this host is SPM of and keeps their extend workers (child
  processes, see ``spm_extend``) ready;
* ``vm-xml`` and ``vm-hooks``: ``after_vm_destroy`` for the VMs that go
  down without the ``vm`` module (see ``agent_hooks``); the agent's own
  ``before_vdsm_start`` and ``after_vdsm_stop`` run in the main thread.

The snapshot is an immutable dict replaced as a whole, so readers never see
half an update and never wait for a sample.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
import xml.etree.ElementTree as ET

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import hooks as agent_hooks
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import libvirt_session as agent_libvirt
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import metrics as agent_metrics
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import spm_extend
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import sampling as agent_sampling
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import server as agent_server
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import storage_monitor as agent_storage
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import mailbox_server as mailbox_service
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import thin as thin_monitor
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOG = logging.getLogger('virtnode.agent')
CONFIG_FILE = '/etc/virtnode/agent.conf'

DEFAULTS = {
    'interval': 15.0,
    'libvirt_uri': libvirt_conn.DEFAULT_URI,
    'socket_path': agent_client.SOCKET_PATH,
    'metrics_enabled': True,
    'metrics_address': '127.0.0.1',
    'metrics_port': 9177,
    # Caps and the idle timeout of the agent's socket and metrics endpoint: what one slow or
    # hostile client can hold (see agent/server.py).
    'socket_max_connections': agent_server.MAX_CONNECTIONS,
    'metrics_max_connections': agent_metrics.MAX_CONNECTIONS,
    'connection_timeout': agent_server.CONNECTION_TIMEOUT,
    'events_file': agent_events.EVENTS_FILE,
    'events_max_bytes': agent_events.DEFAULT_MAX_BYTES,
    'storage_enabled': True,
    'storage_root': agent_storage.MOUNT_ROOT,
    'storage_interval': 10.0,
    'storage_timeout': agent_storage.DEFAULT_TIMEOUT,
    'mailbox_enabled': True,
    'mailbox_check_interval': 3.0,
    'mailbox_interval': mailbox_service.DEFAULT_INTERVAL,
    'mailbox_event_interval': mailbox_service.DEFAULT_EVENT_INTERVAL,
    'thin_enabled': True,
    'thin_utilization': thin_monitor.DEFAULT_UTILIZATION,
    'thin_chunk_mib': thin_monitor.DEFAULT_CHUNK_MIB,
    'thin_check_interval': thin_monitor.DEFAULT_CHECK_INTERVAL,
    'thin_extend_timeout': thin_monitor.DEFAULT_EXTEND_TIMEOUT,
    'hooks_dir': hooks_utils.DEFAULT_HOOKS_DIR,
    'reconnect_min': 1.0,
    'reconnect_max': 30.0,
    'log_file': '/var/log/virtnode/agent.log',
    'log_level': 'INFO',
}
_NUMBERS = ('interval', 'storage_interval', 'storage_timeout', 'reconnect_min', 'reconnect_max',
            'mailbox_check_interval', 'mailbox_interval', 'mailbox_event_interval',
            'thin_check_interval', 'thin_extend_timeout', 'connection_timeout')
_INTEGERS = ('metrics_port', 'events_max_bytes', 'thin_utilization', 'thin_chunk_mib')
_POSITIVE_INTEGERS = ('socket_max_connections', 'metrics_max_connections')
_BOOLEANS = ('metrics_enabled', 'storage_enabled', 'mailbox_enabled', 'thin_enabled')


def load_config(path=CONFIG_FILE, overrides=None):
    """Defaults updated with the JSON object in ``path`` (missing file: defaults), validated."""
    config = dict(DEFAULTS)
    if path:
        try:
            data = fileio.read_json(path, default={})
        except VirtnodeError as err:
            raise VirtnodeError('agent configuration: %s' % err, {'path': path}) from err
        if not isinstance(data, dict):
            raise VirtnodeError('agent configuration %s must be a JSON object' % path)
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise VirtnodeError('unknown agent configuration keys in %s: %s' % (path, ', '.join(unknown)))
        config.update(data)
    config.update(overrides or {})
    for key in _NUMBERS:
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float)) or config[key] <= 0:
            raise VirtnodeError('agent configuration: %s must be a positive number, got %r' % (key, config[key]))
        config[key] = float(config[key])
    for key in _INTEGERS:
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 0:
            raise VirtnodeError('agent configuration: %s must be a non-negative integer, got %r' % (key, config[key]))
    for key in _POSITIVE_INTEGERS:
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise VirtnodeError('agent configuration: %s must be a positive integer, got %r' % (key, config[key]))
    for key in _BOOLEANS:
        if not isinstance(config[key], bool):
            raise VirtnodeError('agent configuration: %s must be true or false, got %r' % (key, config[key]))
    thin_monitor.check_settings(config['thin_utilization'], config['thin_chunk_mib'], config['thin_check_interval'])
    if not isinstance(config['hooks_dir'], str) or not os.path.isabs(config['hooks_dir']):
        raise VirtnodeError('agent configuration: hooks_dir must be an absolute path, got %r' % (config['hooks_dir'],))
    if config['log_level'].upper() not in ('DEBUG', 'INFO', 'WARNING', 'ERROR'):
        raise VirtnodeError('agent configuration: log_level must be DEBUG, INFO, WARNING or ERROR')
    return config


def _shaped(vms_part):
    """The ``vms`` part with its entries shaped (a sample leaves that to its first reader)."""
    if vms_part is None or not isinstance(vms_part.get('vms'), agent_sampling.VmEntries):
        return vms_part
    return dict(vms_part, vms=vms_part['vms'].get())


class Agent:
    """Everything the daemon does, startable in-process (tests, benchmark)."""

    def __init__(self, config, libvirt_module=None, host_root='/'):
        self.config = config
        self.libvirt = libvirt_module if libvirt_module is not None else libvirt_conn.libvirt
        self.stop_event = threading.Event()
        self.events = agent_events.EventLog(config['events_file'], config['events_max_bytes'])
        self.host_sampler = agent_sampling.HostSampler(host_root)
        self.vm_sampler = agent_sampling.VmSampler(self.libvirt)
        self.thin = None
        if config['thin_enabled']:
            self.thin = thin_monitor.ThinMonitor(
                self._libvirt_connection, self.record, utilization=config['thin_utilization'],
                chunk_mib=config['thin_chunk_mib'], check_interval=config['thin_check_interval'],
                extender=thin_monitor.Extender(timeout=config['thin_extend_timeout'], spm_extend=self._extend_on_spm),
                libvirt_module=self.libvirt)
        self.hooks = agent_hooks.HookRunner(self._libvirt_connection, self.record, hooks_dir=config['hooks_dir'],
                                            libvirt_module=self.libvirt)
        self.session = agent_libvirt.LibvirtSession(
            config['libvirt_uri'], self.libvirt, on_lifecycle=self._on_lifecycle, on_state=self._on_libvirt_state,
            backoff_min=config['reconnect_min'], backoff_max=config['reconnect_max'],
            domain_events=(self.vm_sampler.callbacks() + (self.thin.callbacks() if self.thin else [])
                           + self.hooks.callbacks()))
        self.storage = agent_storage.StorageMonitor(config['storage_root'], config['storage_timeout'],
                                                    on_change=self._on_storage_change)
        self._snapshot = {'host': None, 'vms': None, 'storage': None, 'agent': {}}
        self._snapshot_lock = threading.Lock()
        self.counters = {'samples': 0, 'sample_errors': 0, 'vm_errors': 0}
        self.started_at = time.time()
        self.mailboxes = mailbox_service.SpmMailboxes(
            self._extend_on_spm, on_event=lambda event, **fields: self.record(event, kind='mailbox', **fields),
            interval=config['mailbox_interval'], event_interval=config['mailbox_event_interval'],
            io_timeout=config['storage_timeout'])
        self._servers = []
        self._threads = []

    def _libvirt_connection(self):
        return self.session.ensure()

    # ------------------------------------------------------------ snapshot

    def snapshot(self):
        return self._snapshot

    def metrics_snapshot(self):
        """The snapshot with the agent's own counters as they are now: thin extensions and ENOSPC
        pauses happen between samples, and a scrape should not see them an interval late."""
        snapshot = self._snapshot
        return dict(snapshot, vms=_shaped(snapshot.get('vms')), agent=self._agent_status())

    def _publish(self, **parts):
        with self._snapshot_lock:
            new = dict(self._snapshot)
            new.update(parts)
            new['agent'] = self._agent_status()
            self._snapshot = new

    def _agent_status(self):
        return {
            'pid': os.getpid(),
            'started_at': round(self.started_at, 3),
            'interval': self.config['interval'],
            'libvirt_uri': self.config['libvirt_uri'],
            'libvirt_connected': self.session.connected,
            'libvirt_connects': self.session.connects,
            'libvirt_error': self.session.last_error,
            'samples': self.counters['samples'],
            'sample_errors': self.counters['sample_errors'],
            'vm_errors': self.vm_sampler.errors,
            'vm_samples_stuck': self.vm_sampler.stuck,
            'sample_duration': self.counters.get('sample_duration'),
            'sampled_at': self.counters.get('sampled_at'),
            'event_seq': self.events.seq,
            'storage_stuck': self.storage.stuck_workers(),
            'spm_mailboxes': self.mailboxes.serving(),
            'thin': self.thin.status() if self.thin else None,
        }

    # ------------------------------------------------------------ events

    def record(self, event, **fields):
        try:
            return self.events.append(event, **fields)
        except VirtnodeError as err:
            LOG.error('cannot record event %s: %s', event, err)
            return None

    def _on_lifecycle(self, dom, event, detail):
        name, reason, extra = agent_events.lifecycle_event(event, detail)
        try:
            vm_name, vm_uuid = dom.name(), dom.UUIDString()
        except libvirt_conn.LibvirtError as err:
            vm_name, vm_uuid = None, None
            LOG.warning('lifecycle event %s for a domain that cannot be named: %s', name, libvirt_conn.error_text(err))
        LOG.info('VM %s (%s): %s (%s)', vm_name, vm_uuid, name, reason)
        if vm_uuid:
            self.vm_sampler.hint(vm_uuid)  # a state change may begin or end a job: probe it next time
        self.record(name, kind='vm', vm=vm_name, uuid=vm_uuid, reason=reason, **extra)
        self.hooks.on_lifecycle(dom, vm_name, vm_uuid, event, detail)
        if self.thin is not None:
            self.thin.on_lifecycle(dom, event, detail)

    def _on_libvirt_state(self, connected, message):
        if connected:
            self.record('libvirt_connected', kind='agent', uri=self.config['libvirt_uri'])
            self.hooks.resync()
        else:
            self.vm_sampler.reset()
            self.record('libvirt_disconnected', kind='agent', uri=self.config['libvirt_uri'], reason=message)

    def _on_storage_change(self, sd_uuid, status):
        if status['valid']:
            LOG.info('storage domain %s is reachable again', sd_uuid)
            self.record('storage_domain_reachable', kind='storage', sd_uuid=sd_uuid, path=status['path'],
                        delay=status['delay'])
            # In a thread of its own: a libvirt call never holds up the storage monitor.
            threading.Thread(target=self.resume_paused_on, args=(sd_uuid,), name='resume-on-%s' % sd_uuid,
                             daemon=True).start()
        else:
            LOG.warning('storage domain %s is unreachable: %s', sd_uuid, status['error'])
            self.record('storage_domain_unreachable', kind='storage', sd_uuid=sd_uuid, path=status['path'],
                        code=status['code'], reason=status['error'])

    def resume_paused_on(self, sd_uuid):
        """Resume the VMs that paused on an I/O error and have a disk on ``sd_uuid`` (VDSM's contEIOVms).

        Called when the domain turned valid again. A VM with a disk on a domain
        still invalid stays paused; so does one paused for any other reason.
        Returns the names of the VMs resumed.
        """
        conn = self.session.ensure()
        if conn is None:
            return []

        def const(name):
            return constants.value(name, self.libvirt)

        invalid = set(sd for sd, status in self.storage.stats().items() if not status['valid'])
        resumed = []
        try:
            doms = conn.listAllDomains(const('VIR_CONNECT_LIST_DOMAINS_ACTIVE'))
        except libvirt_conn.LibvirtError as err:
            LOG.warning('cannot list VMs to resume after storage domain %s came back: %s', sd_uuid,
                        libvirt_conn.error_text(err))
            return resumed
        for dom in doms:
            try:
                if tuple(dom.state()[:2]) != (const('VIR_DOMAIN_PAUSED'), const('VIR_DOMAIN_PAUSED_IOERROR')):
                    continue
                domains = storage_domains_of_disks(dom.XMLDesc(0))
                if sd_uuid not in domains:
                    continue
                name = dom.name()
                if domains & invalid:
                    LOG.info('VM %s stays paused: storage domain(s) %s still unreachable', name,
                             ', '.join(sorted(domains & invalid)))
                    continue
                dom.resume()
            except libvirt_conn.LibvirtError as err:
                LOG.warning('resuming a VM paused on storage domain %s failed: %s', sd_uuid, libvirt_conn.error_text(err))
                continue
            LOG.info('VM %s resumed: storage domain %s is reachable again', name, sd_uuid)
            self.record('vm_resumed_after_storage', kind='storage', vm=name, uuid=dom.UUIDString(), sd_uuid=sd_uuid)
            resumed.append(name)
        return resumed

    # ------------------------------------------------------------ sampling

    def sample_once(self):
        """Take one host and VM sample and publish it. Never raises for libvirt trouble."""
        started = time.monotonic()
        self.host_sampler.take()
        host_part = {'sampled_at': round(time.time(), 3), 'stats': self.host_sampler.stats(),
                     'counters': self.host_sampler.counters()}
        vms_part = self._snapshot.get('vms')
        conn = self.session.ensure()
        if conn is not None:
            try:
                # Bounded: a QEMU monitor that stopped answering holds its call, not the agent.
                entries = self.vm_sampler.sample_bounded(conn, max(0.5, self.config['interval'] / 2))
                if entries is not None:
                    vms_part = {'sampled_at': round(time.time(), 3), 'vms': entries}
            except libvirt_conn.LibvirtError as err:
                self.counters['sample_errors'] += 1
                LOG.warning('VM sample failed: %s', libvirt_conn.error_text(err))
                if not self.session.alive():
                    self.session.lost('sample failed: %s' % libvirt_conn.error_text(err))
                    vms_part = None
        else:
            vms_part = None
        self.counters['samples'] += 1
        self.counters['sample_duration'] = round(time.monotonic() - started, 6)
        self.counters['sampled_at'] = host_part['sampled_at']
        self._publish(host=host_part, vms=vms_part)

    def _storage_loop(self):
        interval = self.config['storage_interval']
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                domains = self.storage.check()
                self._publish(storage={'sampled_at': round(time.time(), 3), 'domains': domains})
            except Exception:  # pylint: disable=broad-except
                LOG.exception('storage monitoring round failed')
            self.stop_event.wait(max(0.1, interval - (time.monotonic() - started)))

    def _spm_role_loop(self):
        # Follows this host's SPM roles: the mailbox served (VDSM starts it with the SPM role) and
        # an extend worker ready, so the first extension does not wait for one to start.
        failed_before = {}
        while not self.stop_event.is_set():
            try:
                if self.config['mailbox_enabled']:
                    self.mailboxes.check()
                spm_pools = [sp_uuid for sp_uuid in mailbox_service.connected_pools() if thin_monitor.is_local_spm(sp_uuid)]
                failed = spm_extend.keep_ready(spm_pools, timeout=self.config['thin_extend_timeout'])
                for sp_uuid, message in failed.items():
                    if failed_before.get(sp_uuid) != message:
                        LOG.warning('SPM extend worker of pool %s did not start: %s', sp_uuid, message)
                failed_before = failed
            except Exception:  # pylint: disable=broad-except
                LOG.exception('SPM role check failed')
            self.stop_event.wait(self.config['mailbox_check_interval'])
        self.mailboxes.stop()

    def _extend_on_spm(self, sd_uuid, vol_uuid, size_mib):
        """What the SPM does for its own thin volumes and for a host's mailbox request: in a fenced SPM task."""
        return spm_extend.extend(sd_uuid, vol_uuid, size_mib, timeout=self.config['thin_extend_timeout'])

    # ------------------------------------------------------------ queries

    def answer(self, request):
        kind = request.get('query')
        snapshot = self._snapshot
        if kind == 'status':
            return {'ok': True, 'query': kind, 'interval': self.config['interval'], 'data': snapshot['agent']}
        if kind not in ('vms', 'host', 'storage'):
            return {'ok': False, 'error': 'unknown query %r; one of %s' % (kind, ', '.join(agent_client.QUERIES))}
        part = snapshot.get(kind)
        if part is None:
            reason = self.session.last_error if kind == 'vms' else None
            return {'ok': False, 'query': kind, 'error': 'no %s data yet%s' % (kind, ': %s' % reason if reason else '')}
        interval = self.config['storage_interval'] if kind == 'storage' else self.config['interval']
        if kind == 'vms':
            part = _shaped(part)
        return {'ok': True, 'query': kind, 'sampled_at': part['sampled_at'],
                'age': round(max(0.0, time.time() - part['sampled_at']), 3), 'interval': interval,
                'data': dict((k, v) for k, v in part.items() if k != 'counters')}

    # ------------------------------------------------------------ life cycle

    def start(self):
        """Run ``before_vdsm_start``, then start the event loop, the servers and the storage monitor
        (not the sampling loop). A failing hook is logged and recorded; the agent starts all the same."""
        if self.libvirt is not None:
            # libvirt prints every error to stderr unless a handler takes them; the agent logs its own.
            register = getattr(self.libvirt, 'registerErrorHandler', None)
            if register is not None:
                register(lambda ctx, err: None, None)
            agent_libvirt.start_event_loop(self.libvirt)
        self.record('agent_started', kind='agent', pid=os.getpid())
        self.hooks.run_agent_point(agent_hooks.AGENT_START)
        self.hooks.start()
        self._publish()
        self._servers.append(agent_server.serve(self.config['socket_path'], self.answer,
                                                max_connections=self.config['socket_max_connections'],
                                                connection_timeout=self.config['connection_timeout']))
        if self.config['metrics_enabled']:
            self._servers.append(agent_metrics.serve(self.config['metrics_address'], self.config['metrics_port'],
                                                     self.metrics_snapshot,
                                                     max_connections=self.config['metrics_max_connections'],
                                                     connection_timeout=self.config['connection_timeout']))
        if self.config['storage_enabled']:
            thread = threading.Thread(target=self._storage_loop, name='storage-monitor', daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.config['mailbox_enabled'] or self.thin is not None:
            thread = threading.Thread(target=self._spm_role_loop, name='spm-role-check', daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.thin is not None:
            self.thin.start()

    def run(self):
        """Sample every interval until ``stop_event`` is set."""
        interval = self.config['interval']
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # pylint: disable=broad-except
                LOG.exception('sampling failed')
            self.stop_event.wait(max(0.1, interval - (time.monotonic() - started)))

    def stop(self, clean=True):
        """Stop every thread and server; ``clean`` (a stop asked for, not a failure) runs ``after_vdsm_stop``."""
        self.stop_event.set()
        for server in self._servers:
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # pylint: disable=broad-except
                pass
        self._servers = []
        self.mailboxes.stop()
        if self.thin is not None:
            self.thin.stop()
        spm_extend.close()
        self.hooks.stop()
        self.session.close()
        if clean:
            self.hooks.run_agent_point(agent_hooks.AGENT_STOP)
        # The query socket's server_close removed the socket file, and only if it was still its own.
        self.record('agent_stopped', kind='agent', pid=os.getpid())


def storage_domains_of_disks(xml_text):
    """The storage domain UUIDs the disks of a domain XML are on, from their paths.

    A volume's path names its domain: ``.../<sd>/images/<img>/<vol>`` under the
    mount root, a pool directory or ``blockSD``, or ``/run/virtnode/block/<sd>/...``.
    """
    found = set()
    for source in ET.fromstring(xml_text).findall('devices/disk/source'):
        parts = (source.get('file') or source.get('dev') or '').split('/')
        for index, part in enumerate(parts[:-1]):
            if agent_storage.is_uuid(part) and (parts[index + 1] == 'images' or parts[:index] == ['', 'run', 'virtnode', 'block']):
                found.add(part.lower())
    return found


# ---------------------------------------------------------------- process

def _setup_logging(config, foreground):
    root = logging.getLogger()
    root.setLevel(config['log_level'].upper())
    formatter = logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s')
    if config['log_file']:
        os.makedirs(os.path.dirname(config['log_file']), mode=0o750, exist_ok=True)
        # Reopens the file when logrotate moved it away.
        handler = logging.handlers.WatchedFileHandler(config['log_file'])
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if foreground or not config['log_file']:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)


def _daemonize():
    if os.fork() > 0:
        os._exit(0)  # pylint: disable=protected-access
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # pylint: disable=protected-access
    os.chdir('/')
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _lock_pidfile(path):
    """Open ``path`` holding an exclusive lock for the process lifetime (the pid is written by ``_write_pid``).

    The lock is taken before the daemon detaches, so the caller sees a refusal
    as the exit status; it is inherited by the detached process. A lock won on
    a file that was unlinked meanwhile (the previous agent exiting) is retried
    on the file now at the path, so two agents never each hold "the" pidfile.
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    for _attempt in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise VirtnodeError('another virtnode-agent holds %s' % path)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            if fd <= 2:
                # Kept above stdio: detaching points 0-2 at /dev/null (the lock stays with the copy).
                moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                os.close(fd)
                fd = moved
            return fd
        os.close(fd)
    raise VirtnodeError('the pidfile %s keeps being replaced' % path)


def _write_pid(fd):
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, ('%d\n' % os.getpid()).encode())


def _release_pidfile(path, fd):
    """Remove the pidfile (while still holding its lock, and only if it is still ours) and unlock it."""
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='virtnode-agent', description='virtnode node agent')
    parser.add_argument('--config', default=CONFIG_FILE)
    parser.add_argument('--daemon', action='store_true', help='detach from the terminal')
    parser.add_argument('--pidfile', default=None)
    parser.add_argument('--check-config', action='store_true', help='validate the configuration and exit')
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except VirtnodeError as err:
        sys.stderr.write('virtnode-agent: %s\n' % err)
        return 2
    if args.check_config:
        return 0
    if not libvirt_conn.HAS_LIBVIRT:
        sys.stderr.write('virtnode-agent: %s is required\n' % libvirt_conn.LIBVIRT_REQUIREMENT)
        return 2
    # Refuse before detaching, so whoever started a second agent sees it fail (a live agent's
    # socket and pidfile are never touched).
    pid_fd = None
    try:
        if args.pidfile:
            pid_fd = _lock_pidfile(args.pidfile)
        agent_server.check_free(config['socket_path'])
    except VirtnodeError as err:
        sys.stderr.write('virtnode-agent: %s\n' % err)
        if pid_fd is not None:
            os.close(pid_fd)
        return 1
    if args.daemon:
        _daemonize()
    if pid_fd is not None:
        _write_pid(pid_fd)
    _setup_logging(config, foreground=not args.daemon)
    agent = Agent(config)

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        LOG.info('signal %d received, stopping', signum)
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    LOG.info('virtnode-agent starting (pid %d, interval %ss)', os.getpid(), config['interval'])
    clean = False
    try:
        agent.start()
        agent.run()
        clean = True
    except VirtnodeError as err:
        # Lost a race for the socket to an agent started at the same moment.
        LOG.error('virtnode-agent cannot start: %s', err)
        return 1
    except Exception:  # pylint: disable=broad-except
        LOG.exception('virtnode-agent failed')
        return 1
    finally:
        agent.stop(clean=clean)
        if pid_fd is not None:
            _release_pidfile(args.pidfile, pid_fd)
        LOG.info('virtnode-agent stopped')
    return 0
