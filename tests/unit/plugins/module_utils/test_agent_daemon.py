# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's sampling, reconnection and error isolation against a fake libvirt."""

from __future__ import annotations

import json

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon as agent_daemon
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

from conftest import FakeLibvirtError


class FakeDomain:
    def __init__(self, name, uuid, broken=False):
        self._name, self._uuid, self.broken = name, uuid, broken

    def name(self):
        if self.broken:
            raise FakeLibvirtError('domain vanished')
        return self._name

    def UUIDString(self):
        return self._uuid

    def isPersistent(self):
        return 1

    def jobStats(self):
        return {'type': 0}


class FakeConn:
    def __init__(self, backend):
        self.backend = backend
        self.close_cb = None

    def registerCloseCallback(self, cb, opaque):
        self.close_cb = cb

    def unregisterCloseCallback(self):
        self.close_cb = None

    def setKeepAlive(self, interval, count):
        return 0

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        if event_id == 0:  # lifecycle; the thin monitor registers more
            self.backend.lifecycle = cb
        return 1

    def domainEventDeregisterAny(self, callback_id):
        return 0

    def isAlive(self):
        return self.backend.alive

    def getAllDomainStats(self, mask, flags):
        if not self.backend.alive:
            raise FakeLibvirtError('connection broken')
        self.backend.tick += 1
        stats = []
        for dom in self.backend.domains:
            stats.append((dom, {'state.state': 1, 'state.reason': 1, 'cpu.time': 1000000000 * self.backend.tick,
                                'vcpu.current': 1, 'balloon.maximum': 131072}))
        return stats

    def listAllDomains(self, flags):
        return []  # no transient domain

    def close(self):
        return 0


@pytest.fixture
def agent(fake_libvirt, tmp_path):
    fake_libvirt.domains = [FakeDomain('a', 'u-a'), FakeDomain('b', 'u-b', broken=True), FakeDomain('c', 'u-c')]
    fake_libvirt.alive = True
    fake_libvirt.tick = 0
    fake_libvirt.module.open = lambda uri=None: fake_libvirt._open(uri, False) and FakeConn(fake_libvirt)
    config = agent_daemon.load_config(None, {
        'socket_path': str(tmp_path / 'agent.sock'), 'events_file': str(tmp_path / 'events.jsonl'),
        'storage_root': str(tmp_path / 'mnt'), 'log_file': '', 'reconnect_min': 0.01, 'reconnect_max': 0.01})
    return agent_daemon.Agent(config, libvirt_module=fake_libvirt.module)


def test_one_broken_vm_does_not_hide_the_others(agent):
    agent.sample_once()
    agent.sample_once()
    vms = agent.answer({'query': 'vms'})['data']['vms']
    assert [vm['name'] for vm in vms] == ['a', 'c']
    # Entries are shaped when read, once per sample: the first sample was never read.
    assert agent.vm_sampler.errors == 1
    agent.answer({'query': 'vms'})
    assert agent.vm_sampler.errors == 1
    assert vms[0]['cpu']['time_ns'] == 2000000000
    assert vms[0]['cpu']['usage_percent'] is not None
    host = agent.answer({'query': 'host'})['data']['stats']
    assert set(host) >= {'cpu', 'memory', 'network', 'uptime_seconds'}


def test_reconnects_after_libvirtd_goes_away(agent, fake_libvirt):
    agent.sample_once()
    fake_libvirt.alive = False
    agent.sample_once()
    assert agent.answer({'query': 'vms'})['ok'] is False
    assert not agent.session.connected
    fake_libvirt.alive = True
    import time
    time.sleep(0.05)
    agent.sample_once()
    assert agent.answer({'query': 'vms'})['ok'] is True
    assert agent.session.connects == 2
    events = [json.loads(line)['event'] for line in open(agent.config['events_file'])]
    assert events == ['libvirt_connected', 'libvirt_disconnected', 'libvirt_connected']


def test_lifecycle_events_are_recorded(agent, fake_libvirt):
    agent.sample_once()
    fake_libvirt.lifecycle(None, fake_libvirt.domains[0], 3, 0, None)
    fake_libvirt.lifecycle(None, fake_libvirt.domains[1], 5, 1, None)
    lines = [json.loads(line) for line in open(agent.config['events_file'])]
    assert lines[-2]['event'] == 'paused' and lines[-2]['vm'] == 'a' and lines[-2]['reason'] == 'paused'
    assert lines[-1]['event'] == 'stopped' and lines[-1]['vm'] is None


