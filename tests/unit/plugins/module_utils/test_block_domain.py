# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block domains' format and steps, over a fake of the collection's own LVM runner.

The real thing (LUNs from the lab's iSCSI target, LVM, sanlock, two hosts) is
tests/integration/test_kernel_block_domain.py.
"""

from __future__ import annotations

import os
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import info as storage_info
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes as file_volumes

SD = '5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f'
SP = 'b1d2c3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e'
LUN0, LUN1, LUN2 = '36001405aaaaaaaaaaaaaaaaaaaaaaaa0', '36001405bbbbbbbbbbbbbbbbbbbbbbbb1', '36001405cccccccccccccccccccccccc2'
MIB = 1024 ** 2


class FakeLvm:
    """VGs, PVs and LVs in memory behind the methods of ``lvm.Lvm`` that block_domain calls."""

    devices = ()  # no LUN to find lost when a call fails

    def __init__(self, pvs=None):
        self.pv_owner = dict(pvs or {})      # device -> vg name ('' = PV in no VG)
        self.vgs = {}                        # name -> {'tags': [...], 'pvs': [...], 'lvs': {name: {...}}}
        self.calls = []
        self.fail_at = None

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        if self.fail_at == name:
            raise VirtnodeError('%s failed (injected)' % name)

    def add_devices(self, devices):
        pass

    def pvs(self):
        return dict(self.pv_owner)

    def vg(self, name):
        vg = self.vgs.get(name)
        if vg is None:
            return None
        return {'vg_name': name, 'vg_uuid': 'vg-uuid-' + name[:8], 'vg_size': 40 * 128 * MIB, 'vg_free': 3 * 128 * MIB,
                'vg_extent_size': 128 * MIB, 'vg_extent_count': 40, 'vg_free_count': 3, 'vg_mda_size': 128 * MIB,
                'vg_mda_free': 127 * MIB, 'tags': list(vg['tags']),
                'pvs': [{'name': d, 'uuid': 'pv-uuid-' + d[-1], 'pe_count': 20, 'mda_used_count': 2} for d in vg['pvs']]}

    def vgs_tagged(self, tag):
        return sorted(name for name, vg in self.vgs.items() if tag in vg['tags'])

    def lvs(self, name):
        return {lv: dict(info) for lv, info in self.vgs[name]['lvs'].items()}

    def create_pvs(self, devices, metadata_size_mib, force=False):
        self._call('create_pvs', tuple(devices), metadata_size_mib, force)
        for device in devices:
            self.pv_owner[device] = ''

    def enable_metadata(self, device):
        self._call('enable_metadata', device)

    def create_vg(self, name, devices, extent_size, tag):
        self._call('create_vg', name, tuple(devices), extent_size, tag)
        self.vgs[name] = {'tags': [tag], 'pvs': list(devices), 'lvs': {}}
        for device in devices:
            self.pv_owner[device] = name

    def extend_vg(self, name, devices):
        self._call('extend_vg', name, tuple(devices))
        self.vgs[name]['pvs'] += list(devices)
        for device in devices:
            self.pv_owner[device] = name

    def create_lv(self, vg, name, size_mib, tags=(), device=None):
        self._call('create_lv', vg, name, size_mib, device)
        self.vgs[vg]['lvs'][name] = {'size': size_mib * MIB, 'tags': list(tags), 'active': True, 'open': False, 'devices': ''}

    def change_vg_tags(self, name, remove=(), add=()):
        self._call('change_vg_tags', name, tuple(remove), tuple(add))
        tags = self.vgs[name]['tags']
        assert all(tag in tags for tag in remove), remove
        self.vgs[name]['tags'] = [tag for tag in tags if tag not in remove] + list(add)

    def change_lv_tags(self, vg, lv, remove=(), add=()):
        self._call('change_lv_tags', vg, lv, tuple(remove), tuple(add))
        tags = self.vgs[vg]['lvs'][lv]['tags']
        self.vgs[vg]['lvs'][lv]['tags'] = [tag for tag in tags if tag not in remove] + list(add)

    def extend_lv(self, vg, lv, size_mib):
        self._call('extend_lv', vg, lv, size_mib)
        self.vgs[vg]['lvs'][lv]['size'] = size_mib * MIB

    def remove_lvs(self, vg, names):
        self._call('remove_lvs', vg, tuple(names))
        for name in names:
            del self.vgs[vg]['lvs'][name]

    def activate(self, vg, names, refresh=False):
        if names:  # as lvm.Lvm: no command for no LV
            self._call('activate', vg, tuple(names))

    def refresh(self, vg, names):
        if names:
            self._call('refresh', vg, tuple(names))

    def deactivate(self, vg, names):
        self._call('deactivate', vg, tuple(names))

    def deactivate_vg(self, name):
        self._call('deactivate_vg', name)

    def remove_vg(self, name, devices):
        self._call('remove_vg', name, tuple(devices))
        del self.vgs[name]
        for device in devices:
            self.pv_owner.pop(device, None)


def lun(guid, dm, block_size=512, holders=()):
    return {'guid': guid, 'dm': dm, 'device': '/dev/mapper/' + guid, 'logical_block_size': block_size,
            'holders': list(holders)}


@pytest.fixture
def san(monkeypatch):
    """Three LUNs on this host; mkfs and the zeroing of LVs do nothing."""
    found = {LUN0: lun(LUN0, 'dm-0'), LUN1: lun(LUN1, 'dm-1'), LUN2: lun(LUN2, 'dm-2')}
    monkeypatch.setattr(block_domain.luns, 'multipath_devices', lambda root='/': {k: dict(v) for k, v in found.items()})
    made = []
    monkeypatch.setattr(block_domain.command, 'run_checked', lambda argv, *a, **kw: made.append(tuple(argv)) or '')
    monkeypatch.setattr(block_domain, '_zero', lambda path, size: made.append(('zero', path, size)))
    return found, made


# ------------------------------------------------------------------ tags

def test_tags_are_escaped_as_vdsm_escapes_them():
    assert lvm_cmd.encode_tag('DESCRIPTION=my data, 1 & 2') == 'DESCRIPTION=my&32&data&44&&32&1&32&&38&&32&2'
    for text in ('DESCRIPTION= spaces kept ', 'POOL_DOMAINS=a:Active,b:Attached', 'x=é|"\'&1&', 'REMOTE_PATH=srv:/p'):
        assert lvm_cmd.decode_tag(lvm_cmd.encode_tag(text)) == text
        assert not set(lvm_cmd.encode_tag(text)) - set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-/=!:#&')


def metadata(**extra):
    pairs = sdm.new_domain_metadata(SD, 'ISCSI', 'Data', ' data on the SAN ', None)
    pairs.update(extra)
    return pairs


def test_metadata_round_trips_through_sealed_tags():
    pairs = metadata(VGUUID='abc', PV0='pv:%s,uuid:u0,pestart:0,pecount:20,mapoffset:0' % LUN0)
    tags = block_domain.metadata_tags(pairs)
    assert all(tag.startswith('MDT_') for tag in tags)
    assert 'MDT__SHA_CKSUM=' + sdm.checksum(pairs) in tags
    assert 'MDT_DESCRIPTION=&32&data&32&on&32&the&32&SAN&32&' in tags      # kept as written, as VDSM hashes it
    # Other tags of the VG (LVM's own, the domain tag) are not metadata.
    assert block_domain.parse_tags(tags + [block_domain.DOMAIN_TAG], SD) == pairs


def test_tampered_missing_or_foreign_metadata_is_refused():
    tags = block_domain.metadata_tags(metadata())
    tampered = [tag.replace('ROLE=Regular', 'ROLE=Master') for tag in tags]
    with pytest.raises(VirtnodeError, match='seal is broken'):
        block_domain.parse_tags(tampered, SD)
    with pytest.raises(VirtnodeError, match='no storage domain metadata'):
        block_domain.parse_tags([block_domain.DOMAIN_TAG], SD)
    other = '6c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f'
    with pytest.raises(VirtnodeError, match='a copied LUN'):
        block_domain.parse_tags(tags, other)


def test_pv_mapping_puts_the_metadata_pv_first_and_keeps_known_keys():
    vg = {'pvs': [{'name': '/dev/mapper/' + LUN1, 'uuid': 'u1', 'pe_count': 30},
                  {'name': '/dev/mapper/' + LUN0, 'uuid': 'u0', 'pe_count': 20}]}
    first = block_domain.pv_mapping(vg, first='/dev/mapper/' + LUN0)
    assert first == {'PV0': 'pv:%s,uuid:u0,pestart:0,pecount:20,mapoffset:0' % LUN0,
                     'PV1': 'pv:%s,uuid:u1,pestart:0,pecount:30,mapoffset:20' % LUN1}
    vg['pvs'].append({'name': '/dev/mapper/' + LUN2, 'uuid': 'u2', 'pe_count': 10})
    extended = block_domain.pv_mapping(vg, first)
    assert extended == dict(first, PV2='pv:%s,uuid:u2,pestart:0,pecount:10,mapoffset:50' % LUN2)


# ------------------------------------------------------------------ LUN checks

def test_luns_unknown_repeated_used_busy_or_4k_are_refused(san):
    found, _made = san
    lvm = FakeLvm({'/dev/mapper/' + LUN1: 'othervg'})
    with pytest.raises(VirtnodeError, match='not visible on this host: 36001405ffff'):
        block_domain.lun_devices([LUN0, '36001405ffff'], lvm)
    with pytest.raises(VirtnodeError, match='names a LUN twice'):
        block_domain.lun_devices([LUN0, LUN0], lvm)
    with pytest.raises(VirtnodeError, match='already used by volume group othervg'):
        block_domain.lun_devices([LUN0, LUN1], lvm)
    assert block_domain.lun_devices([LUN0, LUN1], lvm, force=True) == ['/dev/mapper/' + LUN0, '/dev/mapper/' + LUN1]
    found[LUN2]['holders'] = ['dm-7']
    with pytest.raises(VirtnodeError, match=r'LUN %s is in use \(dm-7\)' % LUN2):
        block_domain.lun_devices([LUN2], lvm)
    found[LUN0]['logical_block_size'] = 4096
    with pytest.raises(VirtnodeError, match='4096-byte logical blocks'):
        block_domain.lun_devices([LUN0], lvm, force=True)
    with pytest.raises(VirtnodeError, match='WWID'):
        block_domain.lun_devices(['../dm-0'], lvm)
    with pytest.raises(VirtnodeError, match='at least one'):
        block_domain.lun_devices([], lvm)


# ------------------------------------------------------------------ create, extend

def test_create_follows_vdsm_order_and_sizes(san):
    _found, made = san
    lvm = FakeLvm()
    domain = block_domain.create(SD, [LUN0, LUN1], 'ISCSI', 'san', 5, 10, lvm=lvm)
    names = [call[0] for call in lvm.calls]
    assert names[:3] == ['create_pvs', 'enable_metadata', 'create_vg']
    assert lvm.calls[0][1:] == (('/dev/mapper/' + LUN0, '/dev/mapper/' + LUN1), 128, False)
    assert lvm.calls[1] == ('enable_metadata', '/dev/mapper/' + LUN0)
    assert lvm.calls[2] == ('create_vg', SD, ('/dev/mapper/' + LUN0, '/dev/mapper/' + LUN1), 128 * MIB,
                            block_domain.UNREADY_TAG)
    lvs = [call[1:] for call in lvm.calls if call[0] == 'create_lv']
    # metadata first and on the metadata PV; leases 2048 slots and xleases 1024 slots of 1 MiB.
    assert lvs == [(SD, 'metadata', 128, '/dev/mapper/' + LUN0), (SD, 'ids', 8, None), (SD, 'inbox', 16, None),
                   (SD, 'outbox', 16, None), (SD, 'leases', 2048, None), (SD, 'xleases', 1024, None),
                   (SD, 'master', 1024, None)]
    assert ('mkfs.ext3', '-q', '-j', '-E', 'nodiscard', '/dev/%s/master' % SD) in made
    assert ('zero', '/dev/%s/metadata' % SD, 17 * MIB) in made
    assert ('zero', '/dev/%s/inbox' % SD, 4096 * 250) in made
    # What a reused LUN held where the lease LVs land reads as never written until sanlock formats it.
    assert {('zero', '/dev/%s/%s' % (SD, name), size) for name, size in (('ids', MIB), ('leases', 2 * MIB),
                                                                         ('xleases', 3 * MIB))} <= set(made)
    # The metadata is complete before the VG becomes a domain, in one tag change each.
    tag_calls = [call for call in lvm.calls if call[0] == 'change_vg_tags']
    assert len(tag_calls) == 2 and tag_calls[1][2:] == ((block_domain.UNREADY_TAG,), (block_domain.DOMAIN_TAG,))
    md = domain.read_md()
    assert (md.sd_type, md.version, md.alignment, md.block_size, md.role) == ('ISCSI', 5, MIB, 512, 'Regular')
    raw = domain.read_raw()
    assert raw['VGUUID'] == 'vg-uuid-' + SD[:8] and raw['PV0'].startswith('pv:%s,' % LUN0) and 'PV1' in raw
    assert 'REMOTE_PATH' not in raw and 'LOGBLKSIZE' not in raw
    assert block_domain.list_domains(lvm) == [SD]


def test_a_creation_stopped_before_the_ready_tag_is_redone(san):
    lvm = FakeLvm()
    lvm.fail_at = 'create_lv'
    with pytest.raises(VirtnodeError, match='injected'):
        block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    assert lvm.vgs[SD]['tags'] == [block_domain.UNREADY_TAG]
    lvm.fail_at = None
    lvm.calls.clear()
    block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    assert [call[0] for call in lvm.calls][:3] == ['deactivate_vg', 'remove_vg', 'create_pvs']
    assert block_domain.DOMAIN_TAG in lvm.vgs[SD]['tags']


def test_an_existing_domain_or_a_foreign_vg_is_never_recreated(san):
    lvm = FakeLvm()
    block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    with pytest.raises(VirtnodeError, match='already exists'):
        block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    other = '6c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f'
    lvm.vgs[other] = {'tags': [], 'pvs': ['/dev/mapper/' + LUN1], 'lvs': {}}
    lvm.pv_owner['/dev/mapper/' + LUN1] = other
    with pytest.raises(VirtnodeError, match='is not a storage domain: refusing'):
        block_domain.create(other, [LUN1], 'ISCSI', '', 5, 10, lvm=lvm)
    assert lvm.vgs[other]['tags'] == []


def test_bad_options_are_refused_before_anything_is_touched(san):
    lvm = FakeLvm()
    for args, message in ((dict(description='x' * 51), 'at most 50'), (dict(luns=[LUN0] * 11), 'at most 10 LUNs'),
                          (dict(version=3), 'unsupported storage domain version')):
        options = dict(luns=[LUN0], description='', version=5)
        options.update(args)
        with pytest.raises(VirtnodeError, match=message):
            block_domain.create(SD, options['luns'], 'ISCSI', options['description'], options['version'], 10, lvm=lvm)
    assert lvm.calls == [] and lvm.vgs == {}


def test_extend_adds_the_lun_and_maps_it_and_an_interrupted_one_is_finished(san):
    lvm = FakeLvm()
    domain = block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    lvm.calls.clear()
    assert block_domain.extend(domain, [LUN0, LUN1]) == [LUN1]
    assert [call[0] for call in lvm.calls] == ['create_pvs', 'extend_vg', 'change_vg_tags']
    raw = domain.read_raw()
    assert raw['PV1'] == 'pv:%s,uuid:pv-uuid-1,pestart:0,pecount:20,mapoffset:20' % LUN1
    assert block_domain.extend(domain, [LUN1]) == []
    # vgextend done, metadata not: the PV is the domain's already, only the mapping is written.
    lvm.extend_vg(SD, ['/dev/mapper/' + LUN2])
    assert 'PV2' not in domain.read_raw()
    assert block_domain.update_pv_mapping(domain)
    assert domain.read_raw()['PV2'].startswith('pv:%s,' % LUN2)
    assert not block_domain.update_pv_mapping(domain)


def test_a_metadata_change_is_one_tag_change(san):
    lvm = FakeLvm()
    domain = block_domain.create(SD, [LUN0], 'ISCSI', '', 5, 10, lvm=lvm)
    lvm.calls.clear()
    assert domain.update_md({'POOL_UUID': 'b1d2c3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e', 'ROLE': 'Master'})
    assert len(lvm.calls) == 1 and lvm.calls[0][0] == 'change_vg_tags'
    removed, added = lvm.calls[0][2:]
    assert 'MDT_ROLE=Regular' in removed and 'MDT_ROLE=Master' in added
    assert len([t for t in added if t.startswith('MDT__SHA_CKSUM=')]) == 1
    assert domain.read_md().role == 'Master'
    assert not domain.update_md({'ROLE': 'Master'})


def test_lvm_config_lets_only_the_given_devices_through():
    text = lvm_cmd.config(['/dev/mapper/' + LUN1, '/dev/mapper/' + LUN0])
    assert 'filter=["a|^/dev/mapper/%s$|", "a|^/dev/mapper/%s$|", "r|.*|"]' % (LUN0, LUN1) in text
    assert 'use_devicesfile=0' in text and 'hints="none"' in text and 'obtain_device_list_from_udev=0' in text
    assert lvm_cmd.config([]).count('"r|.*|"') == 1 and '"a|' not in lvm_cmd.config([])
    seen = []
    runner = lvm_cmd.Lvm(['/dev/mapper/' + LUN0], lambda argv, *a, **kw: seen.append(argv) or ' a|b \n')
    assert runner.report('vgs', 'vg_name,vg_tags') == [{'vg_name': 'a', 'vg_tags': 'b'}]
    assert seen[0][:2] == ['vgs', '--config'] and seen[0][3] == '--readonly'


def test_mappings_left_of_a_vg_removed_elsewhere_are_found_by_name(tmp_path):
    names = {'dm-0': '36001405aa', 'dm-1': SD.replace('-', '--') + '-ids', 'dm-2': SD.replace('-', '--') + '-' +
             '6c4d3e2f--1a0b--4c9d--8e7f--6a5b4c3d2e1f', 'dm-3': SD.replace('-', '--') + '--extra-x', 'sda': None}
    for dev, name in names.items():
        (tmp_path / 'sys' / 'block' / dev).mkdir(parents=True)
        if name:
            (tmp_path / 'sys' / 'block' / dev / 'dm').mkdir()
            (tmp_path / 'sys' / 'block' / dev / 'dm' / 'name').write_text(name + '\n')
    found = lvm_cmd.stale_mappings(SD, str(tmp_path))
    # Another VG whose name starts with this one's ("<sd>-extra") is not this VG's.
    assert found == sorted([names['dm-1'], names['dm-2']])
    removed = []
    lvm_cmd.remove_mappings(found, lambda argv, *a, **kw: removed.append(argv))
    assert removed == [['dmsetup', 'remove', name] for name in found]


# ------------------------------------------------------------------ a block domain among the host's domains

@pytest.fixture
def block_host(san, monkeypatch, tmp_path):
    """One block domain on this host's LUNs, the mount root in ``tmp_path``, every LVM runner the fake."""
    lvm = FakeLvm()
    block_domain.create(SD, [LUN0], 'ISCSI', 'on the san', 5, 10, lvm=lvm)
    lvm.calls.clear()
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(tmp_path / 'mnt'))
    monkeypatch.setattr(lvm_cmd, 'Lvm', lambda devices=None: lvm)
    monkeypatch.setattr(lvm_cmd, 'shared_devices', lambda root='/': ['/dev/mapper/' + LUN0])
    (tmp_path / 'mnt' / sd_layout.BLOCK_SD_DIR).mkdir(parents=True)
    return lvm, sd_layout.block_domain_dir(SD)


