# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the vms inventory reads of a host (against a fake libvirt) and the entries it makes of it."""

from __future__ import annotations

import pytest

from conftest import FakeLibvirtError

from ansible_collections.virtnode.kvm.plugins.module_utils.inventory import vms as inventory_vms

SP = '5e1d4a3c-0b7e-4c2a-9f11-2d6a1c0b9e01'
SD = 'a1b2c3d4-0000-4000-8000-000000000001'
IMG = 'b1b2c3d4-0000-4000-8000-000000000003'
VOL = 'c1b2c3d4-0000-4000-8000-000000000004'
MAC = '52:54:00:4e:56:01'
RUNNING, SHUTOFF = 1, 5
NO_DOMAIN = 42
AGENT_NOT_CONFIGURED = 74


def domain_xml(name, disk_path, mac=MAC):
    return ('<domain type="qemu"><name>%s</name><uuid>x</uuid><memory unit="KiB">262144</memory>'
            '<currentMemory unit="KiB">262144</currentMemory><vcpu>2</vcpu><os><type machine="pc">hvm</type></os>'
            '<devices><disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="%s"/>'
            '<target dev="vda" bus="virtio"/></disk>'
            '<disk type="file" device="cdrom"><target dev="sda" bus="sata"/></disk>'
            '<interface type="bridge"><mac address="%s"/><source bridge="br0"/><model type="virtio"/>'
            '<target dev="vnet0"/></interface></devices></domain>' % (name, disk_path, mac.upper()))


class FakeDomain:
    def __init__(self, name, uuid, state=RUNNING, disk=None, addresses=None, gone=False):
        self._name, self._uuid, self._state = name, uuid, state
        self._xml = domain_xml(name, disk or '/var/lib/libvirt/images/%s.qcow2' % name)
        self.addresses = addresses or {}
        self.asked = []
        self.gone = gone

    def name(self):
        return self._name

    def UUIDString(self):  # pylint: disable=invalid-name  # libvirt's name
        return self._uuid.upper()

    def state(self):
        if self.gone:
            raise FakeLibvirtError('domain not found', code=NO_DOMAIN)
        return self._state, 1

    def XMLDesc(self, flags=0):  # pylint: disable=invalid-name  # libvirt's name
        return self._xml

    def info(self):
        return [self._state, 262144, 131072, 1 if self._state == RUNNING else 0, 0]

    def isPersistent(self):  # pylint: disable=invalid-name  # libvirt's name
        return 1

    def controlInfo(self):  # pylint: disable=invalid-name  # libvirt's name
        return [0, 0, 0]

    def jobStats(self):  # pylint: disable=invalid-name  # libvirt's name
        return {'type': 0}

    def interfaceAddresses(self, source):  # pylint: disable=invalid-name  # libvirt's name
        self.asked.append(source)
        if source not in self.addresses:
            raise FakeLibvirtError('QEMU guest agent is not configured', code=AGENT_NOT_CONFIGURED)
        return self.addresses[source]


class FakeHostConnection:
    def __init__(self, uri, readonly, hostname, domains):
        self.uri, self.readonly, self.hostname, self.domains = uri, readonly, hostname, domains

    def getHostname(self):  # pylint: disable=invalid-name  # libvirt's name
        return self.hostname

    def listAllDomains(self, flags=0):  # pylint: disable=invalid-name  # libvirt's name
        return list(self.domains)

    def close(self):
        return 0


@pytest.fixture
def hosts(fake_libvirt):
    """``{uri: (hostname, [domains])}``; a URI not in it cannot be reached. Opened connections in ``opened``."""
    table = {}
    opened = []

    def open_conn(uri, readonly):
        if uri not in table:
            raise FakeLibvirtError('unable to connect to server: Connection refused')
        conn = FakeHostConnection(uri, readonly, *table[uri])
        opened.append(conn)
        return conn
    fake_libvirt.module.open = lambda uri=None: open_conn(uri, False)
    fake_libvirt.module.openReadOnly = lambda uri=None: open_conn(uri, True)
    table['opened'] = opened
    return table


def lease(address, prefix=24, mac=MAC):
    return {'vnet0': {'hwaddr': mac, 'addrs': [{'type': 0, 'addr': address, 'prefix': prefix}]}}


