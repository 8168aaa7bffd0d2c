# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.network import apply as net_apply
from ansible_collections.virtnode.kvm.plugins.module_utils.network import model
from ansible_collections.virtnode.kvm.plugins.module_utils.network import plan as net_plan
from ansible_collections.virtnode.kvm.plugins.module_utils.network import state as kernel_state
from ansible_collections.virtnode.kvm.plugins.module_utils.network import store
from ansible_collections.virtnode.kvm.plugins.module_utils.common.detached import process_start_time
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network.dhcp import DhcpClients

sys.path.insert(0, os.path.dirname(__file__))
from fake_ip import FakeIp  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def kernel():
    ip = FakeIp()
    ip.add_nic('eth0', up=True, addresses=['10.0.0.5/24'])
    ip.rts[4].append({'gateway': '10.0.0.1', 'dev': 'eth0'})
    ip.add_nic('nic1')
    ip.add_nic('nic2')
    ip.add_nic('nic3')
    return ip


def request(networks=None, bonds=None, purge=False):
    return model.request_from_params(networks or [], bonds or [], purge=purge)


def plan(ip, running, req):
    state = kernel_state.read_state(ip)
    config, problems = model.desired_config(running, req)
    assert not problems
    model.check_config(config, state['links'])
    targets, routes = net_plan.compute_targets(config, running, state['links'])
    return state, config, targets, routes, net_plan.plan_changes(state, targets, routes)


def commands(steps):
    return [net_plan.command_text(s['do']) for s in steps]


def apply(ip, running, req):
    state, config, targets, routes, steps = plan(ip, running, req)
    net_apply.apply_steps(ip, None, steps)
    assert net_plan.differences(kernel_state.read_state(ip), targets, routes) == []
    return config, steps


BRIDGED = {'name': 'net1', 'nic': 'nic1', 'mtu': 1400, 'ipv4': {'addresses': ['192.0.2.10/24']}}


def test_bridged_network_plan_and_idempotency(kernel):
    config, steps = apply(kernel, model.empty_config(), request([BRIDGED]))
    assert commands(steps) == [
        'ip link add name net1 type bridge stp_state 0 forward_delay 0',
        'ip link set dev net1 mtu 1400',
        'ip link set dev nic1 mtu 1400',
        'ip link set dev nic1 master net1',
        'ip addr add 192.0.2.10/24 dev net1',
        'ip link set dev nic1 up',
        'ip link set dev net1 up',
    ]
    assert kernel.devs['nic1']['master'] == 'net1'
    assert plan(kernel, config, request([BRIDGED]))[-1] == []


def test_every_step_has_an_undo_that_restores(kernel):
    before = kernel.snapshot()
    state, config, targets, routes, steps = plan(kernel, model.empty_config(), request([BRIDGED]))
    done = net_apply.apply_steps(kernel, None, steps)
    assert net_apply.undo_steps(kernel, None, done) == []
    assert kernel.snapshot() == before


def test_failure_halfway_rolls_back_to_the_snapshot(kernel):
    before = kernel.snapshot()
    state, config, targets, routes, steps = plan(kernel, model.empty_config(), request([BRIDGED]))
    snapshot = kernel_state.snapshot_state(state, set(targets) | {'eth0'})
    kernel.fail_on = 'addr add'
    with pytest.raises(net_apply.ApplyError) as err:
        net_apply.apply_steps(kernel, None, steps)
    assert 'step 4 (add address 192.0.2.10/24 to net1) failed' in str(err.value)
    kernel.fail_on = None
    report = net_apply.rollback(kernel, None, err.value.done, snapshot)
    assert report['restored'], report
    assert kernel.snapshot() == before


def test_injected_failure(kernel):
    steps = plan(kernel, model.empty_config(), request([BRIDGED]))[-1]
    with pytest.raises(net_apply.ApplyError, match='injected failure at step 2') as err:
        net_apply.apply_steps(kernel, None, steps, fail_at_step=2)
    assert len(err.value.done) == 2
    assert err.value.details['failed_step'] == 2 and err.value.details['steps_done'] == err.value.done


