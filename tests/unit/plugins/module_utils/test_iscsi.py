# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""storage_server's iSCSI and FC work against a fake iscsiadm and sysfs (the real ones: test_kernel_iscsi.py)."""

from __future__ import annotations

import socket

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import iscsi
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

TARGET = 'iqn.2026-12.com.example:storage0'
OTHER = 'iqn.2026-12.com.example:other'
SECRET = 'S3cret-chap!pw'
PORTALS = ['192.0.2.10', '198.51.100.10:3261']


class FakeIscsiadm:
    """Node records and sessions as iscsiadm keeps them, for the commands the code runs."""

    def __init__(self, chap=None):
        self.offered = {('192.0.2.10', 3260): {TARGET: 1, OTHER: 1}, ('198.51.100.10', 3261): {TARGET: 2}}
        self.records = {}
        self.sessions = []
        self.chap = chap
        self.calls = []

    def fail(self, argv, rc, text):
        raise VirtnodeError('iscsiadm failed: %s' % text, {'argv': argv, 'rc': rc})

    def run(self, argv, timeout=None, label=None, install_hint=None):
        self.calls.append(list(argv))
        args = dict(zip(argv[1::2], argv[2::2]))
        if argv[1:3] == ['-m', 'discovery']:
            address, port = args['-p'].rsplit(':', 1)
            return ''.join('%s,%d %s\n' % (args['-p'], tpgt, target)
                           for target, tpgt in self.offered.get((address, int(port)), {}).items())
        portal = args['-p'].split(',')[0]
        address, port = portal.rsplit(':', 1)
        key = (args['-T'], portal)
        if '-o' in args and args['-o'] == 'new':
            self.records[key] = {'node.startup': 'manual', 'node.conn[0].startup': 'manual',
                                 'node.session.auth.authmethod': 'None', 'node.session.auth.username': '<empty>',
                                 'node.session.auth.password': '<empty>', 'node.tpgt': args['-p'].split(',')[1]}
            return ''
        if key not in self.records:
            self.fail(argv, 21, 'No records found')
        record = self.records[key]
        if argv[-1] == '-S':
            return ''.join('%s = %s\n' % item for item in record.items())
        if args.get('-o') == 'update':
            record[args['-n']] = args['-v']
            return ''
        if args.get('-o') == 'delete':
            del self.records[key]
            return ''
        session = {'target': args['-T'], 'address': address, 'port': int(port)}
        if argv[-1] == '--login':
            if session in self.sessions:
                self.fail(argv, 15, 'session exists')
            if self.chap and (record['node.session.auth.authmethod'], record['node.session.auth.username'],
                              record['node.session.auth.password']) != ('CHAP',) + self.chap:
                self.fail(argv, 24, 'iscsiadm: Login failed to authorize with target')
            self.sessions.append(session)
            return ''
        if argv[-1] == '--logout':
            self.sessions.remove(session)
            return ''
        raise AssertionError('unexpected call %s' % argv)

    def found(self):
        return [dict(s, id=n, name='session%d' % n, iface='default', state='LOGGED_IN',
                     disks=[{'name': 'sd' + 'abcdefg'[n], 'lun': 0, 'hctl': '3:0:0:0', 'state': 'running',
                             'transport': 'iscsi', 'session': n, 'sys_device': None}])
                for n, s in enumerate(self.sessions, 1)]

    def mutating(self):
        return [c for c in self.calls if c[-1] in ('--login', '--logout') or ('-o' in c and c[c.index('-o') + 1] != 'nonpersistent')]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeIscsiadm()
    monkeypatch.setattr(iscsi.command, 'run_checked', fake.run)
    monkeypatch.setattr(iscsi, 'sessions', fake.found)
    monkeypatch.setattr(iscsi, 'ensure_iscsid', lambda: None)
    return fake


def params(**changes):
    base = {'type': 'iscsi', 'target': TARGET, 'portals': list(PORTALS), 'chap_username': None, 'chap_password': None,
            'state': 'connected'}
    base.update(changes)
    return base


@pytest.mark.parametrize('target', [TARGET, 'iqn.2001-04.com.example', 'eui.02004567A425678D', 'naa.52004567BA64678D',
                                    'iqn.2026-12.lab.virtnode:storage0.lun_1'])
def test_iscsi_names_are_accepted(target):
    assert iscsi.validate_target(target) == target


