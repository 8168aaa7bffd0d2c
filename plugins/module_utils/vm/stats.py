# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM status in VDSM's vocabulary, exit reasons, and bulk statistics.

Shared by the ``vm`` and ``vm_info`` modules and the node agent. Statistics
come from one ``virConnectGetAllDomainStats`` call per sample (VDSM's bulk
sampling), never from one call per VM per counter; rates come from two
samples ``sample_interval`` apart.

libvirt's enum values are part of its stable ABI; they are spelled out
here so this file works with the fake libvirt of the unit tests and
without the bindings. The records the exit reasons come from are kept by
:mod:`records`.
"""

from __future__ import annotations

import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.records import RECORDS_DIR, read_record

# virDomainState
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
ACTIVE_STATES = (RUNNING, BLOCKED, PAUSED, SHUTDOWN, PMSUSPENDED)  # a QEMU process exists
# virDomainPausedReason
PAUSED_REASONS = ('unknown', 'user', 'migration', 'save', 'dump', 'ioerror', 'watchdog', 'from_snapshot',
                  'shutting_down', 'snapshot', 'crashed', 'starting_up', 'postcopy', 'postcopy_failed', 'api_error')
PAUSED_MIGRATION, PAUSED_SAVE, PAUSED_IOERROR, PAUSED_STARTING_UP = 2, 3, 5, 11
PAUSED_POSTCOPY = 12
# virDomainShutoffReason
SHUTOFF_REASONS = ('unknown', 'shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from_snapshot',
                   'daemon')
# virDomainJobOperation
JOB_OPERATIONS = ('unknown', 'start', 'save', 'restore', 'migration_in', 'migration_out', 'snapshot',
                  'snapshot_revert', 'dump', 'backup', 'snapshot_delete')
JOB_SAVE, JOB_RESTORE, JOB_MIGRATION_IN, JOB_MIGRATION_OUT = 2, 3, 4, 5
DISK_ERROR_NO_SPACE = 2

# VDSM's status strings (lib/vdsm/common/... vmstatus).
WAIT_FOR_LAUNCH = 'WaitForLaunch'
POWERING_UP = 'Powering up'
UP = 'Up'
PAUSED_STATUS = 'Paused'
POWERING_DOWN = 'Powering down'
SAVING_STATE = 'Saving State'
RESTORING_STATE = 'Restoring state'
MIGRATION_SOURCE = 'Migration Source'
MIGRATION_DESTINATION = 'Migration Destination'
DOWN = 'Down'
STATUSES = (WAIT_FOR_LAUNCH, POWERING_UP, UP, PAUSED_STATUS, POWERING_DOWN, 'RebootInProgress', MIGRATION_SOURCE,
            MIGRATION_DESTINATION, SAVING_STATE, RESTORING_STATE, DOWN)

# VDSM's exit reasons (vmexitreason): code -> message.
EXIT_SUCCESS = 0
EXIT_GENERIC_ERROR = 1
EXIT_LIBVIRT_START_FAILED = 3
EXIT_MIGRATION_SUCCEEDED = 4
EXIT_SAVE_STATE_SUCCEEDED = 5
EXIT_ADMIN_SHUTDOWN = 6
EXIT_USER_SHUTDOWN = 7
EXIT_MESSAGES = {
    0: 'VM terminated successfully',
    1: 'VM terminated with error',
    2: 'Lost connection with qemu process',
    3: 'failed to start libvirt vm',
    4: 'Migration succeeded',
    5: 'SaveState succeeded',
    6: 'Admin shut down',
    7: 'User shut down from within the guest',
    8: 'VM failed to migrate',
}
# What libvirt's shut-off reason says when no record of ours exists.
_SHUTOFF_EXIT = {1: EXIT_USER_SHUTDOWN, 2: EXIT_ADMIN_SHUTDOWN, 3: EXIT_GENERIC_ERROR, 4: EXIT_MIGRATION_SUCCEEDED,
                 5: EXIT_SAVE_STATE_SUCCEEDED, 6: EXIT_LIBVIRT_START_FAILED}


def _name(table, index):
    return table[index] if 0 <= index < len(table) else 'unknown'


def vdsm_status(state, reason=0, job_operation=None):
    """VDSM's status string for a libvirt (state, reason) and the current job's operation."""
    if job_operation == JOB_MIGRATION_OUT and state in (RUNNING, BLOCKED, PAUSED):
        return MIGRATION_SOURCE
    if job_operation == JOB_SAVE:
        return SAVING_STATE
    if job_operation == JOB_RESTORE:
        return RESTORING_STATE
    if job_operation == JOB_MIGRATION_IN:
        return MIGRATION_DESTINATION
    if state in (RUNNING, BLOCKED):
        return UP
    if state == PAUSED:
        if reason == PAUSED_STARTING_UP:
            return WAIT_FOR_LAUNCH
        if reason == PAUSED_SAVE:
            return SAVING_STATE
        if reason == PAUSED_MIGRATION:
            return MIGRATION_SOURCE
        return PAUSED_STATUS
    if state == PMSUSPENDED:
        return PAUSED_STATUS
    if state == SHUTDOWN:
        return POWERING_DOWN
    if state == NOSTATE:
        return WAIT_FOR_LAUNCH
    return DOWN


def pause_info(state, reason, disk_errors=None):
    """(pause_reason, pause_code): libvirt's reason name and VDSM's pauseCode (None unless paused)."""
    if state != PAUSED:
        return None, None
    name = _name(PAUSED_REASONS, reason)
    if reason == PAUSED_IOERROR:
        codes = set((disk_errors or {}).values())
        return name, 'ENOSPC' if DISK_ERROR_NO_SPACE in codes else 'EIO'
    if reason in (PAUSED_POSTCOPY, PAUSED_POSTCOPY + 1):
        return name, 'POSTCOPY'
    return name, 'NOERR'


def domain_status(dom):
    """Status dict of a libvirt domain: status, state names, pause reason/code, persistent."""
    state, reason = dom.state()
    job_op = None
    if state in (RUNNING, BLOCKED, PAUSED):
        job_op = current_job_operation(dom)
    disk_errors = None
    if state == PAUSED and reason == PAUSED_IOERROR:
        try:
            disk_errors = dom.diskErrors()
        except Exception:  # pylint: disable=broad-except
            disk_errors = None
    pause_reason, pause_code = pause_info(state, reason, disk_errors)
    return {
        'status': vdsm_status(state, reason, job_op),
        'pause_reason': pause_reason,
        'pause_code': pause_code,
        'persistent': bool(dom.isPersistent()),
    }


def current_job_operation(dom):
    """The active job's operation code, or None (no job, or libvirt cannot tell)."""
    try:
        stats = dom.jobStats()
    except Exception:  # pylint: disable=broad-except
        return None
    if not stats or not stats.get('type'):
        return None
    return stats.get('operation')