def test_snapshot_restore_survives_json_and_brings_back_default_route(kernel):
    before = kernel.snapshot()
    mgmt = {'name': 'mgmt', 'bridged': False, 'nic': 'eth0'}
    state, config, targets, routes, steps = plan(kernel, model.empty_config(), request([mgmt]))
    assert commands(steps) == ['ip -4 route del default via 10.0.0.1 dev eth0', 'ip addr del 10.0.0.5/24 dev eth0']
    snapshot = json.loads(json.dumps(kernel_state.snapshot_state(state, set(targets) | {'eth0'})))
    net_apply.apply_steps(kernel, None, steps)
    ok, diffs, errors = net_apply.restore_snapshot(kernel, None, snapshot)
    assert ok and not diffs and not errors
    assert kernel.snapshot() == before


def test_bridgeless_edit_and_remove(kernel):
    net = {'name': 'net2', 'bridged': False, 'nic': 'nic2', 'ipv4': {'addresses': ['198.51.100.2/24']}}
    config, steps = apply(kernel, model.empty_config(), request([net]))
    assert kernel.devs['nic2']['addresses'] == ['198.51.100.2/24']
    edited = dict(net, ipv4={'addresses': ['198.51.100.3/24']}, mtu=9000)
    config, steps = apply(kernel, config, request([edited]))
    assert commands(steps) == ['ip addr del 198.51.100.2/24 dev nic2', 'ip link set dev nic2 mtu 9000',
                               'ip addr add 198.51.100.3/24 dev nic2']
    config, steps = apply(kernel, config, request([{'name': 'net2', 'state': 'absent'}]))
    assert kernel.devs['nic2']['addresses'] == []
    assert config['networks'] == {}


def test_removing_a_bridged_network_detaches_then_deletes(kernel):
    config, dummy = apply(kernel, model.empty_config(), request([BRIDGED]))
    config, steps = apply(kernel, config, request([{'name': 'net1', 'state': 'absent'}]))
    assert commands(steps) == ['ip link set dev nic1 nomaster', 'ip addr del 192.0.2.10/24 dev net1',
                               'ip link set dev net1 down', 'ip link del dev net1']
    assert 'net1' not in kernel.devs


def test_purge_removes_only_managed_networks(kernel):
    config, dummy = apply(kernel, model.empty_config(), request([BRIDGED]))
    config, steps = apply(kernel, config, request([], purge=True))
    assert 'net1' not in kernel.devs
    assert kernel.devs['eth0']['addresses'] == ['10.0.0.5/24']


def test_default_route_moves_to_the_network(kernel):
    net = {'name': 'net1', 'nic': 'nic1', 'default_route': True, 'ipv4': {'addresses': ['192.0.2.10/24'], 'gateway': '192.0.2.1'}}
    config, steps = apply(kernel, model.empty_config(), request([net]))
    assert commands(steps)[0] == 'ip -4 route del default via 10.0.0.1 dev eth0'
    assert commands(steps)[-1] == 'ip -4 route add default via 192.0.2.1 dev net1'


BOND = {'name': 'bond0', 'mode': 'active-backup', 'options': {'miimon': '100'}, 'nics': ['nic2', 'nic3']}