def test_the_domain_scan_finds_block_domains_and_reads_and_writes_their_tags(block_host):
    lvm, dom_dir = block_host
    unreachable = {}
    assert storage.scan_domains(unreachable=unreachable) == {SD: dom_dir} and unreachable == {}
    assert storage.read_md(dom_dir).description == 'on the san'
    assert storage.update_md(dom_dir, {sdm.POOL_UUID: SP})
    assert [call[0] for call in lvm.calls] == ['change_vg_tags']
    assert lvm_cmd.encode_tag('MDT_POOL_UUID=' + SP) in lvm.vgs[SD]['tags']
    info = storage.domain_info(dom_dir)
    assert info['path'] == dom_dir and info['pool_uuids'] == [SP] and info['luns'] == [LUN0]
    assert storage.read_sealed_md(dom_dir).pool_uuids == [SP]


def test_no_lvm_command_runs_on_a_host_without_multipath_devices(block_host, monkeypatch):
    lvm, _dom_dir = block_host
    monkeypatch.setattr(lvm_cmd, 'shared_devices', lambda root='/': [])
    assert storage.scan_domains() == {} and lvm.calls == []


def test_a_failing_lvm_listing_is_reported_unreachable_not_raised(block_host, monkeypatch):
    lvm, _dom_dir = block_host

    def vgs_timed_out(tag):
        raise VirtnodeError('vgs timed out')
    monkeypatch.setattr(lvm, 'vgs_tagged', vgs_timed_out)
    unreachable = {}
    assert storage.scan_domains(unreachable=unreachable) == {}
    assert list(unreachable.values()) == ['cannot list block storage domains: vgs timed out']


