# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.host import capabilities
from ansible_collections.virtnode.kvm.plugins.module_utils.host import facts as host
from ansible_collections.virtnode.kvm.plugins.module_utils.common import readers as soft_readers
from ansible_collections.virtnode.kvm.plugins.module_utils.host import readers
from ansible_collections.virtnode.kvm.plugins.module_utils.host import stats as host_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.network import iproute
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def write(root, path, content=''):
    full = os.path.join(str(root), path.lstrip('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w') as handle:
        handle.write(content)
    return full


PROC_STAT_1 = """cpu  1000 0 500 8000 100 0 0 0 0 0
cpu0 500 0 250 4000 50 0 0 0 0 0
intr 1234
btime 1700000000
"""
# +300 user, +100 nice, +100 system, +400 idle, +100 iowait  -> 1000 jiffies
PROC_STAT_2 = """cpu  1300 100 600 8400 200 0 0 0 0 0
cpu0 650 50 300 4200 100 0 0 0 0 0
intr 2345
btime 1700000000
"""

MEMINFO = """MemTotal:        8192000 kB
MemFree:         2048000 kB
MemAvailable:    4096000 kB
Buffers:          102400 kB
Cached:          1024000 kB
SwapTotal:       1048576 kB
SwapFree:         524288 kB
HugePages_Total:       4
HugePages_Free:        2
Hugepagesize:       2048 kB
"""

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
flags\t\t: fpu vme vmx sse2 lm

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
flags\t\t: fpu vme vmx sse2 lm
"""

MOUNTINFO = (
    "22 1 0:21 / /proc rw,relatime - proc proc rw\n"
    "40 22 0:50 / /rhev/data-center/mnt/nfs.example.com:_export_data rw,relatime shared:5 - "
    "nfs4 nfs.example.com:/export/data rw,vers=4.2\n"
    "41 22 0:51 / /rhev/data-center/mnt/local\\040dir rw,relatime - ext4 /dev/vdb1 rw\n"
    "42 22 0:52 / /rhev/data-center/mnt-other rw - tmpfs tmpfs rw\n"
    "garbage line\n"
)


# --------------------------------------------------------------------------
# small helpers

@pytest.mark.parametrize('text,expected', [
    ('0-3,8,10-11', [0, 1, 2, 3, 8, 10, 11]),
    ('0', [0]),
    ('', []),
    (None, []),
    ('a-b', []),
    ('1,1,0', [0, 1]),
])
def test_parse_cpu_list(text, expected):
    assert capabilities.parse_cpu_list(text) == expected


def test_read_helpers_fail_soft(tmp_path):
    assert soft_readers.read_optional_text(str(tmp_path / 'missing')) is None
    assert soft_readers.read_int(str(tmp_path / 'missing')) is None
    path = write(tmp_path, '/value', 'not a number\n')
    assert soft_readers.read_int(path) is None
    assert soft_readers.read_optional_text(path) == 'not a number'
    # A directory cannot be read as a file either.
    assert soft_readers.read_optional_text(str(tmp_path)) is None


def test_host_path():
    assert soft_readers.host_path('/', '/proc/stat') == '/proc/stat'
    assert soft_readers.host_path('/tmp/x', '/proc/stat') == '/tmp/x/proc/stat'


def test_run_probe_missing_binary():
    assert readers.run_probe(['virtnode-no-such-command-here']) is None


def test_run_probe_output_and_failure():
    assert readers.run_probe(['echo', 'hello']).strip() == 'hello'
    assert readers.run_probe(['false']) is None


# --------------------------------------------------------------------------
# identity and OS

def test_host_uuid_prefers_virtnode_file(tmp_path):
    write(tmp_path, '/etc/virtnode/host_uuid', 'A1B2C3D4-0000-4000-8000-000000000001\n')
    write(tmp_path, '/sys/class/dmi/id/product_uuid', '4c4c4544-0042-3510-8051-b4c04f4e4d32')
    assert host.read_host_uuid(str(tmp_path)) == ('a1b2c3d4-0000-4000-8000-000000000001', 'virtnode')


def test_host_uuid_from_dmi(tmp_path):
    write(tmp_path, '/etc/virtnode/host_uuid', 'not-a-uuid')
    write(tmp_path, '/sys/class/dmi/id/product_uuid', '4C4C4544-0042-3510-8051-B4C04F4E4D32\n')
    assert host.read_host_uuid(str(tmp_path)) == ('4c4c4544-0042-3510-8051-b4c04f4e4d32', 'dmi')


@pytest.mark.parametrize('bogus', ['00000000-0000-0000-0000-000000000000', '03000200-0400-0500-0006-000700080009'])
def test_host_uuid_skips_placeholder_dmi(tmp_path, bogus):
    write(tmp_path, '/sys/class/dmi/id/product_uuid', bogus)
    write(tmp_path, '/etc/machine-id', '3d1219c7c4c5404aaa1f6d2a48adfda4\n')
    assert host.read_host_uuid(str(tmp_path)) == ('3d1219c7-c4c5-404a-aa1f-6d2a48adfda4', 'machine-id')


def test_host_uuid_none(tmp_path):
    write(tmp_path, '/etc/machine-id', 'uninitialized\n')
    assert host.read_host_uuid(str(tmp_path)) == (None, None)


def test_os_release(tmp_path):
    write(tmp_path, '/usr/lib/os-release',
          '# comment\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME=\'Debian GNU/Linux\'\n'
          'VERSION_ID="12"\nID=debian\nbroken line\n')
    info = host.read_os_release(str(tmp_path))
    assert info == {
        'id': 'debian', 'version_id': '12', 'version_codename': None,
        'name': 'Debian GNU/Linux', 'pretty_name': 'Debian GNU/Linux 12 (bookworm)',
    }
    assert host.read_os_release(str(tmp_path / 'nothing'))['id'] is None


def test_hostname_and_kernel():
    assert host.read_hostname()
    kernel = host.read_kernel()
    assert set(kernel) == {'release', 'version', 'machine'}


# --------------------------------------------------------------------------
# libvirt capabilities

def test_parse_capabilities():
    caps = capabilities.parse_capabilities(fixture('capabilities_x86_64.xml'))
    assert caps['host_uuid'] == '5069a2e8-5d32-466c-89e0-e1c048b8c347'
    assert caps['arch'] == 'x86_64'
    assert caps['cpu_model'] == 'EPYC-Rome'
    assert [c['id'] for c in caps['numa_cells']] == [0, 1]
    assert caps['numa_cells'][0]['cpus'] == [0, 1, 2, 3]
    assert caps['numa_cells'][0]['memory_mib'] == 4096
    assert caps['numa_cells'][1]['memory_mib'] == 4096  # unit='GiB'
    assert capabilities.caps_domain_types(caps) == ['kvm', 'qemu']
    assert capabilities.caps_machine_types(caps) == ['pc', 'pc-i440fx-7.2', 'pc-q35-7.2', 'pc-q35-7.2-kvm-only', 'q35']
    assert capabilities.caps_machine_types(caps, 'aarch64') == []
    assert capabilities.numa_info(caps) == {
        'cell_count': 2,
        'cells': [
            {'id': 0, 'cpus': [0, 1, 2, 3], 'memory_mib': 4096},
            {'id': 1, 'cpus': [4, 5, 6, 7], 'memory_mib': 4096},
        ],
    }


def test_machine_types_sort_naturally():
    caps = {'guests': [{'arch': 'x86_64', 'os_type': 'hvm',
                        'machines': ['pc-q35-2.10', 'q35', 'pc-q35-2.9', 'pc-i440fx-7.2', 'pc-q35-10.0']}]}
    assert capabilities.caps_machine_types(caps) == ['pc-i440fx-7.2', 'pc-q35-2.9', 'pc-q35-2.10', 'pc-q35-10.0', 'q35']


def test_parse_capabilities_minimal():
    caps = capabilities.parse_capabilities(fixture('capabilities_tcg_only.xml'))
    assert caps['host_uuid'] is None
    assert caps['numa_cells'] == []
    assert capabilities.caps_domain_types(caps) == ['qemu']
    assert capabilities.numa_info(caps) == {'cell_count': 0, 'cells': []}


def test_parse_capabilities_bad_xml():
    with pytest.raises(VirtnodeError, match='cannot parse libvirt capabilities'):
        capabilities.parse_capabilities('<capabilities>')


# --------------------------------------------------------------------------
# CPU

def make_cpu_sysfs(root, online='0-3', topology=None):
    write(root, '/sys/devices/system/cpu/online', online + '\n')
    for cpu, (package, core) in (topology or {}).items():
        base = '/sys/devices/system/cpu/cpu%d/topology/' % cpu
        write(root, base + 'physical_package_id', '%d\n' % package)
        write(root, base + 'core_id', '%d\n' % core)


def test_cpuinfo(tmp_path):
    write(tmp_path, '/proc/cpuinfo', CPUINFO)
    info = capabilities.read_cpuinfo(str(tmp_path))
    assert info == {
        'model': 'Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz',
        'vendor': 'GenuineIntel',
        'flags': ['fpu', 'lm', 'sse2', 'vme', 'vmx'],
    }


def test_cpuinfo_missing(tmp_path):
    assert capabilities.read_cpuinfo(str(tmp_path)) == {'model': None, 'vendor': None, 'flags': []}


def test_cpu_topology_from_sysfs(tmp_path):
    # 2 sockets x 1 core x 2 threads
    make_cpu_sysfs(tmp_path, '0-3', {0: (0, 0), 1: (0, 0), 2: (1, 0), 3: (1, 0)})
    topo = capabilities.read_cpu_topology(str(tmp_path))
    assert topo == {'online_cpus': [0, 1, 2, 3], 'sockets': 2, 'cores': 2, 'threads': 4, 'threads_per_core': 2}


def test_cpu_topology_falls_back_to_libvirt(tmp_path):
    make_cpu_sysfs(tmp_path, '0-7')
    caps = capabilities.parse_capabilities(fixture('capabilities_x86_64.xml'))
    topo = capabilities.read_cpu_topology(str(tmp_path), caps)
    assert topo['sockets'] == 2
    assert topo['cores'] == 4
    assert topo['threads'] == 8
    assert topo['threads_per_core'] == 2


def test_cpu_topology_unknown(tmp_path):
    topo = capabilities.read_cpu_topology(str(tmp_path))
    assert topo == {'online_cpus': [], 'sockets': None, 'cores': None, 'threads': None, 'threads_per_core': None}


def test_virtualization_kvm_usable(tmp_path):
    write(tmp_path, '/dev/kvm')
    virt = capabilities.virtualization_info(['vmx', 'lm'], ['kvm', 'qemu'], str(tmp_path))
    assert virt == {
        'hardware': 'vmx', 'kvm_device_present': True, 'kvm_device_usable': True,
        'kvm_offered': True, 'software_emulation': True, 'recommended_domain_type': 'kvm',
    }


def test_virtualization_without_kvm_device(tmp_path):
    virt = capabilities.virtualization_info(['svm'], ['kvm', 'qemu'], str(tmp_path))
    assert virt['hardware'] == 'svm'
    assert virt['kvm_device_present'] is False
    assert virt['kvm_device_usable'] is False
    assert virt['recommended_domain_type'] == 'qemu'


def test_virtualization_kvm_not_offered(tmp_path):
    write(tmp_path, '/dev/kvm')
    virt = capabilities.virtualization_info([], ['qemu'], str(tmp_path))
    assert virt['hardware'] is None
    assert virt['kvm_device_usable'] is True
    assert virt['software_emulation'] is True
    assert virt['recommended_domain_type'] == 'qemu'


def test_virtualization_kvm_device_without_cpu_support(tmp_path):
    # A /dev/kvm that opens but with no vmx/svm: a paravirtual KVM, not for stock guests.
    write(tmp_path, '/dev/kvm')
    virt = capabilities.virtualization_info(['hypervisor', 'lm'], ['kvm', 'qemu'], str(tmp_path))
    assert virt['kvm_device_usable'] is True
    assert virt['hardware'] is None
    assert virt['recommended_domain_type'] == 'qemu'


def test_cpu_info_section(tmp_path):
    write(tmp_path, '/proc/cpuinfo', CPUINFO)
    make_cpu_sysfs(tmp_path, '0-1', {0: (0, 0), 1: (0, 1)})
    caps = capabilities.parse_capabilities(fixture('capabilities_x86_64.xml'))
    cpu = capabilities.cpu_info(str(tmp_path), caps)
    assert cpu['libvirt_model'] == 'EPYC-Rome'
    assert cpu['sockets'] == 1 and cpu['cores'] == 2 and cpu['threads'] == 2
    assert cpu['virtualization']['recommended_domain_type'] == 'qemu'  # no /dev/kvm in tmp_path


# --------------------------------------------------------------------------
# memory

def test_memory(tmp_path):
    write(tmp_path, '/proc/meminfo', MEMINFO)
    mem = host.memory_info(readers.read_meminfo(str(tmp_path)))
    assert mem == {
        'total_mib': 8000, 'free_mib': 2000, 'available_mib': 4000,
        'swap_total_mib': 1024, 'swap_free_mib': 512,
        'hugepages_total': 4, 'hugepages_free': 2, 'hugepage_size_kib': 2048,
    }


def test_memory_without_memavailable():
    meminfo = {'MemTotal': 4096, 'MemFree': 1024, 'Buffers': 1024, 'Cached': 1024, 'SReclaimable': 1024}
    assert host.memory_info(meminfo)['available_mib'] == 4


def test_memory_missing(tmp_path):
    mem = host.memory_info(readers.read_meminfo(str(tmp_path)))
    assert mem['total_mib'] is None and mem['available_mib'] is None


# --------------------------------------------------------------------------
# network

IP_JSON = json.dumps([
    {'ifname': 'lo', 'addr_info': [
        {'family': 'inet', 'local': '127.0.0.1', 'prefixlen': 8},
        {'family': 'inet6', 'local': '::1', 'prefixlen': 128}]},
    {'ifname': 'eth0', 'addr_info': []},
    {'ifname': 'br0', 'linkinfo': {'info_kind': 'bridge'}, 'addr_info': [
        {'family': 'inet', 'local': '192.0.2.10', 'prefixlen': 24},
        {'family': 'inet6', 'local': 'fe80::1', 'prefixlen': 64}]},
    {'ifname': 'vlan100', 'link': 'bond0', 'linkinfo': {'info_kind': 'vlan', 'info_data': {'id': 100}},
     'addr_info': [{'family': 'inet', 'local': '198.51.100.5', 'prefixlen': 25}]},
    {'ifname': 'veth1', 'linkinfo': {'info_kind': 'veth'}, 'addr_info': []},
    {'addr_info': []},
])


def make_net_sysfs(root):
    net = '/sys/class/net/'

    def iface(name, ifindex, iflink=None, mac='52:54:00:00:00:01', extra=None):
        write(root, net + name + '/ifindex', '%d\n' % ifindex)
        write(root, net + name + '/iflink', '%d\n' % (iflink or ifindex))
        write(root, net + name + '/address', mac + '\n')
        write(root, net + name + '/mtu', '1500\n')
        write(root, net + name + '/operstate', 'up\n')
        write(root, net + name + '/type', '1\n')
        for path, content in (extra or {}).items():
            write(root, net + name + '/' + path, content)

    iface('lo', 1, mac='00:00:00:00:00:00', extra={'type': '772\n', 'mtu': '65536\n', 'operstate': 'unknown\n'})
    iface('eth0', 2, extra={'device/vendor': '0x1af4\n', 'speed': '10000\n', 'master': ''})
    os.remove(os.path.join(str(root), 'sys/class/net/eth0/master'))
    os.symlink('../br0', os.path.join(str(root), 'sys/class/net/eth0/master'))
    iface('eth1', 3, extra={'device/vendor': '0x1af4\n', 'speed': '-1\n'})
    iface('eth2', 4, extra={'device/vendor': '0x1af4\n'})
    iface('br0', 5, extra={'bridge/stp_state': '0\n', 'brif/eth0': '', 'uevent': 'DEVTYPE=bridge\nINTERFACE=br0\n'})
    iface('bond0', 6, extra={'bonding/slaves': 'eth2 eth1\n', 'bonding/mode': '802.3ad 4\n',
                             'bonding/active_slave': '\n', 'bonding/miimon': '100\n', 'uevent': 'DEVTYPE=bond\n'})
    # The bond gave its slaves its own address; eth2's own is still in bonding_slave.
    for slave, perm, state in (('eth1', '52:54:00:00:00:01', 'active'), ('eth2', '52:54:00:00:00:02', 'backup')):
        write(root, net + slave + '/bonding_slave/perm_hwaddr', perm + '\n')
        write(root, net + slave + '/bonding_slave/state', state + '\n')
    iface('vlan100', 7, iflink=6, extra={'uevent': 'DEVTYPE=vlan\nINTERFACE=vlan100\n'})
    iface('eth1.200', 8, iflink=3, extra={'uevent': 'DEVTYPE=vlan\n'})
    write(root, '/proc/net/vlan/eth1.200',
          'eth1.200  VID: 200\t REORDER_HDR: 1  dev->priv_flags: 1001\n'
          'Device: eth1\nINGRESS priority mappings: 0:0\n')
    iface('veth1', 9, iflink=10)
    iface('vethx', 11, iflink=12)
    iface('tap0', 13, extra={'tun_flags': '0x1002\n'})
    iface('dummy0', 14)
    # Files such as bonding_masters live next to the interfaces and must be skipped.
    write(root, net + 'bonding_masters', 'bond0\n')


class IpOutput(iproute.IpRoute):
    """An IpRoute whose ``ip`` prints ``output`` (None: ``ip`` fails)."""

    def __init__(self, output):
        super().__init__(binary='ip')
        self.output = output
        self.calls = []

    def run(self, args):
        self.calls.append(['ip'] + [str(a) for a in args])
        if self.output is None:
            raise VirtnodeError('ip failed')
        return self.output


def test_read_ip_addresses_parses_ip_json():
    parsed = host.read_ip_addresses(IpOutput(IP_JSON))
    assert parsed['lo']['ipv4'] == ['127.0.0.1/8']
    assert parsed['lo']['ipv6'] == ['::1/128']
    assert parsed['br0']['link_kind'] == 'bridge'
    assert parsed['vlan100']['vlan_id'] == 100
    assert parsed['vlan100']['link'] == 'bond0'
    assert host.read_ip_addresses(IpOutput('not json')) == {}
    assert host.read_ip_addresses(IpOutput(None)) == {}
    assert host.read_ip_addresses(IpOutput('{"a": 1}')) == {}


def test_network_info(tmp_path):
    make_net_sysfs(tmp_path)
    ifaces = host.network_info(str(tmp_path), iproute.interface_addresses(json.loads(IP_JSON)))
    by_name = {i['name']: i for i in ifaces}
    assert [i['name'] for i in ifaces] == sorted(by_name)
    assert 'bonding_masters' not in by_name
    kinds = {name: i['kind'] for name, i in by_name.items()}
    assert kinds == {
        'lo': 'loopback', 'eth0': 'nic', 'eth1': 'nic', 'eth2': 'nic', 'br0': 'bridge', 'bond0': 'bond',
        'vlan100': 'vlan', 'eth1.200': 'vlan', 'veth1': 'veth', 'vethx': 'veth', 'tap0': 'tun', 'dummy0': 'other',
    }
    assert by_name['eth0']['speed'] == 10000
    assert by_name['eth0']['master'] == 'br0'
    assert by_name['eth1']['speed'] is None
    assert by_name['eth2']['speed'] is None
    assert by_name['br0']['ports'] == ['eth0']
    assert by_name['br0']['stp'] is False
    assert by_name['br0']['ipv4'] == ['192.0.2.10/24']
    assert by_name['br0']['ipv6'] == ['fe80::1/64']
    assert by_name['bond0']['slaves'] == ['eth1', 'eth2']
    assert by_name['bond0']['mode'] == '802.3ad'
    assert (by_name['bond0']['active_slave'], by_name['bond0']['miimon']) == (None, 100)
    assert [(by_name[n]['mac'], by_name[n]['bond_slave_state']) for n in ('eth1', 'eth2')] == [
        ('52:54:00:00:00:01', 'active'), ('52:54:00:00:00:02', 'backup')]
    assert 'bond_slave_state' not in by_name['eth0']
    assert (by_name['vlan100']['vlan_id'], by_name['vlan100']['parent']) == (100, 'bond0')
    assert (by_name['eth1.200']['vlan_id'], by_name['eth1.200']['parent']) == (200, 'eth1')
    assert by_name['lo']['mtu'] == 65536
    assert by_name['dummy0']['ipv4'] == []
    for iface in ifaces:
        assert {'name', 'kind', 'mac', 'mtu', 'operstate', 'speed', 'master', 'ipv4', 'ipv6'} <= set(iface)


def test_network_info_without_sysfs(tmp_path):
    assert host.network_info(str(tmp_path), {}) == []


def test_read_ip_addresses_uses_iproute():
    ip = IpOutput(IP_JSON)
    assert host.read_ip_addresses(ip)['br0']['ipv4'] == ['192.0.2.10/24']
    assert ip.calls == [['ip', '-j', '-d', 'addr', 'show']]
    assert host.read_ip_addresses(IpOutput(None)) == {}


# --------------------------------------------------------------------------
# storage

def test_mountinfo_and_vdsm_mounts(tmp_path):
    write(tmp_path, '/proc/self/mountinfo', MOUNTINFO)
    assert len(host.parse_mountinfo(MOUNTINFO)) == 4
    mounts = host.read_vdsm_mounts(str(tmp_path))
    assert mounts == [
        {'mountpoint': '/rhev/data-center/mnt/nfs.example.com:_export_data',
         'source': 'nfs.example.com:/export/data', 'fstype': 'nfs4', 'options': 'rw,relatime'},
        {'mountpoint': '/rhev/data-center/mnt/local dir', 'source': '/dev/vdb1', 'fstype': 'ext4',
         'options': 'rw,relatime'},
    ]


def test_iscsi_initiator_name(tmp_path):
    assert host.read_iscsi_initiator_name(str(tmp_path)) is None
    write(tmp_path, '/etc/iscsi/initiatorname.iscsi',
          '## DO NOT EDIT\n#InitiatorName=iqn.bogus\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n')
    assert host.read_iscsi_initiator_name(str(tmp_path)) == 'iqn.1993-08.org.debian:01:abcdef'


def test_path_usage_nearest_parent(tmp_path):
    os.makedirs(str(tmp_path / 'var' / 'lib'))
    usage = host.path_usage('/var/lib/libvirt/images', str(tmp_path))
    assert usage['path'] == '/var/lib/libvirt/images'
    assert usage['checked_path'] == '/var/lib'
    assert usage['total_bytes'] > 0
    assert 0 <= usage['free_bytes'] <= usage['total_bytes']


def test_storage_info(tmp_path):
    write(tmp_path, '/dev/mapper/control')
    write(tmp_path, '/etc/multipath.conf', 'defaults {}\n')
    write(tmp_path, '/usr/sbin/multipath')
    write(tmp_path, '/run/multipathd.pid', '4242\n')
    os.makedirs(str(tmp_path / 'proc' / '4242'))
    storage = host.storage_info(str(tmp_path))
    assert storage['device_mapper'] is True
    assert storage['multipath'] == {'installed': True, 'config_present': True, 'daemon_running': True, 'devices': []}
    assert storage['iscsi_sessions'] == []
    assert storage['mounts'] == []
    assert storage['iscsi_initiator_name'] is None
    assert storage['vdsm_mount_root'] == '/rhev/data-center/mnt'
    assert storage['images']['checked_path'] == '/'


def test_storage_info_empty_root(tmp_path):
    storage = host.storage_info(str(tmp_path))
    assert storage['device_mapper'] is False
    assert storage['multipath'] == {'installed': False, 'config_present': False, 'daemon_running': False,
                                    'devices': []}
    assert storage['iscsi_sessions'] == []


def make_san_sysfs(root):
    """Two iSCSI sessions (one per portal) carrying one LUN each, under one multipath map, and an LV."""
    root = str(root)
    for session, host_no, disk, address in ((1, 0, 'sda', '192.0.2.1'), (2, 1, 'sdb', '198.51.100.1')):
        scsi = 'sys/devices/platform/host%d/session%d/target%d:0:0/%d:0:0:2' % (host_no, session, host_no, host_no)
        write(root, scsi + '/state', 'running\n' if session == 1 else 'transport-offline\n')
        write(root, scsi + '/vendor', 'LIO-ORG \n')
        write(root, scsi + '/model', 'FILEIO          \n')
        os.makedirs(os.path.join(root, 'sys/block', disk))
        os.symlink(os.path.join(root, scsi), os.path.join(root, 'sys/block', disk, 'device'))
        write(root, '/sys/class/iscsi_session/session%d/targetname' % session, 'iqn.2026-12.example:storage\n')
        write(root, '/sys/class/iscsi_session/session%d/state' % session, 'LOGGED_IN\n')
        write(root, '/sys/class/iscsi_session/session%d/ifacename' % session, 'default\n')
        write(root, '/sys/class/iscsi_connection/connection%d:0/persistent_address' % session, address + '\n')
        write(root, '/sys/class/iscsi_connection/connection%d:0/persistent_port' % session, '3260\n')
        write(root, '/sys/block/dm-0/slaves/' + disk)
    write(root, '/sys/block/dm-0/dm/uuid', 'mpath-36001405aa\n')
    write(root, '/sys/block/dm-0/dm/name', '36001405aa\n')
    write(root, '/sys/block/dm-0/size', '4194304\n')
    write(root, '/sys/block/dm-1/dm/uuid', 'LVM-abc\n')
    write(root, '/sys/block/dm-1/dm/name', 'vg-lv\n')


def test_iscsi_sessions_and_multipath_devices(tmp_path):
    make_san_sysfs(tmp_path)
    storage = host.storage_info(str(tmp_path))
    assert storage['iscsi_sessions'] == [
        {'id': 'session1', 'target': 'iqn.2026-12.example:storage', 'portal': '192.0.2.1:3260', 'iface': 'default',
         'state': 'LOGGED_IN', 'devices': ['sda']},
        {'id': 'session2', 'target': 'iqn.2026-12.example:storage', 'portal': '198.51.100.1:3260', 'iface': 'default',
         'state': 'LOGGED_IN', 'devices': ['sdb']},
    ]
    # The LV (dm-1) is no multipath device.
    assert storage['multipath']['devices'] == [{
        'name': '36001405aa', 'wwid': '36001405aa', 'dm_device': 'dm-0', 'size_bytes': 2 * 1024 ** 3,
        'vendor': 'LIO-ORG', 'model': 'FILEIO',
        'paths': [{'device': 'sda', 'hctl': '0:0:0:2', 'state': 'running'},
                  {'device': 'sdb', 'hctl': '1:0:0:2', 'state': 'transport-offline'}],
    }]


# --------------------------------------------------------------------------
# statistics

def test_cpu_percentages():
    first = [1000, 0, 500, 8000, 100, 0, 0, 0, 0, 0]
    last = [1300, 100, 600, 8400, 200, 0, 0, 0, 0, 0]
    pct = host_stats.cpu_percentages(first, last)
    assert pct == {'user': 40.0, 'system': 10.0, 'idle': 50.0, 'iowait': 10.0, 'steal': 0.0}
    assert host_stats.cpu_percentages(None, last)['user'] is None
    assert host_stats.cpu_percentages(last, last)['idle'] is None
    went_back = host_stats.cpu_percentages(first_sample=last, last_sample=first)
    assert went_back['idle'] is None


def make_stats_tree(root):
    write(root, '/proc/stat', PROC_STAT_1)
    write(root, '/proc/meminfo', MEMINFO)
    write(root, '/proc/loadavg', '0.50 0.40 0.30 1/100 4242\n')
    write(root, '/proc/uptime', '12345.67 20000.00\n')
    for key in ('rx_bytes', 'tx_bytes', 'rx_errors', 'tx_errors', 'rx_dropped', 'tx_dropped'):
        write(root, '/sys/class/net/eth0/statistics/' + key, '1000\n')


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stats_sampled(tmp_path):
    make_stats_tree(tmp_path)
    clock = FakeClock()
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock.now += 2.0
        write(tmp_path, '/proc/stat', PROC_STAT_2)
        write(tmp_path, '/sys/class/net/eth0/statistics/rx_bytes', '5000\n')
        write(tmp_path, '/sys/class/net/eth0/statistics/tx_bytes', '3000\n')
        write(tmp_path, '/sys/class/net/eth0/statistics/rx_dropped', '1003\n')
        # An interface that appears during the sample has no rates.
        write(tmp_path, '/sys/class/net/new0/statistics/rx_bytes', '7\n')

    stats = host_stats.stats_info(str(tmp_path), 2, sleep=sleep, clock=clock)
    assert slept == [2.0]
    assert stats['sample_interval'] == 2.0
    assert stats['cpu'] == {'user': 40.0, 'system': 10.0, 'idle': 50.0, 'iowait': 10.0, 'steal': 0.0}
    assert stats['cpu_load'] == {'avg1': 0.5, 'avg5': 0.4, 'avg15': 0.3}
    assert stats['memory'] == {'used_mib': 4000, 'free_mib': 4000, 'used_percent': 50.0}
    assert stats['swap'] == {'total_mib': 1024, 'free_mib': 512, 'used_mib': 512}
    assert stats['uptime_seconds'] == 12345.67
    assert stats['boot_time'] == 1700000000
    eth0, new0 = stats['network']
    assert eth0['name'] == 'eth0'
    assert eth0['rx_bytes'] == 5000
    assert eth0['rx_bytes_per_sec'] == 2000.0
    assert eth0['tx_bytes_per_sec'] == 1000.0
    assert eth0['rx_dropped_delta'] == 3
    assert eth0['rx_errors_delta'] == 0
    assert new0['name'] == 'new0'
    assert new0['rx_bytes'] == 7 and new0['tx_bytes'] is None
    assert new0['rx_bytes_per_sec'] is None and new0['rx_dropped_delta'] is None


def test_stats_without_interval(tmp_path):
    make_stats_tree(tmp_path)

    def sleep(seconds):
        raise AssertionError('must not sleep')

    stats = host_stats.stats_info(str(tmp_path), 0, sleep=sleep)
    assert stats['sample_interval'] == 0.0
    assert set(stats['cpu'].values()) == {None}
    assert stats['network'][0]['rx_bytes'] == 1000
    assert stats['network'][0]['rx_bytes_per_sec'] is None
    assert stats['network'][0]['tx_errors_delta'] is None


def test_stats_empty_root(tmp_path):
    stats = host_stats.stats_info(str(tmp_path), 0)
    assert stats['cpu_load'] == {'avg1': None, 'avg5': None, 'avg15': None}
    assert stats['uptime_seconds'] is None
    assert stats['boot_time'] is None
    assert stats['network'] == []
    assert stats['memory']['used_percent'] is None


@pytest.mark.parametrize('value', [-1, 60.5, 'abc', None])
def test_validate_sample_interval_rejects(value):
    with pytest.raises(VirtnodeError, match='sample_interval'):
        validate.sample_interval(value)


@pytest.mark.parametrize('value,expected', [(0, 0.0), ('1.5', 1.5), (60, 60.0)])
def test_validate_sample_interval_accepts(value, expected):
    assert validate.sample_interval(value) == expected


# --------------------------------------------------------------------------
# sections and the whole gather

def test_normalize_sections():
    assert host.normalize_sections(None) == frozenset(host.SECTIONS)
    assert host.normalize_sections(['all', 'cpu']) == frozenset(host.SECTIONS)
    assert host.normalize_sections(['memory']) == frozenset(['memory'])
    with pytest.raises(VirtnodeError, match='unknown section'):
        host.normalize_sections(['bogus'])
    assert host.needs_libvirt(['memory', 'stats', 'network', 'storage']) is False
    assert host.needs_libvirt(['numa']) is True


def fake_run(argv):
    outputs = {
        'qemu-img': 'qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022\n',
        'sanlock': '3.8.5\n',
    }
    return outputs.get(argv[0])


def test_gather_all(fake_libvirt, tmp_path):
    make_stats_tree(tmp_path)
    make_net_sysfs(tmp_path)
    write(tmp_path, '/etc/virtnode/host_uuid', '0b5e1b7c-8f3e-4a58-9d57-6c2f1d3e4a5b\n')
    write(tmp_path, '/dev/kvm')
    write(tmp_path, '/proc/cpuinfo', CPUINFO)
    result = host.gather(uri='qemu:///system', sample_interval=0, root=str(tmp_path), run=fake_run, ip=IpOutput(IP_JSON))
    assert list(result) == ['host_uuid', 'host_uuid_source', 'hostname', 'sections', 'kernel', 'os',
                            'versions', 'libvirt', 'cpu', 'memory', 'numa', 'network', 'storage', 'stats']
    assert result['host_uuid'] == '0b5e1b7c-8f3e-4a58-9d57-6c2f1d3e4a5b'
    assert result['host_uuid_source'] == 'virtnode'
    assert result['sections'] == list(host.SECTIONS)
    assert result['versions'] == {
        'libvirt': {'library': '9.0.0', 'daemon': '9.0.0'},
        'qemu': '7.2.22', 'qemu_img': '7.2.22', 'sanlock': '3.8.5',
        'python': result['versions']['python'],
    }
    assert result['libvirt']['uri'] == 'qemu:///system'
    assert result['libvirt']['domain_types'] == ['kvm', 'qemu']
    assert result['libvirt']['host_uuid'] == '5069a2e8-5d32-466c-89e0-e1c048b8c347'
    assert result['cpu']['virtualization']['recommended_domain_type'] == 'kvm'
    assert result['numa']['cell_count'] == 2
    assert {i['name'] for i in result['network']} >= {'lo', 'eth0', 'br0'}
    # One connection, closed again, opened read-write (domain capabilities need it later).
    assert len(fake_libvirt.connections) == 1
    assert fake_libvirt.connections[0].closed
    assert fake_libvirt.connections[0].readonly is False


def test_gather_without_libvirt_sections_needs_no_bindings(no_libvirt, tmp_path):
    make_stats_tree(tmp_path)
    result = host.gather(['memory', 'stats'], sample_interval=0, root=str(tmp_path), run=fake_run, ip=IpOutput(IP_JSON))
    assert 'memory' in result and 'stats' in result
    assert 'cpu' not in result and 'libvirt' not in result
    assert result['sections'] == ['memory', 'stats']


def test_gather_libvirt_unreachable(fake_libvirt, tmp_path):
    fake_libvirt.open_error = fake_libvirt.module.libvirtError(
        "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory")
    with pytest.raises(VirtnodeError) as info:
        host.gather(['libvirt'], sample_interval=0, root=str(tmp_path), run=fake_run, ip=IpOutput(IP_JSON))
    assert str(info.value).startswith('cannot connect to libvirt at qemu:///system: Failed to connect socket')
    assert str(info.value).endswith('(is libvirtd running?)')


def test_gather_libvirt_call_failure_closes_connection(fake_libvirt, tmp_path):
    fake_libvirt.call_failures['getCapabilities'] = fake_libvirt.module.libvirtError('internal error', code=1)
    with pytest.raises(VirtnodeError, match='libvirt error on test:///default: internal error'):
        host.gather(['numa'], uri='test:///default', sample_interval=0, root=str(tmp_path), run=fake_run, ip=IpOutput(IP_JSON))
    assert fake_libvirt.connections[0].closed


def test_gather_without_bindings(no_libvirt, tmp_path):
    with pytest.raises(VirtnodeError, match='python bindings are not installed'):
        host.gather(['cpu'], sample_interval=0, root=str(tmp_path), run=fake_run, ip=IpOutput(IP_JSON))


# --------------------------------------------------------------------------
# libvirt_conn

def test_connect_readonly_and_close(fake_libvirt):
    with libvirt_conn.connect('test:///default', readonly=True) as conn:
        assert conn.readonly is True
        assert conn.getURI() == 'test:///default'
    assert conn.closed


def test_connect_passes_other_exceptions(fake_libvirt):
    with pytest.raises(KeyError):
        with libvirt_conn.connect() as conn:
            raise KeyError('x')
    assert conn.closed


def test_connect_error_without_daemon_hint(fake_libvirt):
    fake_libvirt.open_error = fake_libvirt.module.libvirtError('authentication failed', code=45)
    with pytest.raises(VirtnodeError) as info:
        with libvirt_conn.connect('qemu+ssh://h/system'):
            pass
    assert str(info.value) == 'cannot connect to libvirt at qemu+ssh://h/system: authentication failed'
    assert info.value.details == {'uri': 'qemu+ssh://h/system', 'libvirt_error': 'authentication failed',
                                  'code': 45, 'domain': 7}


def test_connect_unknown_driver_has_no_daemon_hint(fake_libvirt):
    fake_libvirt.open_error = fake_libvirt.module.libvirtError(
        'no connection driver available for bogus:///x', code=5, domain=0)
    with pytest.raises(VirtnodeError) as info:
        with libvirt_conn.connect('bogus:///x'):
            pass
    assert str(info.value) == 'cannot connect to libvirt at bogus:///x: no connection driver available for bogus:///x'


def test_format_version():
    assert libvirt_conn.format_version(9000000) == '9.0.0'
    assert libvirt_conn.format_version(7002022) == '7.2.22'
    assert libvirt_conn.format_version(None) is None
    assert libvirt_conn.format_version(-1) is None
    assert libvirt_conn.format_version('x') is None


def test_library_version(fake_libvirt, monkeypatch):
    assert libvirt_conn.library_version() == '9.0.0'
    monkeypatch.setattr(libvirt_conn, 'HAS_LIBVIRT', False)
    assert libvirt_conn.library_version() is None


def test_argument_spec_copy():
    spec = libvirt_conn.libvirt_argument_spec(extra=dict(type='int'))
    assert spec == {'uri': {'type': 'str', 'default': 'qemu:///system'}, 'extra': {'type': 'int'}}
    spec['uri']['default'] = 'changed'
    assert libvirt_conn.LIBVIRT_ARGUMENT_SPEC['uri']['default'] == 'qemu:///system'


class FakeModule:
    def __init__(self):
        self.failed = None

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def test_require_libvirt(no_libvirt):
    module = FakeModule()
    with pytest.raises(SystemExit):
        libvirt_conn.require_libvirt(module)
    assert 'libvirt-python (Debian: python3-libvirt)' in module.failed['msg']
    assert 'No module named' in module.failed['exception']


def test_require_libvirt_present(fake_libvirt):
    module = FakeModule()
    libvirt_conn.require_libvirt(module)
    assert module.failed is None


def test_virtnode_error():
    err = VirtnodeError('boom', {'a': 1})
    assert str(err) == 'boom'
    assert err.to_dict() == {'msg': 'boom', 'details': {'a': 1}}
    assert VirtnodeError('plain').to_dict() == {'msg': 'plain'}