def test_bond_with_bridged_vlan_network_plan(kernel):
    net = {'name': 'vmnet', 'bond': 'bond0', 'vlan': 100, 'mtu': 9000}
    config, steps = apply(kernel, model.empty_config(), request([net], [BOND]))
    assert commands(steps) == [
        'ip link add name bond0 type bond mode active-backup miimon 100',
        'ip link add link bond0 name bond0.100 type vlan id 100',
        'ip link add name vmnet type bridge stp_state 0 forward_delay 0',
        'ip link set dev nic2 master bond0',
        'ip link set dev nic3 master bond0',
        'ip link set dev bond0.100 master vmnet',
        'ip link set dev bond0 mtu 9000',
        'ip link set dev bond0.100 mtu 9000',
        'ip link set dev vmnet mtu 9000',
        'ip link set dev nic2 up',
        'ip link set dev nic3 up',
        'ip link set dev bond0 up',
        'ip link set dev bond0.100 up',
        'ip link set dev vmnet up',
    ]
    assert plan(kernel, config, request([net], [BOND]))[-1] == []
    # Changing a bond option is done in place; changing the mode re-creates the bond.
    changed = dict(BOND, options={'miimon': '200'})
    assert commands(plan(kernel, config, request([net], [changed]))[-1]) == ['ip link set dev bond0 type bond miimon 200']
    remove = request([{'name': 'vmnet', 'state': 'absent'}], [{'name': 'bond0', 'state': 'absent'}])
    config, steps = apply(kernel, config, remove)
    assert not {'bond0', 'bond0.100', 'vmnet'} & set(kernel.devs)
    assert kernel.devs['nic2']['master'] is None


def test_bond_mode_change_rebuilds_the_vlan_on_it_and_rolls_back(kernel):
    # A real kernel deletes a bond's VLANs with the bond: the plan deletes and re-creates them itself.
    net = {'name': 'vmnet', 'bond': 'bond0', 'vlan': 100, 'ipv4': {'addresses': ['192.0.2.10/24']}}
    config, dummy = apply(kernel, model.empty_config(), request([net], [BOND]))
    before = kernel.snapshot()
    xor = dict(BOND, mode='balance-xor')
    state, new_config, targets, routes, steps = plan(kernel, config, request([net], [xor]))
    assert commands(steps)[:7] == [
        'ip link set dev bond0.100 nomaster', 'ip link set dev bond0.100 down', 'ip link del dev bond0.100',
        'ip link set dev nic2 nomaster', 'ip link set dev nic3 nomaster', 'ip link set dev bond0 down',
        'ip link del dev bond0']
    # Every step undone (re-enslaving a NIC needs it down), and the bond's options come back from the snapshot.
    snapshot = kernel_state.snapshot_state(state, set(targets), {'bond0': ['miimon']})
    done = net_apply.apply_steps(kernel, None, steps)
    assert net_apply.undo_steps(kernel, None, done) == []
    assert kernel.devs['bond0']['data'] == {'mode': 'active-backup'}
    report = net_apply.rollback(kernel, None, [], snapshot)
    assert report['restored'] and not report['errors'], report
    assert kernel.snapshot() == before
    config, steps = apply(kernel, config, request([net], [xor]))
    assert kernel.devs['bond0']['data']['mode'] == 'balance-xor'
    assert kernel.devs['bond0.100']['master'] == 'vmnet' and kernel.devs['vmnet']['addresses'] == ['192.0.2.10/24']


def test_bond_with_arp_monitoring_converges(kernel):
    # ip -j reports arp_ip_target as a list: it must read back as the comma separated option it was set with.
    arp = dict(BOND, options={'arp_interval': '100', 'arp_ip_target': '192.0.2.9,192.0.2.8', 'arp_validate': 'all'})
    config, steps = apply(kernel, model.empty_config(), request([], [arp]))
    assert commands(steps)[0] == ('ip link add name bond0 type bond mode active-backup arp_interval 100 '
                                  'arp_ip_target 192.0.2.9,192.0.2.8 arp_validate all')
    state = kernel_state.read_state(kernel)
    assert state['links']['bond0']['bond']['options']['arp_ip_target'] == '192.0.2.9,192.0.2.8'
    assert plan(kernel, config, request([], [arp]))[-1] == []
    snapshot = kernel_state.snapshot_state(state, {'bond0'}, {'bond0': ['arp_ip_target', 'miimon']})
    assert snapshot['devices']['bond0']['bond']['options'] == {'arp_ip_target': '192.0.2.9,192.0.2.8'}


