# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module flow of virtnode.kvm.vm against a fake libvirt (no host needed)."""

from __future__ import annotations

import json
import os

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
                         lambda s: None, lifecycle.time.monotonic, str(tmp_path / 'cloud-init'),
                         str(tmp_path / 'nvram'), str(tmp_path / 'swtpm')))
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


def run_with_hooks(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            vm.main()
    return info.value.code, json.loads(capsys.readouterr().out)


def make_hooks(tmp_path, point, body):
    directory = tmp_path / 'hooks' / point
    directory.mkdir(parents=True, mode=0o755)
    os.chmod(str(tmp_path / 'hooks'), 0o755)
    script = directory / '10-hook'
    script.write_text('#!/bin/sh\n' + body)
    os.chmod(str(script), 0o755)
    return str(tmp_path / 'hooks')


@pytest.mark.parametrize('name', ['PATH', 'LD_PRELOAD', 'PYTHONPATH', 'BASH_ENV', 'IFS', 'ENV', 'SHELLOPTS', 'PS4', 'HOME',
                                  'LD_LIBRARY_PATH', 'PYTHONSTARTUP', 'PERL5OPT', 'LC_ALL', '_hook_domxml'])
def test_custom_property_a_loader_or_shell_reads_is_refused_before_connecting(world, fake_libvirt, capsys, name):
    rc, out = run(capsys, {'name': 'vm1', 'custom_properties': {name: '/tmp/evil', 'sap_agent': 'true'}})
    assert rc == 1 and repr(name) in out['msg'] and 'refused' in out['msg'], out
    assert fake_libvirt.connections == [] and world['created'] == []


@pytest.mark.parametrize('bad', ['A=B', 'LD_PRELOAD', '1X', 'A B', ''])
def test_custom_properties_read_back_from_the_domain_are_validated(world, capsys, tmp_path, bad):
    hooks_dir = make_hooks(tmp_path, 'before_vm_pause', 'env > "%s"\n' % (tmp_path / 'env'))
    rc, out = run_with_hooks(capsys, {'name': 'vm1', 'custom_properties': {'sap_agent': 'true'}, 'hooks_dir': hooks_dir})
    assert rc == 0, out
    dom = world['domains']['vm1']
    # Someone edited the live domain's metadata by hand (virsh metadata): a name no hook may get.
    dom.xml = dom.xml.replace('name="sap_agent">true<', 'name="sap_agent">true</virtnode:property>'
                                                        '<virtnode:property name="%s">/tmp/evil<' % bad)
    assert '/tmp/evil' in dom.xml
    rc, out = run_with_hooks(capsys, {'name': 'vm1', 'state': 'paused', 'hooks_dir': hooks_dir})
    assert rc == 0 and out['vm']['status'] == 'Paused', out
    warnings = json.dumps(out['warnings'])  # ansible-core 2.19 returns them as structured events
    assert 'custom properties of VM vm1 not given to hooks' in warnings and repr(bad) in warnings, warnings
    env = (tmp_path / 'env').read_text()
    assert 'sap_agent=true' in env and '/tmp/evil' not in env


def test_parse_live_skips_and_reports_bad_custom_property_names():
    xml = ('<domain type="qemu"><name>vm1</name><memory unit="KiB">131072</memory><currentMemory unit="KiB">131072</currentMemory>'
           '<vcpu>1</vcpu><os><type>hvm</type></os><metadata><virtnode:vm xmlns:virtnode="%s"><virtnode:custom_properties>'
           '<virtnode:property name="A=B">1</virtnode:property><virtnode:property>2</virtnode:property>'
           '<virtnode:property name="PATH">/tmp</virtnode:property><virtnode:property name="good">3</virtnode:property>'
           '</virtnode:custom_properties></virtnode:vm></metadata></domain>' % domxml.METADATA_NS)
    live = domxml.parse_live(xml)
    assert live['custom_properties'] == {'good': '3'}
    assert sorted(live['refused_custom_properties'], key=str) == sorted(['A=B', None, 'PATH'], key=str)


SECRET = 'pw&"<1>'
SECRET_XML = ("<domain><name>vm1</name><devices><graphics type='vnc' port='5900' passwd='pw&amp;&quot;&lt;1&gt;'/>"
              "<graphics type='spice' passwd='other-secret'/></devices></domain>")


@pytest.mark.parametrize('fail', [True, False])
def test_console_password_never_comes_back_from_hooks(tmp_path, fail):
    from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle
    hooks_dir = make_hooks(tmp_path, 'before_vm_migrate_source',
                           'cat "$_hook_domxml"; python3 -c "import re,sys,html; '
                           'print(html.unescape(re.findall(chr(112)+\'asswd=.(.*?).[ /]\', open(sys.argv[1]).read())[0]))"'
                           ' "$_hook_domxml" >&2; exit 1\n')
    lc = lifecycle.Lifecycle(None, 'vm1', hooks_dir=hooks_dir, records_dir=str(tmp_path / 'records'))
    lc.secrets = ['spec-password']
    text = ''
    try:
        lc.hook('before_vm_migrate_source', SECRET_XML + '<!-- spec-password -->', 'uuid-1', fail=fail)
    except VirtnodeError as exc:
        text += str(exc) + json.dumps(exc.args[1:], default=str) + json.dumps(getattr(exc, 'details', {}), default=str)
    text += json.dumps(lc.hook_results) + json.dumps(lc.warnings)
    assert 'asswd' in text  # the hook's output is there, with the secrets masked
    for secret in (SECRET, 'pw&amp;&quot;&lt;1&gt;', 'other-secret', 'spec-password'):
        assert secret not in text, secret


# ---------------------------------------------------------------- the bulk form (vms)

def bulk(capsys, args):
    return run(capsys, dict(args, vms=[dict(item, hooks_dir='/nonexistent-hooks') for item in args['vms']]))


def test_many_vms_in_one_run_with_shared_options_check_mode_and_idempotency(world, fake_libvirt, capsys):
    args = {'vms': [{'name': 'web1'}, {'name': 'web2'}, {'name': 'db', 'memory': '192MiB'}], 'memory': '128MiB',
            'parallel': 2}
    rc, out = bulk(capsys, dict(args, _ansible_check_mode=True))
    assert rc == 0 and out['changed'] and world['created'] == [], out
    assert [(vm['name'], vm['actions']) for vm in out['vms']] == [('web1', ['start']), ('web2', ['start']), ('db', ['start'])]
    rc, out = bulk(capsys, args)
    assert rc == 0 and out['changed'] and [vm['vm']['status'] for vm in out['vms']] == ['Up'] * 3, out
    memory = {domxml.parse_live(xml)['name']: domxml.parse_live(xml)['memory'] for xml in world['created']}
    assert memory == {'web1': 128 * 1024, 'web2': 128 * 1024, 'db': 192 * 1024}, memory  # KiB
    rc, out = bulk(capsys, args)
    assert rc == 0 and not out['changed'] and all(vm['actions'] == [] for vm in out['vms']), out
    # A state given beside vms is every VM's.
    rc, out = bulk(capsys, {'vms': [{'name': 'web1'}, {'name': 'db'}], 'state': 'destroyed'})
    assert rc == 0 and [vm['actions'] for vm in out['vms']] == [['destroy'], ['destroy']], out
    assert world['domains']['web2'].st[0] == vm_stats.RUNNING


@pytest.mark.parametrize('args, message', [
    ({'vms': [{'name': 'ok'}, {'name': 'bad', 'nics': [{'bridge': 'br0', 'mac': 'nope'}]}]}, 'VM bad: '),
    ({'vms': [{'name': 'ok'}, {'memory': '1GiB'}]}, 'missing required arguments: name'),
    ({'vms': [{'name': 'ok'}, {'name': 'ok'}]}, 'vms names a VM twice (name ok)'),
    ({'vms': [{'name': 'ok', 'migrate_to': 'qemu+tls://h2/system'}]}, 'migrate_to cannot be given per VM'),
    ({'vms': [{'name': 'ok', 'vcpus': 'many'}]}, 'VM ok: '),
    ({'vms': [{'name': 'ok'}], 'uuid': '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'}, 'uuid names one VM'),
    ({'vms': [{'name': 'ok'}], 'parallel': 0}, 'parallel must be 1 to 32'),
    ({'vms': [{'name': 'ok'}, {'name': 'x', 'initrd': '/boot/initrd.img'}]}, 'VM x: '),
], ids=['bad-mac', 'no-name', 'twice', 'migration', 'wrong-type', 'shared-uuid', 'parallel', 'initrd-without-kernel'])
def test_a_bad_item_fails_the_run_before_any_vm_is_touched(world, fake_libvirt, capsys, args, message):
    rc, out = bulk(capsys, args)
    assert rc == 1 and message in out['msg'], out
    assert fake_libvirt.connections == [] and world['created'] == []


def test_a_vm_that_fails_does_not_stop_the_others(world, monkeypatch, capsys):
    create = FakeConnection.createXML

    def refuse_one(conn, xml, flags):
        if domxml.parse_live(xml)['name'] == 'broken':
            raise FakeLibvirtError('internal error: no room', code=1, domain=10)
        return create(conn, xml, flags)

    monkeypatch.setattr(FakeConnection, 'createXML', refuse_one, raising=False)
    rc, out = bulk(capsys, {'vms': [{'name': 'web1'}, {'name': 'broken'}, {'name': 'web2'}]})
    assert rc == 1 and out['msg'].startswith('1 of 3 VMs failed: broken: ') and 'no room' in out['msg'], out
    assert out['changed'] and [vm['name'] for vm in out['vms']] == ['web1', 'broken', 'web2']
    assert out['vms'][1]['failed'] and [out['vms'][i]['vm']['status'] for i in (0, 2)] == ['Up', 'Up']


def test_the_vms_share_one_connection_and_a_refused_one_fails_the_run_cleanly(world, fake_libvirt, capsys):
    rc, out = bulk(capsys, {'vms': [{'name': 'web1'}, {'name': 'web2'}, {'name': 'web3'}]})
    assert rc == 0 and len(fake_libvirt.connections) == 1 and fake_libvirt.connections[0].closed, out
    fake_libvirt.open_error = FakeLibvirtError('Failed to connect socket', code=38, domain=7)
    rc, out = bulk(capsys, {'vms': [{'name': 'web1'}, {'name': 'web2'}]})
    assert rc == 1 and 'Failed to connect socket' in out['msg'] and 'Traceback' not in json.dumps(out), out


LEASE = {'sd_id': '5f6a7b8c-2d3e-4f4a-9b0c-1d2e3f4a5b61', 'lease_id': '3b1c7e52-9d0a-4f6e-8a2b-5c4d3e2f1a01',
         'path': '/rhev/data-center/mnt/srv:_x/5f6a7b8c-2d3e-4f4a-9b0c-1d2e3f4a5b61/dom_md/xleases', 'offset': 3145728}


def test_a_lease_held_elsewhere_is_told_apart_from_other_start_failures(world, monkeypatch, capsys):
    """libvirt's sanlock lock manager refuses a leased VM with VIR_ERR_RESOURCE_BUSY: ``lease_busy`` says so, in
    the single and the bulk form (the ha_restart role retries on it); a busy error without a lease is not that."""
    create = FakeConnection.createXML

    def refuse_leased(conn, xml, flags):
        if domxml.parse_live(xml)['name'] in ('ha1', 'busy'):
            raise FakeLibvirtError('resource busy: Failed to acquire lock: Lease is held by another host', code=87,
                                   domain=8)
        return create(conn, xml, flags)

    monkeypatch.setattr(FakeConnection, 'createXML', refuse_leased, raising=False)
    rc, out = run(capsys, {'name': 'ha1', 'memory': '128MiB', 'lease': LEASE})
    assert rc == 1 and out['lease_busy'] is True, out
    assert LEASE['lease_id'] in out['msg'] and 'held by another host' in out['msg'], out
    rc, out = run(capsys, {'name': 'busy', 'memory': '128MiB'})
    assert rc == 1 and 'lease_busy' not in out and out['libvirt_error'].startswith('resource busy'), out
    rc, out = bulk(capsys, {'vms': [{'name': 'web1'}, {'name': 'ha1', 'lease': LEASE}]})
    assert rc == 1 and out['vms'][1]['lease_busy'] is True and 'lease_busy' not in out['vms'][0], out


def test_a_persistent_vm_that_cannot_start_leaves_no_definition(world, fake_libvirt, monkeypatch, capsys):
    undefined = []

    class Refusing:
        def __init__(self, xml):
            self.xml = xml

        def createWithFlags(self, flags):
            raise FakeLibvirtError('resource busy: Failed to acquire lock: Lease is held by another host', code=87)

        def undefineFlags(self, flags):
            undefined.append(domxml.parse_live(self.xml)['name'])

    monkeypatch.setattr(FakeConnection, 'defineXML', lambda conn, xml: Refusing(xml), raising=False)
    rc, out = run(capsys, {'name': 'ha1', 'memory': '128MiB', 'lease': LEASE, 'persistent': True})
    assert rc == 1 and out['lease_busy'] and undefined == ['ha1'], out
