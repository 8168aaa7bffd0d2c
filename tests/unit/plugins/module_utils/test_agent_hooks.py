# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hooks the node agent runs: after_vm_destroy for stops the vm module did not cause, once;
before_vdsm_start and after_vdsm_stop; each recorded, none fatal."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon as agent_daemon
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import hooks as agent_hooks
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records

from conftest import FakeLibvirtError

STARTED, RESUMED, STOPPED = 2, 4, 5
# STOPPED details: shutdown, destroyed, crashed, migrated, saved, failed
SHUTDOWN, DESTROYED, CRASHED, MIGRATED, SAVED, FAILED = 0, 1, 2, 3, 4, 5
RUNNING, SHUTOFF = 1, 5
UUID = '6f1d8a52-6b63-4b7e-9d7e-2f0d2c7a1e01'
# What the hook writes: its environment's VM variables, then the XML it was given.
RECORDER = '''#!/bin/sh
{ echo "vmId=$vmId vmName=$vmName sap_agent=$sap_agent preload=${LD_PRELOAD:-unset}"; cat "$_hook_domxml"; echo; } >> "%s"
'''


def domain_xml(run_id=7, name='g1', uuid=UUID, props=(('sap_agent', 'true'), ('LD_PRELOAD', '/tmp/evil'))):
    """A live domain XML with our metadata (custom properties); ``run_id`` None: an inactive definition."""
    prop_xml = ''.join('<virtnode:property name="%s">%s</virtnode:property>' % item for item in props)
    return ("<domain type='qemu'%s><name>%s</name><uuid>%s</uuid><memory unit='KiB'>131072</memory>"
            "<currentMemory unit='KiB'>131072</currentMemory><vcpu>1</vcpu>"
            "<metadata><virtnode:vm xmlns:virtnode=\"%s\"><virtnode:custom_properties>%s</virtnode:custom_properties>"
            "</virtnode:vm></metadata><os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"
            % (" id='%d'" % run_id if run_id is not None else '', name, uuid, domxml.METADATA_NS, prop_xml))


class FakeDom:
    """A domain: running with ``xml`` until stopped; then gone (transient) or defined (persistent)."""

    def __init__(self, name='g1', uuid=UUID, run_id=7, persistent=False, xml=None):
        self._name, self._uuid, self.persistent = name, uuid, persistent
        self.xml = xml or domain_xml(run_id, name, uuid)
        self.running = True
        self.shutdown_flags = []

    def name(self):
        return self._name

    def UUIDString(self):
        return self._uuid

    def XMLDesc(self, flags=0):
        if self.running:
            return self.xml
        if self.persistent:
            return domain_xml(None, self._name, self._uuid)
        raise FakeLibvirtError('Domain not found: no domain with matching uuid', code=42, domain=10)

    def stop(self):
        self.running = False

    def state(self):
        return (RUNNING, 1) if self.running else (SHUTOFF, 1)

    def destroy(self):
        self.stop()

    def shutdownFlags(self, flags):
        self.shutdown_flags.append(flags)
        self.stop()


class FakeConn:
    def __init__(self, doms):
        self.doms = doms

    def listAllDomains(self, flags):
        return [dom for dom in self.doms if dom.running]


def hooks_dir_with(tmp_path, scripts):
    """``<tmp>/hooks/<point>/<name>`` for every (point, name, body) of ``scripts``."""
    root = tmp_path / 'hooks'
    for point, name, body in scripts:
        directory = root / point
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(str(directory), 0o755)
        path = directory / name
        path.write_text(body)
        os.chmod(str(path), 0o755)
    os.chmod(str(root), 0o755)
    return str(root)


