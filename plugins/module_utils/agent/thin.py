# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Thin provisioning in the node agent: extend block COW volumes before the guest fills them.

Every running VM disk that is a qcow2 image on a block volume (its source is
a stable path of ``thin_block``, which names domain, image and volume) is a
*drive* with a small state machine, as in VDSM:

    unset --set threshold--> set --BLOCK_THRESHOLD event / check--> exceeded
      ^                                                                |
      +--------------- extended (new threshold set) <-- extending <----+

Watermark (VDSM's rule, sizes in bytes):

    limit     = (100 - utilization) % of chunk
    threshold = max(1, physical - limit)                 (virDomainSetBlockThreshold)
    next size = round up to MiB(physical + chunk), at most round up to MiB(capacity x 1.1)

What moves a drive to *exceeded*: libvirt's BLOCK_THRESHOLD event (one
shot, fired by QEMU when a write goes past the threshold), an IO error with
reason ``enospc`` (the disk's error policy is ``stop``, so QEMU paused the
VM), or the periodic safety check (every ``check_interval`` s: drives whose
threshold is unset or exceeded, VMs paused on an IO error, and, beyond
VDSM, drives whose allocation passed a threshold whose event never came,
for one ``blockInfo`` call per drive). Event handlers
only mark the drive and queue it; worker threads extend:

1. read allocation and capacity (``blockInfo``) and the physical size;
2. an allocation above the next size is *improbable* (a corrupted image
   asking for endless space): the VM is paused and an event says why;
3. get the space: directly when this host is the pool's SPM
   (``thin_block.extend_volume_on_spm`` in a fenced SPM task, see
   ``spm_extend``), otherwise through the master
   domain's mailbox (``mailbox_service.ExtendRequester``) and the SPM's reply;
4. refresh the device on this host, set the next threshold, repeat while the
   allocation is still above it, and resume the VM if it was paused on ENOSPC.

Events recorded (``kind: thin``): ``volume_extended`` (old and new size,
trigger, path ``local``/``mailbox``, ``latency`` from the trigger to the new
size reported by libvirt for the running disk, ``extend_seconds`` of it spent
getting the space, ``refresh_seconds`` making this host see it), ``volume_extend_failed``, ``volume_enospc``,
``improbable_allocation``, ``volume_at_max_size``.
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import threading
import time
import xml.etree.ElementTree as ET

from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import spm_extend as spm_extend_task
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import histogram as agent_histogram
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

LOG = logging.getLogger('virtnode.agent.thin')
MIB = thin_block.MIB

DEFAULT_UTILIZATION = 20
DEFAULT_CHUNK_MIB = 2560
DEFAULT_CHECK_INTERVAL = 2.0
DEFAULT_EXTEND_TIMEOUT = 60.0
WORKERS = 2
# How long the pool a domain belongs to is remembered (attaching a domain to another pool is rare).
POOL_CACHE_SECONDS = 60.0
# Rounds of one extension job while the allocation stays above the new threshold.
MAX_ROUNDS = 16

UNSET, SET, EXCEEDED = 'unset', 'set', 'exceeded'


# ------------------------------------------------------------------ watermark math

def watermark_limit(chunk, utilization):
    """Free bytes left on the device when the threshold fires: (100 - utilization) % of ``chunk``."""
    return (100 - utilization) * chunk // 100


def threshold_for(physical, chunk, utilization):
    """The block threshold for a device of ``physical`` bytes."""
    return max(1, physical - watermark_limit(chunk, utilization))


def next_size(physical, capacity, chunk):
    """The size to extend to: one chunk more, rounded up to MiB, capped at capacity x 1.1."""
    return min(thin_block.round_up_mib(physical + chunk), thin_block.max_physical(capacity))


def improbable(allocation, next_physical):
    """VDSM's guard: a guest cannot have written past the size it is about to get."""
    return allocation > next_physical


def check_settings(utilization, chunk_mib, check_interval):
    """Validate the agent's thin settings (raises VirtnodeError naming the bad one)."""
    if isinstance(utilization, bool) or not isinstance(utilization, int) or not 0 <= utilization <= 99:
        raise VirtnodeError('agent configuration: thin_utilization must be an integer from 0 to 99 (percent), got %r'
                            % (utilization,))
    if isinstance(chunk_mib, bool) or not isinstance(chunk_mib, int) or chunk_mib < 1:
        raise VirtnodeError('agent configuration: thin_chunk_mib must be a positive integer, got %r' % (chunk_mib,))
    if isinstance(check_interval, bool) or not isinstance(check_interval, (int, float)) or check_interval <= 0:
        raise VirtnodeError('agent configuration: thin_check_interval must be a positive number, got %r'
                            % (check_interval,))