def test_unsealed_tags_never_decide_who_writes(block_host):
    lvm, dom_dir = block_host
    lvm.vgs[SD]['tags'] = [tag for tag in lvm.vgs[SD]['tags'] if not tag.startswith('MDT__SHA_CKSUM=')]
    with pytest.raises(VirtnodeError, match='not sealed'):
        storage.read_sealed_md(dom_dir)


def test_what_file_domains_only_have_so_far_is_refused_on_a_block_domain(block_host):
    _lvm, _dom_dir = block_host
    with pytest.raises(VirtnodeError, match=r'^Volumes on block storage domains is not supported yet'):
        storage.find_file_domain(SD, 'Volumes')


@pytest.fixture
def master_mounts(block_host, san, monkeypatch):
    """The block host with sanlock and mount faked: ``(lvm, dom_dir, made, mounted, sanlock calls)``."""
    lvm, dom_dir = block_host
    _found, made = san
    mounted = set()

    def run(argv, *args, **kwargs):
        made.append(tuple(argv))
        if argv[0] == 'mount':
            mounted.add(argv[-1])
        elif argv[0] == 'umount':
            mounted.discard(argv[-1])
        elif argv[0] == 'e2fsck' and 'dirty' in mounted:
            raise VirtnodeError('e2fsck failed', {'rc': 4})
        return ''

    monkeypatch.setattr(block_domain.command, 'run_checked', run)
    monkeypatch.setattr(block_domain.connection, 'mounted_targets', lambda mountinfo=None: set(mounted))
    monkeypatch.setattr(storage.connection, 'mounted_targets', lambda mountinfo=None: set(mounted))
    monkeypatch.setattr(block_domain.fileio, 'set_mode_owner', lambda path, mode, owner=None: None)
    calls = []
    sanlock = storage.sanlock_lock
    monkeypatch.setattr(sanlock, 'lockspaces', lambda: {})
    monkeypatch.setattr(sanlock, 'add_lockspace', lambda *args: calls.append(('add_lockspace',) + args[:2]) or True)
    monkeypatch.setattr(sanlock, 'register', lambda: os.open(os.devnull, os.O_RDONLY))
    monkeypatch.setattr(sanlock, 'acquire', lambda ls, res, path, *rest: calls.append(('acquire', res, path)))
    monkeypatch.setattr(sanlock, 'release', lambda ls, res, path, *rest: calls.append(('release', res, path)))
    lvm.calls.clear()
    made.clear()
    return lvm, dom_dir, made, mounted, calls


