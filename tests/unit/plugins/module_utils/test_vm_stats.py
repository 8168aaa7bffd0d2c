# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as s
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


@pytest.mark.parametrize('state, reason, job, status', [
    (s.RUNNING, 1, None, 'Up'),
    (s.PAUSED, 1, None, 'Paused'),
    (s.PAUSED, s.PAUSED_IOERROR, None, 'Paused'),
    (s.PAUSED, s.PAUSED_STARTING_UP, None, 'WaitForLaunch'),
    (s.RUNNING, 1, s.JOB_MIGRATION_OUT, 'Migration Source'),
    (s.PAUSED, s.PAUSED_MIGRATION, s.JOB_MIGRATION_IN, 'Migration Destination'),
    (s.RUNNING, 1, s.JOB_SAVE, 'Saving State'),
    (s.PAUSED, 0, s.JOB_RESTORE, 'Restoring state'),
    (s.SHUTDOWN, 1, None, 'Powering down'),
    (s.SHUTOFF, 2, None, 'Down'),
    (s.CRASHED, 0, None, 'Down'),
])
def test_vdsm_status(state, reason, job, status):
    assert s.vdsm_status(state, reason, job) == status
    assert status in s.STATUSES


def test_pause_codes():
    assert s.pause_info(s.RUNNING, 1) == (None, None)
    assert s.pause_info(s.PAUSED, 1) == ('user', 'NOERR')
    assert s.pause_info(s.PAUSED, s.PAUSED_IOERROR, {'vda': s.DISK_ERROR_NO_SPACE}) == ('ioerror', 'ENOSPC')
    assert s.pause_info(s.PAUSED, s.PAUSED_IOERROR, {'vda': 1}) == ('ioerror', 'EIO')


def test_exit_records(tmp_path):
    uuid = '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'
    assert s.exit_info(uuid, records_dir=str(tmp_path)) is None
    assert s.exit_info(uuid, s.SHUTOFF, 1, records_dir=str(tmp_path))['exit_reason'] == s.EXIT_USER_SHUTDOWN
    records.write_record(uuid, 'exit', s.exit_record(s.EXIT_ADMIN_SHUTDOWN, name='vm1'), str(tmp_path))
    info = s.exit_info(uuid, s.SHUTOFF, 1, records_dir=str(tmp_path))
    assert info['exit_reason'] == s.EXIT_ADMIN_SHUTDOWN and info['exit_code'] == 0
    assert records.all_records('exit', str(tmp_path))[0][1]['name'] == 'vm1'
    records.remove_record(uuid, 'exit', str(tmp_path))
    assert records.all_records('exit', str(tmp_path)) == []


class Dom(object):
    def __init__(self, name, uuid):
        self._name, self._uuid = name, uuid

    def name(self):
        return self._name

    def UUIDString(self):
        return self._uuid

    def isPersistent(self):
        return 0

    def jobStats(self):
        return {'type': 0}


class Conn(object):
    """Answers bulk stats calls only; counts them."""

    def __init__(self, samples):
        self.samples = samples
        self.calls = 0

    def getAllDomainStats(self, mask, flags):
        self.calls += 1
        return self.samples.pop(0)

    def listAllDomains(self, flags):
        return []  # no transient domain


def test_collect_uses_two_bulk_samples_for_rates():
    dom = Dom('vm1', 'u1')
    first = {'state.state': 1, 'state.reason': 1, 'cpu.time': 1000000000, 'vcpu.current': 1, 'balloon.maximum': 131072,
             'block.count': 1, 'block.0.name': 'vda', 'block.0.rd.bytes': 1000, 'block.0.wr.bytes': 0,
             'net.count': 1, 'net.0.name': 'vnet0', 'net.0.rx.bytes': 100, 'net.0.tx.bytes': 10}
    second = dict(first, **{'cpu.time': 1500000000, 'block.0.rd.bytes': 3000, 'net.0.rx.bytes': 600,
                            'block.0.capacity': 16777216})
    conn = Conn([[(dom, first)], [(dom, second)]])
    times = iter([10.0, 12.0])
    entries = s.collect(conn, sample_interval=2, sleep=lambda x: None)
    assert conn.calls == 2
    del times
    vm = entries[0]
    assert vm['status'] == 'Up' and vm['exit'] is None
    assert vm['disks'][0]['read_bytes'] == 3000 and vm['disks'][0]['capacity'] == 16777216
    assert vm['disks'][0]['read_bytes_per_sec'] > 0
    assert vm['nics'][0]['rx_bytes_per_sec'] > 0
    assert vm['cpu']['usage_percent'] > 0


