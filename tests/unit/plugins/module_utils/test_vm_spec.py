# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


class FakeStat(object):
    def __init__(self, mode):
        self.st_mode = mode


def fake_stat(path):
    if path.startswith('/missing'):
        raise FileNotFoundError(2, 'No such file or directory')
    if path.startswith('/dev/'):
        return FakeStat(stat.S_IFBLK | 0o660)
    return FakeStat(stat.S_IFREG | 0o644)


def spec_of(**params):
    base = {'name': 'vm1', 'memory': '128MiB'}
    base.update(params)
    return vm_spec.normalize(base, stat_fn=fake_stat)


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# The spec the lab domain in vm_live_full.xml was started from (virsh dumpxml --security-info).
FIXTURE_SPEC = dict(
    name='fx-guest', uuid='5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11', memory='96MiB', max_memory='128MiB', vcpus=2,
    cpu_topology={'sockets': 1, 'cores': 2, 'threads': 1}, machine='q35',
    kernel='/work/main/.lab4/guest/vmlinuz', initrd='/work/main/.lab4/guest/initrd.img',
    cmdline='console=ttyS0 quiet panic=-1 workload=idle',
    disks=[{'path': '/var/lib/fx-disk.qcow2', 'format': 'qcow2'}],
    nics=[{'bridge': 'vmbr-fx', 'mac': '52:54:00:aa:bb:01'}, {'bridge': 'vmbr-fx'}],
    cdrom='/var/lib/fx-cd.iso',
    graphics={'type': 'vnc', 'password': 'secret1', 'password_valid_to': '2099-01-01T00:00:00'},
    custom_properties={'owner': 'fixtures'},
    console_log=True,
)


@pytest.mark.parametrize('params, message', [
    ({'name': 'a/b'}, 'must not contain "/"'),
    ({'memory': '-1G'}, 'must not be negative'),
    ({'memory': '256MiB', 'max_memory': '128MiB'}, 'must not exceed max_memory'),
    ({'vcpus': 0}, 'vcpus must be'),
    ({'vcpus': 2, 'cpu_topology': {'sockets': 1, 'cores': 1, 'threads': 1}}, 'gives 1 vCPUs'),
    ({'nics': [{'bridge': 'br0', 'mac': '52:54:00:zz:00:01'}]}, 'is not a MAC address'),
    ({'nics': [{'bridge': 'br0', 'mac': '01:54:00:00:00:01'}]}, 'multicast'),
    ({'nics': [{'bridge': 'br0', 'network': 'default'}]}, 'exactly one of bridge or network'),
    ({'disks': [{'path': '/missing/disk.img'}]}, '/missing/disk.img cannot be used'),
    ({'disks': [{'path': 'relative.img'}]}, 'must be absolute'),
    ({'disks': [{'path': '/a.img', 'target': 'sda'}]}, 'does not fit bus virtio'),
    ({'disks': [{'path': '/a.img'}, {'path': '/a.img'}]}, 'given twice'),
    ({'disks': [{'path': '/a.img', 'domain_id': 'x'}]}, 'not both'),
    ({'disks': [{'domain_id': '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'}]}, 'needs domain_id, image_id and volume_id'),
    ({'kernel': '/boot/vmlinuz', 'boot_order': ['hd']}, 'mutually exclusive'),
    ({'cmdline': 'x'}, 'need kernel'),
    ({'graphics': {'type': 'vnc', 'password': '123456789'}}, 'at most 8'),
    ({'graphics': {'password': 'x', 'password_valid_to': 'tomorrow'}}, 'YYYY-MM-DD'),
    ({'custom_properties': {'bad-name': 'x'}}, 'environment variable'),
    ({'uuid': 'NOT-A-UUID'}, 'not a valid UUID'),
])
def test_bad_specs_are_refused(params, message):
    with pytest.raises(VirtnodeError) as err:
        spec_of(**params)
    assert message in str(err.value)


def test_normalize_fills_defaults_and_targets():
    spec = spec_of(disks=[{'path': '/a.img'}, {'path': '/dev/sdx', 'bus': 'sata'}, {'path': '/b.img', 'target': 'vda'}],
                   nics=[{'bridge': 'br0', 'mac': '52-54-00-AA-00-01'}], cdrom='', machine='q35')
    assert spec['memory'] == spec['max_memory'] == 131072
    assert [d['target'] for d in spec['disks']] == ['vdb', 'sda', 'vda']
    assert spec['disks'][1]['type'] == 'block'
    assert spec['disks'][0]['error_policy'] == 'stop' and spec['disks'][0]['cache'] == 'none'
    assert spec['nics'][0]['mac'] == '52:54:00:aa:00:01'
    assert spec['vcpus'] is None and spec['machine'] == 'q35'


