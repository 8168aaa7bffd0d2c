# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module flow of virtnode.kvm.vm against a fake libvirt (no host needed)."""

from __future__ import annotations

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge as vm_converge
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats
from ansible_collections.virtnode.kvm.plugins.modules import vm

from conftest import FakeConnection, FakeLibvirtError


class FakeDomain(object):
    def __init__(self, xml, uuid='5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'):
        self.xml = xml
        self.uuid = uuid
        self.st = (vm_stats.RUNNING, 1)
        self.calls = []

    def name(self):
        return domxml.parse_live(self.xml)['name']

    def UUIDString(self):
        return self.uuid

    def state(self):
        return list(self.st)

    def isPersistent(self):
        return 0

    def jobStats(self):
        return {'type': 0}

    def XMLDesc(self, flags=0):
        return self.xml

    def suspend(self):
        self.calls.append('suspend')
        self.st = (vm_stats.PAUSED, 1)

    def resume(self):
        self.calls.append('resume')
        self.st = (vm_stats.RUNNING, 5)

    def destroy(self):
        self.calls.append('destroy')
        self.st = (vm_stats.SHUTOFF, 2)


@pytest.fixture
def world(fake_libvirt, monkeypatch, tmp_path):
    state = {'domains': {}, 'created': []}

    def lookup(conn, name):
        dom = state['domains'].get(name)
        if dom is None or dom.st[0] == vm_stats.SHUTOFF:
            raise FakeLibvirtError('Domain not found', code=42, domain=10)
        return dom

    def create(conn, xml, flags):
        dom = FakeDomain(xml)
        state['domains'][dom.name()] = dom
        state['created'].append(xml)
        return dom

    monkeypatch.setattr(FakeConnection, 'lookupByName', lookup, raising=False)
    monkeypatch.setattr(FakeConnection, 'lookupByUUIDString', lambda c, u: lookup(c, 'none'), raising=False)
    monkeypatch.setattr(FakeConnection, 'createXML', create, raising=False)
    monkeypatch.setattr(vm_records, 'RECORDS_DIR', str(tmp_path / 'records'))
    monkeypatch.setattr(vm_converge, 'recommended_domain_type', lambda caps: 'qemu')
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle
    monkeypatch.setattr(lifecycle.Lifecycle.__init__, '__defaults__',
                        (str(tmp_path / 'hooks'), False, 120, str(tmp_path / 'records'), None,
                         lambda s: None, lifecycle.time.monotonic))
    return state


def run(capsys, args):
    args = dict(args, hooks_dir='/nonexistent-hooks')
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            vm.main()
    return info.value.code, json.loads(capsys.readouterr().out)


def test_start_is_idempotent_and_check_mode_changes_nothing(world, capsys):
    args = {'name': 'vm1', 'memory': '128MiB'}
    rc, out = run(capsys, dict(args, _ansible_check_mode=True))
    assert rc == 0 and out['changed'] and out['actions'] == ['start'] and world['created'] == []
    rc, out = run(capsys, args)
    assert rc == 0 and out['changed'] and out['vm']['status'] == 'Up'
    assert "<memory unit=\"KiB\">131072</memory>" in world['created'][0].replace("'", '"')
    rc, out = run(capsys, args)
    assert rc == 0 and not out['changed'] and out['pending_restart'] == []
    rc, out = run(capsys, dict(args, vcpus=2))
    assert not out['changed'] and out['pending_restart'] == ['vcpus']


def test_pause_resume_destroy(world, capsys):
    run(capsys, {'name': 'vm1'})
    rc, out = run(capsys, {'name': 'vm1', 'state': 'paused'})
    assert out['changed'] and out['vm']['status'] == 'Paused' and out['vm']['pause_code'] == 'NOERR'
    rc, out = run(capsys, {'name': 'vm1', 'state': 'running'})
    assert out['actions'] == ['resume'] and out['vm']['status'] == 'Up'
    rc, out = run(capsys, {'name': 'vm1', 'state': 'destroyed'})
    assert out['actions'] == ['destroy'] and out['vm']['status'] == 'Down'
    rc, out = run(capsys, {'name': 'vm1', 'state': 'destroyed'})
    assert not out['changed']


def test_bad_input_fails_before_connecting(world, fake_libvirt, capsys):
    rc, out = run(capsys, {'name': 'vm1', 'nics': [{'bridge': 'br0', 'mac': 'nope'}]})
    assert rc == 1 and 'is not a MAC address' in out['msg']
    assert fake_libvirt.connections == []


def test_returned_keys_are_documented(world, capsys):
    import yaml
    documented = set(yaml.safe_load(vm.RETURN))
    rc, out = run(capsys, {'name': 'vm1'})
    keys = set(out) - {'changed', 'failed', 'invocation', 'warnings', 'diff', 'msg'}
    assert keys <= documented
