# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SPM tasks are fenced by the SPM lease, and stopping the SPM waits for (or stops) them. sanlock is faked."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import detached
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'
HOST_ID = 3


@pytest.fixture
def pool(nfs_domain, tmp_path, monkeypatch):
    """This process plays the SPM holder of a pool whose master is an NFS-type domain; sanlock is a dict."""
    monkeypatch.setattr(spm, 'STATE_DIR', str(tmp_path / 'spm'))
    monkeypatch.setattr(spm, 'TASKS_DIR', str(tmp_path / 'spm' / 'tasks'))
    monkeypatch.setattr(spm, 'INQUIRE_TIMEOUT', 0.3)
    dom_dir = nfs_domain
    storage.update_md(dom_dir, {'POOL_UUID': SP, 'POOL_SPM_ID': HOST_ID, 'POOL_SPM_LVER': 7})
    monkeypatch.setattr(storage, 'find_master', lambda sp_uuid, required=True: (dom_dir, storage.read_md(dom_dir)))
    monkeypatch.setattr(spm, 'require_spm', lambda sp_uuid: {'spm_status': spm.SPM})
    fake = {'held': {(SD, 'SDM')}, 'frozen': False, 'fd': 99}

    def held_resources(fd=None, pid=None):
        if fake['frozen']:
            time.sleep(5)
        if fd is not None:
            return sorted(res for res in fake['held'] if res[1] != 'SDM')
        return sorted(res for res in fake['held'] if res[1] == 'SDM')

    monkeypatch.setattr(sanlock_lock, 'held_resources', held_resources)
    monkeypatch.setattr(sanlock_lock, 'register', lambda: fake['fd'])
    monkeypatch.setattr(sanlock_lock, 'acquire', lambda ls, res, path, offset, fd, *args: fake['held'].add((ls, res)))
    monkeypatch.setattr(sanlock_lock, 'release', lambda ls, res, path, offset, fd: fake['held'].discard((ls, res)))
    monkeypatch.setattr(os, 'close', lambda fd, _close=os.close: None if fd == fake['fd'] else _close(fd))
    pid = os.getpid()
    fileio.write_json(spm.state_path(SP), {'pid': pid, 'start_time': detached.process_start_time(pid), 'status': spm.SPM,
                                           'lver': 7, 'host_id': HOST_ID, 'sd_uuid': SD})
    fake['dom_dir'] = dom_dir
    return fake


def _set_state(**changes):
    state = fileio.read_json(spm.state_path(SP))
    state.update(changes)
    fileio.write_json(spm.state_path(SP), state)


LOSSES = {
    'holder_gone': lambda fake: _set_state(pid=1, start_time=-1),
    'holder_lost_the_lease': lambda fake: _set_state(status=spm.LOST),
    'holder_restarted_with_a_new_lver': lambda fake: _set_state(lver=8),
    'sanlock_says_sdm_not_held': lambda fake: fake['held'].discard((SD, 'SDM')),
    'sanlock_daemon_frozen': lambda fake: fake.update(frozen=True),
    'task_lease_gone': lambda fake: [fake['held'].discard(res) for res in list(fake['held']) if res[1] != 'SDM'],
    'another_spm_on_storage': lambda fake: storage.update_md(fake['dom_dir'], {'POOL_SPM_ID': 5, 'POOL_SPM_LVER': 8}),
    'spm_stopping': lambda fake: fileio.write_json(os.path.join(spm.STATE_DIR, SP + '.stopping'), {}),
}


@pytest.mark.parametrize('loss', sorted(LOSSES))
def test_a_task_may_write_only_while_the_spm_lease_is_ours(pool, loss):
    with spm.task(SP, 'volume create') as running:
        running.check()
        assert [record['what'] for record in spm.running_tasks(SP)] == ['volume create']
        assert len(pool['held']) == 2, 'the task holds a lease of its own in the master lockspace'
        LOSSES[loss](pool)
        with pytest.raises(VirtnodeError, match='no longer allowed') as raised:
            running.check()
        assert raised.value.details['fenced']
    assert spm.running_tasks(SP) == []
    assert len(os.listdir(os.path.join(pool["dom_dir"], "master", "tasks"))) == 1, "a fenced task leaves its lease file alone"


def test_no_task_begins_while_the_spm_stops(pool):
    fileio.write_json(os.path.join(spm.STATE_DIR, SP + '.stopping'), {})
    with pytest.raises(VirtnodeError, match='stopping'):
        with spm.task(SP, 'volume create'):
            pass
    assert spm.running_tasks(SP) == []


def test_stop_waits_for_tasks_then_stops_those_still_running(pool):
    holder = subprocess.Popen(['sleep', '60'])
    quick = subprocess.Popen(['sleep', '0.5'])
    stuck = subprocess.Popen(['sleep', '60'])
    try:
        time.sleep(0.1)
        _set_state(pid=holder.pid, start_time=detached.process_start_time(holder.pid))
        for proc in (quick, stuck):
            fileio.write_json(os.path.join(spm.TASKS_DIR, SP, '%d.json' % proc.pid),
                              {'pid': proc.pid, 'start_time': detached.process_start_time(proc.pid), 'what': 'volume create'})
        started = time.monotonic()
        assert spm.stop(SP, timeout=4)
        assert quick.wait(1) == 0, 'a task that ends in time is waited for'
        assert stuck.wait(1) == -9, 'a task still running is stopped before the lease is given up'
        assert holder.wait(1) == -15
        assert time.monotonic() - started < 6
        assert not os.path.exists(os.path.join(spm.STATE_DIR, SP + '.stopping'))
    finally:
        for proc in (holder, quick, stuck):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_task_that_ends_normally_releases_and_removes_its_lease(pool):
    with spm.task(SP, 'volume delete') as running:
        running.check()
    assert pool['held'] == {(SD, 'SDM')}
    assert os.listdir(os.path.join(pool['dom_dir'], 'master', 'tasks')) == []
    assert spm.running_tasks(SP) == []


@pytest.mark.parametrize('when', ['before', 'after_the_domain_was_written'])
@pytest.mark.parametrize('loss', ['holder_lost_the_lease', 'sanlock_says_sdm_not_held', 'another_spm_on_storage'])
def test_attaching_a_domain_is_a_fenced_task(pool, monkeypatch, when, loss):
    """POOL_DOMAINS of the master is never written by an SPM that lost its lease."""
    import types
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool as storage_pool
    monkeypatch.setattr(storage, 'refresh_links', lambda *args: None)
    master = pool['dom_dir']
    other = storage.create_domain(os.path.dirname(master), '6a1e1f0c-5a0e-4f57-9a52-1b7d1d0f7c11', 'NFS', 'Data', 'data',
                                  'server:/export', 5, 1)
    domains_before = storage.pool_domains(storage.read_md(master))
    if when == 'before':
        LOSSES[loss](pool)
    else:
        real_update = storage.update_md

        def update_then_lose(dom_dir, changes):
            real_update(dom_dir, changes)
            if dom_dir == other:
                LOSSES[loss](pool)
        monkeypatch.setattr(storage, 'update_md', update_then_lose)
    with pytest.raises(VirtnodeError, match='no longer allowed') as raised:
        storage_pool.set_membership(types.SimpleNamespace(check_mode=False), other, SP, storage.STATUS_ATTACHED, [])
    assert raised.value.details['fenced']
    assert storage.pool_domains(storage.read_md(master)) == domains_before
    if when == 'before':
        assert storage.read_md(other).pool_uuids == []
    assert spm.running_tasks(SP) == []