# ------------------------------------------------------------------ drives

class Drive:
    """One monitored disk of a running VM."""

    def __init__(self, vm_uuid, vm_name, target, index, path, sd_uuid, img_uuid, vol_uuid):
        self.vm_uuid, self.vm_name = vm_uuid, vm_name
        self.target, self.index, self.path = target, index, path
        self.sd_uuid, self.img_uuid, self.vol_uuid = sd_uuid, img_uuid, vol_uuid
        self.state = UNSET
        self.threshold = None
        self.queued = False
        self.enospc = False
        self.at_max = False
        self.trigger = None
        self.triggered_at = None

    @property
    def key(self):
        return (self.vm_uuid, self.target)

    @property
    def threshold_dev(self):
        """The indexed target (``vda[1]``) the threshold is set on, as VDSM does."""
        return '%s[%s]' % (self.target, self.index) if self.index is not None else self.target

    def exceed(self, trigger, now):
        """Mark exceeded; True when the drive must be queued (not queued yet)."""
        self.state = EXCEEDED
        if self.queued:
            return False
        self.queued = True
        self.trigger, self.triggered_at = trigger, now
        return True


def drives_of_xml(xml_text, vm_uuid, vm_name):
    """The thin block drives of a domain's live XML."""
    found = []
    root = ET.fromstring(xml_text)
    for disk in root.findall('devices/disk'):
        if disk.get('type') != 'block' or disk.get('device', 'disk') != 'disk':
            continue
        driver, source, target = disk.find('driver'), disk.find('source'), disk.find('target')
        if driver is None or driver.get('type') != 'qcow2' or source is None or target is None:
            continue
        if disk.find('readonly') is not None:
            continue
        ids = thin_block.volume_of_path(source.get('dev'))
        if ids is None:
            continue
        index = source.get('index')
        found.append(Drive(vm_uuid, vm_name, target.get('dev'), int(index) if index else None, source.get('dev'), *ids))
    return found


def _target_name(dev):
    """``vda`` of ``vda[1]`` (threshold events name the indexed target)."""
    return (dev or '').split('[', 1)[0]


# ------------------------------------------------------------------ getting space

class Extender:
    """Gets more storage for a volume: directly on the SPM, through the mailbox elsewhere."""

    def __init__(self, timeout=DEFAULT_EXTEND_TIMEOUT, spm_extend=None, pool_of=None, is_spm=None, requester_for=None):
        self.timeout = timeout
        self.spm_extend = spm_extend or spm_extend_task.extend
        self.pool_of = pool_of or pool_of_domain
        self.is_spm = is_spm or is_local_spm
        self.requester_for = requester_for or self._requester
        self._requesters = {}
        self._pools = {}
        self._lock = threading.Lock()

    def _requester(self, sp_uuid):
        with self._lock:
            requester = self._requesters.get(sp_uuid)
            if requester is None:
                # Imported here: only hosts that use the mailbox need it.
                from ansible_collections.virtnode.kvm.plugins.module_utils.agent import (  # pylint: disable=import-outside-toplevel
                    mailbox_server as mailbox_service,
                )
                master_dir, host_id = mailbox_service.find_pool_mailbox(sp_uuid)
                requester = mailbox_service.ExtendRequester(master_dir, host_id)
                self._requesters[sp_uuid] = requester
            return requester

    def extend(self, sd_uuid, vol_uuid, size_mib):
        """``(granted_mib, path)``; path is ``local`` (this host is SPM) or ``mailbox``."""
        sp_uuid, found_at = self._pools.get(sd_uuid, (None, None))
        if found_at is None or time.monotonic() - found_at > POOL_CACHE_SECONDS:
            sp_uuid = self.pool_of(sd_uuid)
            self._pools[sd_uuid] = (sp_uuid, time.monotonic())
        if sp_uuid is None:
            raise VirtnodeError('storage domain %s is in no storage pool this host is connected to' % sd_uuid,
                                {'sd_uuid': sd_uuid})
        if self.is_spm(sp_uuid):
            return self.spm_extend(sd_uuid, vol_uuid, size_mib), 'local'
        return self.requester_for(sp_uuid).request(sd_uuid, vol_uuid, size_mib, timeout=self.timeout), 'mailbox'


