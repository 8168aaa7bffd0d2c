# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import shutil
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import storage_monitor as agent_storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata

SD = '275766cb-c7d8-43d6-a663-4e52160de620'


def make_domain(root, sd_uuid=SD, mount='server:_export'):
    md = root / mount / sd_uuid / 'dom_md'
    md.mkdir(parents=True)
    pairs = sd_metadata.new_domain_metadata(sd_uuid, 'NFS', 'Data', 'test', 'server:/export')
    (md / 'metadata').write_bytes(sd_metadata.serialize(pairs))
    return md / 'metadata'


def test_valid_domain_and_transitions(tmp_path):
    metadata = make_domain(tmp_path)
    changes = []
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2, on_change=lambda sd, st: changes.append((sd, st['valid'])))
    stats = monitor.check()
    assert stats[SD]['valid'] is True and stats[SD]['code'] == 0 and stats[SD]['version'] == 5
    assert changes == []
    good = metadata.read_bytes()
    metadata.write_text('garbage=1\n_SHA_CKSUM=00\n')
    stats = monitor.check()
    assert stats[SD]['valid'] is False and stats[SD]['code'] == errno.EINVAL
    assert changes == [(SD, False)]
    metadata.unlink()
    assert monitor.check()[SD]['code'] == errno.ENOENT
    assert changes == [(SD, False)]
    metadata.write_bytes(good)
    assert monitor.check()[SD]['valid'] is True
    assert changes == [(SD, False), (SD, True)]


def test_hung_read_times_out_without_piling_up_threads(tmp_path):
    make_domain(tmp_path)
    release = threading.Event()
    calls = []

    def reader(path):
        calls.append(path)
        release.wait(10)
        return agent_storage.read_metadata(path)

    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=0.2, reader=reader)
    started = time.monotonic()
    for _round in range(3):
        stats = monitor.check()
    assert time.monotonic() - started < 3
    assert stats[SD]['valid'] is False and stats[SD]['code'] == errno.ETIMEDOUT
    assert stats[SD]['delay'] >= 0.4
    assert len(calls) == 1 and monitor.stuck_workers() == 1
    release.set()
    time.sleep(0.2)
    assert monitor.check()[SD]['valid'] is True


def test_mismatched_sd_uuid_and_non_domains(tmp_path):
    other = '11111111-2222-4333-8444-555555555555'
    md = tmp_path / 'm' / other / 'dom_md'
    md.mkdir(parents=True)
    (md / 'metadata').write_bytes(sd_metadata.serialize(sd_metadata.new_domain_metadata(SD, 'NFS', 'Data', 'x', 's:/e')))
    (tmp_path / 'm' / '__DIRECT_IO_TEST__').mkdir()
    stats = agent_storage.StorageMonitor(str(tmp_path), timeout=2).check()
    assert list(stats) == [other]
    assert stats[other]['valid'] is False and 'does not match' in stats[other]['error']


def test_removed_domain_disappears(tmp_path):
    make_domain(tmp_path)
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2)
    assert SD in monitor.check()
    shutil.rmtree(str(tmp_path / 'server:_export'))
    assert monitor.check() == {}


def test_metadata_planted_as_a_link_or_fifo_is_invalid_and_never_followed(tmp_path):
    metadata = make_domain(tmp_path)
    outside = tmp_path / 'outside-metadata'
    outside.write_bytes(metadata.read_bytes())
    metadata.unlink()
    metadata.symlink_to(outside)
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2)
    stats = monitor.check()
    assert stats[SD]['valid'] is False and 'link' in stats[SD]['error']
    metadata.unlink()
    os.mkfifo(metadata)
    started = time.monotonic()
    stats = monitor.check()
    assert stats[SD]['valid'] is False and 'not a regular file' in stats[SD]['error']
    assert time.monotonic() - started < 1 and monitor.stuck_workers() == 0


def test_metadata_larger_than_the_limit_is_invalid_without_reading_it_all(tmp_path):
    metadata = make_domain(tmp_path)
    with open(metadata, 'ab') as stream:
        stream.truncate(agent_storage.MAX_METADATA_BYTES * 64)
    stats = agent_storage.StorageMonitor(str(tmp_path), timeout=2).check()
    assert stats[SD]['valid'] is False and 'larger than' in stats[SD]['error']


