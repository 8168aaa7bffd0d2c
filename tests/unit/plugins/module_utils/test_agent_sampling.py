# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's VM sampler asks libvirt per VM only when a job may run."""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import sampling
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as s

RUNNING = {'state.state': s.RUNNING, 'state.reason': 1, 'vcpu.current': 1}
PAUSED_SAVE = {'state.state': s.PAUSED, 'state.reason': s.PAUSED_SAVE, 'vcpu.current': 1}
MIGRATION = {'type': 2, 'operation': s.JOB_MIGRATION_OUT, 'data_total': 200, 'data_remaining': 50}


class Dom:
    def __init__(self, uuid, control=0, job=None):
        self.uuid, self.control, self.job, self.calls = uuid, control, job, []

    def name(self):
        return 'vm-' + self.uuid

    def UUIDString(self):  # pylint: disable=invalid-name  # libvirt's name
        return self.uuid

    def controlInfo(self):  # pylint: disable=invalid-name
        self.calls.append('controlInfo')
        return [self.control, 0, 0]

    def jobStats(self):  # pylint: disable=invalid-name
        self.calls.append('jobStats')
        return self.job or {'type': 0}


class Conn:
    def __init__(self, doms):
        self.doms = doms  # [(dom, stats)]

    def getAllDomainStats(self, mask, flags):  # pylint: disable=invalid-name,unused-argument
        return list(self.doms)

    def listAllDomains(self, flags):  # pylint: disable=invalid-name,unused-argument
        return []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def calls(doms):
    found = {dom.uuid: list(dom.calls) for dom in doms}
    for dom in doms:
        dom.calls.clear()
    return found


def test_running_vms_are_probed_when_new_then_only_at_their_sweep():
    doms = [Dom('u%d' % i) for i in range(4)]
    clock = Clock()
    sampler = sampling.VmSampler(sweep_seconds=300, clock=clock)
    conn = Conn([(dom, RUNNING) for dom in doms])
    sampler.take(conn)
    assert all(c == ['controlInfo'] for c in calls(doms).values()) and sampler.probed == 4
    clock.now += 10
    _raw, _taken, probes = sampler.take(conn)
    assert calls(doms) == {dom.uuid: [] for dom in doms} and sampler.probed == 0
    assert probes['u0'] == {'job_op': None, 'migration': None, 'disk_errors': None, 'persistent': True}
    # Each VM's sweep falls between half and all of the interval after its last probe: spread, never late.
    clock.now += 140
    sampler.take(conn)
    assert sampler.probed == 0
    clock.now += 151
    sampler.take(conn)
    assert all(c == ['controlInfo'] for c in calls(doms).values())


def test_a_hinted_vm_is_probed_and_followed_while_its_job_runs():
    quiet, moving = Dom('u1'), Dom('u2')
    clock = Clock()
    sampler = sampling.VmSampler(sweep_seconds=300, clock=clock)
    conn = Conn([(quiet, RUNNING), (moving, RUNNING)])
    sampler.take(conn)
    calls([quiet, moving])
    # A migration begins: libvirt's MIGRATION_ITERATION event hints the VM.
    moving.control, moving.job = 1, MIGRATION
    event_id, handler = sampler.callbacks()[0]
    assert event_id == constants.VALUES['VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION']
    handler(None, moving, 1, None)
    clock.now += 15
    _raw, _taken, probes = sampler.take(conn)
    assert calls([quiet, moving]) == {'u1': [], 'u2': ['controlInfo', 'jobStats']}
    assert probes['u2']['job_op'] == s.JOB_MIGRATION_OUT
    entry = [e for e in sampler.entries() if e['uuid'] == 'u2'][0]
    assert entry['status'] == 'Migration Source'
    # Followed without another hint while the job runs, and once more when it has ended.
    clock.now += 15
    sampler.take(conn)
    assert calls([moving])['u2'] == ['controlInfo', 'jobStats']
    moving.control, moving.job = 0, None
    clock.now += 15
    sampler.take(conn)
    assert calls([moving])['u2'] == ['controlInfo']
    clock.now += 15
    sampler.take(conn)
    assert calls([moving])['u2'] == []


def test_vms_that_are_not_simply_running_are_always_probed_and_a_reconnect_probes_all():
    saving, running = Dom('u1', control=1, job={'type': 2, 'operation': s.JOB_SAVE}), Dom('u2')
    clock = Clock()
    sampler = sampling.VmSampler(sweep_seconds=300, clock=clock)
    conn = Conn([(saving, PAUSED_SAVE), (running, RUNNING)])
    sampler.take(conn)
    calls([saving, running])
    clock.now += 15
    sampler.take(conn)
    assert calls([saving, running]) == {'u1': ['controlInfo', 'jobStats'], 'u2': []}
    sampler.reset()
    sampler.take(conn)
    assert calls([running])['u2'] == ['controlInfo']


def test_the_job_completed_event_and_lifecycle_hints_reach_the_next_sample():
    dom = Dom('u1')
    clock = Clock()
    sampler = sampling.VmSampler(sweep_seconds=300, clock=clock)
    conn = Conn([(dom, RUNNING)])
    sampler.take(conn)
    calls([dom])
    event_id, handler = sampler.callbacks()[1]
    assert event_id == constants.VALUES['VIR_DOMAIN_EVENT_ID_JOB_COMPLETED']
    handler(None, dom, {}, None)
    sampler.take(conn)
    assert calls([dom])['u1'] == ['controlInfo']
    sampler.hint('u1')
    sampler.take(conn)
    assert calls([dom])['u1'] == ['controlInfo']
    sampler.take(conn)
    assert calls([dom])['u1'] == []