def test_close_callback_triggers_reconnect(agent, fake_libvirt):
    agent.sample_once()
    conn = agent.session.ensure()
    conn.close_cb(conn, 1, None)
    assert not agent.session.connected
    import time
    time.sleep(0.05)
    agent.sample_once()
    assert agent.session.connects == 2


def test_config_validation(tmp_path):
    path = tmp_path / 'agent.conf'
    path.write_text('{"interval": 5, "metrics_port": 9000}')
    config = agent_daemon.load_config(str(path))
    assert config['interval'] == 5.0 and config['metrics_port'] == 9000
    path.write_text('{"intervall": 5}')
    with pytest.raises(VirtnodeError, match='unknown agent configuration keys'):
        agent_daemon.load_config(str(path))
    path.write_text('{"interval": 0}')
    with pytest.raises(VirtnodeError, match='positive'):
        agent_daemon.load_config(str(path))
    assert agent_daemon.load_config(str(tmp_path / 'missing.conf'))['interval'] == 15.0


NOWAIT = 1 << 29


class StuckMonitorConn(FakeConn):
    """QEMU of domain 'a' stopped answering its monitor: the call that takes the domain's job hangs
    (until ``release``), later calls pass NOWAIT and skip what needs the job."""

    def __init__(self, backend, hang_all=False):
        super().__init__(backend)
        self.release = backend.release
        self.hang_all = hang_all
        self.calls = []

    def getAllDomainStats(self, mask, flags):
        self.calls.append(flags)
        if len(self.calls) == 2 or self.hang_all or not flags & NOWAIT:
            self.release.wait(10)
        return super().getAllDomainStats(mask, flags)


@pytest.fixture
def stuck_agent(fake_libvirt, tmp_path):
    import threading
    fake_libvirt.domains = [FakeDomain('a', 'u-a'), FakeDomain('c', 'u-c')]
    fake_libvirt.alive = True
    fake_libvirt.tick = 0
    fake_libvirt.release = threading.Event()
    fake_libvirt.conn = None

    def open_conn(uri=None):
        fake_libvirt._open(uri, False)
        fake_libvirt.conn = StuckMonitorConn(fake_libvirt, hang_all=getattr(fake_libvirt, 'hang_all', False))
        return fake_libvirt.conn

    fake_libvirt.module.open = open_conn
    config = agent_daemon.load_config(None, {
        'interval': 1, 'socket_path': str(tmp_path / 'agent.sock'), 'events_file': str(tmp_path / 'events.jsonl'),
        'storage_root': str(tmp_path / 'mnt'), 'log_file': '', 'reconnect_min': 0.01, 'reconnect_max': 0.01})
    agent = agent_daemon.Agent(config, libvirt_module=fake_libvirt.module)
    yield agent
    fake_libvirt.release.set()


def test_a_stuck_monitor_does_not_stall_sampling(stuck_agent, fake_libvirt):
    import time
    stuck_agent.sample_once()                      # first sample: answers
    first = stuck_agent.answer({'query': 'vms'})['sampled_at']
    started = time.monotonic()
    stuck_agent.sample_once()                      # second: its call took the job and hangs on the monitor
    assert time.monotonic() - started < 1.5, 'the sample waited for a stuck QEMU monitor'
    assert stuck_agent.answer({'query': 'host'})['ok']
    time.sleep(0.05)
    stuck_agent.sample_once()                      # third: NOWAIT, answers although the job is held
    third = stuck_agent.answer({'query': 'vms'})
    assert third['sampled_at'] > first and [vm['name'] for vm in third['data']['vms']] == ['a', 'c']
    assert stuck_agent.snapshot()['agent']['vm_samples_stuck'] == 1
    # The stuck call returns late: its old result does not replace the newer one.
    fake_libvirt.release.set()
    time.sleep(0.2)
    assert stuck_agent.answer({'query': 'vms'})['sampled_at'] == third['sampled_at']
    assert all(flags & NOWAIT for flags in fake_libvirt.conn.calls)


def test_stuck_samples_do_not_pile_up_threads(stuck_agent, fake_libvirt):
    import threading
    import time
    fake_libvirt.hang_all = True                   # libvirtd itself stopped answering
    before = threading.active_count()
    started = time.monotonic()
    for _attempt in range(6):
        stuck_agent.sample_once()
    assert time.monotonic() - started < 6 * 0.5 + 2
    assert threading.active_count() - before <= 2
    assert stuck_agent.answer({'query': 'host'})['ok']


# ---------------------------------------------------------------- VMs paused on a storage domain that came back