def test_a_pool_on_a_block_master_makes_its_tree_on_the_master_lv_mounted_under_the_spm_lease(master_mounts):
    lvm, dom_dir, made, mounted, calls = master_mounts
    storage.create_pool(SP, dom_dir, 'on the san', 1)
    top = os.path.join(dom_dir, 'master')
    device = '/dev/%s/master' % SD
    assert [argv for argv in made if argv[0] != 'zero'] == [
        ('e2fsck', '-p', device), ('mount', '-t', 'ext3', '-o', 'nosuid,nodev', device, top), ('umount', top)]
    assert sorted(os.listdir(top)) == ['hosts', 'tasks', 'vms'] and not mounted
    assert [call for call in lvm.calls if call[0] in ('activate', 'refresh', 'deactivate') and 'master' in call[2]] == [
        ('activate', SD, ('master',)), ('deactivate', SD, ('master',))]
    assert calls == [('add_lockspace', SD, 1), ('acquire', 'SDM', '/dev/%s/leases' % SD), ('release', 'SDM', '/dev/%s/leases' % SD)]
    md = storage.read_md(dom_dir)
    assert md.role == 'Master' and storage.pool_domains(md) == {SD: 'Active'}
    assert storage.find_master(SP)[0] == dom_dir


def test_the_master_tree_is_never_written_into_a_bare_mount_point(master_mounts):
    _lvm, dom_dir, _made, mounted, _calls = master_mounts
    with pytest.raises(VirtnodeError, match='master file system of %s is not mounted' % SD):
        storage.ensure_master_tree(dom_dir)
    assert not os.path.exists(os.path.join(dom_dir, 'master', 'tasks')) and not mounted
    assert storage.master_tree_on_spm_only(dom_dir)


def test_a_master_file_system_e2fsck_cannot_repair_stops_the_pool_creation_before_any_metadata(master_mounts):
    _lvm, dom_dir, made, mounted, calls = master_mounts
    mounted.add('dirty')
    with pytest.raises(VirtnodeError, match='master file system of storage domain %s needs repair by hand' % SD):
        storage.create_pool(SP, dom_dir, 'on the san', 1)
    assert not [argv for argv in made if argv[0] == 'mount'] and storage.read_md(dom_dir).role == 'Regular'
    assert calls[-1][0] == 'release'


def test_a_stale_master_mount_of_an_earlier_term_is_dropped_before_mounting_again(master_mounts):
    _lvm, dom_dir, made, mounted, _calls = master_mounts
    top = os.path.join(dom_dir, 'master')
    mounted.add(top)
    storage.mount_master(dom_dir)
    assert [argv[0] for argv in made] == ['umount', 'e2fsck', 'mount'] and top in mounted
    made.clear()
    storage.disconnect_pool(SP)  # no pool state here; the master is named by nothing: the mount stays
    assert top in mounted
    storage.write_pool_state(SP, {'sp_uuid': SP, 'host_id': 1, 'lockspaces': [SD]})
    storage.disconnect_pool(SP)
    assert top not in mounted and [argv[0] for argv in made] == ['umount']


def test_joining_prepares_the_host_directory_as_vdsm_does(block_host):
    lvm, dom_dir = block_host
    storage.prepare_block_domain(dom_dir, storage.read_md(dom_dir))
    (activated,) = [call for call in lvm.calls if call[0] == 'activate']
    assert 'master' not in activated[2] and {'ids', 'leases', 'metadata', 'xleases'} <= set(activated[2])
    for name in activated[2]:
        assert os.readlink(os.path.join(dom_dir, 'dom_md', name)) == '/dev/%s/%s' % (SD, name)
    assert os.path.isdir(os.path.join(dom_dir, 'images'))
    # Removed, the domain leaves nothing in blockSD; only links and empty directories were there to remove.
    storage.forget_block_domain_dir(SD)
    assert not os.path.lexists(dom_dir)