def test_volume_disks_go_through_the_resolver():
    ids = ['5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e1%d' % i for i in range(3)]
    seen = []

    def resolver(sd, img, vol):
        seen.append((sd, img, vol))
        return '/rhev/data-center/mnt/server:_export/%s/images/%s/%s' % (sd, img, vol)

    spec = vm_spec.normalize({'name': 'v', 'disks': [dict(zip(('domain_id', 'image_id', 'volume_id'), ids))]},
                             stat_fn=fake_stat, resolver=resolver)
    assert seen == [tuple(ids)]
    assert spec['disks'][0]['path'].endswith('/images/%s/%s' % (ids[1], ids[2]))
    assert spec['disks'][0]['volume'] == dict(zip(('domain_id', 'image_id', 'volume_id'), ids))


def test_unprepared_volume_is_a_clear_error(tmp_path):
    with pytest.raises(VirtnodeError) as err:
        vm_volumes.resolve_volume(*(['5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'] * 3))
    assert 'not prepared on this host' in str(err.value)


def test_a_volume_of_a_block_domain_given_without_type_block_says_how_to_give_it(monkeypatch):
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
    monkeypatch.setattr(block, 'is_block_domain', lambda sd_uuid: True)
    with pytest.raises(VirtnodeError, match='is on a block storage domain: give the disk type: block'):
        vm_volumes.resolve_volume(*(['5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'] * 3))


def test_build_xml_round_trips_through_parse_live():
    spec = spec_of(max_memory='256MiB', vcpus=2, cpu_model='host-model', kernel='/boot/vmlinuz', initrd='/boot/initrd',
                   cmdline='console=ttyS0', disks=[{'path': '/a.img', 'format': 'qcow2', 'readonly': True}],
                   nics=[{'network': 'default', 'mac': '52:54:00:00:00:01', 'model': 'e1000'}], cdrom='/iso',
                   graphics={'type': 'spice', 'password': 'pw', 'password_valid_to': '2030-01-01T00:00:00Z'},
                   custom_properties={'a': 1}, console_log=True,
                   lease={'sd_id': '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11', 'lease_id': '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e12',
                          'path': '/rhev/xleases', 'offset': 3145728})
    xml = domxml.build_xml(spec, domain_type='kvm')
    live = domxml.parse_live(xml)
    assert live['domain_type'] == 'kvm'
    assert live['custom_properties'] == {'a': '1'}
    assert live['graphics']['password_valid_to'] == '2030-01-01T00:00:00'
    assert live['console_log_file'] == '/var/log/libvirt/qemu/vm1-console.log'
    assert live['lease']['offset'] == 3145728
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}


