# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chain parsing, snapshot XML, planning checks and metadata sync of live snapshots and merges."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import snapshot as vm_snapshot
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
BASE, MID, TOP = ('9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21', '1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10',
                  '7a2e9b44-1f3c-4d5e-8a6b-0c1d2e3f4a5b')
IMG_DIR = '/rhev/data-center/mnt/server:_export/%s/images/%s' % (SD, IMG)
HAS_QEMU_IMG = shutil.which('qemu-img') is not None

LIVE_XML = """<domain type='qemu'><name>v</name><memory unit='KiB'>131072</memory><devices>
<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' cache='none'/>
  <source file='{d}/{top}' index='3'/>
  <backingStore type='file' index='2'>
    <format type='qcow2'/>
    <source file='{d}/{mid}'/>
    <backingStore type='file' index='1'>
      <format type='qcow2'/>
      <source file='{d}/{base}'/>
      <backingStore/>
    </backingStore>
  </backingStore>
  <target dev='vda' bus='virtio'/>
  {mirror}
</disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/plain.img'/>
  <target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='{agent}'/></channel>
</devices></domain>"""


def live(mirror='', agent='disconnected'):
    return LIVE_XML.format(d=IMG_DIR, top=TOP, mid=MID, base=BASE, mirror=mirror, agent=agent)


def test_disk_chains_base_first_with_ids():
    disks = vm_snapshot.disk_chains(live())
    assert [d['target'] for d in disks] == ['vda', 'vdb']
    vda = disks[0]
    assert vm_snapshot.chain_ids(vda) == [BASE, MID, TOP]
    assert vda['chain'][-1]['path'] == '%s/%s' % (IMG_DIR, TOP)
    assert vda['chain'][0]['domain_id'] == SD and vda['chain'][0]['image_id'] == IMG
    assert vda['job'] is None and not vda['ready']
    assert disks[1]['chain'][0]['volume_id'] is None
    assert vm_snapshot.find_disk(disks, SD, IMG) is vda
    assert vm_snapshot.find_disk(disks, SD, BASE) is None


def test_disk_chains_sees_a_ready_mirror():
    xml = live("<mirror type='file' job='active-commit' ready='yes'><format type='qcow2'/></mirror>")
    vda = vm_snapshot.disk_chains(xml)[0]
    assert vda['job'] == 'active-commit' and vda['ready']


def test_chains_view_only_storage_volumes():
    view = vm_snapshot.chains_view(vm_snapshot.disk_chains(live()))
    assert view == [{'target': 'vda', 'domain_id': SD, 'image_id': IMG, 'chain': [BASE, MID, TOP]}]
    assert vm_snapshot.chains_view(vm_snapshot.disk_chains(live()), {(SD, BASE)}) == []


@pytest.mark.parametrize('path, expected', [
    ('%s/%s' % (IMG_DIR, TOP), (SD, IMG, TOP)),
    ('/rhev/data-center/0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2/%s/images/%s/%s' % (SD, IMG, BASE), (SD, IMG, BASE)),
    ('/var/lib/plain.img', None),
    ('/x/%s/volumes/%s/%s' % (SD, IMG, TOP), None),
    ('/x/not-a-uuid/images/%s/%s' % (IMG, TOP), None),
])
def test_ids_of_path(path, expected):
    assert vm_snapshot.ids_of_path(path) == expected


def test_snapshot_xml_disk_only_and_with_memory():
    entries = [{'target': 'vda', 'path': '/p/new', 'type': 'file'}]
    root = domxml.etree.fromstring(vm_snapshot.snapshot_xml(entries, ['vda', 'vdb'], description='before upgrade'))
    assert root.findtext('description') == 'before upgrade'
    vda, vdb = root.findall('disks/disk')
    assert (vda.get('name'), vda.get('snapshot'), vda.get('type')) == ('vda', 'external', 'file')
    assert vda.find('source').get('file') == '/p/new' and vda.find('driver').get('type') == 'qcow2'
    assert (vdb.get('name'), vdb.get('snapshot')) == ('vdb', 'no')
    assert root.find('memory').get('snapshot') == 'no'
    block = [{'target': 'vda', 'path': '/dev/vg/lv', 'type': 'block'}]
    root = domxml.etree.fromstring(vm_snapshot.snapshot_xml(block, ['vda'], memory_path='/p/mem'))
    assert root.find('disks/disk/source').get('dev') == '/dev/vg/lv'
    assert root.find('memory').attrib == {'snapshot': 'external', 'file': '/p/mem'}


def test_snapshot_flags():
    disk_only = vm_snapshot.snapshot_flags(False)
    assert disk_only == 4 | 16 | 32  # NO_METADATA | DISK_ONLY | REUSE_EXT
    assert vm_snapshot.snapshot_flags(True) == 4 | 32 | 256  # NO_METADATA | REUSE_EXT | LIVE


