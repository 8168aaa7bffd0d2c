# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.detached import process_start_time
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network import setup_networks
from ansible_collections.virtnode.kvm.plugins.module_utils.network import transaction as net_rollback


def store(tmp_path):
    return net_rollback.Transactions(str(tmp_path / 'tx'))


def test_watch_rolls_back_after_deadline(tmp_path):
    s = store(tmp_path)
    # Before the record: its deadline counts from its creation, not from the watch.
    started = time.monotonic()
    record = net_rollback.new_record('t1', 0.2, {'snapshot': {'x': 1}})
    s.write(record)
    calls = []
    final = net_rollback.watch(s, 't1', lambda r: calls.append(r['snapshot']) or {'restored': True}, poll=0.02)
    assert time.monotonic() - started >= 0.2
    assert calls == [{'x': 1}]
    assert final['state'] == 'rolled_back' and s.load('t1')['state'] == 'rolled_back'


def test_confirm_wins_and_watcher_exits_without_restoring(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('t2', 5, {}))
    record = net_rollback.confirm(s, 't2', lambda r: {'saved': True})
    assert record['state'] == 'confirmed' and record['confirm_result'] == {'saved': True}
    final = net_rollback.watch(s, 't2', lambda r: 1 / 0, poll=0.01)
    assert final['state'] == 'confirmed'


def test_confirm_after_rollback_reports_it(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('t3', 0, {}))
    net_rollback.expire(s, 't3', lambda r: {'restored': True})
    assert net_rollback.confirm(s, 't3')['state'] == 'rolled_back'


def test_failed_restore_is_recorded(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('t4', 0, {}))
    record = net_rollback.expire(s, 't4', lambda r: {}['missing'])
    assert record['state'] == 'rollback_failed' and 'KeyError' in record['result']['errors'][0]


def test_take_over_stops_the_watcher(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('t5', 0, {}))
    assert net_rollback.take_over(s, 't5')
    assert net_rollback.expire(s, 't5', lambda r: 1 / 0)['state'] == 'rolling_back'
    assert net_rollback.finish(s, 't5', 'rolled_back')['state'] == 'rolled_back'
    assert not net_rollback.take_over(s, 't5')


def test_detached_watcher_rolls_back_on_its_own(tmp_path):
    s = store(tmp_path)
    marker = tmp_path / 'restored'
    record = net_rollback.new_record('t6', 0.3, {})

    def restore(rec):
        marker.write_text(str(os.getpid()))
        return {'restored': True}

    pid = net_rollback.start_watcher(s, record, restore)
    assert pid != os.getpid()
    assert net_rollback.watcher_alive(s.load('t6'))
    deadline = time.monotonic() + 10
    while s.load('t6')['state'] != 'rolled_back' and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.load('t6')['state'] == 'rolled_back'
    assert marker.read_text() == str(pid)
    assert s.unfinished() == []


def test_prune_keeps_recent_finished(tmp_path):
    s = store(tmp_path)
    for index in range(5):
        record = net_rollback.new_record('p%d' % index, 0, {})
        record['state'] = 'confirmed'
        record['created'] = index
        s.write(record)
    s.prune(keep=2)
    assert sorted(r['id'] for r in s.all()) == ['p3', 'p4']


# ---- a rollback interrupted by a crash is finished by the next run (and the boot-time restore)

def _stale_record(s, txid, state, **fields):
    record = net_rollback.new_record(txid, 0, {'snapshot': {'devices': {}, 'routes': {}}, 'running_before': {'networks': {}, 'bonds': {}}})
    record.update(state=state, **fields)
    s.write(record)
    return record


def _dead_pid():
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize('who', ['module', 'watcher', 'nobody'])
def test_interrupted_rollback_is_finished_before_anything_else(tmp_path, monkeypatch, who):
    # The module (take_over) or the watcher (expire) died while restoring: the record says rolling_back.
    s = store(tmp_path)
    fields = {'module': {'rollback_pid': _dead_pid(), 'rollback_start': 1},
              'watcher': {'watcher_pid': _dead_pid(), 'watcher_start': 1, 'rollback_pid': _dead_pid(), 'rollback_start': 1},
              'nobody': {}}[who]
    _stale_record(s, 'r1', 'rolling_back', **fields)
    restored = []
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: restored.append(rec['id']) or {'restored': True})
    warnings = []
    setup_networks.handle_stale(s, None, None, warnings)
    assert restored == ['r1']
    assert s.load('r1')['state'] == 'rolled_back'
    assert s.unfinished() == []
    assert 'interrupted' in warnings[0] and 'rolled back now' in warnings[0]