@pytest.mark.parametrize('path, expected', [
    ('/rhev/data-center/%s/%s/images/%s/%s' % (SP, SD, IMG, VOL), {'pool': SP, 'domain': SD, 'image': IMG, 'volume': VOL}),
    ('/rhev/data-center/%s/mastersd/images/%s/%s' % (SP, IMG, VOL), {'pool': SP, 'domain': None, 'image': IMG, 'volume': VOL}),
    ('/rhev/data-center/mnt/server:_export/%s/images/%s/%s' % (SD, IMG, VOL),
     {'pool': None, 'domain': SD, 'image': IMG, 'volume': VOL}),
    ('/rhev/data-center/mnt/blockSD/%s/images/%s/%s' % (SD, IMG, VOL), {'pool': None, 'domain': SD, 'image': IMG, 'volume': VOL}),
    ('/run/virtnode/block/%s/%s/%s' % (SD, IMG, VOL), {'pool': None, 'domain': SD, 'image': IMG, 'volume': VOL}),
    ('/rhev/data-center//%s/%s/images/%s/%s' % (SP.upper(), SD, IMG, VOL), {'pool': SP, 'domain': SD, 'image': IMG, 'volume': VOL}),
    ('/var/lib/libvirt/images/a.qcow2', None),
    ('/rhev/data-center/%s/%s/images/%s' % (SP, SD, IMG), None),
    ('/rhev/data-center/%s/%s/images/%s/%s/extra' % (SP, SD, IMG, VOL), None),
    (None, None),
])
def test_disk_location_from_vdsm_paths(path, expected):
    assert inventory_vms.disk_location(path) == expected


@pytest.mark.parametrize('parts, expected', [
    (('virtnode_status', 'Migration Source'), 'virtnode_status_migration_source'),
    (('virtnode_pool', SP), 'virtnode_pool_' + SP.replace('-', '_')),
    (('', '10.0.0.1'), '_10_0_0_1'),
    (('virtnode_host', 'host-1.example.com'), 'virtnode_host_host_1_example_com'),
])
def test_group_names_are_safe(parts, expected):
    assert inventory_vms.safe_group_name(*parts) == expected


@pytest.mark.parametrize('uri, expected', [
    ('qemu+tcp://h1/system', ('h1', 16509)),
    ('qemu+tls://h1:1234/system', ('h1', 1234)),
    ('qemu://h1/system', ('h1', 16514)),
    ('qemu+ssh://root@h1/system?keyfile=/k', ('h1', 22)),
    ('qemu:///system', None),
    ('qemu+unix:///system', None),
    ('qemu+ext://h1/system', None),
])
def test_probe_target(uri, expected):
    assert inventory_vms.probe_target(uri) == expected


def test_addresses_leave_out_loopback_and_ansible_host_prefers_a_global_address():
    answer = {'lo': {'hwaddr': '00:00:00:00:00:00', 'addrs': [{'type': 0, 'addr': '127.0.0.1', 'prefix': 8}]},
              'eth0': {'hwaddr': MAC.upper(), 'addrs': [{'type': 1, 'addr': 'fe80::1', 'prefix': 64},
                                                        {'type': 1, 'addr': '2001:db8::5', 'prefix': 64},
                                                        {'type': 0, 'addr': '192.0.2.5', 'prefix': 24}]}}
    addresses = inventory_vms.flatten_addresses(answer, 'agent')
    assert [a['address'] for a in addresses] == ['fe80::1', '2001:db8::5', '192.0.2.5']
    assert addresses[2] == {'interface': 'eth0', 'mac': MAC, 'address': '192.0.2.5', 'prefix': 24, 'family': 'ipv4',
                            'source': 'agent'}
    assert inventory_vms.preferred_address(addresses) == '192.0.2.5'
    assert inventory_vms.preferred_address(addresses, 'ipv6') == '2001:db8::5'
    assert inventory_vms.preferred_address(addresses[:1]) is None