def pool_of_domain(sd_uuid, pools_dir=storage.POOL_STATE_DIR):
    """The connected pool (from this host's pool notes) whose master lists ``sd_uuid``, or None."""
    for path in sorted(glob.glob(os.path.join(pools_dir, '*.json'))):
        try:
            sp_uuid = fileio.read_json(path, default={}).get('sp_uuid')
            _master_dir, master_md = storage.find_master(sp_uuid, required=False)
        except VirtnodeError:
            continue
        if master_md is not None and (sd_uuid == master_md.sd_uuid or sd_uuid in storage.pool_domains(master_md)):
            return sp_uuid
    return None


def is_local_spm(sp_uuid):
    """This host's SPM holder runs and holds the role (it exits as soon as it loses the lease)."""
    state = spm.read_state(sp_uuid) or {}
    return bool(state.get('alive')) and state.get('status') == spm.SPM


# ------------------------------------------------------------------ the monitor

class ThinMonitor:
    """Drives of running VMs, their thresholds, and the workers that extend them.

    ``get_conn()`` returns the agent's libvirt connection (or None);
    ``record(event, **fields)`` writes an event. :meth:`callbacks` lists the
    ``(event id, handler)`` pairs to register on every connection.
    """

    def __init__(self, get_conn, record, utilization=DEFAULT_UTILIZATION, chunk_mib=DEFAULT_CHUNK_MIB,
                 check_interval=DEFAULT_CHECK_INTERVAL, extender=None, backend_for=None, libvirt_module=None,
                 clock=None, workers=WORKERS):
        check_settings(utilization, chunk_mib, check_interval)
        self.get_conn = get_conn
        self.record = record
        self.utilization = utilization
        self.chunk = chunk_mib * MIB
        self.check_interval = float(check_interval)
        self.extender = extender or Extender()
        self.backend_for = backend_for or thin_block.backend_for
        self.libvirt = libvirt_module if libvirt_module is not None else libvirt_conn.libvirt
        self.clock = clock or time.monotonic
        self.drives = {}
        self._vms = {}
        self._dirty = set()
        self._lock = threading.RLock()
        self._queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = []
        self._worker_count = workers
        self.counters = {'extensions': 0, 'failures': 0, 'enospc': 0, 'threshold_events': 0}
        # For the metrics: extensions by path, trigger-to-new-size seconds, and the seconds a
        # mailbox request took from its write to the SPM's reply.
        self.extensions_by_path = {'local': 0, 'mailbox': 0}
        self.extension_seconds = agent_histogram.Histogram()
        self.mailbox_request_seconds = agent_histogram.Histogram()

    def _const(self, name):
        """libvirt's constant ``name``, from the bindings this monitor was given."""
        return constants.value(name, self.libvirt)

    # ---------------------------------------------------------------- libvirt events

    def callbacks(self):
        return [(self._const('VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD'), self._threshold_cb),
                (self._const('VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON'), self._io_error_cb)]

    def _threshold_cb(self, conn, dom, dev, path, threshold, excess, opaque):  # pylint: disable=unused-argument
        try:
            self.on_threshold(dom.UUIDString(), dev, threshold, excess)
        except Exception:  # pylint: disable=broad-except
            LOG.exception('block threshold handler failed')

    def _io_error_cb(self, conn, dom, src_path, dev_alias, action, reason, opaque):  # pylint: disable=unused-argument
        try:
            self.on_io_error(dom.UUIDString(), src_path, reason)
        except Exception:  # pylint: disable=broad-except
            LOG.exception('IO error handler failed')

    def on_threshold(self, vm_uuid, dev, threshold, excess):
        """BLOCK_THRESHOLD: the drive is exceeded; queue its extension."""
        self.counters['threshold_events'] += 1
        now = self.clock()
        with self._lock:
            drive = self.drives.get((vm_uuid, _target_name(dev)))
            if drive is None:
                LOG.debug('threshold event for %s of unknown VM %s: rediscovering', dev, vm_uuid)
                self._dirty.add(vm_uuid)
                self._wake.set()
                return
            queued = drive.exceed('threshold', now)
            LOG.debug('%s %s: threshold %s exceeded by %s%s', drive.vm_name, dev, threshold, excess,
                      '' if queued else ' (extension already queued)')
            if queued:
                self._queue.put(drive.key)

    def on_io_error(self, vm_uuid, src_path, reason):
        """An IO error: with reason ``enospc`` the VM paused on a full drive; extend it at once."""
        if reason != 'enospc':
            return
        now = self.clock()
        with self._lock:
            drive = next((d for d in self.drives.values() if d.vm_uuid == vm_uuid and d.path == src_path), None)
            if drive is None:
                drive = next((d for d in self.drives.values()
                              if d.vm_uuid == vm_uuid and os.path.realpath(d.path) == os.path.realpath(src_path or '/')),
                             None)
            if drive is None:
                self._dirty.add(vm_uuid)
                self._wake.set()
                return
        self._enospc(drive, now)

    def _enospc(self, drive, now):
        """The drive is full and its VM paused: queue it at once; one event per pause."""
        with self._lock:
            first = not drive.enospc
            drive.enospc = True
            if drive.exceed('enospc', now):
                self._queue.put(drive.key)
        if first:
            self.counters['enospc'] += 1
            self.record('volume_enospc', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid, drive=drive.target,
                        sd_uuid=drive.sd_uuid, vol_uuid=drive.vol_uuid)

    def on_lifecycle(self, dom, event, detail):  # pylint: disable=unused-argument
        """Started/resumed VMs are (re)discovered; stopped ones forgotten; paused ones checked."""
        try:
            vm_uuid = dom.UUIDString()
        except libvirt_conn.LibvirtError:
            return
        with self._lock:
            if event == self._const('VIR_DOMAIN_EVENT_STOPPED'):
                self._forget(vm_uuid)
            else:
                self._dirty.add(vm_uuid)
        if event in (self._const('VIR_DOMAIN_EVENT_STARTED'), self._const('VIR_DOMAIN_EVENT_SUSPENDED'),
                     self._const('VIR_DOMAIN_EVENT_RESUMED')):
            self._wake.set()

    def _paused_on_io_error(self, dom):
        state, reason = dom.state()
        return state == self._const('VIR_DOMAIN_PAUSED') and reason == self._const('VIR_DOMAIN_PAUSED_IOERROR')

    def _forget(self, vm_uuid):
        self._vms.pop(vm_uuid, None)
        for key in [k for k in self.drives if k[0] == vm_uuid]:
            del self.drives[key]

    # ---------------------------------------------------------------- periodic check

    def check_once(self):
        """Discover drives, set unset thresholds, queue exceeded drives and ENOSPC-paused VMs."""
        conn = self.get_conn()
        if conn is None:
            return
        active = self._const('VIR_CONNECT_LIST_DOMAINS_ACTIVE')
        seen = set()
        for dom in conn.listAllDomains(active):
            try:
                vm_uuid = dom.UUIDString()
                seen.add(vm_uuid)
                self._check_vm(dom, vm_uuid)
            except libvirt_conn.LibvirtError as err:
                LOG.debug('thin check of a domain failed: %s', libvirt_conn.error_text(err))
        with self._lock:
            for vm_uuid in [v for v in self._vms if v not in seen]:
                self._forget(vm_uuid)

    def _check_vm(self, dom, vm_uuid):
        with self._lock:
            rediscover = vm_uuid not in self._vms or vm_uuid in self._dirty
            self._dirty.discard(vm_uuid)
        if rediscover:
            self._discover(dom, vm_uuid)
        with self._lock:
            drives = [d for d in self.drives.values() if d.vm_uuid == vm_uuid]
        if not drives:
            return
        nospace = set()
        if self._paused_on_io_error(dom):
            no_space = self._const('VIR_DOMAIN_DISK_ERROR_NO_SPACE')
            nospace = set(t for t, err in (dom.diskErrors() or {}).items() if err == no_space)
        for drive in drives:
            if drive.state == UNSET and not drive.queued:
                self._set_threshold(dom, drive)
            elif drive.state == SET and not drive.queued and drive.threshold is not None:
                # Beyond VDSM: a threshold event lost (or fired while nobody listened) is caught here.
                if dom.blockInfo(drive.target)[1] >= drive.threshold:
                    with self._lock:
                        drive.state = EXCEEDED
            if drive.target in nospace:
                self._enospc(drive, self.clock())
                continue
            with self._lock:
                if drive.state == EXCEEDED:
                    queue_it = drive.exceed('periodic', self.clock())
                else:
                    queue_it = False
            if queue_it:
                self._queue.put(drive.key)

    def _discover(self, dom, vm_uuid):
        found = drives_of_xml(dom.XMLDesc(0), vm_uuid, dom.name())
        with self._lock:
            self._vms[vm_uuid] = True
            current = dict((k, d) for k, d in self.drives.items() if k[0] == vm_uuid)
            for drive in found:
                old = current.pop(drive.key, None)
                if old is not None and old.path == drive.path and old.index == drive.index:
                    continue
                self.drives[drive.key] = drive
            for key in current:
                del self.drives[key]

    def _set_threshold(self, dom, drive, physical=None, allocation=None):
        if physical is None:
            backend = self.backend_for(drive.sd_uuid)
            physical = backend.physical_size(drive.sd_uuid, drive.img_uuid, drive.vol_uuid)
        if allocation is None:
            allocation = dom.blockInfo(drive.target)[1]
        threshold = threshold_for(physical, self.chunk, self.utilization)
        dom.setBlockThreshold(drive.threshold_dev, threshold)
        LOG.debug('%s %s: threshold set to %d (physical %d, allocation %d)', drive.vm_name, drive.threshold_dev,
                  threshold, physical, allocation)
        with self._lock:
            drive.threshold = threshold
            drive.state = EXCEEDED if allocation >= threshold else SET
        return drive.state == SET

    # ---------------------------------------------------------------- extension

    def extend_drive(self, key):
        """Extend one queued drive until its allocation is below the threshold; resume the VM if due."""
        with self._lock:
            drive = self.drives.get(key)
        if drive is None:
            return
        try:
            self._extend(drive)
        except (VirtnodeError, libvirt_conn.LibvirtError, OSError) as err:
            message = err.message if isinstance(err, VirtnodeError) else (
                libvirt_conn.error_text(err) if isinstance(err, libvirt_conn.LibvirtError) else str(err))
            self.counters['failures'] += 1
            LOG.error('%s %s: extension failed: %s', drive.vm_name, drive.target, message)
            self.record('volume_extend_failed', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid, drive=drive.target,
                        sd_uuid=drive.sd_uuid, vol_uuid=drive.vol_uuid, trigger=drive.trigger, reason=message)
            with self._lock:
                drive.state = EXCEEDED  # the periodic check tries again
        finally:
            with self._lock:
                drive.queued = False

    def _extend(self, drive):
        conn = self.get_conn()
        if conn is None:
            raise VirtnodeError('libvirt is not connected')
        dom = conn.lookupByUUIDString(drive.vm_uuid)
        backend = self.backend_for(drive.sd_uuid)
        ids = (drive.sd_uuid, drive.img_uuid, drive.vol_uuid)
        started, trigger = drive.triggered_at or self.clock(), drive.trigger
        force = drive.enospc
        for _round in range(MAX_ROUNDS):
            capacity, allocation = dom.blockInfo(drive.target)[:2]
            physical = backend.physical_size(*ids)
            if not force and allocation < threshold_for(physical, self.chunk, self.utilization):
                # Enough room (again): the next threshold, and done.
                self._set_threshold(dom, drive, physical, allocation)
                break
            force = False
            target = next_size(physical, capacity, self.chunk)
            if improbable(allocation, target):
                self._improbable(dom, drive, capacity, allocation, physical, target)
                return
            if target <= physical:
                with self._lock:
                    drive.state = SET
                if not drive.at_max:
                    drive.at_max = True
                    LOG.warning('%s %s: volume %s is at its maximum size %d', drive.vm_name, drive.target,
                                drive.vol_uuid, physical)
                    self.record('volume_at_max_size', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid,
                                drive=drive.target, sd_uuid=drive.sd_uuid, vol_uuid=drive.vol_uuid, size=physical)
                return
            asked = self.clock()
            granted_mib, path = self.extender.extend(drive.sd_uuid, drive.vol_uuid, target // MIB)
            if granted_mib * MIB < target and granted_mib * MIB <= physical:
                raise VirtnodeError('the SPM granted %d MiB, the volume has %d bytes already' % (granted_mib, physical))
            granted = self.clock()
            new_physical = backend.refresh(*ids)
            # The size libvirt reports for the running disk: what QEMU now sees.
            visible = dom.blockInfo(drive.target)[2]
            refreshed = self.clock()
            latency = refreshed - started
            self.counters['extensions'] += 1
            self.extensions_by_path[path] = self.extensions_by_path.get(path, 0) + 1
            self.extension_seconds.observe(latency)
            if path == 'mailbox':
                self.mailbox_request_seconds.observe(granted - asked)
            LOG.info('%s %s: volume %s extended %d -> %d bytes via %s (%s, %.1f ms)', drive.vm_name, drive.target,
                     drive.vol_uuid, physical, new_physical, path, trigger, latency * 1000)
            self.record('volume_extended', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid, drive=drive.target,
                        sd_uuid=drive.sd_uuid, vol_uuid=drive.vol_uuid, old_size=physical, new_size=new_physical,
                        allocation=allocation, capacity=capacity, trigger=trigger, path=path,
                        visible_size=visible, latency=round(latency, 6), extend_seconds=round(granted - asked, 6),
                        refresh_seconds=round(refreshed - granted, 6))
            started, trigger = self.clock(), 'again'
        self._resume_if_paused_on_enospc(dom, drive)

    def _improbable(self, dom, drive, capacity, allocation, physical, target):
        message = ('improbable extension request for volume %s on domain %s: allocation %d is past the next size %d '
                   '(capacity %d, physical %d); pausing the VM to avoid corruption'
                   % (drive.vol_uuid, drive.sd_uuid, allocation, target, capacity, physical))
        LOG.error('%s: %s', drive.vm_name, message)
        try:
            dom.suspend()
        except libvirt_conn.LibvirtError as err:
            message += ' (pause failed: %s)' % libvirt_conn.error_text(err)
        self.record('improbable_allocation', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid, drive=drive.target,
                    sd_uuid=drive.sd_uuid, vol_uuid=drive.vol_uuid, allocation=allocation, capacity=capacity,
                    size=physical, next_size=target, reason=message)

    def _resume_if_paused_on_enospc(self, dom, drive):
        with self._lock:
            drive.enospc = False
            others = [d for d in self.drives.values() if d.vm_uuid == drive.vm_uuid and d.state == EXCEEDED]
        if others:
            return  # their own extension resumes the VM
        if not self._paused_on_io_error(dom):
            return
        errors = dom.diskErrors() or {}
        harmless = (self._const('VIR_DOMAIN_DISK_ERROR_NONE'), self._const('VIR_DOMAIN_DISK_ERROR_NO_SPACE'))
        if any(code not in harmless for code in errors.values()):
            LOG.warning('%s: paused on a non-ENOSPC IO error, not resuming', drive.vm_name)
            return
        dom.resume()
        LOG.info('%s: resumed after extending %s', drive.vm_name, drive.target)
        self.record('vm_resumed_after_extension', kind='thin', vm=drive.vm_name, uuid=drive.vm_uuid,
                    drive=drive.target, vol_uuid=drive.vol_uuid)

    # ---------------------------------------------------------------- threads

    def _worker(self):
        while not self._stop.is_set():
            key = self._queue.get()
            if key is None:
                break
            try:
                self.extend_drive(key)
            except Exception:  # pylint: disable=broad-except
                LOG.exception('thin extension worker failed')

    def _check_loop(self):
        while not self._stop.is_set():
            try:
                self.check_once()
            except libvirt_conn.LibvirtError as err:
                LOG.warning('thin check failed: %s', libvirt_conn.error_text(err))
            except Exception:  # pylint: disable=broad-except
                LOG.exception('thin check failed')
            self._wake.wait(self.check_interval)
            self._wake.clear()

    def start(self):
        for index in range(self._worker_count):
            thread = threading.Thread(target=self._worker, name='thin-extend-%d' % index, daemon=True)
            thread.start()
            self._threads.append(thread)
        thread = threading.Thread(target=self._check_loop, name='thin-check', daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self):
        self._stop.set()
        self._wake.set()
        for _thread in range(self._worker_count):
            self._queue.put(None)

    def status(self):
        with self._lock:
            drives = [{'vm': d.vm_name, 'uuid': d.vm_uuid, 'drive': d.target, 'vol_uuid': d.vol_uuid, 'state': d.state,
                       'threshold': d.threshold} for d in self.drives.values()]
        return dict(self.counters, drives=sorted(drives, key=lambda d: (d['vm'] or '', d['drive'])),
                    extensions_by_path=dict(self.extensions_by_path),
                    extension_seconds=self.extension_seconds.snapshot(),
                    mailbox_request_seconds=self.mailbox_request_seconds.snapshot())