SD_A, SD_B, SD_C = ('11111111-2222-4333-8444-55555555555%d' % n for n in (1, 2, 3))
PAUSED, RUNNING, PAUSED_USER, PAUSED_IOERROR = 3, 1, 1, 5


def _xml(*paths):
    disks = ''.join("<disk type='file' device='disk'><source file='%s'/></disk>" % path for path in paths)
    return '<domain><devices>%s<disk type="file" device="cdrom"/></devices></domain>' % disks


def _file_volume(sd_uuid):
    return '/rhev/data-center/mnt/server:_export/%s/images/%s/%s' % (sd_uuid, SD_C, SD_C)


class PausableDomain(FakeDomain):
    def __init__(self, name, state, xml):
        super().__init__(name, 'u-' + name)
        self._state, self._xml, self.resumed = state, xml, False

    def state(self):
        return list(self._state)

    def XMLDesc(self, flags):
        return self._xml

    def resume(self):
        self.resumed = True
        self._state = (RUNNING, 0)


class ListingConn(FakeConn):
    def listAllDomains(self, flags):
        return list(self.backend.domains)


def test_vms_paused_on_io_errors_of_a_domain_resume_when_it_is_valid_again(agent, fake_libvirt):
    fake_libvirt.module.open = lambda uri=None: fake_libvirt._open(uri, False) and ListingConn(fake_libvirt)
    fake_libvirt.domains = [
        PausableDomain('on-a', (PAUSED, PAUSED_IOERROR), _xml(_file_volume(SD_A))),
        PausableDomain('also-on-b', (PAUSED, PAUSED_IOERROR), _xml(_file_volume(SD_A), '/run/virtnode/block/%s/i/v' % SD_B)),
        PausableDomain('paused-by-user', (PAUSED, PAUSED_USER), _xml(_file_volume(SD_A))),
        PausableDomain('on-c', (PAUSED, PAUSED_IOERROR), _xml(_file_volume(SD_C))),
        PausableDomain('running', (RUNNING, 1), _xml(_file_volume(SD_A))),
    ]
    agent.storage.stats = lambda: {SD_A: {'valid': True}, SD_B: {'valid': False}, SD_C: {'valid': False}}
    assert agent.resume_paused_on(SD_A) == ['on-a']
    assert [dom.name() for dom in fake_libvirt.domains if dom.resumed] == ['on-a']
    events = [json.loads(line) for line in open(agent.config['events_file'])]
    assert [(e['event'], e['vm'], e['sd_uuid']) for e in events if e['kind'] == 'storage'] == \
        [('vm_resumed_after_storage', 'on-a', SD_A)]


def test_storage_domains_of_disks_from_volume_paths():
    xml = _xml(_file_volume(SD_A), '/rhev/data-center/%s/%s/images/i/v' % (SD_C, SD_B),
               '/run/virtnode/block/%s/i/v' % SD_C.upper(), '/var/lib/libvirt/images/%s.img' % SD_C, '')
    assert agent_daemon.storage_domains_of_disks(xml) == {SD_A, SD_B, SD_C}


def test_the_spm_role_check_serves_mailboxes_and_keeps_extend_workers_ready_for_spm_pools(agent, monkeypatch):
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import mailbox_server, spm_extend
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import thin as thin_monitor
    calls = []
    monkeypatch.setattr(mailbox_server, 'connected_pools', lambda: ['p1', 'p2'])
    monkeypatch.setattr(thin_monitor, 'is_local_spm', lambda sp: sp == 'p2')
    monkeypatch.setattr(agent.mailboxes, 'check', lambda: calls.append('mailbox'))

    def keep_ready(sp_uuids, timeout):
        calls.append(('workers', sp_uuids, timeout))
        agent.stop_event.set()  # one round
        return {'p2': 'the SPM is stopping'}
    monkeypatch.setattr(spm_extend, 'keep_ready', keep_ready)
    agent._spm_role_loop()  # pylint: disable=protected-access
    assert calls == ['mailbox', ('workers', ['p2'], agent.config['thin_extend_timeout'])]


def test_a_lifecycle_event_has_the_vm_probed_in_the_next_sample_and_job_events_are_registered(agent):
    agent._on_lifecycle(FakeDomain('a', 'u-a'), 3, 0)  # pylint: disable=protected-access  # suspended
    assert 'u-a' in agent.vm_sampler._hinted  # pylint: disable=protected-access
    registered = [event_id for event_id, _handler in agent.session.domain_events]
    assert {20, 21} <= set(registered)