def test_memory_needed_and_agent():
    assert vm_snapshot.memory_needed(live()) == 128 * 1024 ** 2 + vm_snapshot.MEMORY_MARGIN
    assert not vm_snapshot.guest_agent.is_connected(live())
    assert vm_snapshot.guest_agent.is_connected(live(agent='connected'))


@pytest.mark.parametrize('ref, message', [
    ({'domain_id': SD, 'image_id': IMG}, 'needs volume_id'),
    ({'domain_id': SD, 'image_id': IMG, 'volume_id': 'nope'}, 'UUID'),
    ('x', 'must be a dict'),
])
def test_volume_ids_rejects(ref, message):
    with pytest.raises(VirtnodeError, match=message):
        vm_snapshot.volume_ids(ref, 'volumes[0]')


class FakeDom(object):
    def __init__(self, xml):
        self.xml = xml

    def XMLDesc(self, flags=0):
        return self.xml

    def name(self):
        return 'v'


def test_plan_absent_refuses_base_and_running_job_and_foreign_image():
    job = vm_snapshot.SnapshotRun(None, FakeDom(live()), check_mode=True)
    with pytest.raises(VirtnodeError, match='is the base of disk vda'):
        job.plan_absent([{'domain_id': SD, 'image_id': IMG, 'volume_id': BASE}])
    with pytest.raises(VirtnodeError, match='not a disk of the VM'):
        job.plan_absent([{'domain_id': SD, 'image_id': BASE, 'volume_id': MID}])
    plan = job.plan_absent([{'domain_id': SD, 'image_id': IMG, 'volume_id': MID},
                            {'domain_id': SD, 'image_id': IMG, 'volume_id': '00000000-1111-4222-8333-444444444444'}])
    assert plan[0][1]['target'] == 'vda' and plan[1][1] is None
    busy = vm_snapshot.SnapshotRun(None, FakeDom(live("<mirror type='file' job='active-commit'/>")), check_mode=True)
    with pytest.raises(VirtnodeError, match='already runs a block job'):
        busy.plan_absent([{'domain_id': SD, 'image_id': IMG, 'volume_id': TOP}])


def test_plan_present_in_chain_is_nothing_to_do():
    job = vm_snapshot.SnapshotRun(None, FakeDom(live()), check_mode=True)
    _disks, plan = job.plan_present([{'domain_id': SD, 'image_id': IMG, 'volume_id': MID}])
    assert plan == []


@pytest.fixture
def domain(tmp_path, monkeypatch):
    root = tmp_path / 'mnt'
    (root / 'server:_export').mkdir(parents=True)
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    for name in ('write_lockspace', 'write_resource'):
        monkeypatch.setattr(sanlock_lock, name, lambda *args: None)
    dom_dir = storage.create_domain(str(root / 'server:_export'), SD, 'NFS', 'Data', '', 'server:/export', 5, 1)
    return dom_dir, storage.read_md(dom_dir)


@pytest.mark.skipif(not HAS_QEMU_IMG, reason='needs qemu-img')
def test_sync_volume_chain_internal_then_active(domain):
    dom_dir, md = domain
    volumes.create_volume(dom_dir, md, IMG, BASE, 'COW', 'SPARSE', 1048576)
    volumes.create_volume(dom_dir, md, IMG, MID, 'COW', 'SPARSE', None, BASE)
    volumes.create_volume(dom_dir, md, IMG, TOP, 'COW', 'SPARSE', None, MID)
    # Internal merge of MID: TOP now backs onto BASE.
    assert volumes.sync_volume_chain(dom_dir, md, IMG, TOP, [BASE, TOP]) == [MID]
    assert volumes.read_volume(dom_dir, IMG, MID).legality == 'ILLEGAL'
    assert volumes.read_volume(dom_dir, IMG, TOP).parent == BASE
    assert volumes.sync_volume_chain(dom_dir, md, IMG, TOP, [BASE, TOP]) == []
    # The SPM deletes MID; BASE keeps a child, so it stays INTERNAL.
    volumes.delete_volume(dom_dir, md, IMG, MID)
    assert volumes.read_volume(dom_dir, IMG, BASE).role == 'INTERNAL'
    # Active merge of TOP: it is marked ILLEGAL; deleting it makes BASE the leaf.
    assert volumes.sync_volume_chain(dom_dir, md, IMG, TOP, [BASE]) == [TOP]
    assert volumes.read_volume(dom_dir, IMG, TOP).legality == 'ILLEGAL'
    volumes.delete_volume(dom_dir, md, IMG, TOP)
    assert volumes.read_volume(dom_dir, IMG, BASE).role == 'LEAF'
    assert sorted(os.listdir(volumes.image_path(dom_dir, IMG))) == sorted([BASE, BASE + '.meta', BASE + '.lease'])