def test_live_fixture_shows_no_spurious_differences():
    """Real `virsh dumpxml` of a domain started from FIXTURE_SPEC: libvirt's additions are not diffs."""
    live = domxml.parse_live(fixture('vm_live_full.xml'))
    spec = vm_spec.normalize(FIXTURE_SPEC, stat_fn=fake_stat)
    assert live['machine'].startswith('pc-q35-')
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    before, after = vm_spec.diff_view(spec, live)
    assert before == after
    assert after['graphics']['password'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'


def test_live_fixture_changes_are_sorted_into_live_and_restart():
    live = domxml.parse_live(fixture('vm_live_full.xml'))
    params = dict(FIXTURE_SPEC, vcpus=4, cpu_topology=None, memory='64MiB', cdrom='',
                  disks=[{'path': '/var/lib/new.qcow2', 'format': 'qcow2'}],
                  nics=[{'bridge': 'vmbr-fx', 'mac': '52:54:00:aa:bb:01'}],
                  graphics=dict(FIXTURE_SPEC['graphics'], password='other'))
    result = vm_spec.compare(vm_spec.normalize(params, stat_fn=fake_stat), live)
    assert result['restart'] == ['vcpus']
    kinds = sorted(a['action'] for a in result['live'])
    assert kinds == ['attach_disk', 'change_cd', 'detach_disk', 'detach_nic', 'set_memory', 'set_ticket']
    detached = [a for a in result['live'] if a['action'] == 'detach_nic'][0]
    assert detached['nic']['mac'] != '52:54:00:aa:bb:01'


def test_machine_alias_and_max_memory_restart():
    live = domxml.parse_live(fixture('vm_live_full.xml'))
    spec = vm_spec.normalize(dict(FIXTURE_SPEC, machine='pc-q35-7.2', max_memory='256MiB'), stat_fn=fake_stat)
    assert vm_spec.compare(spec, live)['restart'] == ['max_memory']
    spec = vm_spec.normalize(dict(FIXTURE_SPEC, machine='pc'), stat_fn=fake_stat)
    assert vm_spec.compare(spec, live, aliases={'pc': 'pc-i440fx-7.2'})['restart'] == ['machine']


def test_updated_persistent_xml_keeps_what_the_spec_leaves_out():
    live_xml = fixture('vm_live_full.xml')
    spec = vm_spec.normalize({'name': 'fx-guest', 'vcpus': 2, 'cpu_topology': None}, stat_fn=fake_stat)
    new = domxml.parse_live(domxml.updated_persistent_xml(spec, live_xml))
    old = domxml.parse_live(live_xml)
    for key in ('uuid', 'max_memory', 'kernel', 'cmdline', 'custom_properties', 'cdrom'):
        assert new[key] == old[key], key
    assert [n['mac'] for n in new['nics']] == [n['mac'] for n in old['nics']]
    assert new['machine'] == 'q35'


def test_machine_aliases_from_capabilities():
    caps = fixture('capabilities_x86_64.xml')
    aliases = domxml.machine_aliases(caps)
    assert all(value.startswith('pc-') for value in aliases.values())


WATCHDOG = {'model': 'i6300esb', 'action': 'pause', 'state': 'present'}
RNG = {'backend': '/dev/urandom', 'rate_bytes': 1024, 'rate_period_ms': None, 'state': 'present'}


def test_devices_round_trip_and_changes_need_a_restart():
    spec = spec_of(watchdog=WATCHDOG, rng=RNG, video='virtio', tablet=True)
    live = domxml.parse_live(domxml.build_xml(spec))
    assert live['watchdog'] == {'model': 'i6300esb', 'action': 'pause'}
    assert live['rng'] == {'backend': '/dev/urandom', 'rate_bytes': 1024, 'rate_period_ms': 1000}
    assert (live['video'], live['tablet']) == ('virtio', True)
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    changed = spec_of(watchdog=dict(WATCHDOG, action='reset'), rng={'state': 'absent'}, video='none', tablet=False)
    assert vm_spec.compare(changed, live)['restart'] == ['watchdog', 'rng', 'video', 'tablet']
    # Left out: what the domain has stays, and is no difference.
    assert vm_spec.compare(spec_of(), live) == {'live': [], 'restart': []}
    bare = domxml.parse_live(domxml.build_xml(spec_of()))
    assert (bare['watchdog'], bare['rng'], bare['tablet']) == (False, False, False)
    assert vm_spec.compare(spec_of(watchdog={'state': 'absent'}, tablet=False), bare)['restart'] == []


def test_a_persistent_definition_keeps_devices_the_spec_leaves_out():
    old_xml = domxml.build_xml(spec_of(watchdog=WATCHDOG, rng={}, video='qxl', tablet=True))
    new = domxml.parse_live(domxml.updated_persistent_xml(spec_of(vcpus=2), old_xml))
    assert new['watchdog']['action'] == 'pause' and new['rng']['backend'] == '/dev/urandom'
    assert (new['video'], new['tablet'], new['vcpus']) == ('qxl', True, 2)
    removed = domxml.parse_live(domxml.updated_persistent_xml(spec_of(watchdog={'state': 'absent'}), old_xml))
    assert removed['watchdog'] is False and removed['video'] == 'qxl'


@pytest.mark.parametrize('params, message', [
    ({'watchdog': {'action': 'explode'}}, 'watchdog action'),
    ({'watchdog': {'model': 'itco'}}, 'watchdog model'),
    ({'watchdog': 'yes'}, 'watchdog must be'),
    ({'rng': {'backend': '/etc/shadow'}}, 'rng backend'),
    ({'rng': {'rate_bytes': 0}}, 'positive integer'),
    ({'rng': {'rate_period_ms': 100}}, 'needs rate_bytes'),
    ({'video': 'cirrus'}, 'video'),
])
def test_bad_devices_are_refused(params, message):
    with pytest.raises(VirtnodeError, match=message):
        spec_of(**params)


TUNED_DISK = {'path': '/a.img', 'io': 'threads', 'serial': 'DISK-1', 'discard': 'unmap', 'detect_zeroes': 'unmap',
              'iotune': {'total_bytes_sec': 10485760, 'read_iops_sec': 100}}
TUNED_NIC = {'bridge': 'br0', 'mac': '52:54:00:00:00:07', 'link_state': 'down', 'mtu': 9000, 'queues': 2}


def test_disk_and_nic_settings_round_trip():
    spec = spec_of(disks=[TUNED_DISK], nics=[TUNED_NIC])
    live = domxml.parse_live(domxml.build_xml(spec))
    disk, nic = live['disks'][0], live['nics'][0]
    assert (disk['io'], disk['serial'], disk['discard'], disk['detect_zeroes']) == ('threads', 'DISK-1', 'unmap', 'unmap')
    assert disk['iotune'] == dict(dict.fromkeys(vm_spec.IOTUNE_KEYS, 0), total_bytes_sec=10485760, read_iops_sec=100)
    assert (nic['link_state'], nic['mtu'], nic['queues']) == ('down', 9000, 2)
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}


def test_live_and_restart_changes_of_disks_and_nics():
    live = domxml.parse_live(domxml.build_xml(spec_of(disks=[TUNED_DISK], nics=[TUNED_NIC])))
    wanted = spec_of(disks=[dict(TUNED_DISK, iotune={'total_bytes_sec': 0}, serial='DISK-2')],
                     nics=[dict(TUNED_NIC, bridge='br1', link_state='up', queues=4)])
    result = vm_spec.compare(wanted, live)
    assert result['restart'] == ['disks[/a.img]', 'nics[52:54:00:00:00:07]']
    iotune, nic = result['live']
    assert iotune['action'] == 'set_iotune' and iotune['iotune'] == dict.fromkeys(vm_spec.IOTUNE_KEYS, 0)
    assert nic['action'] == 'update_nic' and nic['nic']['source'] == 'br1' and nic['nic']['link_state'] == 'up'
    # Settings left out are not compared: a plain disk and NIC match the tuned ones.
    plain = spec_of(disks=[{'path': '/a.img'}], nics=[{'bridge': 'br0', 'mac': '52:54:00:00:00:07'}])
    assert vm_spec.compare(plain, live) == {'live': [], 'restart': []}


