# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events


def test_seq_increases_and_survives_a_restart(tmp_path):
    path = str(tmp_path / 'events.jsonl')
    log = agent_events.EventLog(path)
    assert [log.append('started', vm='a')['seq'] for _index in range(3)] == [1, 2, 3]
    again = agent_events.EventLog(path)
    assert again.append('stopped')['seq'] == 4
    lines = [json.loads(line) for line in open(path)]
    assert [line['seq'] for line in lines] == [1, 2, 3, 4]


def test_concurrent_writers_never_share_a_seq(tmp_path):
    log = agent_events.EventLog(str(tmp_path / 'e.jsonl'))
    threads = [threading.Thread(target=lambda: [log.append('x') for _index in range(50)]) for _thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [e['seq'] for e in agent_events.read_events(log.path)['events']]
    assert seqs == list(range(1, 201))


def test_read_since_cursor_limit_and_filter(tmp_path):
    path = str(tmp_path / 'e.jsonl')
    log = agent_events.EventLog(path)
    for name in ('started', 'paused', 'resumed', 'stopped'):
        log.append(name)
    first = agent_events.read_events(path, since=0, limit=2)
    assert [e['event'] for e in first['events']] == ['started', 'paused']
    assert first['cursor'] == 2 and first['more'] is True
    rest = agent_events.read_events(path, since=first['cursor'])
    assert [e['event'] for e in rest['events']] == ['resumed', 'stopped'] and rest['more'] is False
    assert agent_events.read_events(path, since=rest['cursor']) == {'events': [], 'cursor': 4, 'more': False, 'gap': False}
    only = agent_events.read_events(path, events=['paused'])
    assert [e['event'] for e in only['events']] == ['paused'] and only['cursor'] == 4


def test_rotation_keeps_counting_and_reports_gaps(tmp_path):
    path = str(tmp_path / 'e.jsonl')
    log = agent_events.EventLog(path, max_bytes=300)
    for _index in range(20):
        log.append('tick', payload='x' * 40)
    result = agent_events.read_events(path, since=0)
    assert result['gap'] is True
    assert result['cursor'] == 20
    assert agent_events.read_events(path, since=19)['gap'] is False
    assert agent_events.EventLog(path).append('tock')['seq'] == 21


def test_missing_file_and_cursor_ahead(tmp_path):
    path = str(tmp_path / 'none.jsonl')
    assert agent_events.read_events(path, since=5) == {'events': [], 'cursor': 0, 'more': False, 'gap': False}


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / 'e.jsonl'
    path.write_text('{"seq": 1, "event": "a", "time": 1}\n{"seq": 2, "ev')
    assert [e['seq'] for e in agent_events.read_events(str(path))['events']] == [1]
    assert agent_events.EventLog(str(path)).seq == 1


def test_lifecycle_names():
    assert agent_events.lifecycle_event(2, 0) == ('started', 'booted', {})
    assert agent_events.lifecycle_event(3, 2) == ('paused', 'ioerror', {})
    assert agent_events.lifecycle_event(4, 0) == ('resumed', 'unpaused', {})
    assert agent_events.lifecycle_event(5, 1) == ('stopped', 'destroyed', {})
    assert agent_events.lifecycle_event(5, 3) == ('migrated', 'migrated', {'direction': 'out'})
    assert agent_events.lifecycle_event(4, 1) == ('migrated', 'migrated', {'direction': 'in'})
    assert agent_events.lifecycle_event(42, 7) == ('unknown_42', 'unknown_7', {})