@pytest.mark.parametrize('target', ['', 'storage0', 'iqn.26-12.com.example', '-iqn.2026-12.x', 'iqn.2026-12.x:a b',
                                    'iqn.2026-12.x:a\nb', 'eui.123', 'iqn.2026-12.x:' + 'a' * 220, None, 7])
def test_bad_iscsi_names_are_refused(target):
    with pytest.raises(VirtnodeError, match='target must be an iSCSI name'):
        iscsi.validate_target(target)


@pytest.mark.parametrize('portal, expected', [
    ('192.0.2.10', ('192.0.2.10', 3260)),
    ('192.0.2.10:3261', ('192.0.2.10', 3261)),
    ('[2001:db8::1]', ('2001:db8::1', 3260)),
    ('[2001:db8::1]:860', ('2001:db8::1', 860)),
    ('san.example.com:3262', ('203.0.113.7', 3262)),
])
def test_portals_become_an_address_and_a_port(portal, expected):
    def resolve(host, port, type=None):
        assert host == 'san.example.com'
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('203.0.113.7', port))]
    assert iscsi.parse_portal(portal, resolve) == expected
    assert iscsi.portal_text(*expected) in ('%s:%d' % expected, '[%s]:%d' % expected)


@pytest.mark.parametrize('portal, words', [
    ('2001:db8::1', 'in brackets'), ('192.0.2.10:0', 'out of range'), ('192.0.2.10:70000', 'out of range'),
    ('192.0.2.10:x', 'must be a number'), ('-p', 'neither an address'), ('a b', 'neither an address'),
    ('', 'host\\[:port\\]'), ('x' * 301, 'host\\[:port\\]'),
])
def test_bad_portals_are_refused(portal, words):
    with pytest.raises(VirtnodeError, match=words):
        iscsi.parse_portal(portal, lambda *a, **k: pytest.fail('nothing is resolved'))


@pytest.mark.parametrize('username, password, field', [
    ('node1', None, 'chap_password'), (None, SECRET, 'chap_password'), ('node 1', SECRET, 'chap_username'),
    ('node1', 'with space', 'chap_password'), ('node1', 'tab\there', 'chap_password'), ('node1', '', 'chap_password'),
])
def test_bad_chap_settings_are_refused_without_showing_the_secret(username, password, field):
    with pytest.raises(VirtnodeError) as err:
        iscsi.validate_chap(username, password)
    assert err.value.details['field'] == field
    assert SECRET not in err.value.message and 'with space' not in err.value.message


def test_connect_discovers_without_saving_then_records_updates_and_logs_in(fake):
    result = iscsi.run_iscsi(params(), check_mode=False)
    assert result['changed'] and result['connected']
    assert result['portals'] == ['192.0.2.10:3260', '198.51.100.10:3261']
    discoveries = [c for c in fake.calls if c[1:3] == ['-m', 'discovery']]
    assert all(c[-2:] == ['-o', 'nonpersistent'] for c in discoveries) and len(discoveries) == 2
    # Records for exactly the target on the given portals, with the portal group tag the portal gave.
    assert set(fake.records) == {(TARGET, '192.0.2.10:3260'), (TARGET, '198.51.100.10:3261')}
    assert fake.records[(TARGET, '198.51.100.10:3261')]['node.tpgt'] == '2'
    for record in fake.records.values():
        assert record['node.startup'] == record['node.conn[0].startup'] == 'automatic'
    assert len(fake.sessions) == 2
    assert [s['address'] for s in result['sessions']] == ['192.0.2.10', '198.51.100.10']
    assert [a['login'] for a in result['actions']] == [True, True]


def test_a_second_connect_changes_nothing(fake):
    iscsi.run_iscsi(params(), check_mode=False)
    fake.calls.clear()
    result = iscsi.run_iscsi(params(), check_mode=False)
    assert not result['changed'] and result['actions'] == []
    assert fake.mutating() == []


def test_check_mode_reports_the_change_and_runs_nothing_that_changes(fake):
    result = iscsi.run_iscsi(params(), check_mode=True, diff=True)
    assert result['changed'] and fake.mutating() == [] and fake.records == {}
    assert result['diff']['before'] == {'logged_in': []}
    assert result['diff']['after'] == {'logged_in': ['192.0.2.10:3260', '198.51.100.10:3261']}


def test_a_target_the_portal_does_not_offer_is_refused_and_nothing_is_made(fake):
    with pytest.raises(VirtnodeError, match='does not offer target iqn.2026-12.com.example:missing'):
        iscsi.run_iscsi(params(target='iqn.2026-12.com.example:missing'), check_mode=False)
    assert fake.records == {} and fake.sessions == []


