# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One metadata writer per domain: concurrent writers, snapshot races, interrupted creates, fencing."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import threading
import time
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
BASE = '9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21'
TOP = '1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10'
OTHER = '5b1e3c2a-9f4d-4e6b-8a7c-2d3e4f5a6b7c'
needs_qemu_img = pytest.mark.skipif(shutil.which('qemu-img') is None, reason='qemu-img not installed')


@pytest.fixture
def domain(pooled_nfs_domain):
    """The NFS-type domain of ``nfs_domain``, in pool SP; returns its directory."""
    return pooled_nfs_domain


# ------------------------------------------------------------------ concurrent metadata writers

def _writer(dom_dir, key, rounds, errors):
    try:
        for value in range(1, rounds + 1):
            storage.update_md(dom_dir, {key: value})
    except Exception as err:  # pylint: disable=broad-except
        errors.put(repr(err))


def _count_torn_reads(dom_dir, stop, counts):
    while not stop.is_set():
        counts['reads'] += 1
        try:
            storage.read_md(dom_dir)
        except Exception:  # pylint: disable=broad-except
            counts['torn'] += 1


@pytest.mark.parametrize('kind', ['processes', 'threads'])
def test_concurrent_metadata_writers_lose_nothing_and_tear_nothing(domain, kind):
    """Many writers each bump their own key: every final value survives and no read sees a half file."""
    writers, rounds = 6, 40
    keys = ['TEST_WRITER_%d' % number for number in range(writers)]
    if kind == 'processes':
        ctx = multiprocessing.get_context('fork')
        errors = ctx.Queue()
        workers = [ctx.Process(target=_writer, args=(domain, key, rounds, errors)) for key in keys]
    else:
        import queue  # pylint: disable=import-outside-toplevel
        errors = queue.Queue()
        workers = [threading.Thread(target=_writer, args=(domain, key, rounds, errors)) for key in keys]
    stop, counts = threading.Event(), {'reads': 0, 'torn': 0}
    reader = threading.Thread(target=_count_torn_reads, args=(domain, stop, counts))
    reader.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    stop.set()
    reader.join()
    raw = storage.read_raw(domain)
    lost = [key for key in keys if raw.get(key) != str(rounds)]
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert (counts['torn'], lost, failures) == (0, [], []), 'torn reads %d of %d' % (counts['torn'], counts['reads'])


def test_domain_lock_is_reentrant_and_excludes_other_processes(domain, tmp_path):
    with domain_lock.domain_lock(SD):
        with domain_lock.domain_lock(SD):
            pass
        ctx = multiprocessing.get_context('fork')
        result = ctx.Queue()

        def other():
            try:
                with domain_lock.domain_lock(SD, timeout=0.2):
                    result.put('locked')
            except VirtnodeError as err:
                result.put(err.message)

        proc = ctx.Process(target=other)
        proc.start()
        proc.join(10)
        assert 'another task is changing the metadata' in result.get(timeout=5)
    with domain_lock.domain_lock(SD, timeout=0.2):
        pass


def test_lease_format_lock_excludes_other_openers_of_the_file_and_refuses_links(tmp_path):
    ids = tmp_path / 'ids'
    ids.write_bytes(b'')
    ctx = multiprocessing.get_context('fork')
    result = ctx.Queue()

    def other():
        try:
            with domain_lock.lease_format_lock(str(ids), timeout=0.3):
                result.put('locked')
        except VirtnodeError as err:
            result.put(err.message)

    with domain_lock.lease_format_lock(str(ids)):
        proc = ctx.Process(target=other)
        proc.start()
        proc.join(10)
        assert 'another host formatting them' in result.get(timeout=5)
    with domain_lock.lease_format_lock(str(ids), timeout=0.3):
        pass
    os.unlink(ids)
    os.symlink(tmp_path / 'elsewhere', ids)
    (tmp_path / 'elsewhere').write_bytes(b'')
    with pytest.raises(VirtnodeError):
        with domain_lock.lease_format_lock(str(ids), timeout=0.3):
            pass