@pytest.mark.skipif(not HAS_QEMU_IMG, reason='needs qemu-img')
def test_memory_volume_checks_format_and_size(domain, monkeypatch):
    dom_dir, md = domain
    mem_img = '5d1e2f30-7a8b-4c9d-8e0f-1a2b3c4d5e80'
    volumes.create_volume(dom_dir, md, mem_img, TOP, 'RAW', 'SPARSE', 64 * 1048576)
    volumes.create_volume(dom_dir, md, IMG, BASE, 'COW', 'SPARSE', 64 * 1048576)
    monkeypatch.setattr(vm_volumes, 'resolve_volume', lambda d, i, v: volumes.paths(dom_dir, i, v)[0])
    ref = {'domain_id': SD, 'image_id': mem_img, 'volume_id': TOP}
    info = vm_snapshot.memory_volume(ref, 32 * 1048576)
    assert info['capacity'] == 64 * 1048576 and info['type'] == 'file'
    with pytest.raises(VirtnodeError, match='too small'):
        vm_snapshot.memory_volume(ref, 64 * 1048576 + 1)
    with pytest.raises(VirtnodeError, match='needs a RAW volume'):
        vm_snapshot.memory_volume({'domain_id': SD, 'image_id': IMG, 'volume_id': BASE}, 1)
    os.truncate(info['path'], 1000)
    vm_snapshot.restore_volume_size(info)
    assert os.stat(info['path']).st_size == 64 * 1048576


def test_vm_spec_keeps_a_volume_disk_after_a_snapshot():
    """The vm module's spec still names the base volume; the VM now runs on a newer volume of that image."""
    ids = dict(domain_id=SD, image_id=IMG, volume_id=BASE)
    spec = vm_spec.normalize({'name': 'v', 'memory': '128MiB', 'disks': [dict(ids, format='qcow2')]},
                             stat_fn=lambda path: os.stat(__file__), resolver=lambda d, i, v: '%s/%s' % (IMG_DIR, v))
    live_state = domxml.parse_live(live())
    live_state['disks'] = [d for d in live_state['disks'] if d['target'] == 'vda']
    diffs = vm_spec.compare(spec, live_state)
    assert not [a for a in diffs['live'] if a['action'] in ('attach_disk', 'detach_disk')]
    other = vm_spec.normalize({'name': 'v', 'memory': '128MiB', 'disks': [dict(ids, format='qcow2', image_id=SD)]},
                              stat_fn=lambda path: os.stat(__file__), resolver=lambda d, i, v: '/elsewhere/%s/%s' % (i, v))
    actions = [a['action'] for a in vm_spec.compare(other, live_state)['live']]
    assert 'attach_disk' in actions and 'detach_disk' in actions


@pytest.mark.parametrize('is_spm, delete_merged, deleted, pending', [
    (True, True, 1, 0),
    (False, True, 0, 1),
    (True, False, 0, 1),
])
def test_merged_volume_deleted_only_on_the_spm(monkeypatch, is_spm, delete_merged, deleted, pending):
    class Md(object):
        legality = 'ILLEGAL'

    calls = []
    monkeypatch.setattr(vm_snapshot, 'locate', lambda ids, what: ('/p', '/dom', Md()))
    monkeypatch.setattr(vm_snapshot, 'this_host_is_spm', lambda dom_dir: (is_spm, None))
    monkeypatch.setattr(vm_snapshot.storage, 'read_md', lambda dom_dir: 'md')
    monkeypatch.setattr(vm_snapshot.volumes, 'delete_volume', lambda *args: calls.append(args))
    job = vm_snapshot.SnapshotRun(None, FakeDom(live()))
    job.cleanup_merged((SD, IMG, TOP), delete_merged)
    assert len(job.deleted) == deleted and len(calls) == deleted
    assert job.pending_delete == ([{'domain_id': SD, 'image_id': IMG, 'volume_id': TOP}] if pending else [])
    assert job.actions == (['delete volume %s' % TOP] if deleted else [])


@pytest.mark.parametrize('check_mode', [True, False])
def test_a_merge_on_a_block_domain_is_refused_off_the_spm_before_anything_changes(monkeypatch, check_mode):
    block_dir = '/rhev/data-center/mnt/blockSD/%s/images/%s' % (SD, IMG)
    xml = live().replace(IMG_DIR, block_dir)
    monkeypatch.setattr(vm_snapshot, 'this_host_is_spm', lambda dom_dir: (False, None))
    monkeypatch.setattr(vm_snapshot.storage, 'read_md', lambda dom_dir: type('Md', (), {'sd_uuid': SD})())
    job = vm_snapshot.SnapshotRun(None, FakeDom(xml), check_mode=check_mode)  # FakeDom has no blockCommit
    with pytest.raises(VirtnodeError, match='merging volume %s of block storage domain %s runs on the SPM' % (TOP, SD)):
        job.merge((SD, IMG, TOP))
    assert job.deleted == [] and job.pending_delete == []