def test_interrupted_rollback_with_a_live_watcher_is_finished_too(tmp_path, monkeypatch):
    # The module took over and crashed; its watcher still polls until the deadline but will never act.
    s = store(tmp_path)
    _stale_record(s, 'r2', 'rolling_back', watcher_pid=os.getpid(), watcher_start=process_start_time(os.getpid()),
                  rollback_pid=_dead_pid(), rollback_start=1)
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: {'restored': True})
    setup_networks.handle_stale(s, None, None, [])
    assert s.load('r2')['state'] == 'rolled_back'


def test_rollback_in_progress_elsewhere_is_not_run_twice(tmp_path, monkeypatch):
    s = store(tmp_path)
    _stale_record(s, 'r3', 'rolling_back', rollback_pid=os.getpid(), rollback_start=process_start_time(os.getpid()))
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: 1 / 0)
    with pytest.raises(VirtnodeError, match='being rolled back'):
        setup_networks.handle_stale(s, None, None, [])
    assert s.load('r3')['state'] == 'rolling_back'


def test_failed_resumed_rollback_is_recorded_and_reported(tmp_path, monkeypatch):
    s = store(tmp_path)
    _stale_record(s, 'r4', 'rolling_back')
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: {'restored': False, 'differences': ['x']})
    warnings = []
    setup_networks.handle_stale(s, None, None, warnings)
    assert s.load('r4')['state'] == 'rollback_failed' and 'rollback_failed' in warnings[0]


@pytest.mark.parametrize('state', ['pending', 'rolling_back'])
def test_after_a_reboot_an_unfinished_transaction_is_closed_without_restoring(tmp_path, monkeypatch, state):
    # The kernel state and the running config are gone with the reboot: nothing of the change is left to undo.
    s = store(tmp_path)
    _stale_record(s, 'r5', state, boot_id='another-boot')
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: 1 / 0)
    setup_networks.handle_stale(s, None, None, [])
    record = s.load('r5')
    assert record['state'] == 'rolled_back' and 'reboot' in record['result']['reason']


def test_take_over_and_expire_record_who_rolls_back(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('r6', 0, {}))
    assert net_rollback.take_over(s, 'r6')
    record = s.load('r6')
    assert record['rollback_pid'] == os.getpid() and record['rollback_start'] == process_start_time(os.getpid())
    s.write(net_rollback.new_record('r7', 0, {}))
    seen = []
    net_rollback.expire(s, 'r7', lambda rec: seen.append(s.load('r7')['rollback_pid']) or {'restored': True})
    assert seen == [os.getpid()]


@pytest.mark.parametrize('handed_over', [False, True])
def test_change_whose_module_died_before_handing_it_over_is_rolled_back_at_once(tmp_path, monkeypatch, handed_over):
    # The module was killed while applying: the controller never got a transaction id to confirm,
    # so waiting for the deadline only keeps the host half-changed and the next run refused.
    s = store(tmp_path)
    _stale_record(s, 'r8', 'pending', watcher_pid=os.getpid(), watcher_start=process_start_time(os.getpid()),
                  applier_pid=_dead_pid(), applier_start=1, handed_over=handed_over)
    monkeypatch.setattr(setup_networks, 'make_restore', lambda ip, dhcp: lambda rec: {'restored': True})
    if handed_over:
        with pytest.raises(VirtnodeError, match='still waiting for its confirmation'):
            setup_networks.handle_stale(s, None, None, [])
        assert s.load('r8')['state'] == 'pending'
    else:
        setup_networks.handle_stale(s, None, None, [])
        assert s.load('r8')['state'] == 'rolled_back'


def test_new_record_names_its_applier_and_hand_over_marks_it(tmp_path):
    s = store(tmp_path)
    s.write(net_rollback.new_record('r9', 5, {}))
    record = s.load('r9')
    assert record['applier_pid'] == os.getpid() and not record['handed_over'] and not net_rollback.orphaned(record)
    net_rollback.hand_over(s, 'r9')
    assert s.load('r9')['handed_over']