def migration_progress(dom):
    """Progress of an outgoing migration from the domain's job stats, or None."""
    try:
        stats = dom.jobStats()
    except Exception:  # pylint: disable=broad-except
        return None
    return _migration_from(stats)


def _migration_from(stats):
    if not stats or not stats.get('type') or stats.get('operation') not in (JOB_MIGRATION_OUT, None):
        return None
    total = stats.get('data_total') or 0
    remaining = stats.get('data_remaining') or 0
    return {
        'progress_percent': int(100 * (total - remaining) / total) if total else 0,
        'elapsed_ms': stats.get('time_elapsed'),
        'data_total': total,
        'data_processed': stats.get('data_processed'),
        'data_remaining': remaining,
        'memory_dirty_rate': stats.get('memory_dirty_rate'),
        'downtime_ms': stats.get('downtime'),
        # Percent of vCPU time auto-converge takes from the guest; libvirt reports it only once QEMU throttles.
        'auto_converge_throttle': stats.get('auto_converge_throttle'),
    }


def completed_migration(dom, completed_flag):
    """What a finished incoming migration took, from the destination domain's completed job stats (libvirt sends
    the source's figures along): ``downtime_ms``, ``total_ms``, ``data_transferred`` (bytes), ``memory_bps`` and the
    auto-converge throttle (percent, None when QEMU never throttled); None when libvirt kept none."""
    try:
        stats = dom.jobStats(completed_flag)
    except Exception:  # pylint: disable=broad-except
        return None
    if not stats or not stats.get('type'):
        return None
    return {
        'downtime_ms': stats.get('downtime'),
        'total_ms': stats.get('time_elapsed'),
        'data_transferred': stats.get('data_processed'),
        'memory_bps': stats.get('memory_bps'),
        'auto_converge_throttle': stats.get('auto_converge_throttle'),
    }


