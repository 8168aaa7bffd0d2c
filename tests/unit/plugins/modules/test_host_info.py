# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.host import facts as host_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.host import readers as host_readers
from ansible_collections.virtnode.kvm.plugins.module_utils.host import stats as host_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.network import iproute
from ansible_collections.virtnode.kvm.plugins.modules import host_info

# Keys AnsibleModule adds to every result.
STANDARD_KEYS = {'changed', 'failed', 'invocation', 'warnings', 'deprecations', 'msg', 'exception'}

SECTION_KEYS = {'cpu', 'memory', 'numa', 'network', 'storage', 'versions', 'libvirt', 'stats'}
BASE_KEYS = {'host_uuid', 'host_uuid_source', 'hostname', 'sections', 'kernel', 'os'}

IP_JSON = json.dumps([
    {'ifname': 'lo', 'addr_info': [{'family': 'inet', 'local': '127.0.0.1', 'prefixlen': 8}]},
])


def fake_run(argv):
    return {
        'qemu-img': 'qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)\n',
        'sanlock': '3.8.5\n',
    }.get(argv[0])


@pytest.fixture(autouse=True)
def no_commands(monkeypatch):
    """Keep the tests hermetic and fast: no ip/qemu-img/sanlock subprocesses."""
    monkeypatch.setattr(host_readers, 'run_probe', fake_run)
    monkeypatch.setattr(iproute.IpRoute, 'run', lambda self, args: IP_JSON)


def run_module(capsys, args):
    """Run host_info.main() with ``args``; return (exit code, parsed JSON result)."""
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            host_info.main()
    out = capsys.readouterr().out
    return exit_info.value.code, json.loads(out)


def documented_return():
    return yaml.safe_load(host_info.RETURN)


def check_against_doc(value, doc, path):
    """Every returned key is documented; every key documented as 'always' is returned."""
    contains = doc.get('contains')
    if not contains:
        return
    if doc['type'] == 'list':
        for item in value:
            check_against_doc(item, {'type': 'dict', 'contains': contains}, path + '[]')
        return
    assert isinstance(value, dict), path
    undocumented = set(value) - set(contains)
    assert not undocumented, '%s: undocumented keys %s' % (path, sorted(undocumented))
    always = {key for key, sub in contains.items() if sub.get('returned') == 'always'}
    missing = always - set(value)
    assert not missing, '%s: documented but missing keys %s' % (path, sorted(missing))
    for key, sub in contains.items():
        if key in value and value[key] is not None:
            check_against_doc(value[key], sub, '%s.%s' % (path, key))


def test_gather_all_matches_return_doc(capsys, fake_libvirt):
    code, result = run_module(capsys, {'sample_interval': 0})
    assert code == 0
    assert result['changed'] is False
    doc = documented_return()
    assert set(result) - STANDARD_KEYS == set(doc)
    assert set(result['host']) == BASE_KEYS | SECTION_KEYS
    assert set(result['host']) == set(doc['host']['contains'])
    check_against_doc(result['host'], doc['host'], 'host')
    assert result['host']['libvirt']['domain_types'] == ['kvm', 'qemu']
    assert result['host']['versions']['qemu'] == '7.2.22'
    assert result['host']['stats']['sample_interval'] == 0.0
    assert len(fake_libvirt.connections) == 1 and fake_libvirt.connections[0].closed
    assert fake_libvirt.connections[0].uri == 'qemu:///system'


def test_check_mode_never_changes(capsys, fake_libvirt):
    code, result = run_module(capsys, {'sample_interval': 0, '_ansible_check_mode': True,
                                       'uri': 'test:///default'})
    assert code == 0
    assert result['changed'] is False
    assert result['host']['libvirt']['uri'] == 'test:///default'


def test_sampling(capsys, fake_libvirt):
    code, result = run_module(capsys, {'gather': ['stats'], 'sample_interval': 0.05})
    assert code == 0
    stats = result['host']['stats']
    assert stats['sample_interval'] == 0.05
    check_against_doc(stats, documented_return()['host']['contains']['stats'], 'host.stats')
    # Fake libvirt was not needed.
    assert fake_libvirt.connections == []