# ------------------------------------------------------------------ snapshot race

@needs_qemu_img
def test_two_snapshots_of_one_parent_race_exactly_one_wins(domain, monkeypatch):
    md = storage.read_md(domain)
    volumes.create_volume(domain, md, IMG, BASE, 'RAW', 'SPARSE', 1024 ** 2)
    real_create = qemu_img.create
    barrier = threading.Barrier(2)

    def slow_create(*args, **kwargs):
        # Widen the window between the "no children" check and the new volume's metadata.
        real_create(*args, **kwargs)
        time.sleep(0.3)

    monkeypatch.setattr(qemu_img, 'create', slow_create)
    outcome = {}

    def snapshot(vol_uuid):
        barrier.wait()
        try:
            volumes.create_volume(domain, md, IMG, vol_uuid, 'COW', 'SPARSE', None, BASE)
            outcome[vol_uuid] = 'ok'
        except VirtnodeError as err:
            outcome[vol_uuid] = err.message

    threads = [threading.Thread(target=snapshot, args=(vol,)) for vol in (TOP, OTHER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [vol for vol, result in outcome.items() if result == 'ok']
    assert len(winners) == 1, outcome
    loser = (set(outcome) - set(winners)).pop()
    assert 'already has a child' in outcome[loser]
    children = [v for v, m in volumes.image_volumes(domain, IMG).items() if m.parent == BASE]
    assert children == winners


# ------------------------------------------------------------------ interrupted create, re-run

class Crash(BaseException):
    """A kill at this point: no cleanup runs."""


def _volume_params(**changes):
    params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=TOP, parent_volume_uuid=None, size='1M', clone_from=None,
                  format='COW', allocation='SPARSE', description='', disk_type='DATA', state='present')
    params.update(changes)
    return params


def _run(params, check_mode=False):
    return volume_state.run_module(types.SimpleNamespace(params=params, check_mode=check_mode, _diff=False))


@pytest.fixture
def as_spm(monkeypatch):
    """This host is the SPM, without sanlock: every fence check passes."""
    checks = []

    @contextlib.contextmanager
    def fake_task(sp_uuid, what):
        checks.append(what)
        yield types.SimpleNamespace(check=lambda: None)

    monkeypatch.setattr(spm, 'require_spm', lambda sp_uuid: {'spm_status': spm.SPM})
    monkeypatch.setattr(spm, 'task', fake_task, raising=False)
    return checks


CRASH_POINTS = ['after_data', 'after_illegal_meta', 'after_lease', 'after_parent_internal', 'before_legal']


def _crash_at(monkeypatch, point, snapshot):
    writes = []
    real_write = volumes.vmd.write_volume_metadata
    real_lease = volumes._create_lease  # pylint: disable=protected-access
    real_create, real_convert = qemu_img.create, qemu_img.convert

    def write_meta(path, md, version=5):
        writes.append(md.legality)
        meta_writes = len(writes)
        if point == 'after_illegal_meta' and meta_writes == 2:
            raise Crash()
        if point == 'after_parent_internal' and meta_writes == 3:
            raise Crash()
        if point == 'before_legal' and md.legality == 'LEGAL' and path.endswith(TOP + '.meta'):
            raise Crash()
        real_write(path, md, version)

    def create(*args, **kwargs):
        real_create(*args, **kwargs)
        if point == 'after_data':
            raise Crash()

    def convert(*args, **kwargs):
        real_convert(*args, **kwargs)
        if point == 'after_data':
            raise Crash()

    def lease(*args):
        real_lease(*args)
        if point == 'after_lease':
            raise Crash()

    monkeypatch.setattr(volumes.vmd, 'write_volume_metadata', write_meta)
    monkeypatch.setattr(qemu_img, 'create', create)
    monkeypatch.setattr(qemu_img, 'convert', convert)
    monkeypatch.setattr(volumes, '_create_lease', lease)
    return lambda: monkeypatch.setattr(volumes.vmd, 'write_volume_metadata', real_write) or \
        monkeypatch.setattr(qemu_img, 'create', real_create) or monkeypatch.setattr(qemu_img, 'convert', real_convert) or \
        monkeypatch.setattr(volumes, '_create_lease', real_lease)


@needs_qemu_img
# Only a snapshot turns its parent INTERNAL: that point exists for snapshots alone.
@pytest.mark.parametrize('point,kind', [(point, kind) for kind in ('create', 'snapshot', 'clone') for point in CRASH_POINTS
                                        if point != 'after_parent_internal' or kind == 'snapshot'])
def test_rerun_after_an_interrupted_create_converges_to_a_legal_volume(domain, as_spm, monkeypatch, kind, point):
    changes = {}
    if kind == 'snapshot':
        _run(_volume_params(volume_uuid=BASE, format='RAW'))
        changes = dict(parent_volume_uuid=BASE, size=None)
        # The first metadata write of the snapshot is its ILLEGAL .meta; the base's writes are done.
    elif kind == 'clone':
        _run(_volume_params(image_uuid=OTHER, volume_uuid=BASE, format='RAW'))
        changes = dict(clone_from={'sd_uuid': None, 'image_uuid': OTHER, 'volume_uuid': BASE}, size=None)
    params = _volume_params(**changes)
    restore = _crash_at(monkeypatch, point, kind == 'snapshot')
    with pytest.raises(Crash):
        _run(params)
    restore()
    left = volumes.read_volume(domain, IMG, TOP)
    assert left is None or left.legality == 'ILLEGAL'
    result = _run(params)
    assert result['volume']['legality'] == 'LEGAL', result
    assert result['changed']
    data = volumes.paths(domain, IMG, TOP)[0]
    assert qemu_img.info(data)['format'] == 'qcow2'
    assert os.path.exists(volumes.paths(domain, IMG, TOP)[2])
    if kind == 'snapshot':
        assert volumes.read_volume(domain, IMG, BASE).role == 'INTERNAL'
        assert [v['volume_uuid'] for v in result['chain']] == [BASE, TOP]
    again = _run(params)
    assert not again['changed'] and again['volume']['legality'] == 'LEGAL'


@needs_qemu_img
def test_an_illegal_volume_with_children_is_never_reported_ok(domain, as_spm):
    _run(_volume_params(volume_uuid=BASE, format='RAW'))
    _run(_volume_params(parent_volume_uuid=BASE, size=None))
    meta = volumes.paths(domain, IMG, BASE)[1]
    md = volumes.read_volume(domain, IMG, BASE)
    md.legality = 'ILLEGAL'
    vmd.write_volume_metadata(meta, md, 5)
    with pytest.raises(VirtnodeError, match='ILLEGAL'):
        _run(_volume_params(volume_uuid=BASE, format='RAW'))
    assert volumes.read_volume(domain, IMG, BASE).legality == 'ILLEGAL'


# ------------------------------------------------------------------ fencing: a writer that lost the SPM lease writes nothing

@needs_qemu_img
@pytest.mark.parametrize('kind', ['create', 'snapshot', 'clone', 'extend', 'delete'])
def test_a_writer_that_lost_the_lease_during_qemu_img_writes_no_metadata(domain, monkeypatch, kind):
    md = storage.read_md(domain)
    volumes.create_volume(domain, md, OTHER, BASE, 'RAW', 'SPARSE', 1024 ** 2)
    if kind in ('extend', 'delete'):
        volumes.create_volume(domain, md, IMG, TOP, 'COW', 'SPARSE', 1024 ** 2)
    lease = {'ours': True}

    def check():
        if not lease['ours']:
            raise VirtnodeError('no longer the SPM of pool %s' % SP, {'fenced': True})

    def losing(real):
        def run(*args, **kwargs):
            real(*args, **kwargs)
            lease['ours'] = False  # the lease went while qemu-img ran
        return run

    for name in ('create', 'convert', 'resize'):
        monkeypatch.setattr(qemu_img, name, losing(getattr(qemu_img, name)))
    written = []
    real_write = volumes.vmd.write_volume_metadata
    monkeypatch.setattr(volumes.vmd, 'write_volume_metadata', lambda *args: written.append(args[0]) or real_write(*args))
    before = sorted(os.listdir(os.path.join(domain, 'images')))
    with volumes.fenced(check), pytest.raises(VirtnodeError, match='no longer the SPM'):
        if kind == 'create':
            volumes.create_volume(domain, md, IMG, TOP, 'RAW', 'SPARSE', 1024 ** 2)
        elif kind == 'snapshot':
            volumes.create_volume(domain, md, OTHER, TOP, 'COW', 'SPARSE', None, BASE)
        elif kind == 'clone':
            volumes.create_volume(domain, md, IMG, TOP, 'RAW', 'SPARSE', None, None, clone_source=(domain, OTHER, BASE))
        elif kind == 'extend':
            volumes.extend_volume(domain, md, IMG, TOP, 2 * 1024 ** 2)
        else:
            lease['ours'] = False
            volumes.delete_volume(domain, md, IMG, TOP)
    assert written == []
    assert sorted(os.listdir(os.path.join(domain, 'images'))) == before or kind in ('create', 'clone')
    assert volumes.read_volume(domain, OTHER, BASE).role == 'LEAF'
    if kind in ('extend', 'delete'):
        assert volumes.read_volume(domain, IMG, TOP).capacity == 1024 ** 2


# ------------------------------------------------------------------ pool membership race

def test_concurrent_attaches_to_one_pool_both_land(domain, monkeypatch):
    """Two domains attached at once: POOL_DOMAINS is read, changed and written back by each, and
    neither may write back a list that misses the other's entry."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool  # pylint: disable=import-outside-toplevel
    mount = os.path.dirname(domain)
    storage.update_md(domain, {'ROLE': 'Master', 'POOL_DOMAINS': '%s:Active' % SD, 'MASTER_VERSION': 1})
    others = ['6a1e1f0c-5a0e-4f57-9a52-1b7d1d0f7c11', '7b2f2a1d-6b1f-4a68-8b63-2c8e2e1a8d22']
    dirs = [storage.create_domain(mount, sd, 'NFS', 'Data', 'data', 'server:/export', 5, 1) for sd in others]
    monkeypatch.setattr(storage, 'find_master', lambda sp_uuid, **kwargs: (domain, storage.read_md(domain)))
    monkeypatch.setattr(spm, 'require_spm', lambda sp_uuid: {'spm_status': 'SPM'})
    # The fencing of the SPM task is tested in test_spm_fencing.py; here only the race counts.
    monkeypatch.setattr(spm, 'task', lambda sp_uuid, what: contextlib.nullcontext(types.SimpleNamespace(check=lambda: None)))
    monkeypatch.setattr(storage, 'refresh_links', lambda *args: None)
    real_pool_domains = storage.pool_domains

    def slow_pool_domains(master_md):
        time.sleep(0.05)  # widen the window between reading POOL_DOMAINS and writing it back
        return real_pool_domains(master_md)
    monkeypatch.setattr(storage, 'pool_domains', slow_pool_domains)
    module = types.SimpleNamespace(check_mode=False)
    errors = []

    def attach(dom_dir):
        try:
            pool.set_membership(module, dom_dir, SP, storage.STATUS_ATTACHED, [])
        except Exception as err:  # pylint: disable=broad-except
            errors.append(repr(err))
    threads = [threading.Thread(target=attach, args=(dom_dir,)) for dom_dir in dirs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert storage.pool_domains(storage.read_md(domain)) == {SD: 'Active', others[0]: 'Attached', others[1]: 'Attached'}
