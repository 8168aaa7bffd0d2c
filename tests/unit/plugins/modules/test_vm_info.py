# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_info answers from the node agent's cache when it runs, from libvirt otherwise."""

from __future__ import annotations

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records
from ansible_collections.virtnode.kvm.plugins.modules import vm_info

AGENT_ANSWER = {'ok': True, 'query': 'vms', 'interval': 15, 'sampled_at': 1.0,
                'data': {'vms': [{'name': 'a', 'uuid': '1', 'status': 'Up'}, {'name': 'b', 'uuid': '2', 'status': 'Paused'}]}}


def run_module(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            vm_info.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


@pytest.fixture(autouse=True)
def no_exit_records(monkeypatch):
    monkeypatch.setattr(vm_records, 'all_records', lambda kind: [])


def test_answers_from_the_agent_cache(capsys, monkeypatch):
    asked = []
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: asked.append(kind) or AGENT_ANSWER)
    code, result = run_module(capsys, {'name': 'b'})
    assert code == 0 and asked == ['vms']
    assert result['source'] == 'agent' and result['sample_interval'] == 15.0
    assert [vm['name'] for vm in result['vms']] == ['b']


def test_falls_back_to_libvirt_without_agent(capsys, monkeypatch, no_libvirt):
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: None)
    code, result = run_module(capsys, {})
    # The direct path was taken: here it stops at the missing bindings.
    assert code == 1 and 'libvirt' in result['msg']


def test_an_explicit_sample_interval_samples_now(capsys, monkeypatch, no_libvirt):
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: pytest.fail('the agent was asked'))
    code, result = run_module(capsys, {'sample_interval': 0})
    assert code == 1 and 'libvirt' in result['msg']


def test_source_libvirt_never_asks_the_agent(capsys, monkeypatch, no_libvirt):
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: pytest.fail('the agent was asked'))
    code, result = run_module(capsys, {'source': 'libvirt'})
    assert code == 1 and 'libvirt' in result['msg']