# ------------------------------------------------------------------ volumes of a block domain

IMG = '1e2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b'
BASE, TOP = '2f3e4d5c-6b7a-4899-8a1b-2c3d4e5f6a7b', '3a4b5c6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d'
BLANK = vmd.BLANK_UUID


@pytest.fixture
def block_store(block_host, monkeypatch, tmp_path):
    """The block domain's volumes, its metadata LV a sparse file, qemu-img and sanlock recorded."""
    lvm, _dom_dir = block_host
    metadata = tmp_path / 'metadata'
    with open(metadata, 'wb') as f:
        f.truncate(128 * MIB)
    done = []
    monkeypatch.setattr(block_volumes.qemu_img, 'create', lambda path, fmt, size=None, backing=None, backing_format=None,
                        preallocation=None: done.append(('create', path, fmt, size, backing, backing_format)))
    monkeypatch.setattr(block_volumes.qemu_img, 'resize', lambda path, size, fmt: done.append(('resize', path, size)))
    monkeypatch.setattr(block_volumes.sanlock_lock, 'write_resource', lambda lockspace, resource, path, offset, align, sector:
                        done.append(('lease', lockspace, resource, path, offset)))
    domain = block_domain.BlockDomain(SD, lvm)
    store = block_volumes.BlockVolumes(domain, domain.read_md(), metadata_path=str(metadata))
    return store, lvm, metadata, done


def slot_text(metadata, slot):
    with open(metadata, 'rb') as f:
        f.seek(MIB + slot * 8192)
        return f.read(512)


def test_a_volume_is_a_tagged_lv_with_its_metadata_in_a_slot_and_its_lease_after_the_reserved_ones(block_store):
    store, lvm, metadata, done = block_store
    md = store.create_volume(IMG, BASE, 'COW', 'SPARSE', 256 * MIB, description='base')
    lv = lvm.vgs[SD]['lvs'][BASE]
    assert sorted(lv['tags']) == sorted(['IU_' + IMG, 'PU_' + BLANK, 'MD_1']) and lv['size'] == 256 * MIB
    created = [call for call in lvm.calls if call[0] == 'create_lv']
    assert created == [('create_lv', SD, BASE, 256, None)]
    on_disk = vmd.parse(slot_text(metadata, 1))
    assert on_disk == md and md.legality == 'LEGAL' and md.capacity == 256 * MIB and md.parent == BLANK
    assert slot_text(metadata, 1).rstrip(b'\0').endswith(b'EOF\n')
    link = store.path(IMG, BASE)
    assert ('create', link, 'COW', 256 * MIB, None, None) in done
    assert os.readlink(link) == '/dev/%s/%s' % (SD, BASE)
    assert ('lease', SD, BASE, '/dev/%s/leases' % SD, (100 + 1) * MIB) in done
    # What it activated for qemu-img, it deactivated.
    assert ('deactivate', SD, (BASE,)) in lvm.calls


def test_a_snapshot_takes_the_next_slot_and_makes_its_parent_internal(block_store):
    store, lvm, metadata, done = block_store
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 256 * MIB)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    assert 'MD_2' in lvm.vgs[SD]['lvs'][TOP]['tags'] and 'PU_' + BASE in lvm.vgs[SD]['lvs'][TOP]['tags']
    assert vmd.parse(slot_text(metadata, 1)).role == 'INTERNAL'
    assert vmd.parse(slot_text(metadata, 2)).parent == BASE
    assert ('create', store.path(IMG, TOP), 'COW', None, BASE, 'COW') in done
    assert [info['volume_uuid'] for info in store.chain_info(IMG)] == [BASE, TOP]
    with pytest.raises(VirtnodeError, match='has child volume'):
        store.delete_volume(IMG, BASE)
    assert store.delete_volume(IMG, TOP)
    assert TOP not in lvm.vgs[SD]['lvs'] and not slot_text(metadata, 2).strip(b'\0')
    assert vmd.parse(slot_text(metadata, 1)).role == 'LEAF'
    # A freed slot is taken again.
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    assert 'MD_2' in lvm.vgs[SD]['lvs'][TOP]['tags']


def test_raw_volumes_are_whole_extents_and_never_sparse(block_store):
    store, lvm, _metadata, _done = block_store
    with pytest.raises(VirtnodeError, match='no sparse RAW'):
        store.create_volume(IMG, BASE, 'RAW', 'SPARSE', 100 * MIB)
    md = store.create_volume(IMG, BASE, 'RAW', 'PREALLOCATED', 100 * MIB)
    assert md.capacity == 128 * MIB and lvm.vgs[SD]['lvs'][BASE]['size'] == 128 * MIB
    assert store.capacity_for('RAW', 100 * MIB) == 128 * MIB and store.capacity_for('COW', 100 * MIB) == 100 * MIB
    assert store.extend_volume(IMG, BASE, 200 * MIB)
    assert ('extend_lv', SD, BASE, 256) in lvm.calls and store.read_volume(IMG, BASE).capacity == 256 * MIB
    assert store.read_volume(IMG, BASE).generation == 1
    assert not store.extend_volume(IMG, BASE, 256 * MIB)


def test_a_volume_larger_than_the_free_space_is_refused_before_any_lv_is_made(block_store):
    store, lvm, _metadata, _done = block_store
    with pytest.raises(VirtnodeError, match='needs 512 MiB and storage domain .* has 384 MiB free'):
        store.create_volume(IMG, BASE, 'RAW', 'PREALLOCATED', 512 * MIB)
    assert not [call for call in lvm.calls if call[0] == 'create_lv']


def test_a_cow_volume_grows_in_its_header_and_its_lv_stays_thin(block_store):
    store, lvm, _metadata, done = block_store
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 256 * MIB)
    assert store.extend_volume(IMG, BASE, 10 * 1024 * MIB)
    assert ('resize', store.path(IMG, BASE), 10 * 1024 * MIB) in done
    assert not [call for call in lvm.calls if call[0] == 'extend_lv']


def test_what_an_interrupted_create_leaves_reads_illegal_and_is_removed(block_store):
    store, lvm, metadata, _done = block_store
    lvm.create_lv(SD, BASE, 128, tags=[block_volumes.INITIALIZING_TAG])
    store.lvs(refresh=True)
    assert store.read_volume(IMG, BASE).legality == 'ILLEGAL'
    assert store.delete_volume(IMG, BASE) and BASE not in lvm.vgs[SD]['lvs']
    # Tagged with its slot, the slot never written: ILLEGAL too.
    lvm.create_lv(SD, BASE, 128, tags=['IU_' + IMG, 'PU_' + BLANK, 'MD_1'])
    store.lvs(refresh=True)
    assert store.read_volume(IMG, BASE).legality == 'ILLEGAL'
    # A slot holding garbage is an error, not a volume.
    with open(metadata, 'r+b') as f:
        f.seek(MIB + 8192)
        f.write(b'DOMAIN=x\nEOF\n')
    with pytest.raises(VirtnodeError, match='metadata slot 1'):
        store.read_volume(IMG, BASE)