def test_a_persistent_definition_keeps_disk_and_nic_settings_left_out():
    old_xml = domxml.build_xml(spec_of(disks=[TUNED_DISK], nics=[TUNED_NIC]))
    plain = spec_of(disks=[{'path': '/a.img'}], nics=[{'bridge': 'br0', 'mac': '52:54:00:00:00:07'}], vcpus=2)
    new = domxml.parse_live(domxml.updated_persistent_xml(plain, old_xml))
    assert new['disks'][0]['iotune']['total_bytes_sec'] == 10485760 and new['disks'][0]['serial'] == 'DISK-1'
    assert (new['nics'][0]['link_state'], new['nics'][0]['mtu'], new['vcpus']) == ('down', 9000, 2)


@pytest.mark.parametrize('params, message', [
    ({'disks': [{'path': '/a.img', 'serial': 'x' * 21}]}, 'at most 20'),
    ({'disks': [{'path': '/a.img', 'serial': 'a b'}]}, 'at most 20'),
    ({'disks': [{'path': '/a.img', 'detect_zeroes': 'unmap'}]}, 'needs discard unmap'),
    ({'disks': [{'path': '/a.img', 'iotune': {'total_bytes_sec': -1}}]}, 'non-negative'),
    ({'disks': [{'path': '/a.img', 'iotune': {'bogus_sec': 1}}]}, 'unknown limit'),
    ({'disks': [{'path': '/a.img', 'iotune': {'total_iops_sec': 5, 'read_iops_sec': 1}}]}, 'cannot be combined'),
    ({'nics': [{'bridge': 'br0', 'mtu': 10}]}, 'mtu must be'),
    ({'nics': [{'bridge': 'br0', 'queues': 0}]}, 'queues must be'),
    ({'nics': [{'bridge': 'br0', 'link_state': 'sideways'}]}, 'link_state'),
])
def test_bad_disk_and_nic_settings_are_refused(params, message):
    with pytest.raises(VirtnodeError, match=message):
        spec_of(**params)


def test_vcpus_hotplug_up_to_the_maximum_and_pinning_live():
    spec = spec_of(vcpus=1, max_vcpus=4, cpu_pinning={'0': '1', 1: '0-1,^0'}, emulator_pinning='0')
    live = domxml.parse_live(domxml.build_xml(spec))
    assert (live['vcpus'], live['max_vcpus']) == (1, 4)
    assert live['cpu_pinning'] == {0: [1], 1: [1]} and live['emulator_pinning'] == [0]
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    more = vm_spec.compare(spec_of(vcpus=3, max_vcpus=4, cpu_pinning={0: '0'}, emulator_pinning='1'), live)
    assert more['restart'] == []
    assert [(a['action'], a.get('count'), a.get('cpus')) for a in more['live']] == \
        [('set_vcpus', 3, None), ('pin_vcpu', None, [0]), ('pin_emulator', None, [1])]
    # Past the maximum the VM started with: only at the next start (and the maximum with it).
    assert vm_spec.compare(spec_of(vcpus=6, max_vcpus=8), live)['restart'] == ['max_vcpus', 'vcpus']
    assert vm_spec.compare(spec_of(vcpus=6), live)['restart'] == ['vcpus']
    # A definition with more vCPUs than its old maximum gets the new count as maximum.
    grown = domxml.parse_live(domxml.updated_persistent_xml(spec_of(vcpus=6), domxml.build_xml(spec)))
    assert (grown['vcpus'], grown['max_vcpus'], grown['cpu_pinning']) == (6, 6, {0: [1], 1: [1]})


@pytest.mark.parametrize('params, message', [
    ({'vcpus': 5, 'max_vcpus': 4}, 'more than max_vcpus'),
    ({'max_vcpus': 4}, 'max_vcpus needs vcpus'),
    ({'vcpus': 2, 'max_vcpus': 4, 'cpu_topology': {'sockets': 1, 'cores': 2, 'threads': 1}}, 'gives 2 vCPUs'),
    ({'vcpus': 2, 'cpu_pinning': {'2': '0'}}, 'at most 2'),
    ({'vcpus': 2, 'cpu_pinning': {'x': '0'}}, 'not a vCPU number'),
    ({'vcpus': 2, 'cpu_pinning': {'0': '0;rm'}}, 'must be a cpuset'),
    ({'vcpus': 2, 'cpu_pinning': {'0': '3-1'}}, 'runs backwards'),
    ({'vcpus': 2, 'cpu_pinning': {'0': '0,^0'}}, 'names no CPU'),
    ({'vcpus': 2, 'cpu_pinning': {'0': '64'}}, 'does not have'),
    ({'emulator_pinning': '2-3'}, 'does not have'),
])
def test_bad_vcpu_settings_are_refused(params, message):
    with pytest.raises(VirtnodeError, match=message):
        vm_spec.normalize(dict({'name': 'vm1'}, **params), stat_fn=fake_stat, host_cpus=[0, 1])