def test_reads_vms_with_disks_nics_and_lease_addresses(hosts):
    running = FakeDomain('web', '11111111-2222-4333-8444-555555555555',
                         disk='/rhev/data-center/%s/%s/images/%s/%s' % (SP, SD, IMG, VOL),
                         addresses={0: lease('192.0.2.10')})
    down = FakeDomain('db', '21111111-2222-4333-8444-555555555555', state=SHUTOFF, addresses={0: lease('192.0.2.11')})
    hosts['qemu+tcp://h1/system'] = ('host1', [running, down])
    [host] = inventory_vms.read_hosts(['qemu+tcp://h1/system'], connect_timeout=0)
    assert host['hostname'] == 'host1' and 'error' not in host
    db, web = host['vms']
    assert web['name'] == 'web' and web['uuid'] == '11111111-2222-4333-8444-555555555555'
    assert web['status'] == 'Up' and web['active'] and web['vcpus'] == 1 and web['memory_mib'] == 256
    assert web['disks'] == [{'target': 'vda', 'path': '/rhev/data-center/%s/%s/images/%s/%s' % (SP, SD, IMG, VOL),
                             'format': 'qcow2', 'bus': 'virtio', 'pool': SP, 'domain': SD, 'image': IMG, 'volume': VOL}]
    assert web['nics'] == [{'mac': MAC, 'source_type': 'bridge', 'source': 'br0', 'model': 'virtio', 'device': 'vnet0'}]
    # The agent (1) is asked first and fails, the lease source (0) answers, ARP (2) is not asked.
    assert running.asked == [1, 0] and web['ips_source'] == 'lease'
    assert [a['address'] for a in web['ips']] == ['192.0.2.10']
    # A VM that is down is not asked for addresses; its vCPUs are those of its definition.
    assert db['status'] == 'Down' and not db['active'] and db['ips'] == [] and down.asked == [] and db['vcpus'] == 2
    assert db['disks'][0]['pool'] is None and db['disks'][0]['domain'] is None
    # The agent needs a read-write connection.
    assert hosts['opened'][0].readonly is False


def test_without_the_agent_the_connection_is_read_only_and_arp_is_last(hosts):
    dom = FakeDomain('web', '11111111-2222-4333-8444-555555555555', addresses={2: lease('192.0.2.10')})
    hosts['qemu+tcp://h1/system'] = ('host1', [dom])
    [host] = inventory_vms.read_hosts(['qemu+tcp://h1/system'], ip_sources=['lease', 'arp'], connect_timeout=0)
    assert hosts['opened'][0].readonly is True
    assert dom.asked == [0, 2] and host['vms'][0]['ips_source'] == 'arp'


def test_no_sources_no_addresses_and_inactive_vms_can_be_left_out(hosts):
    dom = FakeDomain('web', '11111111-2222-4333-8444-555555555555', addresses={0: lease('192.0.2.10')})
    down = FakeDomain('db', '21111111-2222-4333-8444-555555555555', state=SHUTOFF)
    hosts['qemu+tcp://h1/system'] = ('host1', [dom, down])
    [host] = inventory_vms.read_hosts(['qemu+tcp://h1/system'], ip_sources=[], include_inactive=False, connect_timeout=0)
    assert [vm['name'] for vm in host['vms']] == ['web'] and host['vms'][0]['ips'] == [] and dom.asked == []


def test_an_unreachable_host_is_an_error_entry_and_the_others_are_read(hosts):
    hosts['qemu+tcp://h1/system'] = ('host1', [FakeDomain('web', '11111111-2222-4333-8444-555555555555')])
    down, up = inventory_vms.read_hosts(['qemu+tcp://h0/system', 'qemu+tcp://h1/system'], connect_timeout=0)
    assert down['hostname'] == 'h0' and 'Connection refused' in down['error'] and 'vms' not in down
    assert [vm['name'] for vm in up['vms']] == ['web']


def test_the_port_probe_gives_up_after_the_timeout(hosts, monkeypatch):
    def refuse(target, timeout):
        assert target == ('h1', 16509) and timeout == 2.5
        raise OSError(111, 'Connection refused')
    monkeypatch.setattr(inventory_vms.socket, 'create_connection', refuse)
    [host] = inventory_vms.read_hosts(['qemu+tcp://h1/system'], connect_timeout=2.5)
    assert 'h1 port 16509 does not answer within 2.5s' in host['error'] and hosts['opened'] == []