# --------------------------------------------------------------------------
# why VMs went down (VDSM keeps exitCode/exitReason until destroy)

def exit_record(code, message=None, **extra):
    record = {'exit_code': 0 if code in (EXIT_SUCCESS, EXIT_MIGRATION_SUCCEEDED, EXIT_SAVE_STATE_SUCCEEDED,
                                         EXIT_ADMIN_SHUTDOWN, EXIT_USER_SHUTDOWN) else 1,
              'exit_reason': code, 'exit_message': message or EXIT_MESSAGES.get(code, ''), 'time': round(time.time(), 3)}
    record.update(extra)
    return record


def exit_info(vm_uuid, state=None, reason=None, records_dir=RECORDS_DIR):
    """Exit details of a VM that is down: our record, else libvirt's shut-off reason."""
    record = read_record(vm_uuid, 'exit', records_dir) if vm_uuid else None
    if record:
        return dict((k, record.get(k)) for k in ('exit_code', 'exit_reason', 'exit_message', 'time'))
    if state in (SHUTOFF, CRASHED) and reason is not None:
        code = _SHUTOFF_EXIT.get(reason, EXIT_SUCCESS)
        return {'exit_code': 0 if code != EXIT_GENERIC_ERROR else 1, 'exit_reason': code,
                'exit_message': 'libvirt: %s' % _name(SHUTOFF_REASONS, reason), 'time': None}
    return None


# --------------------------------------------------------------------------
# bulk statistics

STATS_GROUPS = ('VIR_DOMAIN_STATS_STATE', 'VIR_DOMAIN_STATS_CPU_TOTAL', 'VIR_DOMAIN_STATS_BALLOON',
                'VIR_DOMAIN_STATS_VCPU', 'VIR_DOMAIN_STATS_INTERFACE', 'VIR_DOMAIN_STATS_BLOCK')


def stats_mask(libvirt_module=None):
    """The statistics groups a sample asks for; ``libvirt_module`` None means libvirt's own values."""
    return constants.mask(*STATS_GROUPS, binding=libvirt_module)


def sample_flags(libvirt_module=None):
    """Flags of every bulk call: NOWAIT, so a domain whose job is held (a stuck QEMU monitor, a long
    block job) gives the stats that need no job instead of stalling the sample of every VM for up
    to libvirt's 30 s job wait."""
    return constants.value('VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT', binding=libvirt_module)


def sample(conn, domains=None, libvirt_module=None):
    """One bulk sample: ``{uuid: (domain, flat stats dict)}`` and the monotonic time it was taken."""
    mask = stats_mask(libvirt_module)
    flags = sample_flags(libvirt_module)
    if domains is None:
        result = conn.getAllDomainStats(mask, flags)
    elif domains:
        result = conn.domainListGetStats(domains, mask, flags)
    else:
        result = []
    now = time.monotonic()
    return dict((dom.UUIDString(), (dom, stats)) for dom, stats in result), now


def _rate(before, after, key, elapsed):
    if before is None or elapsed is None or elapsed <= 0:
        return None
    first, last = before.get(key), after.get(key)
    if first is None or last is None or last < first:
        return None
    return round((last - first) / elapsed, 1)


def _indexed(stats, group):
    count = stats.get('%s.count' % group) or 0
    for index in range(count):
        prefix = '%s.%d.' % (group, index)
        yield dict((k[len(prefix):], v) for k, v in stats.items() if k.startswith(prefix))


def cpu_stats(before, after, elapsed, vcpus):
    entry = {
        'vcpus': after.get('vcpu.current'),
        'time_ns': after.get('cpu.time'),
        'user_ns': after.get('cpu.user'),
        'system_ns': after.get('cpu.system'),
        'usage_percent': None, 'user_percent': None, 'system_percent': None,
    }
    if before is not None and elapsed:
        for key, name in (('cpu.time', 'usage_percent'), ('cpu.user', 'user_percent'), ('cpu.system', 'system_percent')):
            rate = _rate(before, after, key, elapsed)
            if rate is not None:
                entry[name] = round(rate / 1e7 / max(vcpus or 1, 1), 2)
    return entry


