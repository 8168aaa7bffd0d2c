# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hook points the node agent runs (VDSM's, from the same hooks directory as the modules).

* ``after_vm_destroy`` whenever a VM goes down without the ``vm`` module
  stopping it: the guest powered itself off, QEMU crashed or was killed,
  someone ran ``virsh destroy``. libvirt reports the stop (a lifecycle
  ``STOPPED`` event with reason ``shutdown``, ``destroyed``, ``crashed`` or
  ``failed``); a VM that migrated away (``after_vm_migrate_source``), was
  saved (``after_vm_hibernate``) or reverted to a snapshot is not down.
  The hook gets what the module's own run gets (:func:`lifecycle.run_vm_hook`,
  the one way VM hooks run): the domain XML in the file named by
  ``$_hook_domxml``, the custom properties of the VM's metadata, ``vmId``
  and ``vmName`` in its environment.
* ``after_vm_migrate_destination`` on the destination of a migration, once
  the VM runs here (libvirt's ``RESUMED`` event with detail ``migrated``),
  with its domain XML as it runs here. Its twin
  ``before_vm_migrate_destination`` runs in libvirt's qemu hook
  (:mod:`vm.libvirt_hook`), which may still change the incoming XML.
* ``before_vdsm_start`` when the agent starts, before it serves, and
  ``after_vdsm_stop`` when it stops cleanly; they get no data.

**Who runs after_vm_destroy.** The module runs it when it destroys or shuts
down a VM. It writes a marker just before (``records.mark_stopping``, with
the run's libvirt domain id); the agent takes the marker when the stop is
reported and leaves the hook to the module when the marker names the run
that stopped. The exit record cannot tell: the module writes it after the
stop, and the agent hears of the stop at once. A marker younger than
:data:`STOPPING_MAX_AGE` without a known run still counts; older ones are
ignored and swept.

**The domain XML.** A transient domain is gone when its stop is reported,
so the agent keeps the live XML of every running domain, zlib-compressed:
read when it starts or resumes (an incoming migration), when a device is
added or removed, its metadata (the custom properties) changes or a block
job ends, and for all of them every :data:`RESYNC_SECONDS` (a snapshot
changes disk paths without an event). At most :data:`MAX_DOMAINS` entries of
at most :data:`MAX_XML_BYTES` each; an entry leaves with its domain's stop,
or when two listings in a row did not find the domain running (its stop
happened while the agent was not connected to libvirt: the hook then runs
late, with reason ``unknown``).

**Threads.** libvirt's event loop only queues. ``vm-xml`` reads the XMLs and
decides, in event order, and never waits for a hook; ``vm-hooks`` runs the
hooks one at a time. Every hook point that had scripts is recorded in the
event log as ``hook_ran`` (``point``, ``vm``, ``uuid``, ``reason``, ``rc``,
``failed``, ``scripts``); a failure is logged and recorded, never fatal.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import zlib

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events
from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records

LOG = logging.getLogger('virtnode.agent.hooks')
AGENT_START = 'before_vdsm_start'
AGENT_STOP = 'after_vdsm_stop'
VM_DOWN = 'after_vm_destroy'
MIGRATED_IN = 'after_vm_migrate_destination'
EVENT = 'hook_ran'
# Reasons of a STOPPED event (events.LIFECYCLE_EVENTS) after which the VM is down.
DOWN_REASONS = ('shutdown', 'destroyed', 'crashed', 'failed')
MAX_DOMAINS = 4096
MAX_XML_BYTES = 1024 * 1024
RESYNC_SECONDS = 600.0
STOPPING_MAX_AGE = 3600.0
ERROR_LIMIT = 512
# How long a stopping agent waits for the hooks already queued.
STOP_TIMEOUT = 10.0
# Events after which a running domain's XML is read again.
_REFRESH_EVENTS = ('VIR_DOMAIN_EVENT_ID_DEVICE_ADDED', 'VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED',
                   'VIR_DOMAIN_EVENT_ID_METADATA_CHANGE', 'VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2')


class _Known:
    """What the agent keeps of a running domain."""

    __slots__ = ('name', 'run_id', 'packed', 'missing')

    def __init__(self, name, run_id, packed):
        self.name, self.run_id, self.packed, self.missing = name, run_id, packed, 0

    def xml(self):
        return zlib.decompress(self.packed).decode('utf-8') if self.packed is not None else None


def _outcome(result):
    """``(rc, scripts)`` of a HookResult for the event log: rc 0, or the first failing script's (None: it did not run)."""
    scripts = [{'script': entry['script'], 'rc': entry['rc'], 'error': (entry.get('error') or '')[:ERROR_LIMIT] or None}
               for entry in result.scripts]
    failing = next((entry for entry in scripts if entry['error']), None)
    return (failing['rc'] if failing else 0), scripts


class HookRunner:
    """The agent's hook points. ``get_conn()`` gives the agent's libvirt connection (or None),
    ``record(event, **fields)`` writes an event. :meth:`callbacks` lists the ``(event id, handler)``
    pairs to register on every connection; :meth:`on_lifecycle` takes the lifecycle events."""

    def __init__(self, get_conn, record, hooks_dir=hooks_utils.DEFAULT_HOOKS_DIR, records_dir=vm_records.RECORDS_DIR,
                 libvirt_module=None, max_domains=MAX_DOMAINS, max_xml_bytes=MAX_XML_BYTES,
                 resync_seconds=RESYNC_SECONDS, clock=time.time):
        self.get_conn = get_conn
        self.record = record
        self.hooks_dir = hooks_dir
        self.records_dir = records_dir
        self.libvirt = libvirt_module if libvirt_module is not None else libvirt_conn.libvirt
        self.max_domains = max_domains
        self.max_xml_bytes = max_xml_bytes
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.counters = {'runs': 0, 'failures': 0, 'left_to_module': 0, 'xml_missing': 0}
        self._known = collections.OrderedDict()
        self._lock = threading.Lock()
        self._jobs = queue.Queue()
        self._runs = queue.Queue()
        self._threads = []

    def _const(self, name):
        return constants.value(name, self.libvirt)

    # ---------------------------------------------------------------- libvirt events (event loop thread)

    def callbacks(self):
        return [(self._const(name), self._refresh_cb) for name in _REFRESH_EVENTS]

    def _refresh_cb(self, conn, dom, *args):  # pylint: disable=unused-argument
        self._jobs.put(('refresh', dom))

    def on_lifecycle(self, dom, vm_name, vm_uuid, event, detail):
        """A lifecycle event of the domain ``vm_uuid`` (None: it could not be named)."""
        if vm_uuid is None:
            return
        if (event == self._const('VIR_DOMAIN_EVENT_RESUMED')
                and detail == self._const('VIR_DOMAIN_EVENT_RESUMED_MIGRATED')):
            self._jobs.put(('migrated_in', dom, vm_name, vm_uuid))
        elif event in (self._const('VIR_DOMAIN_EVENT_STARTED'), self._const('VIR_DOMAIN_EVENT_RESUMED')):
            self._jobs.put(('refresh', dom))
        elif event == self._const('VIR_DOMAIN_EVENT_STOPPED'):
            reason = agent_events.lifecycle_event(event, detail)[1]
            self._jobs.put(('stopped', dom, vm_name, vm_uuid, reason))

    def resync(self):
        """Read every running domain's XML again (after a connect: events may have been missed)."""
        self._jobs.put(('sync',))

    # ---------------------------------------------------------------- the XMLs (vm-xml thread)

    def _handle(self, job):
        if job[0] == 'refresh':
            self._refresh(job[1])
        elif job[0] == 'stopped':
            self._stopped(*job[1:])
        elif job[0] == 'sync':
            self._sync()
        elif job[0] == 'migrated_in':
            self._migrated_in(*job[1:])

    def kept(self):
        """UUIDs of the domains whose XML is kept, oldest first."""
        with self._lock:
            return list(self._known)

    def _refresh(self, dom):
        try:
            vm_uuid, name, xml = dom.UUIDString(), dom.name(), dom.XMLDesc(0)
        except libvirt_conn.LibvirtError as err:
            LOG.debug('cannot read a domain XML: %s', libvirt_conn.error_text(err))  # gone meanwhile: its stop follows
            return
        self._keep(vm_uuid, name, xml)

    def _keep(self, vm_uuid, name, xml):
        run_id = vm_records.domain_run_id(xml)
        if run_id is None:
            return  # an inactive definition: the domain stopped meanwhile
        data = xml.encode('utf-8')
        packed = zlib.compress(data, 1) if len(data) <= self.max_xml_bytes else None
        if packed is None:
            LOG.warning('VM %s (%s): its domain XML (%d bytes) is over %d bytes and not kept; after_vm_destroy '
                        'would get none', name, vm_uuid, len(data), self.max_xml_bytes)
        with self._lock:
            self._known.pop(vm_uuid, None)
            self._known[vm_uuid] = _Known(name, run_id, packed)
            while len(self._known) > self.max_domains:
                old_uuid, old = self._known.popitem(last=False)
                LOG.warning('more than %d running VMs: the domain XML of %s (%s) is no longer kept',
                            self.max_domains, old.name, old_uuid)

    def _stopped(self, dom, vm_name, vm_uuid, reason):
        with self._lock:
            known = self._known.pop(vm_uuid, None)
        if reason in DOWN_REASONS:
            self._down(vm_uuid, vm_name or (known.name if known else None), reason, known, dom)

    def _migrated_in(self, dom, vm_name, vm_uuid):
        """A VM that migrated here runs: its XML kept, after_vm_migrate_destination queued with it."""
        self._refresh(dom)
        with self._lock:
            known = self._known.get(vm_uuid)
        xml = known.xml() if known is not None else None
        self._runs.put((MIGRATED_IN, vm_uuid, vm_name or (known.name if known else None), 'migrated', xml or ''))

    def _sync(self):
        conn = self.get_conn()
        if conn is None:
            return
        try:
            doms = conn.listAllDomains(self._const('VIR_CONNECT_LIST_DOMAINS_ACTIVE'))
        except libvirt_conn.LibvirtError as err:
            LOG.warning('cannot list the running VMs: %s', libvirt_conn.error_text(err))
            return
        seen = set()
        for dom in doms:
            try:
                seen.add(dom.UUIDString())
            except libvirt_conn.LibvirtError:
                continue
            self._refresh(dom)
        gone = []
        with self._lock:
            for vm_uuid, known in list(self._known.items()):
                if vm_uuid in seen:
                    known.missing = 0
                    continue
                known.missing += 1
                # Once: its STOPPED event may still wait in the queue behind this listing.
                if known.missing >= 2:
                    gone.append((vm_uuid, self._known.pop(vm_uuid)))
        for vm_uuid, known in gone:
            LOG.warning('VM %s (%s) went down while the agent was not listening to libvirt', known.name, vm_uuid)
            self._down(vm_uuid, known.name, 'unknown', known)
        for vm_uuid in vm_records.stale_stopping(STOPPING_MAX_AGE, self.records_dir, self.clock()):
            LOG.info('stop marker of VM %s removed: no stop followed it within %ds', vm_uuid, STOPPING_MAX_AGE)

    def _module_stops(self, marker, known):
        """Whether the module's stop marker names this stop: then the module runs after_vm_destroy."""
        if marker is None:
            return False
        when = marker.get('time')
        if isinstance(when, bool) or not isinstance(when, (int, float)) or self.clock() - when > STOPPING_MAX_AGE:
            return False
        marked, run_id = marker.get('domain_id'), known.run_id if known is not None else None
        return marked is None or run_id is None or marked == run_id

    def _down(self, vm_uuid, vm_name, reason, known, dom=None):
        marker = vm_records.take_stopping(vm_uuid, self.records_dir)
        if self._module_stops(marker, known):
            self.counters['left_to_module'] += 1
            LOG.info('VM %s (%s) stopped by the vm module (%s), which runs %s itself', vm_name, vm_uuid,
                     marker.get('operation'), VM_DOWN)
            return
        xml = known.xml() if known is not None else None
        if xml is None:
            self.counters['xml_missing'] += 1
            xml = self._definition(dom)
            LOG.warning('VM %s (%s): its domain XML was not captured before it stopped; %s gets %s', vm_name, vm_uuid,
                        VM_DOWN, 'its definition' if xml else 'none')
        self._runs.put((VM_DOWN, vm_uuid, vm_name, reason, xml))

    @staticmethod
    def _definition(dom):
        """The XML libvirt still has of a stopped domain: a persistent one's definition, else ''."""
        if dom is None:
            return ''
        try:
            return dom.XMLDesc(0)
        except libvirt_conn.LibvirtError:
            return ''

    # ---------------------------------------------------------------- running hooks (vm-hooks thread)

    def _run_vm_point(self, point, vm_uuid, vm_name, reason, xml):
        env = {}
        if xml:
            try:
                live = domxml.parse_live(xml)
            except Exception as err:  # pylint: disable=broad-except  # any domain XML: then no custom properties
                LOG.warning('VM %s (%s): cannot read custom properties from its XML: %s', vm_name, vm_uuid, err)
            else:
                env = live['custom_properties']
                if live['refused_custom_properties']:
                    LOG.warning('custom properties of VM %s not given to hooks (not usable as environment variables): %s',
                                vm_name, ', '.join(sorted(repr(n) for n in live['refused_custom_properties'])))
        try:
            result = vm_lifecycle.run_vm_hook(self.hooks_dir, point, xml or '', vm_name or '', vm_uuid, env)
        except Exception as err:  # pylint: disable=broad-except  # logged and recorded, never fatal
            return self._could_not_run(point, err, vm=vm_name, uuid=vm_uuid, reason=reason)
        self._report(result, vm=vm_name, uuid=vm_uuid, reason=reason)
        return result

    def run_agent_point(self, point):
        """Run ``before_vdsm_start`` or ``after_vdsm_stop``; a failure is logged and recorded, never raised."""
        try:
            result = hooks_utils.run_hook_point(self.hooks_dir, point)
        except Exception as err:  # pylint: disable=broad-except  # a hook never keeps the agent from starting
            return self._could_not_run(point, err)
        self._report(result)
        return result

    def _could_not_run(self, point, err, **fields):
        self.counters['failures'] += 1
        LOG.error('hook %s could not run: %s', point, err)
        self.record(EVENT, kind='hook', point=point, rc=None, failed=True, scripts=[], error=str(err)[:ERROR_LIMIT],
                    **fields)

    def _report(self, result, **fields):
        if not result.scripts:
            return
        rc, scripts = _outcome(result)
        self.counters['runs'] += 1
        where = ' for VM %s (%s)' % (fields.get('vm'), fields.get('uuid')) if fields.get('uuid') else ''
        if result.failed:
            self.counters['failures'] += 1
            LOG.warning('%s%s', result.message(), where)
        else:
            LOG.info('hook %s ran%s', result.point, where)
        self.record(EVENT, kind='hook', point=result.point, rc=rc, failed=result.failed, scripts=scripts, **fields)

    # ---------------------------------------------------------------- threads

    def process_pending(self):
        """Handle the queued events and run the queued hooks in the calling thread (tests; threads not started)."""
        for source, work in ((self._jobs, self._handle), (self._runs, lambda run: self._run_vm_point(*run))):
            while True:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    work(item)

    def _xml_loop(self):
        next_sync = time.monotonic() + self.resync_seconds
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, next_sync - time.monotonic()))
            except queue.Empty:
                job = ('sync',)
            if job is None:
                break
            if job[0] == 'sync':
                next_sync = time.monotonic() + self.resync_seconds
            try:
                self._handle(job)
            except Exception:  # pylint: disable=broad-except
                LOG.exception('VM hook bookkeeping failed')

    def _hook_loop(self):
        while True:
            run = self._runs.get()
            if run is None:
                break
            try:
                self._run_vm_point(*run)
            except Exception:  # pylint: disable=broad-except
                LOG.exception('%s failed', run[0])

    def start(self):
        for name, target in (('vm-xml', self._xml_loop), ('vm-hooks', self._hook_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout=STOP_TIMEOUT):
        """Stop taking events; give the hooks already queued ``timeout`` seconds to run."""
        if not self._threads:
            return
        deadline = time.monotonic() + timeout
        self._jobs.put(None)
        self._threads[0].join(max(0.0, deadline - time.monotonic()))
        self._runs.put(None)
        self._threads[1].join(max(0.0, deadline - time.monotonic()))
        if self._threads[1].is_alive():
            LOG.warning('stopping with VM hooks still running or queued')
        self._threads = []