def test_chap_credentials_go_to_the_record_and_a_login_needs_them(fake):
    fake.chap = ('node1', SECRET)
    result = iscsi.run_iscsi(params(chap_username='node1', chap_password=SECRET), check_mode=False)
    assert result['changed'] and len(fake.sessions) == 2
    record = fake.records[(TARGET, '192.0.2.10:3260')]
    assert (record['node.session.auth.authmethod'], record['node.session.auth.password']) == ('CHAP', SECRET)
    assert SECRET not in repr(result)


def test_a_refused_chap_login_is_clear_leaves_no_record_and_never_shows_the_secret(fake, monkeypatch):
    fake.chap = ('node1', 'the-right-one')
    with pytest.raises(VirtnodeError) as err:
        iscsi.run_iscsi(params(chap_username='node1', chap_password=SECRET), check_mode=False)
    assert 'CHAP authentication failed' in err.value.message
    assert SECRET not in err.value.message + repr(err.value.details)
    assert fake.records == {} and fake.sessions == []


def test_an_iscsiadm_failure_never_shows_the_secret(fake, monkeypatch):
    run = fake.run

    def failing_update(argv, *args, **kwargs):
        if '-n' in argv and argv[argv.index('-n') + 1] == 'node.session.auth.password':
            fake.fail(argv, 6, 'database failure')
        return run(argv, *args, **kwargs)
    monkeypatch.setattr(iscsi.command, 'run_checked', failing_update)
    with pytest.raises(VirtnodeError) as err:
        iscsi.run_iscsi(params(chap_username='node1', chap_password=SECRET), check_mode=False)
    assert 'database failure' in err.value.message
    assert SECRET not in err.value.message + repr(err.value.details)
    assert iscsi.HIDDEN in err.value.details['argv']


def test_a_changed_password_on_a_live_session_is_recorded_with_a_warning_and_no_logout(fake):
    fake.chap = ('node1', SECRET)
    iscsi.run_iscsi(params(chap_username='node1', chap_password=SECRET), check_mode=False)
    fake.calls.clear()
    result = iscsi.run_iscsi(params(chap_username='node1', chap_password='new-secret'), check_mode=False)
    assert result['changed']
    assert [a['settings'] for a in result['actions']] == [['node.session.auth.password']] * 2
    assert 'next login' in result['warnings'][0]
    assert not [c for c in fake.calls if c[-1] in ('--logout', '--login')]
    assert fake.records[(TARGET, '192.0.2.10:3260')]['node.session.auth.password'] == 'new-secret'


def test_disconnect_logs_out_deletes_the_records_and_then_changes_nothing(fake):
    iscsi.run_iscsi(params(), check_mode=False)
    assert iscsi.run_iscsi(params(state='disconnected'), check_mode=True)['changed']
    assert len(fake.sessions) == 2
    result = iscsi.run_iscsi(params(state='disconnected'), check_mode=False)
    assert result['changed'] and not result['connected']
    assert fake.sessions == [] and fake.records == {}
    assert not iscsi.run_iscsi(params(state='disconnected'), check_mode=False)['changed']


def test_the_same_portal_twice_is_one_path(fake):
    result = iscsi.run_iscsi(params(portals=['192.0.2.10', '192.0.2.10:3260']), check_mode=False)
    assert result['portals'] == ['192.0.2.10:3260'] and len(fake.sessions) == 1


def test_sessions_and_their_disks_are_read_from_sysfs(tmp_path):
    sys = tmp_path / 'sys'
    (sys / 'class' / 'iscsi_session' / 'session4').mkdir(parents=True)
    (sys / 'class' / 'iscsi_session' / 'session4' / 'targetname').write_text(TARGET + '\n')
    (sys / 'class' / 'iscsi_session' / 'session4' / 'state').write_text('LOGGED_IN\n')
    connection = sys / 'class' / 'iscsi_connection' / 'connection4:0'
    connection.mkdir(parents=True)
    (connection / 'persistent_address').write_text('192.0.2.10\n')
    (connection / 'persistent_port').write_text('3260\n')
    device = sys / 'devices' / 'host5' / 'session4' / 'target5:0:0' / '5:0:0:2'
    device.mkdir(parents=True)
    (device / 'state').write_text('running\n')
    (sys / 'block' / 'sdc').mkdir(parents=True)
    (sys / 'block' / 'sdc' / 'device').symlink_to(device)
    found = iscsi.sessions(str(tmp_path))
    assert [iscsi.session_summary(s) for s in found] == [
        {'id': 4, 'target': TARGET, 'address': '192.0.2.10', 'port': 3260, 'state': 'LOGGED_IN',
         'disks': [{'name': 'sdc', 'lun': 2}]}]