def test_new_vms_get_the_guest_agent_port_unless_refused():
    live = domxml.parse_live(domxml.build_xml(spec_of()))
    assert live['guest_agent'] is True
    without = domxml.parse_live(domxml.build_xml(spec_of(guest_agent=False)))
    assert without['guest_agent'] is False
    assert vm_spec.compare(spec_of(guest_agent=True), without)['restart'] == ['guest_agent']
    assert vm_spec.compare(spec_of(), without)['restart'] == []
    kept = domxml.parse_live(domxml.updated_persistent_xml(spec_of(vcpus=2), domxml.build_xml(spec_of(guest_agent=False))))
    assert kept['guest_agent'] is False


ADDED_BY_ADMIN = '''
  <clock offset='localtime'><timer name='rtc' tickpolicy='catchup'/></clock>
  <pm><suspend-to-mem enabled='no'/></pm>
  <sysinfo type='smbios'><system><entry name='serial'>ABC123</entry></system></sysinfo>
'''
ADDED_DEVICES = '''
    <channel type='unix'><target type='virtio' name='org.example.probe'/></channel>
    <sound model='ich9'/>
    <disk type='file' device='floppy'><source file='/var/lib/floppy.img'/><target dev='fda' bus='fdc'/></disk>
    <filesystem type='mount'><source dir='/srv/share'/><target dir='share'/></filesystem>
    <input type='mouse' bus='ps2'/>
'''


def test_a_persistent_definition_keeps_what_the_spec_does_not_own():
    old_xml = domxml.build_xml(spec_of(tablet=True))
    old_xml = old_xml.replace('<devices>', '<devices>' + ADDED_DEVICES, 1).replace('<devices>', ADDED_BY_ADMIN + '<devices>', 1)
    old_xml = old_xml.replace('<acpi/>', '<acpi/><hyperv mode="custom"><relaxed state="on"/></hyperv>', 1)
    old_xml = old_xml.replace("<os>", "<os firmware='efi'><smbios mode='sysinfo'/>", 1)
    old_xml = old_xml.replace('</metadata>', '<other:tag xmlns:other="http://example.org/other">kept</other:tag></metadata>', 1)
    new_xml = domxml.updated_persistent_xml(spec_of(vcpus=2, tablet=False), old_xml)
    root = domxml.parse_xml(new_xml)
    assert root.find("devices/channel/target[@name='org.example.probe']") is not None
    assert root.find("devices/channel/target[@name='org.qemu.guest_agent.0']") is not None
    assert len(root.findall('devices/channel')) == 2
    assert root.find("devices/disk[@device='floppy']/source").get('file') == '/var/lib/floppy.img'
    assert root.find('devices/filesystem/target').get('dir') == 'share'
    assert root.find('devices/sound').get('model') == 'ich9'
    assert root.find("devices/input[@type='mouse']") is not None
    assert root.find("devices/input[@type='tablet']") is None  # owned: the spec removed it
    assert root.find('clock').get('offset') == 'localtime'
    assert root.find("sysinfo/system/entry").text == 'ABC123'
    assert root.find('pm/suspend-to-mem') is not None
    assert root.find('features/hyperv/relaxed') is not None and root.find('features/acpi') is not None
    assert root.find('os').get('firmware') == 'efi' and root.find('os/smbios') is not None
    assert root.find('metadata/{http://example.org/other}tag').text == 'kept'
    assert len(root.findall('metadata/{%s}vm' % domxml.METADATA_NS)) == 1
    assert root.findtext('vcpu') == '2'
    # Kept once: a second update does not double anything.
    again = domxml.parse_xml(domxml.updated_persistent_xml(spec_of(vcpus=2), new_xml))
    assert len(again.findall('devices/channel')) == 2 and len(again.findall('devices/sound')) == 1
    assert len(again.findall('clock')) == 1 and len(again.findall('features/hyperv')) == 1


def test_nic_filter_round_trips_and_changes_live():
    nics = [{'bridge': 'br0', 'mac': '52:54:00:00:00:01', 'filter': 'clean-traffic',
             'filter_parameters': {'IP': ['192.0.2.9', '192.0.2.8'], 'CTRL_IP_LEARNING': 'none'}}]
    spec = spec_of(nics=nics)
    assert spec['nics'][0]['filter'] == {'name': 'clean-traffic', 'parameters': {
        'IP': ['192.0.2.8', '192.0.2.9'], 'CTRL_IP_LEARNING': ['none']}}
    live = domxml.parse_live(domxml.build_xml(spec))
    assert live['nics'][0]['filter'] == spec['nics'][0]['filter']
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    other = spec_of(nics=[dict(nics[0], filter='no-mac-spoofing', filter_parameters=None)])
    actions = vm_spec.compare(other, live)['live']
    assert [a['action'] for a in actions] == ['update_nic']
    removed = spec_of(nics=[dict(nics[0], filter='', filter_parameters=None)])
    assert [a['action'] for a in vm_spec.compare(removed, live)['live']] == ['update_nic']
    # Left out: not managed, and a persistent definition keeps it.
    plain = spec_of(nics=[{'bridge': 'br0', 'mac': '52:54:00:00:00:01'}])
    assert vm_spec.compare(plain, live)['live'] == []
    kept = domxml.parse_live(domxml.updated_persistent_xml(plain, domxml.build_xml(spec)))
    assert kept['nics'][0]['filter']['name'] == 'clean-traffic'
    bare = domxml.parse_live(domxml.build_xml(removed))
    assert bare['nics'][0]['filter'] is False