def disk_stats(before, after, elapsed):
    previous = dict((d.get('name'), d) for d in _indexed(before, 'block')) if before is not None else {}
    disks = []
    for disk in _indexed(after, 'block'):
        old = previous.get(disk.get('name'))
        entry = {
            'name': disk.get('name'),
            'path': disk.get('path'),
            'read_bytes': disk.get('rd.bytes'), 'write_bytes': disk.get('wr.bytes'),
            'read_ops': disk.get('rd.reqs'), 'write_ops': disk.get('wr.reqs'), 'flush_ops': disk.get('fl.reqs'),
            'read_time_ns': disk.get('rd.times'), 'write_time_ns': disk.get('wr.times'),
            'allocation': disk.get('allocation'), 'capacity': disk.get('capacity'), 'physical': disk.get('physical'),
        }
        for key, name in (('rd.bytes', 'read_bytes_per_sec'), ('wr.bytes', 'write_bytes_per_sec'),
                          ('rd.reqs', 'read_ops_per_sec'), ('wr.reqs', 'write_ops_per_sec')):
            entry[name] = _rate(old, disk, key, elapsed) if old is not None else None
        disks.append(entry)
    return disks


def nic_stats(before, after, elapsed):
    previous = dict((n.get('name'), n) for n in _indexed(before, 'net')) if before is not None else {}
    nics = []
    for nic in _indexed(after, 'net'):
        old = previous.get(nic.get('name'))
        entry = {
            'name': nic.get('name'),
            'rx_bytes': nic.get('rx.bytes'), 'tx_bytes': nic.get('tx.bytes'),
            'rx_packets': nic.get('rx.pkts'), 'tx_packets': nic.get('tx.pkts'),
            'rx_errors': nic.get('rx.errs'), 'tx_errors': nic.get('tx.errs'),
            'rx_dropped': nic.get('rx.drop'), 'tx_dropped': nic.get('tx.drop'),
        }
        for key, name in (('rx.bytes', 'rx_bytes_per_sec'), ('tx.bytes', 'tx_bytes_per_sec')):
            entry[name] = _rate(old, nic, key, elapsed) if old is not None else None
        nics.append(entry)
    return nics


# virDomainControlState values under which a call would wait for the domain's job.
_CONTROL_BUSY = (constants.VALUES['VIR_DOMAIN_CONTROL_OCCUPIED'], constants.VALUES['VIR_DOMAIN_CONTROL_ERROR'])
_CONTROL_JOB = constants.VALUES['VIR_DOMAIN_CONTROL_JOB']  # an async job (migration, save, restore) runs


def job_busy(dom):
    """True when another call holds the domain's job or its monitor failed (``controlInfo`` takes no job).

    jobStats and diskErrors wait up to 30 s for the job: a bulk sample that
    passed NOWAIT must not then wait in them for such a domain.
    """
    try:
        return dom.controlInfo()[0] in _CONTROL_BUSY
    except Exception:  # pylint: disable=broad-except  # unknown: behave as before
        return False


def transient_uuids(conn, libvirt_module=None):
    """UUIDs of the transient domains, in one call: asking each domain would be one call per VM."""
    flag = constants.value('VIR_CONNECT_LIST_DOMAINS_TRANSIENT', binding=libvirt_module)
    return {dom.UUIDString() for dom in conn.listAllDomains(flag)}


def quiet_probe(persistent):
    """What :func:`probe` finds for a running VM with no job: nothing, without asking libvirt."""
    return {'job_op': None, 'migration': None, 'disk_errors': None, 'persistent': persistent}