@pytest.fixture
def setup(tmp_path, fake_libvirt):
    out = tmp_path / 'ran.txt'
    hooks_dir = hooks_dir_with(tmp_path, [(agent_hooks.VM_DOWN, '50_record', RECORDER % out)])
    recorded = []
    doms = []
    runner = agent_hooks.HookRunner(lambda: FakeConn(doms), lambda event, **fields: recorded.append(dict(fields, event=event)),
                                    hooks_dir=hooks_dir, records_dir=str(tmp_path / 'records'), libvirt_module=fake_libvirt.module)
    return {'runner': runner, 'out': out, 'recorded': recorded, 'doms': doms, 'hooks_dir': hooks_dir,
            'records_dir': str(tmp_path / 'records')}


def runs_of(out):
    """The hook runs written to ``out``: (env line, xml) pairs."""
    if not out.exists():
        return []
    lines = out.read_text().splitlines()
    return [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]


def event(runner, dom, kind, detail=0):
    runner.on_lifecycle(dom, dom.name(), dom.UUIDString(), kind, detail)


@pytest.mark.parametrize('detail, reason', [(SHUTDOWN, 'shutdown'), (FAILED, 'failed'), (CRASHED, 'crashed'),
                                            (DESTROYED, 'destroyed')])
def test_a_stop_the_module_did_not_cause_runs_after_vm_destroy_with_the_xml_and_custom_properties(setup, detail, reason):
    runner, dom = setup['runner'], FakeDom()
    event(runner, dom, STARTED)
    runner.process_pending()
    assert runner.kept() == [UUID]
    dom.stop()  # transient: gone with its XML by the time the event is handled
    event(runner, dom, STOPPED, detail)
    runner.process_pending()
    runs = runs_of(setup['out'])
    assert len(runs) == 1
    env, xml = runs[0]
    # Custom properties from the VM's metadata, as the module gives them; a refused name is left out.
    assert env == 'vmId=%s vmName=g1 sap_agent=true preload=unset' % UUID
    assert xml == dom.xml
    assert setup['recorded'] == [{'event': 'hook_ran', 'kind': 'hook', 'point': 'after_vm_destroy', 'vm': 'g1',
                                  'uuid': UUID, 'reason': reason, 'rc': 0, 'failed': False,
                                  'scripts': [{'script': os.path.join(setup['hooks_dir'], 'after_vm_destroy', '50_record'),
                                               'rc': 0, 'error': None}]}]
    assert runner.kept() == []


@pytest.mark.parametrize('detail', [MIGRATED, SAVED])
def test_a_vm_that_migrated_away_or_was_saved_is_not_down(setup, detail):
    runner, dom = setup['runner'], FakeDom()
    event(runner, dom, STARTED)
    runner.process_pending()
    dom.stop()
    event(runner, dom, STOPPED, detail)
    runner.process_pending()
    assert runs_of(setup['out']) == [] and setup['recorded'] == [] and runner.kept() == []


@pytest.mark.parametrize('operation', ['destroy', 'shutdown'])
def test_no_second_run_when_the_vm_module_stopped_the_vm(setup, operation):
    runner, dom = setup['runner'], FakeDom()
    event(runner, dom, STARTED)
    runner.process_pending()
    lc = lifecycle.Lifecycle(None, 'g1', hooks_dir=setup['hooks_dir'], records_dir=setup['records_dir'],
                             sleep=lambda s: None)
    lc.env = {'sap_agent': 'true'}  # what converge gives it from the metadata
    if operation == 'destroy':
        lc.destroy(dom)
    else:
        lc.shutdown(dom, 5, False)
    # The module ran the hook itself, with the same XML and environment...
    assert [h['point'] for h in lc.hook_results] == ['after_vm_destroy']
    assert runs_of(setup['out']) == [('vmId=%s vmName=g1 sap_agent=true preload=unset' % UUID, dom.xml)]
    # ... and the agent, told of the stop (whenever it handles the event), leaves it at that.
    event(runner, dom, STOPPED, DESTROYED if operation == 'destroy' else SHUTDOWN)
    runner.process_pending()
    assert len(runs_of(setup['out'])) == 1 and setup['recorded'] == []
    assert runner.counters['left_to_module'] == 1
    assert not os.path.exists(vm_records.stopping_path(UUID, setup['records_dir']))  # taken