@pytest.mark.parametrize('nic, message', [
    ({'filter': 'bad name'}, 'network filter name'),
    ({'filter': '../etc'}, 'network filter name'),
    ({'filter_parameters': {'IP': '1.2.3.4'}}, 'filter_parameters needs filter'),
    ({'filter': 'clean-traffic', 'filter_parameters': {'bad-name': '1'}}, 'not a libvirt variable name'),
    ({'filter': 'clean-traffic', 'filter_parameters': {'IP': []}}, 'one or more plain values'),
    ({'filter': 'clean-traffic', 'filter_parameters': {'IP': {'a': 1}}}, 'one or more plain values'),
    ({'filter': 'clean-traffic', 'filter_parameters': 'IP=1'}, 'must be a dict'),
])
def test_bad_nic_filters_are_refused(nic, message):
    with pytest.raises(VirtnodeError, match=message):
        spec_of(nics=[dict({'bridge': 'br0'}, **nic)])


def test_a_floppy_boot_is_refused_with_the_reason():
    with pytest.raises(VirtnodeError, match='no floppy drive'):
        spec_of(boot_order=['fd', 'hd'])


SEED = '/var/lib/virtnode/cloud-init/5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11/5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11-cidata.iso'


def test_the_cloud_init_seed_is_a_second_cd_rom_told_from_the_first():
    spec = spec_of(cloud_init={'user_data': '#cloud-config\n'}, cdrom='/srv/install.iso',
                   disks=[{'path': '/srv/a.img', 'bus': 'ide'}, {'path': '/srv/b.img', 'bus': 'ide'}])
    assert [d['target'] for d in spec['disks']] == ['hda', 'hdb']
    spec['cloud_init_seed'] = SEED
    live = domxml.parse_live(domxml.build_xml(spec))
    assert live['cloud_init_seed'] == SEED and live['cdrom'] == '/srv/install.iso'
    root = domxml.parse_xml(domxml.build_xml(spec))
    seed = [d for d in root.findall("devices/disk[@device='cdrom']") if d.find('source').get('file') == SEED][0]
    assert seed.find('target').get('dev') == 'hdd' and seed.find('readonly') is not None
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    # A domain without the seed drive gets it at the next start; a persistent definition keeps it.
    without = domxml.parse_live(domxml.build_xml(spec_of(cdrom='/srv/install.iso')))
    assert without['cloud_init_seed'] is None
    assert vm_spec.compare(spec, without)['restart'] == ['cloud_init']
    kept = domxml.parse_live(domxml.updated_persistent_xml(spec_of(vcpus=2), domxml.build_xml(spec)))
    assert kept['cloud_init_seed'] == SEED and kept['cdrom'] == '/srv/install.iso'


def test_bad_cloud_init_is_refused_before_anything():
    with pytest.raises(VirtnodeError, match='cloud_init'):
        spec_of(cloud_init={'network_config': {'ethernets': {}}})
    with pytest.raises(VirtnodeError, match='unknown keys'):
        spec_of(cloud_init={'vendor_data': 'x'})


def test_uefi_secure_boot_and_tpm_round_trip():
    spec = spec_of(uuid='5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11', machine='q35', firmware='uefi', secure_boot=True,
                   tpm={'model': 'crb', 'state': 'present'})
    spec['transient'] = True
    root = domxml.parse_xml(domxml.build_xml(spec))
    assert root.find('os').get('firmware') == 'efi'
    assert root.find("os/firmware/feature[@name='secure-boot']").get('enabled') == 'yes'
    assert root.findtext('os/nvram') == '/var/lib/libvirt/qemu/nvram/5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11_VARS.fd'
    assert root.find("features/smm").get('state') == 'on'
    assert root.find('devices/tpm').get('model') == 'tpm-crb'
    assert root.find('devices/tpm/backend').attrib == {'type': 'emulator', 'version': '2.0', 'persistent_state': 'yes'}
    live = domxml.parse_live(domxml.build_xml(spec))
    assert (live['firmware'], live['secure_boot'], live['tpm']) == ('uefi', True, {'model': 'crb'})
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    bios = spec_of(firmware='bios', tpm={'state': 'absent'})
    assert vm_spec.compare(bios, live)['restart'] == ['firmware', 'secure_boot', 'tpm']
    # Left out, kept by a persistent definition (its variable store too); given, changed there.
    kept = domxml.parse_xml(domxml.updated_persistent_xml(spec_of(vcpus=2), domxml.build_xml(spec)))
    assert kept.find('os').get('firmware') == 'efi' and kept.find('devices/tpm') is not None
    assert kept.findtext('os/nvram').endswith('_VARS.fd') and kept.find('features/smm') is not None
    to_bios = domxml.parse_xml(domxml.updated_persistent_xml(bios, domxml.build_xml(spec)))
    assert to_bios.find('os').get('firmware') is None and to_bios.find('os/nvram') is None
    assert to_bios.find('devices/tpm') is None