def test_collect_counters_only():
    dom = Dom('vm1', 'u1')
    conn = Conn([[(dom, {'state.state': s.SHUTOFF, 'state.reason': 2})]])
    vm = s.collect(conn, sample_interval=0)[0]
    assert conn.calls == 1
    assert vm['status'] == 'Down' and vm['cpu'] is None
    assert vm['exit']['exit_reason'] == s.EXIT_ADMIN_SHUTDOWN


def test_sample_interval_bounds():
    with pytest.raises(VirtnodeError):
        validate.sample_interval(61)


NOWAIT = 1 << 29


class StuckJobConn(object):
    """A domain whose QEMU job is stuck: a bulk call blocks for the job unless it passes NOWAIT."""

    def __init__(self, doms, stuck_seconds=5.0):
        self.doms = doms
        self.stuck_seconds = stuck_seconds
        self.flags = []

    def _answer(self, flags):
        self.flags.append(flags)
        if not flags & NOWAIT:
            time.sleep(self.stuck_seconds)   # libvirt waits up to 30 s for the job of every such domain
        return [(dom, {'state.state': s.RUNNING, 'state.reason': 1, 'vcpu.current': 1}) for dom in self.doms]

    def getAllDomainStats(self, mask, flags):
        return self._answer(flags)

    def listAllDomains(self, flags):
        return []  # no transient domain

    def domainListGetStats(self, doms, mask, flags):
        return self._answer(flags)


def test_nowait_flag_is_libvirts_value():
    assert constants.VALUES['VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT'] == NOWAIT
    assert constants.value('VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT', binding=None) == NOWAIT


@pytest.mark.parametrize('domains', [None, 'list'], ids=['all-domains', 'domain-list'])
@pytest.mark.parametrize('call', ['sample', 'collect'])
def test_a_stuck_domain_job_does_not_stall_the_bulk_sample(domains, call):
    doms = [Dom('stuck', 'u1'), Dom('fine', 'u2')]
    conn = StuckJobConn(doms)
    wanted = doms if domains == 'list' else None
    started = time.monotonic()
    if call == 'sample':
        result = s.sample(conn, wanted)[0]
        assert sorted(result) == ['u1', 'u2']
    else:
        assert [vm['name'] for vm in s.collect(conn, wanted, sample_interval=0)] == ['fine', 'stuck']
    assert time.monotonic() - started < 1
    assert conn.flags and all(flags & NOWAIT for flags in conn.flags)


class BusyDom(Dom):
    """A domain whose job another call holds: every call that needs the job waits for it."""

    CONTROL_OCCUPIED = 2

    def __init__(self, name, uuid, control=CONTROL_OCCUPIED):
        super().__init__(name, uuid)
        self.control = control
        self.waited = []

    def controlInfo(self):
        return [self.control, 0, 5000]

    def jobStats(self):
        self.waited.append('jobStats')
        time.sleep(3)             # libvirt: up to 30 s for the job, then an error
        raise RuntimeError('cannot acquire state change lock')

    def diskErrors(self):
        self.waited.append('diskErrors')
        time.sleep(3)
        raise RuntimeError('cannot acquire state change lock')


@pytest.mark.parametrize('state, reason', [(s.RUNNING, 1), (s.PAUSED, s.PAUSED_IOERROR), (s.PAUSED, 1)],
                         ids=['running', 'paused-ioerror', 'paused'])
def test_a_busy_domain_costs_no_job_wait_in_its_entry(state, reason):
    """NOWAIT is worth nothing if the entry then waits for the job: per-VM calls that need it are skipped."""
    dom = BusyDom('stuck', 'u1')
    stats = {'state.state': state, 'state.reason': reason, 'vcpu.current': 1}
    started = time.monotonic()
    entry = s.vm_entry(dom, None, stats, None)
    assert time.monotonic() - started < 1 and dom.waited == []
    assert entry['status'] == ('Up' if state == s.RUNNING else 'Paused')
    if reason == s.PAUSED_IOERROR:
        assert entry['pause_code'] == 'EIO'       # the reason is known; ENOSPC needs the disk errors


