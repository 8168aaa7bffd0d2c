# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage modules' work functions, on local directories (no sanlock, no SPM)."""

from __future__ import annotations

import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection as storage_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import info as storage_info
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'


def fake_module(check_mode=False, **params):
    return types.SimpleNamespace(params=params, check_mode=check_mode, _diff=True)


def domain_params(export, **changes):
    params = dict(sd_uuid=SD, server=export, type='localfs', domain_class='Data', description='local', version=5,
                  io_timeout=10, block_size=512, alignment=1048576, pool_uuid=None, force=False, state='present')
    params.update(changes)
    return params


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local directory connected as a storage server under a private mount root."""
    root = tmp_path / 'mnt'
    root.mkdir()
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    monkeypatch.setattr(storage, 'scan_domains', lambda mount_root=str(root), mount=None, unreachable=None, block=True, _orig=storage.scan_domains:
                        _orig(mount_root=str(root), mount=mount, unreachable=unreachable, block=block))
    export = tmp_path / 'export'
    export.mkdir()
    params = dict(type='localfs', path=str(export), vfstype=None, options=None, nfs_version='auto', timeo=600, retrans=6,
                  state='connected')
    assert storage_conn.run_module(fake_module(check_mode=True, **params))['changed']
    result = storage_conn.run_module(fake_module(**params))
    assert result['changed'] and result['connected'] and result['diff']['after'] == {'connected': True}
    assert not storage_conn.run_module(fake_module(**params))['changed']
    return str(export)


def test_domain_created_once_then_removed(server):
    checked = domain_state.run_module(fake_module(check_mode=True, **domain_params(server)))
    assert checked['actions'] == ['create'] and checked['domain'] is None
    created = domain_state.run_module(fake_module(**domain_params(server)))
    assert created['changed'] and created['actions'] == ['create']
    assert created['diff'] == {'before': {}, 'after': {'sd_uuid': SD, 'role': 'Regular', 'pool_uuids': []}}
    assert not domain_state.run_module(fake_module(**domain_params(server)))['changed']
    listed = storage_info.run_module(fake_module(sd_uuid=SD, pool_uuid=None, images=True, repo_stats=True))
    assert [d['sd_uuid'] for d in listed['domains']] == [SD] and listed['pool'] is None
    assert listed['repo_stats'] == {} and listed['repo_stats_age'] is None
    removed = domain_state.run_module(fake_module(**domain_params(server, state='absent')))
    assert removed['actions'] == ['remove'] and removed['domain'] is None
    with pytest.raises(VirtnodeError) as err:
        storage_info.run_module(fake_module(sd_uuid=SD, pool_uuid=None, images=True, repo_stats=True))
    assert err.value.details == {'sd_uuid': SD}


def test_repo_stats_come_from_the_agent_limited_to_the_domains_asked_for():
    other = '11111111-2222-4333-8444-555555555555'
    answer = {'ok': True, 'age': 2.5, 'data': {'domains': {
        SD: {'valid': True, 'code': 0, 'delay': 0.001, 'last_check': 2.0, 'error': None, 'acquired': True,
             'host_id': 2, 'version': 5, 'role': 'Master', 'free_bytes': 10, 'total_bytes': 20, 'path': '/x',
             'checked_at': 1.0},
        other: {'valid': False, 'code': 110, 'delay': 12.0, 'last_check': 0.5, 'error': 'no answer'}}}}
    stats = storage_info.repo_stats(answer)
    assert list(stats) == [other, SD]
    assert stats[SD] == {'valid': True, 'code': 0, 'delay': 0.001, 'last_check': 2.0, 'error': None, 'acquired': True,
                         'host_id': 2, 'version': 5, 'role': 'Master', 'free_bytes': 10, 'total_bytes': 20}
    assert stats[other]['acquired'] is None and stats[other]['code'] == 110
    assert list(storage_info.repo_stats(answer, sd_filter=other)) == [other]
    assert list(storage_info.repo_stats(answer, members={SD})) == [SD]
    assert storage_info.repo_stats(None) == {}


@pytest.mark.parametrize('changes, field', [
    ({'sd_uuid': None}, 'sd_uuid'),
    ({'state': 'active'}, 'pool_uuid'),
    ({'server': None}, 'server'),
])
def test_domain_options_a_state_needs(server, changes, field):
    with pytest.raises(VirtnodeError) as err:
        domain_state.run_module(fake_module(**domain_params(server, **changes)))
    assert err.value.details['field'] == field


def test_import_finds_the_only_domain(server):
    domain_state.run_module(fake_module(**domain_params(server)))
    result = domain_state.run_module(fake_module(**domain_params(server, sd_uuid=None, state='imported')))
    assert result['found'] == [SD] and result['domain']['sd_uuid'] == SD and not result['changed']


def test_volume_changes_need_a_pool(server):
    domain_state.run_module(fake_module(**domain_params(server)))
    params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=SD, size='1M', format='COW', allocation='SPARSE',
                  parent_volume_uuid=None, clone_from=None, description='', disk_type='DATA', state='present')
    with pytest.raises(VirtnodeError, match='not attached to a pool'):
        volume_state.run_module(fake_module(**params))
    params.update(volume_uuid=None, state='absent')
    absent = volume_state.run_module(fake_module(**params))
    assert absent == {'changed': False, 'actions': [], 'volume': None, 'chain': [], 'imported': None, 'exported': None,
                      'diff': {'before': {}, 'after': {}}}


def test_pool_disconnect_when_not_connected(server, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, 'POOL_STATE_DIR', str(tmp_path / 'pools'))
    monkeypatch.setattr(sd_layout, 'DATA_CENTER_ROOT', str(tmp_path / 'dc'), raising=False)
    monkeypatch.setattr(sd_layout, 'pool_dir', lambda sp_uuid: str(tmp_path / 'dc' / sp_uuid))
    monkeypatch.setattr(pool.spm, 'read_state', lambda sp_uuid: None)
    result = pool.run_module(fake_module(pool_uuid=SP, master_sd_uuid=None, description='', host_id=None, hostname=None,
                                         state='disconnected'))
    assert result['actions'] == [] and result['connected'] is False and result['pool'] is None


def test_prepared_on_a_file_domain_only_checks_the_chain_and_needs_no_spm(server):
    domain_state.run_module(fake_module(**domain_params(server)))
    dom_dir = storage.find_domain(SD)
    domain_md = storage.read_md(dom_dir)
    volumes.create_volume(dom_dir, domain_md, IMG, SP, 'RAW', 'SPARSE', 1024 * 1024)
    params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=SP, size=None, format='COW', allocation='SPARSE',
                  parent_volume_uuid=None, clone_from=None, description='', disk_type='DATA', state='prepared')
    prepared = volume_state.run_module(fake_module(**params))
    assert not prepared['changed'] and prepared['actions'] == [] and prepared['volume']['legality'] == 'LEGAL'
    md = volumes.read_volume(dom_dir, IMG, SP)
    md.legality = 'ILLEGAL'
    volumes._write_meta(dom_dir, md, domain_md.version, volumes.paths(dom_dir, IMG, SP)[1])  # pylint: disable=protected-access
    with pytest.raises(VirtnodeError, match='refusing storage volume %s of image %s: it is ILLEGAL' % (SP, IMG)):
        volume_state.run_module(fake_module(**params))


def test_prepared_with_block_device_presents_a_file_domain_volume_through_a_loop_device(server, monkeypatch):
    """block_device: the loop device and its link, once (a second run changes nothing); check mode attaches none;
    any other state refuses the option before anything changes."""
    domain_state.run_module(fake_module(**domain_params(server)))
    dom_dir = storage.find_domain(SD)
    volumes.create_volume(dom_dir, storage.read_md(dom_dir), IMG, SP, 'RAW', 'SPARSE', 1024 * 1024)
    active = []
    monkeypatch.setattr(block.LoopBackend, 'is_active', lambda self, sd, img, vol: bool(active))
    monkeypatch.setattr(block.LoopBackend, 'activate', lambda self, sd, img, vol: active.append((sd, img, vol)))
    params = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=SP, size=None, format='COW', allocation='SPARSE',
                  parent_volume_uuid=None, clone_from=None, description='', disk_type='DATA', state='prepared',
                  block_device=True)
    check = volume_state.run_module(fake_module(check_mode=True, **params))
    assert check['changed'] and check['actions'] == ['present as a block device'] and active == []
    first = volume_state.run_module(fake_module(**params))
    assert first['changed'] and active == [(SD, IMG, SP)]
    assert not volume_state.run_module(fake_module(**params))['changed'] and len(active) == 1
    params['state'] = 'present'
    with pytest.raises(VirtnodeError, match='block_device is for state=prepared'):
        volume_state.run_module(fake_module(**params))