def test_sections_subset(capsys, fake_libvirt):
    code, result = run_module(capsys, {'gather': ['memory', 'numa'], 'sample_interval': 0})
    assert code == 0
    assert set(result['host']) == BASE_KEYS | {'memory', 'numa'}
    assert result['host']['sections'] == ['memory', 'numa']
    assert result['host']['numa']['cell_count'] == 2


@pytest.mark.parametrize('interval', [-1, 60.5])
def test_bad_sample_interval(capsys, fake_libvirt, interval):
    code, result = run_module(capsys, {'sample_interval': interval})
    assert code == 1
    assert result['failed'] is True
    assert result['msg'] == 'sample_interval must be between 0 and 60 seconds, got %g' % interval
    assert fake_libvirt.connections == []


def test_bad_section(capsys, fake_libvirt):
    code, result = run_module(capsys, {'gather': ['cpu', 'disks']})
    assert code == 1
    assert 'gather' in result['msg'] and 'disks' in result['msg']


def test_libvirt_unreachable(capsys, fake_libvirt):
    fake_libvirt.open_error = fake_libvirt.module.libvirtError(
        "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory")
    code, result = run_module(capsys, {'sample_interval': 0})
    assert code == 1
    assert result['msg'] == ("cannot connect to libvirt at qemu:///system: Failed to connect socket to "
                             "'/var/run/libvirt/libvirt-sock': No such file or directory (is libvirtd running?)")
    assert result['uri'] == 'qemu:///system'


def test_missing_bindings(capsys, no_libvirt):
    code, result = run_module(capsys, {'sample_interval': 0})
    assert code == 1
    assert 'libvirt-python (Debian: python3-libvirt)' in result['msg']


def test_missing_bindings_not_needed_for_memory(capsys, no_libvirt):
    code, result = run_module(capsys, {'gather': ['memory', 'storage', 'network'], 'sample_interval': 0})
    assert code == 0
    assert {'memory', 'storage', 'network'} <= set(result['host'])
    loopback = [i for i in result['host']['network'] if i['name'] == 'lo']
    assert all(i['ipv4'] == ['127.0.0.1/8'] for i in loopback)


def test_documentation_parses():
    doc = yaml.safe_load(host_info.DOCUMENTATION)
    assert doc['module'] == 'host_info'
    assert doc['version_added'] == '0.1.0'
    assert set(doc['options']['gather']['choices']) == {'all'} | SECTION_KEYS
    assert set(doc['options']['gather']['choices']) - {'all'} == set(host_utils.SECTIONS)
    yaml.safe_load(host_info.EXAMPLES)


def test_stats_from_the_agent_cache(capsys, fake_libvirt, monkeypatch):
    cached = {'cpu': {'user': 1.0}, 'sample_interval': 15}
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: {'data': {'stats': cached}} if kind == 'host' else None)
    monkeypatch.setattr(host_stats.time, 'sleep', lambda seconds: pytest.fail('sampled although the agent answered'))
    code, result = run_module(capsys, {'gather': ['stats']})
    assert code == 0 and result['source'] == 'agent' and result['host']['stats'] == cached


def test_an_explicit_sample_interval_samples_now(capsys, fake_libvirt, monkeypatch):
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: pytest.fail('the agent was asked'))
    code, result = run_module(capsys, {'gather': ['stats'], 'sample_interval': 0})
    assert code == 0 and result['source'] == 'direct' and result['host']['stats']['sample_interval'] == 0


def test_direct_source_never_asks_the_agent(capsys, fake_libvirt, monkeypatch):
    monkeypatch.setattr(agent_client, 'query', lambda kind, **kw: pytest.fail('the agent was asked'))
    code, result = run_module(capsys, {'gather': ['stats'], 'sample_interval': 0, 'source': 'direct'})
    assert code == 0 and result['source'] == 'direct'
