# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import time

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