def test_libvirts_expanded_uefi_definition_reads_back():
    expanded = """<domain type='qemu'><name>u</name><uuid>5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11</uuid>
      <os firmware='efi'><type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
        <firmware><feature enabled='yes' name='enrolled-keys'/><feature enabled='yes' name='secure-boot'/></firmware>
        <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
        <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/u_VARS.fd</nvram></os>
      <features><acpi/><apic/><smm state='on'/></features><devices/></domain>"""
    live = domxml.parse_live(expanded)
    assert (live['firmware'], live['secure_boot'], live['nvram']) == ('uefi', True, '/var/lib/libvirt/qemu/nvram/u_VARS.fd')
    # An existing store keeps its name: boot entries and enrolled keys stay.
    again = domxml.parse_xml(domxml.updated_persistent_xml(spec_of(name='u', vcpus=2), expanded))
    assert again.findtext('os/nvram') == '/var/lib/libvirt/qemu/nvram/u_VARS.fd'
    assert len(again.findall('os/loader')) == 0 and len(again.findall('os/firmware')) == 1


@pytest.mark.parametrize('params, message', [
    ({'secure_boot': True}, 'needs firmware: uefi'),
    ({'firmware': 'uefi', 'secure_boot': True}, 'q35'),
    ({'firmware': 'coreboot'}, 'firmware must be one of'),
    ({'tpm': {'model': 'spapr'}}, 'tpm model'),
    ({'tpm': 'yes'}, 'tpm must be'),
])
def test_bad_firmware_and_tpm_are_refused(params, message):
    with pytest.raises(VirtnodeError, match=message):
        spec_of(**params)


def test_numa_cells_binding_and_hugepages_round_trip():
    spec = spec_of(vcpus=2, memory='256MiB', numa_cells=[{'cpus': '0', 'memory': '128MiB'}, {'cpus': '1', 'memory': '128MiB'}],
                   numa_tune={'mode': 'preferred', 'nodeset': '0'}, hugepages='2MiB')
    root = domxml.parse_xml(domxml.build_xml(spec))
    assert [c.attrib for c in root.findall('cpu/numa/cell')] == [
        {'id': '0', 'cpus': '0', 'memory': '131072', 'unit': 'KiB'}, {'id': '1', 'cpus': '1', 'memory': '131072', 'unit': 'KiB'}]
    assert root.find('numatune/memory').attrib == {'mode': 'preferred', 'nodeset': '0'}
    assert root.find('memoryBacking/hugepages/page').get('size') == '2048'
    live = domxml.parse_live(domxml.build_xml(spec))
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    other = spec_of(vcpus=2, memory='256MiB', numa_cells=[{'cpus': '0-1', 'memory': '256MiB'}], hugepages='0')
    assert vm_spec.compare(other, live)['restart'] == ['numa_cells', 'hugepages']
    kept = domxml.parse_xml(domxml.updated_persistent_xml(spec_of(vcpus=2), domxml.build_xml(spec)))
    assert len(kept.findall('cpu/numa/cell')) == 2 and kept.find('numatune') is not None
    assert len(kept.findall('memoryBacking')) == 1


def test_memory_is_plugged_live_up_to_the_hotplug_maximum():
    spec = spec_of(vcpus=1, max_memory='256MiB', memory_hotplug={'max': '1GiB', 'slots': 2})
    root = domxml.parse_xml(domxml.build_xml(spec))
    assert root.find('maxMemory').attrib == {'slots': '2', 'unit': 'KiB'} and root.findtext('maxMemory') == str(1024 * 1024)
    assert root.find('cpu/numa/cell').get('memory') == str(256 * 1024)  # one cell, made for the DIMMs
    live = domxml.parse_live(domxml.build_xml(spec))
    more = spec_of(vcpus=1, max_memory='512MiB', memory='512MiB', memory_hotplug={'max': '1GiB', 'slots': 2})
    diffs = vm_spec.compare(more, live)
    assert diffs['restart'] == []
    assert [a['action'] for a in diffs['live']] == ['plug_memory', 'set_memory'] and diffs['live'][0]['kib'] == 256 * 1024
    dimm = domxml.dimm_element(256 * 1024)
    assert domxml.to_text(dimm).startswith('<memory model="dimm">')
    # Past the maximum, not in 128 MiB steps, less memory or no free slot: at the next start.
    for size in ('2GiB', '300MiB', '128MiB'):
        changed = spec_of(vcpus=1, max_memory=size, memory_hotplug={'max': '4GiB'})
        assert 'max_memory' in vm_spec.compare(changed, dict(live, memory_hotplug={'max': 1024 * 1024, 'slots': 2}))['restart']
    full = dict(live, dimms=2)
    assert vm_spec.compare(more, full)['restart'] == ['max_memory', 'memory']
    # Without hotplug, more memory is a restart, as before.
    assert vm_spec.compare(spec_of(max_memory='512MiB'), domxml.parse_live(domxml.build_xml(spec_of())))['restart'] == ['max_memory']