class RunningDhcp(object):
    """DHCP clients as read_state sees them: an IPv4 client runs on each of ``devices``."""
    client = '/usr/sbin/udhcpc'

    def __init__(self, devices):
        self.devices = devices

    def running(self, dev):
        return [4] if dev in self.devices else []


def test_dhcp_client_stops_first_so_that_its_release_reaches_the_server(kernel):
    net = {'name': 'net1', 'nic': 'nic1', 'ipv4': {'method': 'dhcp'}}
    for args in (['link', 'add', 'name', 'net1', 'type', 'bridge'], ['link', 'set', 'dev', 'nic1', 'master', 'net1'],
                 ['link', 'set', 'dev', 'nic1', 'up'], ['link', 'set', 'dev', 'net1', 'up']):
        kernel.run(args)
    running, problems = model.desired_config(model.empty_config(), request([net]))
    state = kernel_state.read_state(kernel, RunningDhcp({'net1'}))
    for req in (request([{'name': 'net1', 'state': 'absent'}]), request([dict(net, ipv4={'method': 'none'})])):
        config, problems = model.desired_config(running, req)
        targets, routes = net_plan.compute_targets(config, running, state['links'])
        steps = net_plan.plan_changes(state, targets, routes)
        assert commands(steps)[0] == 'dhcp stop net1 IPv4', commands(steps)


def test_vlan_on_nic_plan(kernel):
    net = {'name': 'v200', 'bridged': False, 'nic': 'nic1', 'vlan': 200, 'ipv6': {'addresses': ['2001:db8::5/64']}}
    config, steps = apply(kernel, model.empty_config(), request([net]))
    assert commands(steps) == ['ip link add link nic1 name nic1.200 type vlan id 200',
                               'ip addr add 2001:db8::5/64 dev nic1.200 nodad',
                               'ip link set dev nic1 up', 'ip link set dev nic1.200 up']


def test_unsupported_kernel_fails_before_touching_anything(kernel):
    kernel.supported = {'bridge'}
    state, config, targets, routes, steps = plan(kernel, model.empty_config(), request([], [BOND]))
    with pytest.raises(VirtnodeError, match='kernel cannot create bonding devices.*nothing was changed'):
        net_apply.check_kernel_support(kernel, state, steps)
    state, config, targets, routes, steps = plan(kernel, model.empty_config(), request([{'name': 'v', 'nic': 'nic1', 'vlan': 5}]))
    with pytest.raises(VirtnodeError, match='kernel cannot create 802.1q VLAN devices'):
        net_apply.check_kernel_support(kernel, state, steps)
    assert kernel.commands == []