def test_the_marker_outlives_the_records_state_absent_removes(setup):
    """state=absent forgets the VM's records right after the stop, maybe before the agent looked."""
    runner, dom = setup['runner'], FakeDom()
    event(runner, dom, STARTED)
    runner.process_pending()
    lc = lifecycle.Lifecycle(None, 'g1', hooks_dir=setup['hooks_dir'], records_dir=setup['records_dir'],
                             sleep=lambda s: None, seed_dir=None)
    lc.destroy(dom)
    assert lc.forget(UUID)
    event(runner, dom, STOPPED, DESTROYED)
    runner.process_pending()
    assert len(runs_of(setup['out'])) == 1


def test_a_marker_of_another_run_does_not_hide_a_crash(setup):
    runner, dom = setup['runner'], FakeDom(run_id=9)
    vm_records.mark_stopping(UUID, 7, 'destroy', setup['records_dir'])  # a destroy of run 7 that never happened
    event(runner, dom, STARTED)
    runner.process_pending()
    dom.stop()
    event(runner, dom, STOPPED, FAILED)
    runner.process_pending()
    assert len(runs_of(setup['out'])) == 1
    assert not os.path.exists(vm_records.stopping_path(UUID, setup['records_dir']))


def test_a_module_stop_that_did_not_happen_leaves_no_marker(setup):
    class Stubborn(FakeDom):
        def shutdownFlags(self, flags):
            self.shutdown_flags.append(flags)  # the guest ignores it

    ticks = iter(range(1000))
    dom = Stubborn()
    lc = lifecycle.Lifecycle(None, 'g1', hooks_dir=setup['hooks_dir'], records_dir=setup['records_dir'],
                             sleep=lambda s: None, clock=lambda: next(ticks))
    with pytest.raises(Exception, match='did not shut down'):
        lc.shutdown(dom, 5, False, 'acpi')
    assert not os.path.exists(vm_records.stopping_path(UUID, setup['records_dir']))
    # The guest powers off later by itself: the agent runs the hook.
    runner = setup['runner']
    event(runner, dom, STARTED)
    runner.process_pending()
    dom.stop()
    event(runner, dom, STOPPED, SHUTDOWN)
    runner.process_pending()
    assert len(runs_of(setup['out'])) == 1 and lc.hook_results == []


def test_a_start_clears_a_marker_left_behind(setup, tmp_path):
    vm_records.mark_stopping(UUID, None, 'destroy', setup['records_dir'])

    class Conn:
        def createXML(self, xml, flags):
            return FakeDom()

    lc = lifecycle.Lifecycle(Conn(), 'g1', hooks_dir=str(tmp_path / 'none'), records_dir=setup['records_dir'],
                             sleep=lambda s: None)
    lc.start_new(domain_xml(None), persistent=False)
    assert not os.path.exists(vm_records.stopping_path(UUID, setup['records_dir']))


def test_xml_not_captured_falls_back_to_the_definition(setup):
    runner, dom = setup['runner'], FakeDom(persistent=True)
    dom.stop()
    event(runner, dom, STARTED)  # handled after the VM already went down
    runner.process_pending()
    assert runner.kept() == []
    event(runner, dom, STOPPED, CRASHED)
    runner.process_pending()
    (env, xml), = runs_of(setup['out'])
    assert xml == domain_xml(None) and 'vmName=g1' in env
    assert runner.counters['xml_missing'] == 1


