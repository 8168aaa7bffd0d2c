# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import os
import runpy
import sys

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtnode.kvm.plugins.module_utils.network import dhcp
from ansible_collections.virtnode.kvm.plugins.module_utils.network import info as net_info
from ansible_collections.virtnode.kvm.plugins.module_utils.network import model
from ansible_collections.virtnode.kvm.plugins.module_utils.network import setup_networks
from ansible_collections.virtnode.kvm.plugins.module_utils.network import store
from ansible_collections.virtnode.kvm.plugins.module_utils.network import transaction as net_rollback
from ansible_collections.virtnode.kvm.plugins.modules import network
from ansible_collections.virtnode.kvm.plugins.modules import network_info

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'module_utils'))
from fake_ip import FakeIp  # noqa: E402  pylint: disable=wrong-import-position

STANDARD_KEYS = {'changed', 'failed', 'invocation', 'warnings', 'deprecations', 'msg', 'exception', 'diff'}
NET = {'name': 'net1', 'nic': 'nic1', 'mtu': 1400, 'ipv4': {'addresses': ['192.0.2.10/24']}}


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    ip = FakeIp()
    ip.add_nic('eth0', up=True, addresses=['10.0.0.5/24'])
    ip.add_nic('nic1')
    monkeypatch.setattr(setup_networks, 'IpRoute', lambda: ip)
    monkeypatch.setattr(net_info, 'IpRoute', lambda: ip)
    monkeypatch.setattr(store, 'RUNNING_FILE', str(tmp_path / 'run' / 'running.json'))
    monkeypatch.setattr(store, 'LOCK_FILE', str(tmp_path / 'run' / 'lock'))
    monkeypatch.setattr(dhcp, 'DHCP_DIR', str(tmp_path / 'run' / 'dhcp'))
    monkeypatch.setattr(store, 'PERSISTENT_FILE', str(tmp_path / 'lib' / 'persistent' / 'netconf.json'))
    monkeypatch.setattr(store, 'LOG_FILE', str(tmp_path / 'network.log'))
    monkeypatch.setattr(net_rollback, 'TRANSACTION_DIR', str(tmp_path / 'lib' / 'transactions'))
    return ip


def run_module(module, capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def base(**kw):
    args = {'hooks_dir': '/nonexistent', 'connectivity_check': False}
    args.update(kw)
    return args


def test_check_mode_plans_and_changes_nothing(kernel, capsys):
    before = kernel.snapshot()
    rc, result = run_module(network, capsys, base(networks=[NET], _ansible_check_mode=True, _ansible_diff=True))
    assert rc == 0 and result['changed']
    assert result['plan'][0]['command'] == 'ip link add name net1 type bridge stp_state 0 forward_delay 0'
    assert result['after']['devices']['net1']['present'] and not result['before']['devices']['net1']['present']
    assert 'net1' in result['diff']['after']
    assert kernel.snapshot() == before and kernel.commands == []


def test_apply_then_idempotent_then_save(kernel, capsys):
    rc, result = run_module(network, capsys, base(networks=[NET]))
    assert rc == 0 and result['changed'] and not result['saved']
    assert kernel.devs['nic1']['master'] == 'net1'
    rc, result = run_module(network, capsys, base(networks=[NET]))
    assert rc == 0 and not result['changed'] and result['plan'] == []
    rc, result = run_module(network, capsys, base(networks=[NET], save=True))
    assert rc == 0 and result['changed'] and result['saved']
    rc, info = run_module(network_info, capsys, {})
    assert info['networks']['net1']['persisted'] and info['bridges']['net1']['ports'] == ['nic1']


def test_returned_keys_are_documented(kernel, capsys):
    documented = set(yaml.safe_load(network.RETURN))
    rc, result = run_module(network, capsys, base(networks=[NET]))
    assert set(result) - STANDARD_KEYS <= documented
    documented = set(yaml.safe_load(network_info.RETURN))
    rc, result = run_module(network_info, capsys, {})
    assert set(result) - STANDARD_KEYS == documented


def test_validation_error_changes_nothing(kernel, capsys):
    rc, result = run_module(network, capsys, base(networks=[dict(NET, vlan=5000)]))
    assert rc == 1 and 'vlan: 5000 is out of range 1..4094' in result['msg'] and 'nothing was changed' in result['msg']
    assert kernel.commands == []


def test_injected_failure_rolls_back(kernel, capsys):
    before = kernel.snapshot()
    rc, result = run_module(network, capsys, base(networks=[NET], _fail_at_step=3))
    assert rc == 1 and 'injected failure at step 3' in result['msg'] and 'every step was undone' in result['msg']
    # The one failure shape: the plan and the rollback report are top-level keys.
    assert result['rollback']['restored'] and len(result['plan']) > 3
    assert kernel.snapshot() == before
    assert store.read_running() == model.empty_config()


def test_restored_applies_saved_config(kernel, capsys):
    run_module(network, capsys, base(networks=[NET], save=True))
    run_module(network, capsys, base(networks=[{'name': 'net2', 'bridged': False, 'nic': 'eth0', 'ipv4': {'addresses': ['10.0.0.5/24']}}]))
    rc, result = run_module(network, capsys, base(state='restored'))
    assert rc == 0 and result['changed']
    assert set(store.read_running()['networks']) == {'net1'}


def test_boot_time_restore_entry_script(kernel, capsys, monkeypatch):
    # What bootstrap's virtnode-network-restore.service runs: the saved networks come back, unsaved ones go.
    run_module(network, capsys, base(networks=[NET], save=True))
    unsaved = {'name': 'net2', 'bridged': False, 'nic': 'eth0', 'ipv4': {'addresses': ['10.0.0.5/24']}}
    run_module(network, capsys, base(networks=[{'name': 'net1', 'state': 'absent'}, unsaved]))
    entry = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', 'roles', 'bootstrap', 'files', 'virtnode-network-restore')
    script = runpy.run_path(entry, run_name='virtnode_network_restore')
    restore = setup_networks.restore_at_boot
    monkeypatch.setattr(setup_networks, 'restore_at_boot', lambda: restore(hooks_dir='/nonexistent'))
    assert script['main']() == 0
    assert 'steps applied; networks: net1; bonds: none' in capsys.readouterr().out
    assert set(store.read_running()['networks']) == {'net1'}
    assert kernel.devs['nic1']['master'] == 'net1'
    assert script['main']() == 0
    assert 'nothing to change' in capsys.readouterr().out


def test_restored_refuses_networks(kernel, capsys):
    rc, result = run_module(network, capsys, base(state='restored', networks=[NET]))
    assert rc == 1 and 'do not give networks' in result['msg'] and result['field'] == 'networks'


def test_confirm_unknown_transaction(kernel, capsys):
    rc, result = run_module(network, capsys, {'_confirm': 'nope'})
    assert rc == 1 and 'unknown network transaction nope' in result['msg']
    assert not os.path.exists(os.path.join(net_rollback.TRANSACTION_DIR, 'nope.lock'))


def test_connectivity_timeout_out_of_range_names_the_option(kernel, capsys):
    rc, result = run_module(network, capsys, base(networks=[NET], connectivity_timeout=0))
    assert rc == 1 and 'between 1 and 600' in result['msg'] and result['field'] == 'connectivity_timeout'
    assert kernel.commands == []
