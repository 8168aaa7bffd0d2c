# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import guest_agent
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle

SHUTOFF, RUNNING = 5, 1


def domain_xml(state=None, port=True):
    channel = ''
    if port:
        channel = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'%s/></channel>"
                   % (" state='%s'" % state if state else ''))
    return "<domain type='qemu'><name>g1</name><devices>%s</devices></domain>" % channel


# What libvirt 9.0 hands out for qemu-ga 7.2 (virsh guestinfo), shortened.
GUEST_INFO = {
    'user.count': 1, 'user.0.name': 'root', 'user.0.login-time': 1767225600000,
    'os.id': 'debian', 'os.name': 'Debian GNU/Linux', 'os.pretty-name': 'Debian GNU/Linux 12 (bookworm)',
    'os.version': '12 (bookworm)', 'os.version-id': '12', 'os.kernel-release': '6.1.0-28-cloud-amd64',
    'os.kernel-version': '#1 SMP PREEMPT_DYNAMIC', 'os.machine': 'x86_64',
    'timezone.name': 'UTC', 'timezone.offset': 0,
    'hostname': 'guest1',
    'fs.count': 1, 'fs.0.name': 'vda', 'fs.0.mountpoint': '/mnt/data', 'fs.0.fstype': 'ext2',
    'fs.0.total-bytes': 62000000, 'fs.0.used-bytes': 20000, 'fs.0.disk.count': 1, 'fs.0.disk.0.alias': 'vda',
    'fs.0.disk.0.serial': 'S1',
    'if.count': 2, 'if.0.name': 'lo', 'if.0.addr.count': 1, 'if.0.addr.0.type': 'ipv4', 'if.0.addr.0.addr': '127.0.0.1',
    'if.0.addr.0.prefix': 8, 'if.1.name': 'eth0', 'if.1.hwaddr': '52:54:00:00:00:01', 'if.1.addr.count': 0,
}


def test_channel_state():
    assert guest_agent.channel_state(domain_xml('connected')) == 'connected'
    assert guest_agent.channel_state(domain_xml('disconnected')) == 'disconnected'
    assert guest_agent.channel_state(domain_xml()) == 'disconnected'
    assert guest_agent.channel_state(domain_xml(port=False)) == 'none'


def test_guest_info_is_read_into_nested_data():
    info = guest_agent.parse_guest_info(GUEST_INFO)
    assert info['hostname'] == 'guest1'
    assert info['os']['pretty_name'] == 'Debian GNU/Linux 12 (bookworm)' and info['os']['variant'] is None
    assert info['timezone'] == {'name': 'UTC', 'offset_seconds': 0}
    assert info['users'] == [{'name': 'root', 'domain': None, 'login_time_ms': 1767225600000}]
    assert info['filesystems'] == [{'mountpoint': '/mnt/data', 'name': 'vda', 'type': 'ext2', 'used_bytes': 20000,
                                    'total_bytes': 62000000, 'disks': ['vda']}]
    assert info['interfaces'][0]['addresses'] == [{'type': 'ipv4', 'address': '127.0.0.1', 'prefix': 8}]
    assert info['interfaces'][1] == {'name': 'eth0', 'hwaddr': '52:54:00:00:00:01', 'addresses': []}
    empty = guest_agent.parse_guest_info({})
    assert empty['users'] == [] and empty['timezone'] is None and empty['hostname'] is None


class FakeDom(object):
    def __init__(self, xml, info=None, error=None, stops=True):
        self.xml, self.info, self.error, self.stops = xml, info, error, stops
        self.shutdown_flags = []
        self.running = True

    def XMLDesc(self, flags=0):
        return self.xml

    def UUIDString(self):
        return '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'

    def guestInfo(self, types, flags):
        if self.error:
            raise libvirt_conn.LibvirtError(self.error)
        return self.info

    def shutdownFlags(self, flags):
        if self.error:
            raise libvirt_conn.LibvirtError(self.error)
        self.shutdown_flags.append(flags)
        if self.stops:
            self.running = False

    def state(self):
        return [RUNNING if self.running else SHUTOFF, 0]


def test_guest_info_reports_why_nothing_came():
    assert guest_agent.guest_info(FakeDom(domain_xml(port=False)))['error'] == 'the VM has no guest agent port'
    assert guest_agent.guest_info(FakeDom(domain_xml()))['agent'] == 'disconnected'
    failed = guest_agent.guest_info(FakeDom(domain_xml('connected'), error='Guest agent is not responding'))
    assert 'not responding' in failed['error'] and 'hostname' not in failed
    good = guest_agent.guest_info(FakeDom(domain_xml('connected'), info=GUEST_INFO))
    assert good['error'] is None and good['hostname'] == 'guest1' and good['answered_at'] > 0


@pytest.mark.parametrize('mode, flags', [('auto', 0), ('acpi', 1), ('agent', 2)])
def test_shutdown_modes_map_to_libvirt_flags(tmp_path, mode, flags):
    dom = FakeDom(domain_xml('connected'))
    lc = lifecycle.Lifecycle(None, 'g1', records_dir=str(tmp_path), sleep=lambda s: None)
    lc.shutdown(dom, 5, False, mode)
    assert dom.shutdown_flags == [flags]


def test_agent_shutdown_without_an_answer_fails_at_once(tmp_path):
    dom = FakeDom(domain_xml(), error='Guest agent is not responding')
    lc = lifecycle.Lifecycle(None, 'g1', records_dir=str(tmp_path), sleep=lambda s: None)
    with pytest.raises(VirtnodeError, match='guest agent did not take the shutdown request'):
        lc.shutdown(dom, 5, False, 'agent')


def test_a_guest_that_ignores_the_request_names_what_it_needs(tmp_path):
    ticks = iter(range(100))
    dom = FakeDom(domain_xml(), stops=False)
    lc = lifecycle.Lifecycle(None, 'g1', records_dir=str(tmp_path), sleep=lambda s: None, clock=lambda: next(ticks))
    with pytest.raises(VirtnodeError, match='ACPI power button events'):
        lc.shutdown(dom, 5, False, 'acpi')