def test_memory_is_bounded(setup):
    runner = setup['runner']
    runner.max_domains = 2
    runner.max_xml_bytes = 2000
    doms = [FakeDom('g%d' % i, '00000000-0000-0000-0000-00000000000%d' % i, run_id=i + 1) for i in range(3)]
    for dom in doms:
        event(runner, dom, STARTED)
    big = FakeDom('big', '00000000-0000-0000-0000-0000000000ff', xml=domain_xml(5, 'big', 'x') + ' ' * 3000)
    event(runner, big, STARTED)
    runner.process_pending()
    assert runner.kept() == [doms[2].UUIDString(), big.UUIDString()]
    assert runner._known[big.UUIDString()].packed is None  # pylint: disable=protected-access
    kept = runner._known[doms[2].UUIDString()]  # pylint: disable=protected-access
    assert len(kept.packed) < len(doms[2].xml) and kept.xml() == doms[2].xml


def test_refresh_events_and_resync_read_the_xml_again(setup):
    runner, dom = setup['runner'], FakeDom()
    setup['doms'].append(dom)
    runner.resync()
    runner.process_pending()
    assert runner.kept() == [UUID]
    dom.xml = domain_xml(7, props=(('sap_agent', 'changed'),))
    device_added = [cb for event_id, cb in runner.callbacks() if event_id == 19][0]
    device_added(None, dom, 'ua-disk1', None)
    runner.process_pending()
    dom.stop()
    event(runner, dom, STOPPED, SHUTDOWN)
    runner.process_pending()
    assert runs_of(setup['out'])[0][0].endswith('sap_agent=changed preload=unset')


def test_a_stop_missed_while_disconnected_runs_late_after_two_listings(setup):
    runner, dom = setup['runner'], FakeDom()
    setup['doms'].append(dom)
    runner.resync()
    runner.process_pending()
    dom.stop()  # no event: the agent was not connected
    runner.resync()
    runner.process_pending()
    assert runs_of(setup['out']) == []  # once: its STOPPED event may still be queued
    runner.resync()
    runner.process_pending()
    assert len(runs_of(setup['out'])) == 1 and setup['recorded'][0]['reason'] == 'unknown'


def test_old_markers_are_swept(setup):
    vm_records.mark_stopping(UUID, 7, 'destroy', setup['records_dir'])
    runner = setup['runner']
    runner.clock = lambda: time.time() + agent_hooks.STOPPING_MAX_AGE + 1
    runner.resync()
    runner.process_pending()
    assert not os.path.exists(vm_records.stopping_path(UUID, setup['records_dir']))


def test_a_failing_vm_hook_is_recorded(setup, tmp_path):
    runner = setup['runner']
    runner.hooks_dir = hooks_dir_with(tmp_path / 'failing', [(agent_hooks.VM_DOWN, '10_fail', '#!/bin/sh\necho nope >&2\nexit 1\n')])
    dom = FakeDom()
    event(runner, dom, STARTED)
    dom.stop()
    event(runner, dom, STOPPED, CRASHED)
    runner.process_pending()
    (recorded,) = setup['recorded']
    assert recorded['failed'] is True and recorded['rc'] == 1 and 'nope' in recorded['scripts'][0]['error']
    assert runner.counters['failures'] == 1


def test_records_and_run_ids():
    assert vm_records.domain_run_id(domain_xml(12)) == 12
    assert vm_records.domain_run_id(domain_xml(None)) is None
    assert vm_records.domain_run_id("<domain type='kvm' id='-1'>") is None
    assert vm_records.domain_run_id('') is None


def test_the_marker_directory_is_no_vm(tmp_path):
    vm_records.write_record(UUID, 'exit', {'name': 'g1'}, str(tmp_path))
    vm_records.mark_stopping(UUID, 3, 'destroy', str(tmp_path))
    assert vm_records.all_records('exit', str(tmp_path)) == [(UUID, {'name': 'g1'})]


# ---------------------------------------------------------------- through the agent

class AgentConn:
    def __init__(self, backend):
        self.backend = backend

    def registerCloseCallback(self, cb, opaque):
        pass

    def unregisterCloseCallback(self):
        pass

    def setKeepAlive(self, interval, count):
        return 0

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        self.backend.callbacks[event_id] = cb
        return event_id

    def domainEventDeregisterAny(self, callback_id):
        return 0

    def isAlive(self):
        return True

    def getAllDomainStats(self, mask, flags):
        return []

    def listAllDomains(self, flags):
        return [dom for dom in self.backend.domains if dom.running] if flags & 1 else []

    def close(self):
        return 0


