# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's SPM extend workers: one fenced task per pool, kept while requests come."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
import threading

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import spm_extend
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm

SP = '01111111-2222-4333-8444-555555555555'
SD = '11111111-2222-4333-8444-555555555555'
OTHER_SD = '12111111-2222-4333-8444-555555555555'
VOL = '31111111-2222-4333-8444-555555555555'


# ------------------------------------------------------------------ the agent's end, against scripted workers

def scripted_worker(script, starts):
    """A Worker class whose process runs ``script`` (stdin requests, stdout answers); counts starts."""

    class Scripted(spm_extend.Worker):
        def argv(self):
            starts.append(self.sp_uuid)
            return [sys.executable, '-c', textwrap.dedent(script)]
    return Scripted


READY = "import json, sys\nprint(json.dumps({'ok': True, 'ready': True}), flush=True)\n"


def test_one_worker_serves_every_request_of_a_pool():
    starts = []
    script = READY + """
for line in sys.stdin:
    request = json.loads(line)
    print(json.dumps({'ok': True, 'size_mib': request['size_mib']}), flush=True)
"""
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    try:
        assert [extenders.extend(SD, VOL, size, timeout=30) for size in (128, 192, 256)] == [128, 192, 256]
    finally:
        extenders.close()
    assert starts == [SP]


def test_a_worker_that_ended_while_idle_is_replaced_without_a_failed_extension():
    starts = []
    # Answers one request, then ends as an idle worker does.
    script = READY + """
request = json.loads(sys.stdin.readline())
print(json.dumps({'ok': True, 'size_mib': request['size_mib']}), flush=True)
"""
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    try:
        assert extenders.extend(SD, VOL, 128, timeout=30) == 128
        assert extenders.extend(SD, VOL, 192, timeout=30) == 192
    finally:
        extenders.close()
    assert starts == [SP, SP]


def test_a_worker_fenced_since_it_began_is_retried_once_on_a_new_task():
    starts = []
    # The first worker is fenced at its second request (the SPM lease changed); the next is not.
    state = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'spm-extend-test-%d' % os.getpid())
    script = READY + """
import os
path = %r
for line in sys.stdin:
    request = json.loads(line)
    if os.path.exists(path):
        os.unlink(path)
        print(json.dumps({'ok': False, 'fenced': True, 'msg': 'no longer allowed'}), flush=True)
        break
    print(json.dumps({'ok': True, 'size_mib': request['size_mib']}), flush=True)
""" % state
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    try:
        assert extenders.extend(SD, VOL, 128, timeout=30) == 128
        with open(state, 'w', encoding='utf-8'):
            pass
        assert extenders.extend(SD, VOL, 192, timeout=30) == 192
    finally:
        extenders.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state)
    assert starts == [SP, SP]


def test_a_new_worker_that_is_fenced_is_an_error_naming_why():
    starts = []
    script = "import json\nprint(json.dumps({'ok': False, 'fenced': True, 'msg': 'this host is not the SPM'}))\n"
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    with pytest.raises(VirtnodeError, match='not the SPM') as raised:
        extenders.extend(SD, VOL, 128, timeout=30)
    assert raised.value.details['fenced'] is True
    assert starts == [SP]


def test_a_worker_that_does_not_answer_is_killed_at_the_timeout():
    starts = []
    script = READY + "import time\nsys.stdin.readline()\ntime.sleep(60)\n"
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    try:
        with pytest.raises(VirtnodeError, match='did not answer within 0.5s'):
            extenders.extend(SD, VOL, 128, timeout=0.5)
        worker = extenders._workers[SP]  # pylint: disable=protected-access
        assert not worker.alive()
    finally:
        extenders.close()


def test_a_domain_in_no_connected_pool_starts_no_worker():
    starts = []
    extenders = spm_extend.Extenders(pool_of=lambda sd: None, worker_class=scripted_worker(READY, starts))
    with pytest.raises(VirtnodeError, match='in no storage pool') as raised:
        extenders.extend(SD, VOL, 128, timeout=30)
    assert raised.value.details['fenced'] is False
    assert not starts


def test_the_real_worker_process_relays_why_it_cannot_begin(monkeypatch):
    """The module's own worker: this test host is SPM of nothing, and the worker says so."""
    monkeypatch.setenv('PYTHONPATH', '')
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP)
    with pytest.raises(VirtnodeError, match='not the SPM|no such|not connected|storage pool') as raised:
        extenders.extend(SD, VOL, 128, timeout=60)
    assert 'usage' not in raised.value.message
    assert os.path.isdir(os.path.join(spm_extend._collections_root(), 'ansible_collections'))  # pylint: disable=protected-access


def test_workers_are_ready_for_the_pools_this_host_is_spm_of_and_only_those():
    starts = []
    script = READY + """
for line in sys.stdin:
    print(json.dumps({'ok': True, 'size_mib': json.loads(line)['size_mib']}), flush=True)
"""
    other = '02111111-2222-4333-8444-555555555555'
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    try:
        assert extenders.keep_ready([SP, other], timeout=30) == {}
        assert extenders.keep_ready([SP, other], timeout=30) == {}
        assert sorted(starts) == sorted([SP, other])
        # The first extension finds its worker started.
        assert extenders.extend(SD, VOL, 128, timeout=30) == 128
        assert len(starts) == 2
        # No longer SPM of one pool: its worker is closed.
        kept = extenders._workers[other]  # pylint: disable=protected-access
        assert extenders.keep_ready([SP], timeout=30) == {}
        assert other not in extenders._workers and kept.proc is None  # pylint: disable=protected-access
    finally:
        extenders.close()