@pytest.mark.parametrize('networks, bonds, message', [
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['192.0.2.300/24']}}], [], "bad address '192.0.2.300/24'"),
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['192.0.2.3']}}], [], 'needs a prefix length'),
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['192.0.2.3/33']}}], [], "bad address '192.0.2.3/33'"),
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['2001:db8::1/64']}}], [], 'is not an IPv4 address'),
    ([{'name': 'n', 'nic': 'nic1', 'vlan': 0}], [], 'vlan: 0 is out of range 1..4094'),
    ([{'name': 'n', 'nic': 'nic1', 'vlan': 4095}], [], 'vlan: 4095 is out of range 1..4094'),
    ([{'name': 'n', 'nic': 'nic1', 'mtu': 67}], [], 'mtu: 67 is out of range 68..65535'),
    ([{'name': 'n', 'nic': 'nic1', 'mtu': 65536}], [], 'mtu: 65536 is out of range 68..65535'),
    ([], [{'name': 'b1', 'nics': ['nic1']}, {'name': 'b2', 'nics': ['nic1', 'nic2']}], "NIC 'nic1' is in two bonds"),
    ([{'name': 'n', 'nic': 'nope'}], [], "NIC 'nope' does not exist"),
    ([{'name': 'a/b', 'nic': 'nic1'}], [], 'not a valid Linux interface name'),
    ([{'name': 'x' * 16, 'nic': 'nic1'}], [], 'too long for a Linux interface name'),
    ([{'name': 'n', 'nic': 'nic1', 'vlan': 1000}, {'name': 'm', 'nic': 'nic1', 'vlan': 1000}], [], 'are both on nic1 VLAN 1000'),
    ([{'name': 'verylongnic', 'nic': 'nic1', 'vlan': 100}], [], None),
    ([{'name': 'n', 'bond': 'nob'}], [], "bond 'nob' is not defined"),
    ([{'name': 'eth0', 'nic': 'nic1'}], [], "a nic device with that name exists"),
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['192.0.2.3/24'], 'gateway': '10.1.1.1'}, 'default_route': True}], [],
     "gateway 10.1.1.1 is not in the network's subnet"),
    ([{'name': 'n', 'nic': 'nic1', 'ipv4': {'addresses': ['192.0.2.3/24'], 'gateway': '192.0.2.1'}}], [], 'set default_route: true'),
    ([{'name': 'n', 'nic': 'nic2'}], [{'name': 'b1', 'nics': ['nic2']}], 'is a member of bond'),
    ([{'name': 'n', 'bridged': False}], [], 'a bridgeless network needs a nic or a bond'),
])
def test_validation(kernel, networks, bonds, message):
    config, problems = model.desired_config(model.empty_config(), request(networks, bonds))
    problems += model.validate_config(config, kernel_state.read_state(kernel)['links'])
    if message is None:
        assert problems == []
    else:
        assert any(message in p for p in problems), problems


def test_vlan_device_name_too_long(kernel):
    kernel.add_nic('abcdefghijkl')
    config, problems = model.desired_config(model.empty_config(), request([{'name': 'n', 'nic': 'abcdefghijkl', 'vlan': 1000}]))
    problems = model.validate_config(config, kernel_state.read_state(kernel)['links'])
    assert any("VLAN device 'abcdefghijkl.1000': too long" in p for p in problems)


def test_check_config_message_says_nothing_changed(kernel):
    config, dummy = model.desired_config(model.empty_config(), request([{'name': 'n', 'nic': 'nope'}]))
    with pytest.raises(VirtnodeError, match='nothing was changed'):
        model.check_config(config, kernel_state.read_state(kernel)['links'])


def test_persistence_round_trip(tmp_path):
    config, dummy = model.desired_config(model.empty_config(), request([BRIDGED]))
    path = str(tmp_path / 'persistent' / 'netconf.json')
    store.write_persistent(config, path)
    saved = store.read_persistent(path)
    assert saved['networks'] == config['networks'] and saved['saved_at']
    assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    assert store.persisted_names(config, saved) == {'networks': ['net1'], 'bonds': []}
    assert store.read_persistent(str(tmp_path / 'missing.json')) is None


def test_running_config_round_trip(tmp_path):
    config, dummy = model.desired_config(model.empty_config(), request([BRIDGED]))
    path = str(tmp_path / 'running.json')
    store.write_running(config, path)
    assert store.read_running(path) == config
    assert store.read_running(str(tmp_path / 'none.json')) == model.empty_config()


def test_read_state_ignores_link_local_and_dynamic():
    class Ip(object):
        def links(self):
            return [{'ifname': 'eth0', 'mtu': 1500, 'flags': ['UP'], 'linkinfo': {'info_kind': 'veth'}}]

        def addresses(self):
            return [{'ifname': 'eth0', 'addr_info': [
                {'family': 'inet', 'local': '10.0.0.5', 'prefixlen': 24, 'scope': 'global'},
                {'family': 'inet', 'local': '10.0.0.6', 'prefixlen': 24, 'scope': 'global', 'dynamic': True},
                {'family': 'inet6', 'local': 'fe80::1', 'prefixlen': 64, 'scope': 'link'}]}]

        def routes(self, family):
            return [{'dst': 'default', 'gateway': 'fe80::1', 'dev': 'eth0', 'protocol': 'ra', 'metric': 1024}] if family == 6 else []

    state = kernel_state.read_state(Ip())
    assert state['links']['eth0']['addresses'] == ['10.0.0.5/24']
    assert state['links']['eth0']['dynamic_addresses'] == ['10.0.0.6/24']
    assert state['routes'] == {4: [], 6: []}