@pytest.fixture
def sock_dir():
    directory = tempfile.mkdtemp(prefix='vnh-', dir='/tmp')  # a unix socket path must be short
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def make_agent(tmp_path, sock_dir, fake_libvirt, monkeypatch, hooks_dir):
    fake_libvirt.domains = []
    fake_libvirt.callbacks = {}
    fake_libvirt.module.open = lambda uri=None: fake_libvirt._open(uri, False) and AgentConn(fake_libvirt)
    monkeypatch.setattr(agent_daemon.agent_libvirt, 'start_event_loop', lambda module: None)
    config = agent_daemon.load_config(None, {
        'socket_path': os.path.join(sock_dir, 'agent.sock'), 'events_file': str(tmp_path / 'events.jsonl'),
        'storage_root': str(tmp_path / 'mnt'), 'log_file': '', 'metrics_enabled': False, 'storage_enabled': False,
        'mailbox_enabled': False, 'thin_enabled': False, 'hooks_dir': hooks_dir})
    agent = agent_daemon.Agent(config, libvirt_module=fake_libvirt.module)
    agent.hooks.records_dir = str(tmp_path / 'records')
    return agent


def hook_events(agent):
    return agent_events.read_events(agent.config['events_file'], events=['hook_ran'])['events']


def test_agent_runs_its_start_and_stop_hooks_and_a_failure_does_not_stop_it(tmp_path, sock_dir, fake_libvirt, monkeypatch):
    marks = tmp_path / 'marks'
    hooks_dir = hooks_dir_with(tmp_path, [
        ('before_vdsm_start', '10_mark', '#!/bin/sh\necho start >> %s\n' % marks),
        ('before_vdsm_start', '20_fail', '#!/bin/sh\necho broken >&2\nexit 2\n'),
        ('after_vdsm_stop', '10_mark', '#!/bin/sh\necho stop >> %s\n' % marks)])
    agent = make_agent(tmp_path, sock_dir, fake_libvirt, monkeypatch, hooks_dir)
    agent.start()
    try:
        assert marks.read_text() == 'start\n'
        assert os.path.exists(agent.config['socket_path'])  # serving all the same
        assert agent.answer({'query': 'status'})['ok']
    finally:
        agent.stop()
    assert marks.read_text() == 'start\nstop\n'
    events = agent_events.read_events(agent.config['events_file'])['events']
    assert [e['event'] for e in events] == ['agent_started', 'hook_ran', 'hook_ran', 'agent_stopped']
    start, stop = events[1], events[2]
    assert (start['point'], start['failed'], start['rc']) == ('before_vdsm_start', True, 2)
    assert [s['rc'] for s in start['scripts']] == [0, 2] and 'broken' in start['scripts'][1]['error']
    assert (stop['point'], stop['failed'], stop['rc']) == ('after_vdsm_stop', False, 0)


def test_an_unclean_stop_runs_no_stop_hook_and_a_refused_directory_is_recorded(tmp_path, sock_dir, fake_libvirt,
                                                                               monkeypatch):
    marks = tmp_path / 'marks'
    hooks_dir = hooks_dir_with(tmp_path, [('before_vdsm_start', '10_mark', '#!/bin/sh\necho start >> %s\n' % marks),
                                          ('after_vdsm_stop', '10_mark', '#!/bin/sh\necho stop >> %s\n' % marks)])
    os.chmod(os.path.join(hooks_dir, 'before_vdsm_start'), 0o777)
    agent = make_agent(tmp_path, sock_dir, fake_libvirt, monkeypatch, hooks_dir)
    agent.start()
    agent.stop(clean=False)
    assert not marks.exists()
    (refused,) = hook_events(agent)
    assert refused['point'] == 'before_vdsm_start' and refused['failed'] and refused['rc'] is None
    assert 'refused' in refused['scripts'][0]['error']


