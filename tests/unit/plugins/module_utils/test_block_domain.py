# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block domains' format and steps, over a fake of the collection's own LVM runner.

The real thing (LUNs from the lab's iSCSI target, LVM, sanlock, two hosts) is
tests/integration/test_kernel_block_domain.py.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd

SD = '5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f'
SP = 'b1d2c3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e'
LUN0, LUN1, LUN2 = '36001405aaaaaaaaaaaaaaaaaaaaaaaa0', '36001405bbbbbbbbbbbbbbbbbbbbbbbb1', '36001405cccccccccccccccccccccccc2'
MIB = 1024 ** 2


class FakeLvm:
    """VGs, PVs and LVs in memory behind the methods of ``lvm.Lvm`` that block_domain calls."""

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

    def activate(self, vg, names, refresh=False):
        self._call('activate', vg, tuple(names))

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
    _lvm, dom_dir = block_host
    with pytest.raises(VirtnodeError, match=r'^Volumes on block storage domains is not supported yet'):
        storage.find_file_domain(SD, 'Volumes')
    with pytest.raises(VirtnodeError, match='cannot be the master of a pool yet'):
        storage.create_pool(SP, dom_dir, 'pool', 1)


def test_joining_prepares_the_host_directory_as_vdsm_does(block_host):
    lvm, dom_dir = block_host
    storage.prepare_block_domain(dom_dir, storage.read_md(dom_dir))
    (activated,) = [call for call in lvm.calls if call[0] == 'activate']
    assert 'master' not in activated[2] and {'ids', 'leases', 'metadata', 'xleases'} <= set(activated[2])
    for name in activated[2]:
        assert os.readlink(os.path.join(dom_dir, 'dom_md', name)) == '/dev/%s/%s' % (SD, name)
    assert os.path.isdir(os.path.join(dom_dir, 'images'))