def test_iscsid_is_found_in_proc(tmp_path):
    (tmp_path / '12').mkdir()
    (tmp_path / '12' / 'comm').write_text('bash\n')
    (tmp_path / 'self').mkdir()
    assert not iscsi.iscsid_running(str(tmp_path))
    (tmp_path / '99').mkdir()
    (tmp_path / '99' / 'comm').write_text('iscsid\n')
    assert iscsi.iscsid_running(str(tmp_path))


def fc_tree(tmp_path, hbas):
    sys = tmp_path / 'sys'
    for host in hbas:
        (sys / 'class' / 'fc_host' / host).mkdir(parents=True)
        (sys / 'class' / 'scsi_host' / host).mkdir(parents=True)
        (sys / 'class' / 'scsi_host' / host / 'scan').write_text('')
    (sys / 'block' / 'sda' / 'device' / 'scsi_device').mkdir(parents=True)
    (sys / 'block' / 'vda').mkdir()
    return sys


def test_fcp_rescans_every_fc_hba_and_reports_the_disks_that_appeared(tmp_path, monkeypatch):
    sys = fc_tree(tmp_path, ['host3', 'host4'])
    real_open = open

    def scan_finds_a_lun(path, mode='r', *args, **kwargs):
        if str(path).endswith('/scan') and 'w' in mode:
            (sys / 'block' / 'sdb' / 'device' / 'scsi_device').mkdir(parents=True, exist_ok=True)
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr('builtins.open', scan_finds_a_lun)
    result = iscsi.run_fcp({'state': 'connected'}, False, str(tmp_path))
    assert result == {'fc_hosts': ['host3', 'host4'], 'connected': True, 'changed': True, 'new_disks': ['sdb']}
    scan = sys / 'class' / 'scsi_host'
    assert (scan / 'host3' / 'scan').read_text() == (scan / 'host4' / 'scan').read_text() == '- - -'
    again = iscsi.run_fcp({'state': 'connected'}, False, str(tmp_path))
    assert not again['changed'] and again['new_disks'] == []


def test_fcp_without_an_hba_is_a_clear_error_and_check_mode_scans_nothing(tmp_path):
    fc_tree(tmp_path, [])
    with pytest.raises(VirtnodeError, match='no Fibre Channel HBA'):
        iscsi.run_fcp({'state': 'connected'}, False, str(tmp_path))
    root = tmp_path / 'one'
    sys = fc_tree(root, ['host3'])
    result = iscsi.run_fcp({'state': 'connected'}, True, str(root))
    assert not result['changed'] and (sys / 'class' / 'scsi_host' / 'host3' / 'scan').read_text() == ''
    assert iscsi.run_fcp({'state': 'disconnected'}, False, str(root)) == {
        'fc_hosts': ['host3'], 'connected': False, 'changed': False}


def test_a_login_that_fails_otherwise_also_leaves_no_new_record(fake, monkeypatch):
    run = fake.run

    def unreachable(argv, *args, **kwargs):
        if argv[-1] == '--login':
            fake.calls.append(list(argv))
            fake.fail(argv, 8, 'iscsiadm: connection login retries (reopen_max) 5 exceeded')
        return run(argv, *args, **kwargs)
    monkeypatch.setattr(iscsi.command, 'run_checked', unreachable)
    with pytest.raises(VirtnodeError, match='reopen_max'):
        iscsi.run_iscsi(params(), check_mode=False)
    assert fake.records == {}


def test_a_target_listed_under_another_address_of_the_portal_is_still_offered(fake, monkeypatch):
    real = fake.run

    def nat(argv, *args, **kwargs):
        if argv[1:3] == ['-m', 'discovery'] and argv[argv.index('-p') + 1] == '192.0.2.10:3260':
            fake.calls.append(list(argv))
            return '10.0.0.5:3260,7 %s\n' % TARGET
        return real(argv, *args, **kwargs)
    monkeypatch.setattr(iscsi.command, 'run_checked', nat)
    iscsi.run_iscsi(params(portals=['192.0.2.10']), check_mode=False)
    assert fake.records[(TARGET, '192.0.2.10:3260')]['node.tpgt'] == '7'