def _chain_of_two_inactive(store, lvm):
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 256 * MIB)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    for vol in (BASE, TOP):
        lvm.vgs[SD]['lvs'][vol]['active'] = False
        os.unlink(store.path(IMG, vol))
    store.lvs(refresh=True)
    lvm.calls.clear()


def test_a_guest_gets_its_volume_with_the_parents_active_and_linked_and_gives_them_back(block_store):
    store, lvm, _metadata, _done = block_store
    _chain_of_two_inactive(store, lvm)
    # Check mode: the same checks, the path it would have, nothing activated.
    assert store.prepare(IMG, TOP, activate=False) == store.path(IMG, TOP)
    assert lvm.calls == [] and not os.path.lexists(store.path(IMG, TOP))
    assert store.prepare(IMG, TOP) == store.path(IMG, TOP)
    assert lvm.calls == [('activate', SD, (TOP, BASE))]
    for vol in (TOP, BASE):  # the qcow2 backing name of TOP resolves to BASE's LV through its link
        assert os.readlink(store.path(IMG, vol)) == '/dev/%s/%s' % (SD, vol)
    for vol in (BASE, TOP):
        lvm.vgs[SD]['lvs'][vol]['active'] = True
    store.lvs(refresh=True)
    lvm.calls.clear()
    # Prepared again while active (a second guest, a migration back): refreshed, since the SPM may have grown them.
    store.prepare(IMG, TOP)
    assert lvm.calls == [('refresh', SD, (TOP, BASE))]
    lvm.calls.clear()
    store.teardown(IMG, TOP)
    assert lvm.calls == [('deactivate', SD, (TOP, BASE))]
    assert not os.path.lexists(store.path(IMG, TOP)) and not os.path.lexists(store.path(IMG, BASE))


def test_a_chain_with_an_illegal_volume_or_tags_that_disagree_with_the_metadata_is_never_activated(block_store):
    store, lvm, _metadata, _done = block_store
    _chain_of_two_inactive(store, lvm)
    base = store.read_volume(IMG, BASE)
    base.legality = 'ILLEGAL'
    store.write_volume(BASE, base)
    with pytest.raises(VirtnodeError, match='volume %s of its chain is ILLEGAL' % BASE):
        store.prepare(IMG, TOP)
    base.legality = 'LEGAL'
    store.write_volume(BASE, base)
    # Another host rewrote the top's PU_ tag: the slot says BASE, the tag a volume of nowhere.
    tags = lvm.vgs[SD]['lvs'][TOP]['tags']
    lvm.vgs[SD]['lvs'][TOP]['tags'] = [t for t in tags if not t.startswith('PU_')] + ['PU_' + BLANK]
    store.lvs(refresh=True)
    with pytest.raises(VirtnodeError, match='names parent %s, its LV tag %s' % (BASE, BLANK)):
        store.prepare(IMG, TOP)
    with pytest.raises(VirtnodeError, match='not on storage domain'):
        store.prepare(SP, TOP)  # of another image
    assert not [call for call in lvm.calls if call[0] == 'activate']


def test_the_lvm_backend_activates_through_the_domains_volumes(block_store, monkeypatch):
    store, lvm, _metadata, _done = block_store
    _chain_of_two_inactive(store, lvm)
    monkeypatch.setattr(block.lvm_cmd, 'Lvm', lambda runner=None: lvm)
    backend = block.LvmBackend(volumes_for=lambda sd_uuid: store)
    assert backend.planned(SD, IMG, TOP) == store.path(IMG, TOP) and lvm.calls == []
    assert backend.activate(SD, IMG, TOP) == store.path(IMG, TOP)
    assert lvm.calls == [('activate', SD, (TOP, BASE))]
    with pytest.raises(VirtnodeError, match='UUID'):
        backend.activate(SD, '../' + IMG, TOP)
    backend.deactivate(SD, IMG, TOP)
    assert not os.path.lexists(store.path(IMG, TOP))


def test_a_clone_onto_a_block_domain_is_copied_into_an_lv_the_size_the_copy_needs(block_store, monkeypatch, tmp_path):
    store, lvm, _metadata, done = block_store
    monkeypatch.setattr(block_volumes.qemu_img, 'measure', lambda path, src_fmt, dst_fmt:
                        done.append(('measure', path, src_fmt, dst_fmt)) or {'required': 300 * MIB, 'fully-allocated': 600 * MIB})
    monkeypatch.setattr(block_volumes.qemu_img, 'convert', lambda src, dst, src_fmt, dst_fmt, preallocation=None:
                        done.append(('convert', src, dst, src_fmt, dst_fmt)))
    # From a volume of this domain: its chain is active (and linked) while it is read, not afterwards.
    _chain_of_two_inactive(store, lvm)
    clone_img, clone = '5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f', '6d7e8f9a-0b1c-4d2e-9f3a-4b5c6d7e8f9a'
    md = store.create_volume(clone_img, clone, 'COW', 'SPARSE', clone_source=(store, IMG, TOP))
    assert md.capacity == 256 * MIB and md.parent == BLANK and md.legality == 'LEGAL'
    assert ('activate', SD, (TOP, BASE)) in lvm.calls and ('deactivate', SD, (TOP, BASE)) in lvm.calls
    assert ('measure', store.path(IMG, TOP), 'COW', 'COW') in done
    assert ('convert', store.path(IMG, TOP), store.path(clone_img, clone), 'COW', 'COW') in done
    assert ('create_lv', SD, clone, 300, None) in lvm.calls  # what qemu-img measured, more than the 256 MiB start
    assert not [d for d in done if d[0] == 'create' and d[1] == store.path(clone_img, clone)]
    # From a file domain's volume, as RAW: the whole capacity, rounded to an extent; nothing measured.
    source = types.SimpleNamespace(read_volume=lambda img, vol: vmd.VolumeMetadata(
        domain=SP, image=img, capacity=100 * MIB, volume_format='COW', allocation='SPARSE', role='LEAF', disk_type='DATA',
        parent=BLANK, legality='LEGAL'), path=lambda img, vol: str(tmp_path / vol))
    raw_img, raw = '7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b', '8f9a0b1c-2d3e-4f4a-9b5c-6d7e8f9a0b1c'
    done.clear()
    md = store.create_volume(raw_img, raw, 'RAW', 'PREALLOCATED', clone_source=(source, IMG, TOP))
    assert md.capacity == 128 * MIB and done[0] == ('convert', str(tmp_path / TOP), store.path(raw_img, raw), 'COW', 'RAW')
    # A source that is not LEGAL, a size that is not the source's, another block domain: refused, nothing made.
    lvm.calls.clear()
    new = '9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d'
    base = store.read_volume(IMG, BASE)
    base.legality = 'ILLEGAL'
    store.write_volume(BASE, base)
    with pytest.raises(VirtnodeError, match='ILLEGAL'):
        store.create_volume(SP, new, 'COW', 'SPARSE', clone_source=(store, IMG, BASE))
    with pytest.raises(VirtnodeError, match='a clone has the size of its source'):
        store.create_volume(SP, new, 'COW', 'SPARSE', 512 * MIB, clone_source=(store, IMG, TOP))
    other = block_volumes.BlockVolumes(store.domain, store.md)
    other.sd_uuid = SP
    with pytest.raises(VirtnodeError, match='another block storage domain'):
        store.create_volume(SP, new, 'COW', 'SPARSE', clone_source=(other, IMG, TOP))
    assert not [call for call in lvm.calls if call[0] == 'create_lv']