@pytest.mark.parametrize('params, message', [
    ({'vcpus': 2, 'memory': '256MiB', 'numa_cells': [{'cpus': '0', 'memory': '128MiB'}]}, 'each must be in exactly one cell'),
    ({'vcpus': 2, 'memory': '256MiB', 'numa_cells': [{'cpus': '0-1', 'memory': '128MiB'}, {'cpus': '1', 'memory': '128MiB'}]},
     'that another cell has'),
    ({'vcpus': 2, 'memory': '256MiB', 'numa_cells': [{'cpus': '0-1', 'memory': '200MiB'}]}, 'must add up'),
    ({'vcpus': 1, 'numa_cells': [{'cpus': '0', 'memory': '128MiB'}]}, 'needs vcpus'),
    ({'vcpus': 1, 'memory': '128MiB', 'numa_cells': [{'cpus': 'x', 'memory': '128MiB'}]}, 'cpuset'),
    ({'numa_tune': {'nodeset': '7'}}, 'does not have'),
    ({'numa_tune': {'nodeset': '0', 'mode': 'random'}}, 'numa_tune mode'),
    ({'memory': '512MiB', 'memory_hotplug': {'max': '256MiB'}}, 'below max_memory'),
    ({'memory_hotplug': {'slots': 4}}, 'needs max'),
    ({'hugepages': '4MiB'}, '2MiB or 1GiB'),
    ({'hugepages': '1GiB'}, 'reserves no pages'),
])
def test_bad_numa_and_memory_layouts_are_refused(params, message):
    with pytest.raises(VirtnodeError, match=message):
        vm_spec.normalize(dict({'name': 'vm1'}, **params), stat_fn=fake_stat, host_nodes=[0], host_hugepages={2048: 64})


def test_a_hugepage_size_the_host_does_not_reserve_says_how_to_reserve_it():
    """The refusal once named a bootstrap variable that never existed; it must name the kernel's knobs."""
    with pytest.raises(VirtnodeError) as info:
        vm_spec.normalize({'name': 'vm1', 'hugepages': '1GiB'}, stat_fn=fake_stat, host_nodes=[0],
                          host_hugepages={2048: 64})
    assert 'hugepages-1048576kB/nr_hugepages' in info.value.message and 'bootstrap_' not in info.value.message


def test_an_ejected_seed_drive_is_still_the_seeds_not_the_cd_rom():
    spec = spec_of(cloud_init={'user_data': '#cloud-config\n'})
    spec['cloud_init_seed'] = SEED
    ejected = domxml.build_xml(spec).replace("<source file='%s'/>" % SEED, '').replace('<source file="%s"/>' % SEED, '')
    live = domxml.parse_live(ejected)
    assert live['cloud_init_seed'] is None and live['cloud_init_seed_drive'] == ('ide', 'hdd') and live['cdrom'] is None


def test_scsi_disks_get_a_virtio_scsi_controller_and_direct_luns_pass_through():
    spec = spec_of(disks=[{'path': '/dev/mapper/36001405abcdef', 'bus': 'scsi', 'lun': True},
                          {'path': '/srv/data.img', 'bus': 'scsi'}])
    root = domxml.parse_xml(domxml.build_xml(spec))
    lun = root.find("devices/disk[@device='lun']")
    assert lun.get('type') == 'block' and lun.get('sgio') == 'filtered' and lun.find('target').get('bus') == 'scsi'
    assert root.find("devices/disk[@device='disk']/target").get('dev') == 'sdb'
    assert [c.get('model') for c in root.findall("devices/controller[@type='scsi']")] == ['virtio-scsi']
    live = domxml.parse_live(domxml.build_xml(spec))
    assert [d['lun'] for d in live['disks']] == [True, False] and live['scsi_controller']
    assert vm_spec.compare(spec, live) == {'live': [], 'restart': []}
    # libvirt's own emulated controller in an old definition is replaced, not doubled.
    old = domxml.build_xml(spec)
    old = old.replace("model='virtio-scsi'", "model='lsilogic'").replace('model="virtio-scsi"', 'model="lsilogic"')
    new = domxml.parse_xml(domxml.updated_persistent_xml(spec_of(vcpus=2), old))
    assert [c.get('model') for c in new.findall("devices/controller[@type='scsi']")] == ['virtio-scsi']
    assert new.find("devices/disk[@device='lun']") is not None


@pytest.mark.parametrize('disk, message', [
    ({'path': '/srv/file.img', 'bus': 'scsi', 'lun': True}, 'must be a block device'),
    ({'path': '/dev/mapper/36001405abcdef', 'bus': 'virtio', 'lun': True}, 'on bus scsi'),
    ({'path': '/dev/mapper/36001405abcdef', 'bus': 'scsi', 'lun': True, 'format': 'qcow2'}, 'format raw'),
])
def test_bad_direct_luns_are_refused(disk, message):
    with pytest.raises(VirtnodeError, match=message):
        spec_of(disks=[disk])