def test_a_worker_that_cannot_start_is_reported_and_tried_again_at_the_next_check():
    starts = []
    script = "import json\nprint(json.dumps({'ok': False, 'fenced': True, 'msg': 'the SPM is stopping'}))\n"
    extenders = spm_extend.Extenders(pool_of=lambda sd: SP, worker_class=scripted_worker(script, starts))
    assert extenders.keep_ready([SP], timeout=30) == {SP: 'the SPM is stopping'}
    assert extenders.keep_ready([SP], timeout=30) == {SP: 'the SPM is stopping'}
    assert starts == [SP, SP]


# ------------------------------------------------------------------ the worker's end, in process

class FakeTask:
    def __init__(self, fenced_after=None):
        self.md = type('Md', (), {'sd_uuid': SD})()
        self.master_dir = '/nowhere'
        self.checks = 0
        self.fenced_after = fenced_after

    def check(self):
        self.checks += 1
        if self.fenced_after is not None and self.checks > self.fenced_after:
            raise VirtnodeError('no longer allowed to change the storage of pool %s' % SP, {'fenced': True})


@pytest.fixture
def worker_side(monkeypatch):
    task = FakeTask()
    extended = []
    stopping = []

    @contextlib.contextmanager
    def fake_task(sp_uuid, what):
        assert (sp_uuid, what) == (SP, 'volume extends')
        yield task

    def fake_extend(sd_uuid, vol_uuid, size_mib, backend=None, check=None):
        assert backend == ('backend of', sd_uuid)
        check()
        extended.append((sd_uuid, vol_uuid, size_mib))
        return size_mib
    monkeypatch.setattr(spm, 'task', fake_task)
    monkeypatch.setattr(spm, 'is_stopping', lambda sp: bool(stopping))
    monkeypatch.setattr(storage, 'pool_domains', lambda md: {SD: 'Active'})
    monkeypatch.setattr(storage, 'read_md', lambda path: task.md)
    monkeypatch.setattr(thin_block, 'extend_volume_on_spm', fake_extend)
    monkeypatch.setattr(thin_block, 'backend_for', lambda sd_uuid, find_domain: ('backend of', sd_uuid))
    return task, extended, stopping


def run_serve(lines, idle=0.3, **kwargs):
    """Feed request lines to serve(); its answers."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b''.join(line + b'\n' for line in lines))
    serving = threading.Thread(target=spm_extend.serve, args=(SP, idle, in_r, out_w), kwargs=kwargs)
    serving.start()
    serving.join(10)
    assert not serving.is_alive(), 'the worker did not end'
    os.close(in_w)
    os.close(in_r)
    os.close(out_w)
    with os.fdopen(out_r) as out:
        return [json.loads(line) for line in out]


def test_the_worker_checks_the_lease_before_each_extend_and_ends_when_idle(worker_side):
    task, extended, _stopping = worker_side
    answers = run_serve([json.dumps({'sd_uuid': SD, 'vol_uuid': VOL, 'size_mib': n}).encode() for n in (128, 192)])
    assert answers[0]['ready'] is True
    assert answers[1:] == [{'ok': True, 'size_mib': 128}, {'ok': True, 'size_mib': 192}]
    assert task.checks == 2 and len(extended) == 2


def test_the_worker_refuses_a_domain_of_another_pool_and_bad_lines_and_goes_on(worker_side):
    _task, extended, _stopping = worker_side
    answers = run_serve([json.dumps({'sd_uuid': OTHER_SD, 'vol_uuid': VOL, 'size_mib': 128}).encode(),
                         b'not json', json.dumps({'sd_uuid': SD}).encode(),
                         json.dumps({'sd_uuid': SD, 'vol_uuid': VOL, 'size_mib': 64}).encode()])
    assert 'is not in storage pool' in answers[1]['msg'] and answers[1]['fenced'] is False
    assert answers[2]['ok'] is False and answers[3]['ok'] is False
    assert answers[4] == {'ok': True, 'size_mib': 64}
    assert extended == [(SD, VOL, 64)]


def test_a_fenced_worker_answers_and_ends_without_serving_more(worker_side):
    task, extended, _stopping = worker_side
    task.fenced_after = 1
    answers = run_serve([json.dumps({'sd_uuid': SD, 'vol_uuid': VOL, 'size_mib': n}).encode() for n in (128, 192, 256)],
                        idle=30)
    assert answers[1] == {'ok': True, 'size_mib': 128}
    assert answers[2]['fenced'] is True and len(answers) == 3
    assert extended == [(SD, VOL, 128)]


def test_the_worker_ends_when_the_spm_begins_to_stop(worker_side):
    _task, _extended, stopping = worker_side
    stopping.append(True)
    # idle=30: only the stopping SPM can end it within the join's 10 s.
    answers = run_serve([], idle=30)
    assert [a.get('ready') for a in answers] == [True]


def test_the_worker_looks_each_domain_up_once_and_again_when_its_directory_is_gone(tmp_path):
    dom_dir = tmp_path / SD
    dom_dir.mkdir()
    looked_up = []

    def find_domain(sd_uuid, required=True):
        looked_up.append(sd_uuid)
        return str(dom_dir)
    dirs = spm_extend._DomainDirs(find_domain)  # pylint: disable=protected-access
    assert dirs(SD) == dirs(SD) == str(dom_dir)
    assert looked_up == [SD]
    dom_dir.rmdir()
    dirs(SD)
    assert looked_up == [SD, SD]
