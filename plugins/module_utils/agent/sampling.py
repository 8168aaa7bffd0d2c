# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Periodic host and VM sampling for the node agent (VDSM's sampling.py / periodic.py).

The agent takes one sample every interval: the host's counters from /proc
and /sys (through ``host/stats.py``'s readers) and every VM's counters from a
single ``virConnectGetAllDomainStats`` call (through ``vm_stats.py``). The
last two samples are kept; rates come from their difference. The results
are shaped exactly as ``host_info``'s ``stats`` section and ``vm_info``'s
VM entries, so those modules can answer from the agent's cache.

One VM whose entry cannot be built (libvirt error, odd stats) is logged and
left out; the others are still reported.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.host import readers as host_readers
from ansible_collections.virtnode.kvm.plugins.module_utils.host import stats as host_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats

LOG = logging.getLogger('virtnode.agent.sampling')
# Bulk calls still waiting for libvirt (a QEMU monitor that stopped answering holds the first call
# that took the domain's job; NOWAIT lets later calls through): beyond this many, wait for them.
MAX_STUCK_SAMPLES = 2
CPU_MODES = ('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal')
# A running VM with no sign of a job is asked about one (controlInfo, a round trip to libvirtd)
# between half this and this long after it was last asked, each at its own time: the safety net
# under the events that announce jobs. At the default 15 s interval a sample asks 1 in 22 VMs.
PROBE_SWEEP_SECONDS = 600.0


def clock_ticks():
    """Kernel clock ticks per second (USER_HZ) that /proc/stat counts in."""
    try:
        return os.sysconf('SC_CLK_TCK')
    except (ValueError, OSError, AttributeError):
        return 100


class HostSampler:
    """Raw host counters now, and host stats from two raw samples."""

    def __init__(self, root='/', clock=None, wall=None):
        self.root = root
        self._clock = clock or time.monotonic
        self._wall = wall or time.time
        self.previous = None
        self.last = None

    def take(self):
        proc_stat = host_stats.read_proc_stat(self.root)
        raw = {
            'monotonic': self._clock(),
            'time': self._wall(),
            'cpu': proc_stat['cpu'],
            'btime': proc_stat['btime'],
            'net': host_stats.read_net_counters(self.root),
            'meminfo': host_readers.read_meminfo(self.root),
            'load': host_stats.read_loadavg(self.root),
            'uptime': host_stats.read_uptime(self.root),
        }
        self.previous, self.last = self.last, raw
        return raw

    def stats(self):
        """The ``stats`` section of ``host_info`` from the last two samples, plus raw ``counters``."""
        before, after = self.previous, self.last
        if after is None:
            return None
        elapsed = after['monotonic'] - before['monotonic'] if before else None
        stats = {
            'sample_interval': round(elapsed, 3) if elapsed else 0,
            'timestamp': round(after['time'], 3),
            'cpu': host_stats.cpu_percentages(before['cpu'] if before else None, after['cpu']),
            'cpu_load': after['load'],
        }
        stats.update(host_stats.memory_usage(after['meminfo']))
        stats['network'] = host_stats.net_rates(before['net'] if before else None, after['net'],
                                                elapsed if elapsed and elapsed > 0 else None)
        stats['uptime_seconds'] = after['uptime']
        stats['boot_time'] = after['btime']
        return stats

    def counters(self):
        """Monotonic counters and gauges of the last sample, in base units, for metrics."""
        after = self.last
        if after is None:
            return None
        ticks = float(clock_ticks())
        jiffies = after['cpu'] or []
        meminfo = after['meminfo']

        def kib(key):
            value = meminfo.get(key)
            return None if value is None else value * 1024

        available = meminfo.get('MemAvailable')
        return {
            'cpu_seconds': dict((mode, jiffies[index] / ticks) for index, mode in enumerate(CPU_MODES)
                                if index < len(jiffies)),
            'memory_total_bytes': kib('MemTotal'),
            'memory_available_bytes': None if available is None else available * 1024,
            'swap_total_bytes': kib('SwapTotal'),
            'swap_free_bytes': kib('SwapFree'),
            'load': after['load'],
            'uptime_seconds': after['uptime'],
            'boot_time_seconds': after['btime'],
            'network': after['net'],
        }


class VmEntries:
    """The VM entries of one sample, shaped by the first reader and kept.

    A sample costs its libvirt calls only; shaping every VM's entry (most of a
    sample's Python time) waits until a query or a scrape asks, once per sample.
    """

    def __init__(self, build):
        self._build = build
        self._entries = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._entries is None:
                self._entries, self._build = self._build(), None
            return self._entries


class VmSampler:
    """Bulk VM statistics from ``getAllDomainStats``; rates from the last two samples.

    What the bulk call lacks is whether an async job (migration, save,
    restore) runs, and that costs one ``controlInfo`` per VM: at 1000 VMs, a
    thousand round trips to libvirtd, ten times the bulk call. So a VM is
    probed (:func:`vm_stats.probe`) when it is new to the sampler, not
    simply running (a paused or shutting down VM: save, incoming migration,
    ENOSPC), hinted (:meth:`hint`: a lifecycle or migration event, which
    libvirt sends for every job that matters), was found in a job last time,
    or its sweep is due (every :data:`PROBE_SWEEP_SECONDS`, at its own time
    so the sweep never lands on one sample). Other running VMs are reported
    as running with no job, which is what a probe would find.
    """

    def __init__(self, libvirt_module=None, records_dir=vm_stats.RECORDS_DIR, sweep_seconds=PROBE_SWEEP_SECONDS,
                 clock=time.monotonic):
        self.libvirt_module = libvirt_module
        self.records_dir = records_dir
        self.sweep_seconds = sweep_seconds
        self.clock = clock
        self.previous = None   # ({uuid: (dom, stats)}, monotonic, {uuid: probe})
        self.last = None
        self.errors = 0
        self.stuck = 0
        self.probed = 0        # VMs probed by the last sample
        self._inflight = []
        self._next_sweep = {}  # uuid -> monotonic time of its next probe without a reason
        self._in_job = set()   # uuids whose last probe found a job
        self._hinted = set()
        self._hint_lock = threading.Lock()
        self._book_lock = threading.Lock()  # a late sample thread may still update what follows

    def reset(self):
        """Forget samples (after a reconnect the domain objects belong to a dead connection)."""
        self.previous = self.last = None
        with self._book_lock:
            self._next_sweep = {}
            self._in_job = set()

    def hint(self, vm_uuid):
        """Something happened to this VM (an event): probe it in the next sample. Any thread."""
        with self._hint_lock:
            self._hinted.add(vm_uuid)

    def callbacks(self):
        """``(event id, handler)`` of the job events that hint a VM, to register on every connection."""
        return [(constants.value('VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION', self.libvirt_module), self._migration_cb),
                (constants.value('VIR_DOMAIN_EVENT_ID_JOB_COMPLETED', self.libvirt_module), self._job_completed_cb)]

    def _hint_dom(self, dom):
        try:
            self.hint(dom.UUIDString())
        except Exception:  # pylint: disable=broad-except  # an event for a domain gone meanwhile
            pass

    def _migration_cb(self, conn, dom, iteration, opaque):  # pylint: disable=unused-argument
        self._hint_dom(dom)

    def _job_completed_cb(self, conn, dom, params, opaque):  # pylint: disable=unused-argument
        self._hint_dom(dom)

    def _must_probe(self, vm_uuid, stats, hinted, now):
        if stats.get('state.state', vm_stats.NOSTATE) not in (vm_stats.RUNNING, vm_stats.BLOCKED):
            return True
        if vm_uuid in hinted or vm_uuid in self._in_job:
            return True
        due = self._next_sweep.get(vm_uuid)
        return due is None or now >= due

    def _sample(self, conn):
        """The bulk stats and, per VM, what they lack (:func:`vm_stats.probe`): every libvirt call of a sample."""
        with self._hint_lock:
            hinted, self._hinted = self._hinted, set()
        raw, taken = vm_stats.sample(conn, None, self.libvirt_module)
        transient = vm_stats.transient_uuids(conn, self.libvirt_module) if raw else set()
        probes = {}
        now = self.clock()
        with self._book_lock:
            asked = {vm_uuid for vm_uuid, (_dom, stats) in raw.items() if self._must_probe(vm_uuid, stats, hinted, now)}
        probed = 0
        for vm_uuid, (dom, stats) in raw.items():
            persistent = vm_uuid not in transient
            if vm_uuid not in asked:
                probes[vm_uuid] = vm_stats.quiet_probe(persistent)
                continue
            try:
                probes[vm_uuid] = vm_stats.probe(dom, stats, persistent)
                probed += 1
            except libvirt_conn.LibvirtError as err:  # the domain went away meanwhile
                LOG.debug('cannot probe VM %s: %s', vm_uuid, libvirt_conn.error_text(err))
        with self._book_lock:
            for vm_uuid, found in probes.items():
                if vm_uuid not in asked:
                    continue
                if found['job_op'] is not None:
                    self._in_job.add(vm_uuid)
                else:
                    self._in_job.discard(vm_uuid)
                self._next_sweep[vm_uuid] = now + self.sweep_seconds * random.uniform(0.5, 1.0)
            for vm_uuid in set(self._next_sweep) - set(raw):
                del self._next_sweep[vm_uuid]
                self._in_job.discard(vm_uuid)
        self.probed = probed
        return raw, taken, probes

    def take(self, conn):
        """One bulk sample. libvirt errors propagate (the caller decides about reconnecting)."""
        sample = self._sample(conn)
        self.previous, self.last = self.last, sample
        return sample

    def entries(self):
        """VM entries (as ``vm_stats.vm_entry`` builds them) sorted by name; errors counted, not raised."""
        return self._entries(self.previous, self.last)

    def _entries(self, previous, last_sample):
        if last_sample is None:
            return []
        last, t1, probes = last_sample
        first, t0 = previous[:2] if previous else ({}, None)
        elapsed = (t1 - t0) if t0 is not None else None
        entries = []
        for vm_uuid, (dom, stats) in last.items():
            if vm_uuid not in probes:
                continue
            before = first.get(vm_uuid, (None, None))[1]
            try:
                entries.append(vm_stats.vm_entry(dom, before, stats, elapsed, self.records_dir, probes[vm_uuid]))
            except Exception as err:  # pylint: disable=broad-except
                self.errors += 1
                detail = libvirt_conn.error_text(err) if isinstance(err, libvirt_conn.LibvirtError) else repr(err)
                LOG.warning('cannot build the statistics of VM %s: %s', vm_uuid, detail)
        entries.sort(key=lambda entry: (entry.get('name') or '', entry['uuid']))
        return entries

    def sample_bounded(self, conn, timeout):
        """One sample (every libvirt call of it) in a worker thread, waited for at most ``timeout`` seconds.

        Returns the sample's :class:`VmEntries`, or None when libvirt has not
        answered in time: the worker is left to finish and its late result is
        dropped, so a newer sample is never replaced by an older one. The bulk
        call passes NOWAIT, so the next sample is not held by the stuck one.
        libvirt errors propagate as from ``take``.
        """
        self._inflight = [thread for thread in self._inflight if thread.is_alive()]
        if len(self._inflight) >= MAX_STUCK_SAMPLES:
            self.stuck += 1
            LOG.warning('%d VM samples still wait for libvirt; not starting another', len(self._inflight))
            return None
        previous = self.last
        box = {}

        def work():
            try:
                box['sample'] = self._sample(conn)
            except BaseException as err:  # pylint: disable=broad-except  # handed to the waiting thread
                box['error'] = err

        thread = threading.Thread(target=work, name='vm-sample', daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self._inflight.append(thread)
            self.stuck += 1
            LOG.warning('VM sample did not complete within %.1fs (a QEMU monitor not answering?); '
                        'keeping the previous one', timeout)
            return None
        if 'error' in box:
            raise box['error']
        sample = box['sample']
        self.previous, self.last = previous, sample
        return VmEntries(lambda: self._entries(previous, sample))