def test_a_hook_that_cannot_run_at_all_is_recorded(tmp_path, sock_dir, fake_libvirt, monkeypatch):
    agent = make_agent(tmp_path, sock_dir, fake_libvirt, monkeypatch, str(tmp_path / 'hooks'))

    def broken(*args, **kwargs):
        raise OSError(13, 'Permission denied')

    monkeypatch.setattr(agent_hooks.hooks_utils, 'run_hook_point', broken)
    agent.start()
    agent.stop()
    events = hook_events(agent)
    assert [(e['point'], e['failed'], e['rc']) for e in events] == [('before_vdsm_start', True, None),
                                                                    ('after_vdsm_stop', True, None)]
    assert 'Permission denied' in events[0]['error']


def test_agent_hook_runs_reach_event_info(tmp_path, sock_dir, fake_libvirt, monkeypatch):
    out = tmp_path / 'ran.txt'
    hooks_dir = hooks_dir_with(tmp_path, [(agent_hooks.VM_DOWN, '50_record', RECORDER % out)])
    agent = make_agent(tmp_path, sock_dir, fake_libvirt, monkeypatch, hooks_dir)
    agent.sample_once()  # connects: callbacks registered, a listing queued
    assert {19, 15, 23, 16} <= set(fake_libvirt.callbacks)
    dom = FakeDom()
    fake_libvirt.domains.append(dom)
    lifecycle_cb = fake_libvirt.callbacks[0]
    lifecycle_cb(None, dom, STARTED, 0, None)
    agent.hooks.process_pending()
    dom.stop()
    lifecycle_cb(None, dom, STOPPED, FAILED, None)
    agent.hooks.process_pending()
    assert len(runs_of(out)) == 1
    (ran,) = hook_events(agent)
    assert (ran['point'], ran['uuid'], ran['vm'], ran['rc'], ran['reason']) == ('after_vm_destroy', UUID, 'g1', 0, 'failed')
    lines = [json.loads(line)['event'] for line in open(agent.config['events_file'])]
    assert lines[-3:] == ['started', 'stopped', 'hook_ran']


def test_hooks_dir_must_be_absolute():
    with pytest.raises(agent_daemon.VirtnodeError, match='hooks_dir'):
        agent_daemon.load_config(None, {'hooks_dir': 'relative/hooks'})


RESUMED_MIGRATED, RESUMED_UNPAUSED = 1, 0


def test_a_vm_that_migrated_here_runs_after_vm_migrate_destination_with_its_xml_once(setup, tmp_path):
    """libvirt's RESUMED event with detail ``migrated`` (the incoming VM runs here): the hook gets the XML as it
    runs here and the custom properties; a plain resume runs nothing."""
    out = tmp_path / 'migrated.txt'
    runner = setup['runner']
    runner.hooks_dir = hooks_dir_with(tmp_path / 'mig', [(agent_hooks.MIGRATED_IN, '50_record', RECORDER % out)])
    dom = FakeDom(xml=domain_xml(run_id=12))
    event(runner, dom, STARTED, 1)  # STARTED_MIGRATED: paused, not yet ours
    event(runner, dom, RESUMED, RESUMED_UNPAUSED)
    runner.process_pending()
    assert runs_of(out) == []
    event(runner, dom, RESUMED, RESUMED_MIGRATED)
    runner.process_pending()
    runs = runs_of(out)
    assert len(runs) == 1 and runs[0][0].startswith('vmId=%s vmName=g1 sap_agent=true' % UUID), runs
    assert "id='12'" in runs[0][1] and runner.kept() == [UUID]
    ran = [e for e in setup['recorded'] if e['event'] == agent_hooks.EVENT]
    assert [(e['point'], e['uuid'], e['reason'], e['failed']) for e in ran] == [
        (agent_hooks.MIGRATED_IN, UUID, 'migrated', False)], ran
