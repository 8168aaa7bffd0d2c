# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vms inventory plugin: its options, the inventory it fills, its cache and unreachable hosts.

What it reads of libvirt is faked at module_utils/inventory/vms.py's ``read_host``.
"""

from __future__ import annotations

import importlib

import pytest
import yaml

from ansible_collections.virtnode.kvm.plugins.module_utils.inventory import vms as inventory_vms

# ansible's controller side (ansible.constants and what imports it) is imported when a test runs, not when
# pytest collects: once imported, tests/unit/plugins/modules/test_vm.py no longer sees its modules' warnings,
# and this file sorts after that directory.


def ansible(name):
    return importlib.import_module(name)


def plugin_module():
    return ansible('ansible_collections.virtnode.kvm.plugins.inventory.vms')


SD = 'a1b2c3d4-0000-4000-8000-000000000001'
WEB = {'name': 'web', 'uuid': 'u1', 'status': 'Up', 'active': True, 'persistent': True, 'vcpus': 2, 'memory_mib': 2048,
       'disks': [{'target': 'vda', 'path': 'p', 'format': 'raw', 'bus': 'virtio', 'pool': None, 'domain': SD,
                  'image': None, 'volume': None}],
       'nics': [], 'ips': [{'interface': 'vnet0', 'mac': 'm', 'address': '192.0.2.10', 'prefix': 24, 'family': 'ipv4',
                            'source': 'agent'}], 'ips_source': 'agent'}


def make_plugin():
    """The plugin with its options registered, as the plugin loader would do."""
    module = plugin_module()
    doc = yaml.safe_load(module.DOCUMENTATION)
    ansible('ansible.utils.plugin_docs').add_fragments(doc, module.__file__,
                                                       fragment_loader=ansible('ansible.plugins.loader').fragment_loader)
    plugin = module.InventoryModule()
    plugin._load_name = module.InventoryModule.NAME  # pylint: disable=protected-access
    ansible('ansible.constants').config.initialize_plugin_configuration_definitions(
        'inventory', plugin._load_name, doc['options'])  # pylint: disable=protected-access
    return plugin


@pytest.fixture
def libvirt_hosts(monkeypatch, fake_libvirt):
    """``{uri: host entry}`` that ``read_host`` answers from; the URIs asked land in ``asked``."""
    answers = {}
    asked = []

    def read_host(uri, ip_sources, include_inactive, connect_timeout):
        asked.append((uri, tuple(ip_sources), include_inactive, connect_timeout))
        return answers.get(uri) or {'uri': uri, 'hostname': 'h0', 'error': 'cannot connect to libvirt at %s' % uri}
    monkeypatch.setattr(inventory_vms, 'read_host', read_host)
    answers['asked'] = asked
    return answers


def parse(tmp_path, config, cache=True, name='lab.vms.yml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict({'plugin': 'virtnode.kvm.vms'}, **config)))
    inventory = ansible('ansible.inventory.data').InventoryData()
    plugin = make_plugin()
    plugin.parse(inventory, ansible('ansible.parsing.dataloader').DataLoader(), str(path), cache=cache)
    # As Ansible's inventory manager does after a cacheable plugin's parse.
    if getattr(plugin, '_cache', None) is not None:
        plugin.update_cache_if_changed()
    return inventory


@pytest.mark.parametrize('name, accepted', [('lab.vms.yml', True), ('vms.yaml', True), ('x.virtnode.vms.yml', True),
                                            ('lab.yml', False), ('vms.json', False)])
def test_verify_file(tmp_path, name, accepted):
    path = tmp_path / name
    path.write_text('plugin: virtnode.kvm.vms\n')
    assert make_plugin().verify_file(str(path)) is accepted


def test_documentation_examples_are_configurations():
    for example in yaml.safe_load_all(plugin_module().EXAMPLES):
        assert example['plugin'] == 'virtnode.kvm.vms' and example['hosts']


def test_fills_hosts_groups_vars_and_constructed_ones(tmp_path, libvirt_hosts):
    libvirt_hosts['qemu+tls://h1/system'] = {'uri': 'qemu+tls://h1/system', 'hostname': 'h1', 'vms': [WEB]}
    inventory = parse(tmp_path, {
        'hosts': ['qemu+tls://h1/system'], 'set_ansible_host': True, 'ip_sources': ['agent'], 'connect_timeout': 1,
        'compose': {'memory_gib': 'virtnode_memory_mib // 1024'}, 'groups': {'big': 'virtnode_memory_mib >= 2048'},
        'keyed_groups': [{'key': 'virtnode_status', 'prefix': 'state'}]})
    assert libvirt_hosts['asked'] == [('qemu+tls://h1/system', ('agent',), True, 1.0)]
    host = inventory.get_host('web')
    variables = host.get_vars()
    assert variables['ansible_host'] == '192.0.2.10' and variables['virtnode_vcpus'] == 2
    assert variables['memory_gib'] == 2
    groups = sorted(group.name for group in host.get_groups())
    assert groups == sorted(['virtnode_vms', 'virtnode_host_h1', 'virtnode_status_up',
                             'virtnode_storage_domain_' + SD.replace('-', '_'), 'big', 'state_Up'])


def test_an_unreachable_host_is_a_warning_unless_asked_to_fail(tmp_path, libvirt_hosts, monkeypatch):
    libvirt_hosts['qemu+tls://h1/system'] = {'uri': 'qemu+tls://h1/system', 'hostname': 'h1', 'vms': [WEB],
                                             'warnings': ['cannot read a VM on qemu+tls://h1/system: x']}
    warned = []
    monkeypatch.setattr(ansible('ansible.plugins.inventory').display, 'warning', lambda msg, **kwargs: warned.append(msg))
    config = {'hosts': ['qemu+tls://h0/system', 'qemu+tls://h1/system']}
    inventory = parse(tmp_path, config)
    assert 'web' in inventory.hosts
    assert warned == ['virtnode.kvm.vms: cannot connect to libvirt at qemu+tls://h0/system; its VMs are not listed',
                      'virtnode.kvm.vms: cannot read a VM on qemu+tls://h1/system: x']
    with pytest.raises(ansible('ansible.errors').AnsibleError, match='cannot connect to libvirt at qemu\\+tls://h0/system'):
        parse(tmp_path, dict(config, fail_on_unreachable=True))


def test_the_cache_answers_until_refreshed(tmp_path, libvirt_hosts):
    libvirt_hosts['qemu+tls://h1/system'] = {'uri': 'qemu+tls://h1/system', 'hostname': 'h1', 'vms': [WEB]}
    config = {'hosts': ['qemu+tls://h1/system'], 'cache': True, 'cache_plugin': 'jsonfile',
              'cache_connection': str(tmp_path / 'cache'), 'cache_timeout': 600}
    assert 'web' in parse(tmp_path, config).hosts
    assert len(libvirt_hosts['asked']) == 1 and list((tmp_path / 'cache').iterdir())
    libvirt_hosts['qemu+tls://h1/system'] = {'uri': 'qemu+tls://h1/system', 'hostname': 'h1', 'vms': [dict(WEB, name='api')]}
    # cache=True (what ansible-inventory passes without --flush-cache): answered from the cache.
    assert 'web' in parse(tmp_path, config).hosts and len(libvirt_hosts['asked']) == 1
    # cache=False (--flush-cache): read again, and the cache updated.
    assert 'api' in parse(tmp_path, config, cache=False).hosts and len(libvirt_hosts['asked']) == 2
    assert 'api' in parse(tmp_path, config).hosts and len(libvirt_hosts['asked']) == 2
    # Without the cache option, every parse reads the hosts.
    parse(tmp_path, dict(config, cache=False))
    assert len(libvirt_hosts['asked']) == 3


def test_missing_libvirt_is_a_clear_error(tmp_path, no_libvirt):
    with pytest.raises(ansible('ansible.errors').AnsibleError, match='libvirt-python'):
        parse(tmp_path, {'hosts': ['qemu:///system']})