def probe(dom, stats, persistent=None):
    """What a VM's bulk stats lack, with as few calls as it takes: ``{'job_op', 'migration', 'disk_errors',
    'persistent'}``.

    ``controlInfo`` (no job taken) says whether an async job (migration, save, restore) runs; only
    then is ``jobStats`` asked. A domain whose job another call holds, or whose monitor failed, is
    asked nothing that would wait for it. ``persistent`` None: asked of the domain.
    """
    state = stats.get('state.state', NOSTATE)
    found = quiet_probe(bool(dom.isPersistent()) if persistent is None else persistent)
    if state not in ACTIVE_STATES:
        return found
    try:
        control = dom.controlInfo()[0]
    except Exception:  # pylint: disable=broad-except  # unknown: ask for the job, as when it runs
        control = None
    if control in _CONTROL_BUSY:
        return found
    if control in (None, _CONTROL_JOB):
        try:
            job = dom.jobStats()
        except Exception:  # pylint: disable=broad-except
            job = None
        if job and job.get('type'):
            found['job_op'] = job.get('operation')
            if found['job_op'] == JOB_MIGRATION_OUT:
                found['migration'] = _migration_from(job)
    if state == PAUSED and stats.get('state.reason', 0) == PAUSED_IOERROR:
        try:
            found['disk_errors'] = dom.diskErrors()
        except Exception:  # pylint: disable=broad-except
            found['disk_errors'] = None
    return found


def vm_entry(dom, before, after, elapsed, records_dir=RECORDS_DIR, probed=None):
    """One VM's status and statistics, from two flat stats dicts (``before`` may be None) and what
    :func:`probe` found (None: probed now). Only ``probe`` calls libvirt: this is shaping."""
    state = after.get('state.state', NOSTATE)
    reason = after.get('state.reason', 0)
    probed = probe(dom, after) if probed is None else probed
    pause_reason, pause_code = pause_info(state, reason, probed['disk_errors'])
    vm_uuid = dom.UUIDString()
    entry = {
        'name': dom.name(),
        'uuid': vm_uuid,
        'status': vdsm_status(state, reason, probed['job_op']),
        'pause_reason': pause_reason,
        'pause_code': pause_code,
        'persistent': probed['persistent'],
        'cpu': None, 'memory': None, 'disks': [], 'nics': [],
        'migration': probed['migration'],
        'exit': None,
    }
    if state in ACTIVE_STATES:
        entry['cpu'] = cpu_stats(before, after, elapsed, after.get('vcpu.current'))
        entry['memory'] = {
            'max_kib': after.get('balloon.maximum'),
            'balloon_current_kib': after.get('balloon.current'),
            'rss_kib': after.get('balloon.rss'),
            'usable_kib': after.get('balloon.usable'),
            'unused_kib': after.get('balloon.unused'),
        }
        entry['disks'] = disk_stats(before, after, elapsed)
        entry['nics'] = nic_stats(before, after, elapsed)
    else:
        entry['exit'] = exit_info(vm_uuid, state, reason, records_dir)
    return entry


def exited_entry(vm_uuid, record, records_dir=RECORDS_DIR):
    """A VM libvirt no longer knows (transient, destroyed) that left an exit record."""
    return {
        'name': record.get('name'), 'uuid': vm_uuid, 'status': DOWN, 'pause_reason': None, 'pause_code': None,
        'persistent': False, 'cpu': None, 'memory': None, 'disks': [], 'nics': [], 'migration': None,
        'exit': exit_info(vm_uuid, records_dir=records_dir),
    }


def collect(conn, domains=None, sample_interval=1.0, sleep=None, libvirt_module=None, records_dir=RECORDS_DIR):
    """Status and statistics of ``domains`` (None: all) from one or two bulk samples."""
    sleep = sleep or time.sleep
    interval = validate.sample_interval(sample_interval)
    first = None
    t0 = None
    if interval > 0:
        first, t0 = sample(conn, domains, libvirt_module)
        sleep(interval)
    last, t1 = sample(conn, domains, libvirt_module)
    transient = transient_uuids(conn, libvirt_module)
    elapsed = (t1 - t0) if t0 is not None else None
    entries = []
    for vm_uuid, (dom, stats) in sorted(last.items(), key=lambda item: item[1][0].name()):
        before = first.get(vm_uuid, (None, None))[1] if first else None
        entries.append(vm_entry(dom, before, stats, elapsed, records_dir, probe(dom, stats, vm_uuid not in transient)))
    return entries