def test_a_vm_gone_meanwhile_is_skipped_and_another_error_warned_about(hosts):
    gone = FakeDomain('gone', '31111111-2222-4333-8444-555555555555', gone=True)
    broken = FakeDomain('broken', '41111111-2222-4333-8444-555555555555')

    def fails(flags=0):
        raise FakeLibvirtError('internal error', code=1)
    broken.XMLDesc = fails
    ok = FakeDomain('ok', '51111111-2222-4333-8444-555555555555')
    hosts['qemu+tcp://h1/system'] = ('host1', [gone, broken, ok])
    [host] = inventory_vms.read_hosts(['qemu+tcp://h1/system'], connect_timeout=0)
    assert [vm['name'] for vm in host['vms']] == ['ok']
    assert host['warnings'] == ['cannot read a VM on qemu+tcp://h1/system: internal error']


def vm(name, uuid, status='Up', active=True, disks=(), ips=()):
    return {'name': name, 'uuid': uuid, 'status': status, 'active': active, 'persistent': True, 'vcpus': 1,
            'memory_mib': 128, 'disks': list(disks), 'nics': [], 'ips': list(ips), 'ips_source': None}


def test_entries_groups_and_vars():
    disk = {'target': 'vda', 'path': 'p', 'format': 'raw', 'bus': 'virtio', 'pool': SP, 'domain': SD, 'image': IMG,
            'volume': VOL}
    other = dict(disk, target='vdb', pool=None)
    address = {'interface': 'vnet0', 'mac': MAC, 'address': '192.0.2.10', 'prefix': 24, 'family': 'ipv4',
               'source': 'lease'}
    hosts = [{'uri': 'qemu+tcp://h1/system', 'hostname': 'host-1',
              'vms': [vm('web', 'u1', disks=[disk, other], ips=[address]), vm('db', 'u2', 'Down', False)]},
             {'uri': 'qemu+tcp://h2/system', 'hostname': 'h2', 'error': 'cannot connect'}]
    entries, warnings = inventory_vms.inventory_entries(hosts, set_ansible_host=True)
    assert warnings == []
    web, db = entries
    assert web['name'] == 'web' and web['groups'] == [
        'virtnode_vms', 'virtnode_host_host_1', 'virtnode_status_up', 'virtnode_pool_' + SP.replace('-', '_'),
        'virtnode_storage_domain_' + SD.replace('-', '_')]
    assert web['vars']['ansible_host'] == '192.0.2.10' and web['vars']['virtnode_ips'] == [address]
    assert web['vars']['virtnode_host'] == 'host-1' and web['vars']['virtnode_host_uri'] == 'qemu+tcp://h1/system'
    assert set(web['vars']) == {'ansible_host', 'virtnode_name', 'virtnode_uuid', 'virtnode_status', 'virtnode_persistent',
                                'virtnode_vcpus', 'virtnode_memory_mib', 'virtnode_disks', 'virtnode_nics', 'virtnode_ips',
                                'virtnode_host', 'virtnode_host_uri'}
    assert db['groups'] == ['virtnode_vms', 'virtnode_host_host_1', 'virtnode_status_down']
    assert 'ansible_host' not in db['vars']
    # Without set_ansible_host, no ansible_host; other prefixes and names by UUID.
    entries, _warnings = inventory_vms.inventory_entries(hosts, hostname='uuid', vars_prefix='vm_', group_prefix='kvm_')
    assert [e['name'] for e in entries] == ['u1', 'u2'] and 'ansible_host' not in entries[0]['vars']
    assert entries[0]['vars']['vm_status'] == 'Up' and 'kvm_status_up' in entries[0]['groups']


def test_a_vm_on_two_hosts_is_listed_once_from_where_it_runs():
    hosts = [{'uri': 'a', 'hostname': 'src', 'vms': [vm('web', 'u1', 'Down', False)]},
             {'uri': 'b', 'hostname': 'dst', 'vms': [vm('web', 'u1', 'Up')]},
             {'uri': 'c', 'hostname': 'third', 'vms': [vm('web', 'u1', 'Paused')]}]
    entries, warnings = inventory_vms.inventory_entries(hosts)
    assert len(entries) == 1 and entries[0]['vars']['virtnode_host'] == 'dst'
    assert warnings == ['VM web is on src (Down) and on dst (Up): listed from dst',
                        'VM web is on dst (Up) and on third (Paused): listed from dst']