def test_a_block_volume_is_not_cloned_onto_a_file_domain_yet(block_store, tmp_path):
    store, _lvm, _metadata, _done = block_store
    with pytest.raises(VirtnodeError, match='onto a file domain is not supported yet'):
        file_volumes.FileVolumes(str(tmp_path), store.md).create_volume(IMG, BASE, 'COW', 'SPARSE', clone_source=(store, IMG, TOP))


def test_the_spm_extend_reads_one_lvs_and_the_capacity_from_the_slot(block_store, tmp_path, monkeypatch):
    """Every LVM command of an SPM extend is a process scanning the LUNs: one report, no activation, no qemu-img."""
    store, lvm, metadata, _done = block_store
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 1024 * MIB, initial_size=100 * MIB)
    (tmp_path / 'dev' / SD).mkdir(parents=True)
    (tmp_path / 'dev' / SD / 'metadata').write_bytes(metadata.read_bytes())  # the LV's device, as the SPM reads it
    lv, calls = lvm.vgs[SD]['lvs'][BASE], []

    def report(name, fields, *names):
        calls.append(('report', name, fields) + names)
        return [{'lv_tags': ','.join(lv['tags']), 'lv_size': str(lv['size']), 'vg_tags': ','.join(lvm.vgs[SD]['tags']),
                 'vg_extent_size': str(128 * MIB)}]
    monkeypatch.setattr(block.lvm_cmd, 'Lvm', lambda runner=None: None)
    backend = block.LvmBackend(dev_root=str(tmp_path / 'dev'), volumes_for=lambda sd_uuid: store)
    backend.lvm = types.SimpleNamespace(report=report, extend_lv=lambda vg, name, mib: calls.append(('lvextend', vg, name, mib)))
    assert block.extend_volume_on_spm(SD, BASE, 1500, backend=backend) == 1152  # capped at 1127 MiB, whole extents
    assert calls == [('report', 'lvs', 'lv_tags,lv_size,vg_tags,vg_extent_size', '%s/%s' % (SD, BASE)),
                     ('lvextend', SD, BASE, 1127)]


MID = '4c5d6e7f-8091-4a2b-8c3d-4e5f6a7b8c9d'


def test_a_live_merge_grows_a_thin_base_first_and_the_chain_follows_qemus(block_store, monkeypatch):
    store, lvm, metadata, _done = block_store
    monkeypatch.setattr(block_volumes, 'CHUNK', 128 * MIB)  # the fake VG has 384 MiB free
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 2048 * MIB)
    store.create_volume(IMG, MID, 'COW', 'SPARSE', parent_uuid=BASE)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=MID)
    lvm.calls.clear()
    # The base's LV + what MID holds + one chunk, in whole extents.
    assert store.grow_for_commit(IMG, BASE, MID) == 384 * MIB
    assert lvm.calls == [('extend_lv', SD, BASE, 384)]
    # An internal merge: QEMU now runs BASE <- TOP. MID is ILLEGAL; TOP names BASE in its slot and its PU_ tag.
    lvm.calls.clear()
    assert store.sync_volume_chain(IMG, TOP, [BASE, TOP]) == [MID]
    assert vmd.parse(slot_text(metadata, 2)).legality == 'ILLEGAL'
    top_md = vmd.parse(slot_text(metadata, 3))
    assert top_md.parent == BASE and top_md.legality == 'LEGAL'
    assert lvm.calls == [('change_lv_tags', SD, TOP, ('PU_' + MID,), ('PU_' + BASE,))]
    assert store.chain_of(IMG, TOP) == [TOP, BASE] and store.children(IMG, MID) == []
    assert store.sync_volume_chain(IMG, TOP, [BASE, TOP]) == [] and len(lvm.calls) == 1  # again: nothing to do
    assert store.delete_volume(IMG, MID) and MID not in lvm.vgs[SD]['lvs']
    # An active merge: TOP goes, BASE is the leaf again once TOP is deleted.
    assert store.sync_volume_chain(IMG, TOP, [BASE]) == [TOP]
    assert vmd.parse(slot_text(metadata, 3)).legality == 'ILLEGAL'
    assert store.delete_volume(IMG, TOP) and vmd.parse(slot_text(metadata, 1)).role == 'LEAF'


def test_a_base_grows_for_a_merge_to_its_capacity_x_1_1_at_most(block_store):
    store, lvm, _metadata, _done = block_store
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 300 * MIB)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    lvm.calls.clear()
    assert store.grow_for_commit(IMG, BASE, TOP) == 384 * MIB  # 330 MiB, up to the next 128 MiB extent
    assert store.grow_for_commit(IMG, BASE, TOP) is None and lvm.calls == [('extend_lv', SD, BASE, 384)]


def test_a_raw_base_is_never_grown_for_a_merge(block_store):
    store, lvm, _metadata, _done = block_store
    store.create_volume(IMG, BASE, 'RAW', 'PREALLOCATED', 256 * MIB)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    lvm.calls.clear()
    assert store.grow_for_commit(IMG, BASE, TOP) is None and lvm.calls == []


def _public_methods(cls):
    return {name for name in dir(cls) if not name.startswith('_') and callable(getattr(cls, name))}


def test_block_and_file_volume_stores_offer_the_same_methods():
    assert _public_methods(file_volumes.FileVolumes) <= _public_methods(block_volumes.BlockVolumes)


class _Task:
    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def check(self):
        pass