# ---- DHCP pid files: only the client this collection started is ever signalled

FAKE_CLIENT = '''#!/usr/bin/python3
# A stand-in for udhcpc -b -p PIDFILE -i DEV: forks into the background and writes its pid file.
import os, sys, time
pidfile = sys.argv[sys.argv.index('-p') + 1]
if os.fork() == 0:
    os.setsid()
    with open(pidfile, 'w') as f:
        f.write('%d\\n' % os.getpid())
    time.sleep(60)
    os._exit(0)
'''


@pytest.fixture
def dhcp_clients(tmp_path):
    client = tmp_path / 'bin' / 'udhcpc'
    client.parent.mkdir()
    client.write_text(FAKE_CLIENT)
    client.chmod(0o755)
    clients = DhcpClients(str(tmp_path / 'dhcp'), client=str(client), script=str(tmp_path / 'lib' / 'udhcpc.script'))
    started = []
    yield clients, started
    for proc in started:
        proc.kill()
        proc.wait()
    for name in os.listdir(clients.directory) if os.path.isdir(clients.directory) else []:
        if name.endswith('.pid'):
            with open(os.path.join(clients.directory, name)) as handle:
                try:
                    os.kill(int(handle.read().split()[0]), signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass


def _bystander(started):
    """A process that happens to get the pid a dead DHCP client had (say a VM's qemu)."""
    proc = subprocess.Popen(['sleep', '60'])
    started.append(proc)
    return proc


def _write_pidfile(clients, dev, family, pid):
    os.makedirs(clients.directory, exist_ok=True)
    with open(os.path.join(clients.directory, '%s.%d.pid' % (dev, family)), 'w') as handle:
        handle.write('%d\n' % pid)


def test_dhcp_client_started_is_tracked_and_stopped(dhcp_clients):
    clients, _started = dhcp_clients
    clients.start('net1', 4)
    assert clients.running('net1') == [4]
    pid = clients._pid('net1', 4)
    # udhcpc applies a lease only through a script; it releases the lease when stopped (-R).
    with open('/proc/%d/cmdline' % pid, 'rb') as handle:
        argv = handle.read().split(b'\0')
    assert b'-R' in argv and os.fsencode(clients.script) in argv and os.access(clients.script, os.X_OK)
    clients.stop('net1', 4)
    # stop() waits for the client to be gone (it releases its lease on the way out).
    assert process_start_time(pid) is None
    assert clients.running('net1') == []


@pytest.mark.parametrize('how', ['foreign_pid', 'reused_after_our_client', 'other_device_client'])
def test_dhcp_pid_file_naming_another_process_is_not_trusted(dhcp_clients, how):
    clients, started = dhcp_clients
    if how == 'foreign_pid':
        victim = _bystander(started).pid
    elif how == 'reused_after_our_client':
        # Our client ran and died; its pid file stays and now names a new process.
        clients.start('net1', 4)
        os.kill(clients._pid('net1', 4), signal.SIGKILL)
        victim = _bystander(started).pid
    else:
        # The DHCP client of another device is not the one of this device.
        clients.start('net2', 4)
        victim = clients._pid('net2', 4)
    _write_pidfile(clients, 'net1', 4, victim)
    assert clients.running('net1') == []
    clients.stop('net1', 4)
    time.sleep(0.2)
    assert process_start_time(victim) is not None, 'a process that is not our DHCP client was signalled'
    assert not os.path.exists(os.path.join(clients.directory, 'net1.4.pid'))