def test_a_block_domain_is_checked_on_its_metadata_lv_and_its_tags_read_at_most_every_few_minutes(tmp_path, monkeypatch):
    # The host directory of a block domain: dom_md's entries link to LVs, never read through the link.
    (tmp_path / 'blockSD' / SD / 'dom_md').mkdir(parents=True)
    (tmp_path / 'blockSD' / SD / 'dom_md' / 'metadata').symlink_to('/dev/%s/metadata' % SD)
    lv = tmp_path / 'metadata-lv'
    lv.write_bytes(b'\0' * 8192)
    opened, tag_reads = [], []

    def open_storage(path, flags, root=None):
        opened.append(path)
        return os.open(str(lv), os.O_RDONLY)

    class Domain:
        def __init__(self, sd_uuid):
            self.sd_uuid = sd_uuid

        def vg(self):
            tag_reads.append(self.sd_uuid)
            return {'vg_free': 3 << 30, 'vg_size': 10 << 30}

        def read_raw(self, vg):
            return sd_metadata.new_domain_metadata(self.sd_uuid, 'ISCSI', 'Data', 'san', None)

    monkeypatch.setattr(agent_storage.fileio, 'open_storage', open_storage)
    monkeypatch.setattr(agent_storage.block_domain, 'BlockDomain', Domain)
    monkeypatch.setattr(agent_storage.fileio, '_DIRECT', 0)
    monkeypatch.setattr(agent_storage, '_block_metadata', {})
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2)
    for _round in range(3):
        stats = monitor.check()
    assert stats[SD]['valid'] is True and stats[SD]['type'] == 'ISCSI' and stats[SD]['path'] == '/dev/%s/metadata' % SD
    assert opened == ['/dev/%s/metadata' % SD] * 3 and tag_reads == [SD]
    assert (stats[SD]['free_bytes'], stats[SD]['total_bytes']) == (3 << 30, 10 << 30)

    # The LUN stops answering reads: invalid at once, whatever the cached tags say.
    def dead_lun(path, flags, root=None):
        raise OSError(errno.EIO, 'I/O error')
    monkeypatch.setattr(agent_storage.fileio, 'open_storage', dead_lun)
    assert monitor.check()[SD]['code'] == errno.EIO


def test_free_space_and_lockspace_as_repo_stats_gives_them(tmp_path):
    make_domain(tmp_path)
    other = '11111111-2222-4333-8444-555555555555'
    make_domain(tmp_path, other, mount='other:_export')
    third = '22222222-2222-4333-8444-555555555555'
    make_domain(tmp_path, third, mount='third:_export')
    held = {SD: {'host_id': 3, 'path': '/x', 'flags': 0}, other: {'host_id': 3, 'path': '/y', 'flags': 1}}
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2, lockspaces=lambda: held)
    stats = monitor.check()
    st = os.statvfs(str(tmp_path))
    assert stats[SD]['total_bytes'] == st.f_blocks * st.f_frsize and 0 < stats[SD]['free_bytes'] <= stats[SD]['total_bytes']
    assert (stats[SD]['acquired'], stats[SD]['host_id']) == (True, 3)
    assert (stats[other]['acquired'], stats[other]['host_id']) == (False, 3)   # still joining
    assert (stats[third]['acquired'], stats[third]['host_id']) == (False, None)
    # sanlock that cannot be asked: unknown, not "not acquired".
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2, lockspaces=lambda: None)
    assert monitor.check()[SD]['acquired'] is None


def test_space_of_a_domain_that_stops_answering_keeps_its_last_figures(tmp_path):
    metadata = make_domain(tmp_path)
    monitor = agent_storage.StorageMonitor(str(tmp_path), timeout=2, lockspaces=lambda: {})
    free = monitor.check()[SD]['free_bytes']
    metadata.unlink()
    stats = monitor.check()
    assert stats[SD]['valid'] is False and stats[SD]['free_bytes'] == free