def test_an_idle_domain_still_reports_its_job():
    dom = BusyDom('migrating', 'u1', control=1)   # VIR_DOMAIN_CONTROL_JOB: an async job, queries allowed
    dom.jobStats = lambda: {'type': 2, 'operation': s.JOB_MIGRATION_OUT, 'data_total': 10, 'data_remaining': 5}
    entry = s.vm_entry(dom, None, {'state.state': s.RUNNING, 'state.reason': 1}, None)
    assert entry['status'] == 'Migration Source' and entry['migration']['progress_percent'] == 50


class JobDom(Dom):
    """A domain whose controlInfo says ``control``; counts its calls."""

    def __init__(self, name, uuid, control, job=None):
        super().__init__(name, uuid)
        self.control, self.job, self.calls = control, job, []

    def controlInfo(self):
        self.calls.append('controlInfo')
        return [self.control, 0, 0]

    def jobStats(self):
        self.calls.append('jobStats')
        return self.job or {'type': 0}

    def isPersistent(self):
        self.calls.append('isPersistent')
        return 1


def test_an_idle_vm_costs_one_call_and_a_job_is_read_only_while_one_runs():
    running = {'state.state': s.RUNNING, 'state.reason': 1, 'vcpu.current': 1}
    idle = JobDom('idle', 'u1', control=0)
    assert s.probe(idle, running, persistent=True) == {'job_op': None, 'migration': None, 'disk_errors': None,
                                                       'persistent': True}
    assert idle.calls == ['controlInfo']
    job = {'type': 2, 'operation': s.JOB_MIGRATION_OUT, 'data_total': 200, 'data_remaining': 50, 'time_elapsed': 7}
    migrating = JobDom('migrating', 'u2', control=1, job=job)
    entry = s.vm_entry(migrating, None, running, None, probed=s.probe(migrating, running, persistent=False))
    assert migrating.calls == ['controlInfo', 'jobStats']
    assert entry['status'] == 'Migration Source' and entry['migration']['progress_percent'] == 75
    assert entry['persistent'] is False
    # Nothing is asked of a VM that does not run; persistence, when not given, is asked of the domain.
    down = JobDom('down', 'u3', control=0)
    assert s.probe(down, {'state.state': s.SHUTOFF, 'state.reason': 1})['persistent'] is True
    assert down.calls == ['isPersistent']


class _JobDomain(object):
    def __init__(self, stats=None, error=None):
        self.stats, self.error, self.flags = stats, error, []

    def jobStats(self, flags=0):
        self.flags.append(flags)
        if self.error:
            raise self.error
        return self.stats


def test_migration_progress_has_the_auto_converge_throttle_once_qemu_throttles():
    job = {'type': 2, 'operation': s.JOB_MIGRATION_OUT, 'time_elapsed': 6200, 'data_total': 142606336,
           'data_processed': 412000000, 'data_remaining': 4096, 'memory_dirty_rate': 16000}
    assert s.migration_progress(_JobDomain(job))['auto_converge_throttle'] is None
    progress = s.migration_progress(_JobDomain(dict(job, auto_converge_throttle=30)))
    assert progress == {'progress_percent': 99, 'elapsed_ms': 6200, 'data_total': 142606336,
                        'data_processed': 412000000, 'data_remaining': 4096, 'memory_dirty_rate': 16000,
                        'downtime_ms': None, 'auto_converge_throttle': 30}
    assert s.migration_progress(_JobDomain(error=RuntimeError('gone'))) is None


def test_completed_migration_reads_the_destinations_completed_job():
    dom = _JobDomain({'type': 3, 'downtime': 41, 'time_elapsed': 2380, 'data_processed': 141557760,
                      'memory_bps': 104857600})
    assert s.completed_migration(dom, 2) == {'downtime_ms': 41, 'total_ms': 2380, 'data_transferred': 141557760,
                                             'memory_bps': 104857600, 'auto_converge_throttle': None}
    assert dom.flags == [2]
    assert s.completed_migration(_JobDomain({'type': 0}), 2) is None
    assert s.completed_migration(_JobDomain(error=RuntimeError('gone')), 2) is None