def test_the_volume_module_on_a_block_domain(block_store, monkeypatch):
    store, lvm, _metadata, _done = block_store
    lvm.vgs[SD]['tags'] = [t for t in lvm.vgs[SD]['tags'] if not t.startswith('MDT_')] + block_domain.metadata_tags(
        sdm.with_changes(block_domain.parse_tags(lvm.vgs[SD]['tags'], SD), {'POOL_UUID': SP}))
    store.md = store.domain.read_md()
    assert isinstance(volume_state.store_for(sd_layout.block_domain_dir(SD), store.md), block_volumes.BlockVolumes)
    monkeypatch.setattr(volume_state, 'store_for', lambda dom_dir, dom_md: store)
    monkeypatch.setattr(volume_state.spm, 'require_spm', lambda sp: None)
    monkeypatch.setattr(volume_state.spm, 'task', _Task)

    def run(check_mode=False, **options):
        params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=BASE, size=None, format='COW', allocation='SPARSE',
                      parent_volume_uuid=None, clone_from=None, description='', disk_type='DATA', state='present')
        params.update(options)
        return volume_state.run_module(types.SimpleNamespace(params=params, check_mode=check_mode, _diff=False))

    checked = run(check_mode=True, size='100MiB', format='RAW', allocation='PREALLOCATED')
    assert checked['actions'] == ['create'] and checked['volume'] is None and BASE not in lvm.vgs[SD]['lvs']
    made = run(size='100MiB', format='RAW', allocation='PREALLOCATED')
    assert made['volume']['capacity'] == 128 * MIB and made['volume']['path'] == store.path(IMG, BASE)
    # The size asked for again is no shrink of the extent it was rounded up to.
    assert run(size='100MiB', format='RAW', allocation='PREALLOCATED')['actions'] == []
    assert run(size='129MiB', format='RAW', allocation='PREALLOCATED')['volume']['capacity'] == 256 * MIB
    with pytest.raises(VirtnodeError, match='no sparse RAW'):
        run(volume_uuid=TOP, image_uuid=SD, size='1GiB', format='RAW')
    with pytest.raises(VirtnodeError, match='clone source volume %s not found' % TOP):
        run(volume_uuid=TOP, image_uuid=SD, clone_from={'sd_uuid': None, 'image_uuid': IMG, 'volume_uuid': TOP})
    # What an interrupted create left is removed and made again.
    lvm.create_lv(SD, TOP, 128, tags=[block_volumes.INITIALIZING_TAG])
    store.lvs(refresh=True)
    redone = run(volume_uuid=TOP, image_uuid=SD, size='256MiB')
    assert redone['actions'] == ['remove_leftover', 'create'] and redone['volume']['legality'] == 'LEGAL', redone
    gone = run(volume_uuid=None, image_uuid=SD, state='absent')
    assert gone['actions'] == ['delete_image'] and gone['chain'] == [] and TOP not in lvm.vgs[SD]['lvs']
    # initial_size: a sparse COW volume's LV gets it x 1.1 instead of a chunk, as VDSM allocates it.
    thin = '4b5c6d7e-8f90-4a1b-8c2d-3e4f5a6b7c8d'
    lvm.calls.clear()
    assert run(volume_uuid=thin, image_uuid=SD, size='1GiB', initial_size='128MiB')['actions'] == ['create']
    assert ('create_lv', SD, thin, 141, None) in lvm.calls
    with pytest.raises(VirtnodeError, match='not RAW ones'):
        run(volume_uuid=TOP, image_uuid=SD, size='1GiB', format='RAW', allocation='PREALLOCATED', initial_size='128MiB')
    with pytest.raises(VirtnodeError, match='more than the volume may ever take'):
        run(volume_uuid=TOP, image_uuid=SD, size='100MiB', initial_size='1GiB')
    with pytest.raises(VirtnodeError, match='initial_size'):
        run(volume_uuid=TOP, image_uuid=SD, size='100MiB', initial_size='lots')
    assert TOP not in lvm.vgs[SD]['lvs']


def test_prepared_activates_and_links_a_chain_on_any_host_and_changes_nothing_on_storage(block_store, monkeypatch):
    store, lvm, _metadata, _done = block_store
    _chain_of_two_inactive(store, lvm)
    monkeypatch.setattr(volume_state, 'store_for', lambda dom_dir, dom_md: store)
    monkeypatch.setattr(volume_state.spm, 'require_spm', lambda sp: pytest.fail('prepared needs no SPM'))

    def run(check_mode=False, **options):
        params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=TOP, size=None, format='COW', allocation='SPARSE',
                      parent_volume_uuid=None, clone_from=None, description='', disk_type='DATA', state='prepared')
        params.update(options)
        return volume_state.run_module(types.SimpleNamespace(params=params, check_mode=check_mode, _diff=True))

    checked = run(check_mode=True)
    assert checked['changed'] and checked['actions'] == ['prepare'] and lvm.calls == []
    prepared = run()
    assert prepared['changed'] and lvm.calls == [('activate', SD, (TOP, BASE))]
    assert prepared['diff'] == {'before': {'prepared': False}, 'after': {'prepared': True}}
    for vol in (BASE, TOP):
        lvm.vgs[SD]['lvs'][vol]['active'] = True
        assert os.readlink(store.path(IMG, vol)) == '/dev/%s/%s' % (SD, vol)
    store.lvs(refresh=True)
    lvm.calls.clear()
    again = run()
    assert not again['changed'] and again['actions'] == [] and lvm.calls == []
    assert not [call for call in lvm.calls if call[0] in ('change_lv_tags', 'create_lv', 'extend_lv', 'remove_lvs')]
    with pytest.raises(VirtnodeError, match='volume_uuid is required for state=prepared'):
        run(volume_uuid=None)
    with pytest.raises(VirtnodeError, match='not found on storage domain'):
        run(volume_uuid=MID)


def test_initial_size_is_refused_on_a_file_domain_as_vdsm_refuses_it():
    params = dict(initial_size='128MiB', format='COW', clone_from=None, image_uuid=IMG)
    with pytest.raises(VirtnodeError, match='initial_size is for COW volumes on block storage domains'):
        volume_state._initial_size(types.SimpleNamespace(sd_uuid=SD), params, MIB * 1024)  # pylint: disable=protected-access


def test_storage_info_describes_a_block_domains_images_as_a_file_domains(block_store, monkeypatch):
    store, _lvm, _metadata, _done = block_store
    store.create_volume(IMG, BASE, 'COW', 'SPARSE', 256 * MIB)
    store.create_volume(IMG, TOP, 'COW', 'SPARSE', parent_uuid=BASE)
    monkeypatch.setattr(storage_info.block_volumes, 'for_domain', lambda dom_dir, md=None: store)
    (described,) = storage_info.domains_info(images=True)
    (image,) = described['images']
    assert image['image_uuid'] == IMG and [v['volume_uuid'] for v in image['volumes']] == [BASE, TOP]
    assert image['volumes'][1]['parent'] == BASE and image['volumes'][0]['role'] == 'INTERNAL'
    assert image['volumes'][0]['legality'] == 'LEGAL' and image['volumes'][0]['apparent_size'] == 256 * MIB
    assert 'images' not in storage_info.domains_info(images=False)[0]


def test_finding_a_file_domain_runs_no_lvm_command_on_a_host_with_luns(block_host, tmp_path, monkeypatch):
    lvm, dom_dir = block_host
    listed = []
    monkeypatch.setattr(lvm, 'vgs_tagged', lambda tag, _orig=lvm.vgs_tagged: listed.append(tag) or _orig(tag))
    file_sd = '6d5e4f3a-2b1c-4d0e-9f8a-7b6c5d4e3f2a'
    mount = tmp_path / 'mnt' / 'server:_export'
    mount.mkdir()
    made = sd_layout.create_domain_tree(str(mount), file_sd, sdm.new_domain_metadata(
        file_sd, 'NFS', 'Data', 'files', 'server:/export'), 'NFS')
    assert storage.find_domain(file_sd) == made and listed == [] and lvm.calls == []
    assert storage.find_domain(SD) == dom_dir and len(listed) == 1
