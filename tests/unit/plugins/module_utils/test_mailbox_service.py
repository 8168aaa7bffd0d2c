# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SPM mailbox on real inbox/outbox files: host and SPM sides in one process."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import mailbox
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import mailbox_server as ms
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '00112233-4455-6677-8899-aabbccddeeff'
VOL = '275766cb-c7d8-43d6-a663-4e52160de620'
VOL2 = '3f4a5b6c-7d8e-4f9a-8b1c-2d3e4f5a6b7c'
MAX_HOSTS = 8


@pytest.fixture
def master(tmp_path):
    dom_md = tmp_path / 'dom_md'
    dom_md.mkdir()
    for name in ('inbox', 'outbox'):
        with open(dom_md / name, 'wb') as stream:
            stream.truncate(1024 * 1024)
    return str(tmp_path)


class FakeExtend:
    """Records calls; grants what is asked unless told otherwise."""

    def __init__(self, delay=0.0, fail=(), result=None):
        self.calls = []
        self.delay = delay
        self.fail = set(fail)
        self.result = result
        self.lock = threading.Lock()

    def __call__(self, sd_uuid, vol_uuid, size_mib):
        with self.lock:
            self.calls.append((sd_uuid, vol_uuid, size_mib))
        if self.delay:
            time.sleep(self.delay)
        if vol_uuid in self.fail:
            raise VirtnodeError('no space left in the domain')
        return self.result if self.result is not None else size_mib


def make_server(master, extend, events=None, **kwargs):
    record = (lambda name, **fields: events.append((name, fields))) if events is not None else None
    kwargs.setdefault('interval', 0.2)
    kwargs.setdefault('event_interval', 0.02)
    return ms.MailboxServer(master, extend, on_event=record, max_hosts=MAX_HOSTS, io_timeout=2, **kwargs)


def wait_for_events(events, count, timeout=5):
    """The server records an event after it wrote the reply, so a requester may see the reply first."""
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return events


def inbox_block(master, host_id):
    return ms.read_blocks(ms.mailbox_paths(master)[0], host_id * 4096, 4096)


def write_inbox_block(master, host_id, block):
    ms.write_block(ms.mailbox_paths(master)[0], host_id * 4096, block)


def test_round_trip_through_a_running_server(master):
    extend = FakeExtend(result=3000)
    events = []
    server = make_server(master, extend, events).start()
    try:
        requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
        assert requester.request(SD, VOL, 2560, timeout=10) == 3000
        assert extend.calls == [(SD, VOL, 2560)]
        assert 0 < requester.last_elapsed < 10
        assert wait_for_events(events, 1)[0][0] == ms.EVENT_SERVED
        assert events[0][1]['host_id'] == 2 and events[0][1]['granted_mib'] == 3000 and events[0][1]['slot'] == 0
        # The host acknowledged with the clean marker; the SPM echoes it and the slot is free again.
        deadline = time.monotonic() + 5
        outbox = ms.mailbox_paths(master)[1]
        while ms.read_blocks(outbox, 2 * 4096, 64) != mailbox.CLEAN_MESSAGE:
            assert time.monotonic() < deadline, 'the SPM never echoed the clean marker'
            time.sleep(0.02)
        # The same request again is a new message and is served again, in the freed slot.
        assert requester.request(SD, VOL, 2560, timeout=10) == 3000
        assert len(extend.calls) == 2
        assert requester.pending() == {0: 'cleaning'} or requester.pending() == {}
    finally:
        server.stop()


def test_wire_format_is_vdsm_s(master):
    server = make_server(master, FakeExtend())
    requester = ms.ExtendRequester(master, 3, poll_interval=0.01, io_timeout=2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(size=requester.request(SD, VOL, 2560, timeout=10)))
    thread.start()
    deadline = time.monotonic() + 5
    while mailbox.parse_block(inbox_block(master, 3))[0].kind != mailbox.EXTEND:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    block = inbox_block(master, 3)
    assert block[:64] == mailbox.encode_extend(SD, VOL, 2560)
    assert block[4092:] == mailbox.block_checksum(block)
    # The poke is in block 0, which belongs to no host.
    assert ms.read_blocks(ms.mailbox_paths(master)[0], 0, 4096).startswith(ms.POKE_CODE)
    assert server.serve_once(wait=True) == 1
    thread.join(10)
    assert result == {'size': 2560}
    reply = ms.read_blocks(ms.mailbox_paths(master)[1], 3 * 4096, 64)
    assert reply == mailbox.encode_extend(SD, VOL, 2560)
    server.stop()


def test_concurrent_requests_take_separate_slots(master):
    extend = FakeExtend(delay=0.05)
    server = make_server(master, extend).start()
    try:
        requester = ms.ExtendRequester(master, 1, poll_interval=0.01, io_timeout=2)
        results, errors = {}, []

        def ask(number):
            vol = '%08x-0000-4000-8000-000000000000' % number
            try:
                results[vol] = requester.request(SD, vol, 1000 + number, timeout=20)
            except VirtnodeError as err:
                errors.append(err)

        threads = [threading.Thread(target=ask, args=(number,)) for number in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert sorted(results.values()) == [1000 + number for number in range(12)]
        assert len(extend.calls) == 12
    finally:
        server.stop()


def test_timeout_without_an_spm_withdraws_the_request(master):
    requester = ms.ExtendRequester(master, 4, poll_interval=0.01, io_timeout=2)
    started = time.monotonic()
    with pytest.raises(VirtnodeError, match='no reply from the SPM within 0.3s'):
        requester.request(SD, VOL, 2560, timeout=0.3)
    assert time.monotonic() - started < 10
    # The slot now holds the clean marker: an SPM arriving later extends nothing.
    assert inbox_block(master, 4)[:64] == mailbox.CLEAN_MESSAGE
    extend = FakeExtend()
    server = make_server(master, extend)
    assert server.serve_once(wait=True) == 0
    assert extend.calls == []
    server.stop()


def test_refused_extension_is_a_zero_reply_and_an_error(master):
    extend = FakeExtend(fail={VOL})
    events = []
    server = make_server(master, extend, events).start()
    try:
        requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
        with pytest.raises(VirtnodeError, match='replied size 0'):
            requester.request(SD, VOL, 2560, timeout=10)
        assert [name for name, _f in wait_for_events(events, 1)] == [ms.EVENT_REFUSED]
        assert 'no space left' in events[0][1]['reason']
        # Another volume still works.
        assert requester.request(SD, VOL2, 100, timeout=10) == 100
    finally:
        server.stop()


def test_broken_block_is_ignored_with_one_event_while_others_are_served(master):
    extend = FakeExtend()
    events = []
    server = make_server(master, extend, events)
    broken = bytearray(mailbox.build_block([mailbox.encode_extend(SD, VOL, 10)]))
    broken[4092:] = b'\xde\xad\xbe\xef'
    write_inbox_block(master, 5, bytes(broken))
    write_inbox_block(master, 6, mailbox.build_block([mailbox.encode_extend(SD, VOL2, 20)]))
    assert server.serve_once(wait=True) == 1
    assert extend.calls == [(SD, VOL2, 20)]
    assert [(name, fields['host_id']) for name, fields in events if name != ms.EVENT_SERVED] == [(ms.EVENT_BAD_BLOCK, 5)]
    assert 'checksum' in events[0][1]['reason'] or 'checksum' in events[1][1]['reason']
    # Still broken: not reported again. Repaired: its request is served, once.
    server.serve_once(wait=True)
    assert len([name for name, _f in events if name == ms.EVENT_BAD_BLOCK]) == 1
    write_inbox_block(master, 5, mailbox.build_block([mailbox.encode_extend(SD, VOL, 10)]))
    assert server.serve_once(wait=True) == 1
    assert server.serve_once(wait=True) == 0
    assert extend.calls == [(SD, VOL2, 20), (SD, VOL, 10)]


def test_torn_block_does_not_make_a_served_request_new_again(master):
    extend = FakeExtend()
    server = make_server(master, extend)
    good = mailbox.build_block([mailbox.encode_extend(SD, VOL, 10)])
    write_inbox_block(master, 2, good)
    assert server.serve_once(wait=True) == 1
    torn = bytearray(good)
    torn[100] = 0x55
    write_inbox_block(master, 2, bytes(torn))
    assert server.serve_once(wait=True) == 0
    write_inbox_block(master, 2, good)
    assert server.serve_once(wait=True) == 0
    assert extend.calls == [(SD, VOL, 10)]


def test_malformed_slot_is_reported_once_and_other_slots_served(master):
    extend = FakeExtend()
    events = []
    server = make_server(master, extend, events)
    bad = b'1junk' + b'x' * 59
    write_inbox_block(master, 3, mailbox.build_block([bad, mailbox.encode_extend(SD, VOL, 30)]))
    assert server.serve_once(wait=True) == 1
    malformed = [fields for name, fields in events if name == ms.EVENT_MALFORMED]
    assert malformed == [{'host_id': 3, 'slot': 0, 'reason': malformed[0]['reason']}]
    assert 'unknown message' in malformed[0]['reason']
    assert server.serve_once(wait=True) == 0
    assert len([name for name, _f in events if name == ms.EVENT_MALFORMED]) == 1
    assert extend.calls == [(SD, VOL, 30)]
    # No reply goes into a malformed slot.
    assert ms.read_blocks(ms.mailbox_paths(master)[1], 3 * 4096, 64) == bytes(64)


def test_duplicate_message_is_not_served_twice(master):
    extend = FakeExtend()
    server = make_server(master, extend)
    block = mailbox.build_block([mailbox.encode_extend(SD, VOL, 40)])
    write_inbox_block(master, 7, block)
    assert server.serve_once(wait=True) == 1
    write_inbox_block(master, 7, block)      # rewritten unchanged (a host re-sending its block)
    assert server.serve_once(wait=True) == 0
    assert server.serve_once(wait=True) == 0
    assert extend.calls == [(SD, VOL, 40)]


def test_poke_triggers_a_full_read_between_intervals(master):
    extend = FakeExtend()
    server = make_server(master, extend, interval=30, event_interval=0.02).start()
    try:
        time.sleep(0.2)  # the first full read is done; the next is 30 s away
        requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
        started = time.monotonic()
        assert requester.request(SD, VOL, 50, timeout=10) == 50
        assert time.monotonic() - started < 10  # the poke, not the next full read 30 s away
    finally:
        server.stop()


def test_reply_for_a_withdrawn_request_is_dropped(master):
    gate = threading.Event()

    def slow_extend(sd_uuid, vol_uuid, size_mib):
        gate.wait(5)
        return size_mib

    server = make_server(master, slow_extend)
    write_inbox_block(master, 2, mailbox.build_block([mailbox.encode_extend(SD, VOL, 60)]))
    assert server.serve_once() == 1
    write_inbox_block(master, 2, mailbox.build_block([mailbox.CLEAN_MESSAGE]))
    server.serve_once()
    gate.set()
    time.sleep(0.3)
    assert ms.read_blocks(ms.mailbox_paths(master)[1], 2 * 4096, 64) == mailbox.CLEAN_MESSAGE


def test_unreadable_inbox_is_one_io_event_and_no_crash(tmp_path):
    events = []
    server = ms.MailboxServer(str(tmp_path), FakeExtend(), on_event=lambda name, **f: events.append(name),
                              max_hosts=4, io_timeout=1)
    assert server.serve_once() == 0
    assert server.serve_once() == 0
    assert events == [ms.EVENT_IO_ERROR]


def test_bad_arguments(master):
    with pytest.raises(VirtnodeError, match='host id'):
        ms.ExtendRequester(master, 0)
    with pytest.raises(VirtnodeError, match='max_hosts'):
        ms.MailboxServer(master, FakeExtend(), max_hosts=0)
    requester = ms.ExtendRequester(master, 2)
    with pytest.raises(VirtnodeError, match='extend size'):
        requester.request(SD, VOL, -1)
    with pytest.raises(VirtnodeError, match='UUID'):
        requester.request('nope', VOL, 1)


def test_spm_mailboxes_follow_the_role(master, tmp_path):
    roles = {'sp-a': master, 'sp-b': None}
    events = []
    extend = FakeExtend()
    boxes = ms.SpmMailboxes(extend, on_event=lambda name, **fields: events.append((name, fields)),
                            pools=lambda: sorted(roles), master_of=roles.get, interval=0.2, event_interval=0.02,
                            max_hosts=MAX_HOSTS, io_timeout=2)
    try:
        assert set(boxes.check()) == {'sp-a'}
        assert events == [(ms.EVENT_SERVING, {'sp_uuid': 'sp-a', 'path': master})]
        assert set(boxes.check()) == {'sp-a'}          # no change, no event
        assert len(events) == 1
        requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
        assert requester.request(SD, VOL, 70, timeout=10) == 70
        assert wait_for_events(events, 2)[-1][0] == ms.EVENT_SERVED and events[-1][1]['sp_uuid'] == 'sp-a'
        roles['sp-a'] = None                            # the role moved away
        assert boxes.check() == {}
        assert events[-1] == (ms.EVENT_NOT_SERVING, {'sp_uuid': 'sp-a', 'path': master})
        with pytest.raises(VirtnodeError, match='no reply'):
            requester.request(SD, VOL2, 80, timeout=0.5)
        roles['sp-b'] = str(tmp_path / 'no-such-domain')  # SPM, but no mailbox files: nothing to serve
        assert boxes.check() == {}
    finally:
        boxes.stop()


def test_spm_master_needs_a_live_holder_in_spm_state(monkeypatch, tmp_path):
    sp = '4e5f6a7b-1c2d-4e3f-8a9b-0c1d2e3f4a50'
    sd = '5f6a7b8c-2d3e-4f4a-9b0c-1d2e3f4a5b61'
    pool_dir = tmp_path / 'dc' / sp
    pool_dir.mkdir(parents=True)
    (pool_dir / 'mastersd').symlink_to(tmp_path / 'mnt' / sd)
    monkeypatch.setattr(ms.sd_layout, 'pool_dir', lambda sp_uuid: str(tmp_path / 'dc' / sp_uuid))
    state = {'alive': True, 'status': 'SPM', 'sd_uuid': sd}
    monkeypatch.setattr(ms.spm, 'read_state', lambda sp_uuid: dict(state))
    assert ms.spm_master(sp) == str(tmp_path / 'mnt' / sd)
    state['status'] = 'lost'
    assert ms.spm_master(sp) is None
    state.update(status='SPM', alive=False)
    assert ms.spm_master(sp) is None
    state.update(alive=True, sd_uuid='00000000-0000-4000-8000-000000000000')  # master moved: link is stale
    assert ms.spm_master(sp) is None
    (tmp_path / 'pools').mkdir()
    (tmp_path / 'pools' / (sp + '.json')).write_text('{}')
    assert ms.connected_pools(str(tmp_path / 'pools')) == [sp]
    assert ms.connected_pools(str(tmp_path / 'nothing')) == []


def test_agent_serves_and_records_mailbox_events(master, tmp_path, fake_libvirt):
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon as agent_daemon
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events

    events_file = str(tmp_path / 'events.jsonl')
    config = agent_daemon.load_config(None, {
        'socket_path': str(tmp_path / 'agent.sock'), 'events_file': events_file, 'log_file': '',
        'storage_root': str(tmp_path / 'mnt'), 'mailbox_interval': 0.2, 'mailbox_event_interval': 0.02})
    agent = agent_daemon.Agent(config, libvirt_module=fake_libvirt.module)
    boxes = agent.mailboxes
    boxes._pools = lambda: ['sp-a']  # pylint: disable=protected-access
    boxes._master_of = {'sp-a': master}.get  # pylint: disable=protected-access
    boxes.extend_fn = FakeExtend(result=128)
    try:
        boxes.check()
        write_inbox_block(master, 5, mailbox.build_block([b'\xff' * 64]))
        requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
        assert requester.request(SD, VOL, 100, timeout=10) == 128
        assert agent._agent_status()['spm_mailboxes']['sp-a']['counters']['served'] == 1  # pylint: disable=protected-access
    finally:
        boxes.stop()
    recorded = agent_events.read_events(events_file)['events']
    names = [record['event'] for record in recorded]
    assert names[0] == ms.EVENT_SERVING and ms.EVENT_MALFORMED in names and ms.EVENT_SERVED in names
    served = recorded[names.index(ms.EVENT_SERVED)]
    assert served['kind'] == 'mailbox' and served['sp_uuid'] == 'sp-a' and served['granted_mib'] == 128
    assert served['vol_uuid'] == VOL and served['host_id'] == 2


def test_agent_mailbox_configuration():
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon as agent_daemon

    config = agent_daemon.load_config(None)
    assert config['mailbox_enabled'] is True and config['mailbox_event_interval'] == 0.1
    with pytest.raises(VirtnodeError, match='mailbox_interval must be a positive number'):
        agent_daemon.load_config(None, {'mailbox_interval': 0})
    with pytest.raises(VirtnodeError, match='mailbox_enabled must be true or false'):
        agent_daemon.load_config(None, {'mailbox_enabled': 'yes'})


def test_server_and_requester_share_the_mailbox_host_id_limit(master):
    assert ms.DEFAULT_MAX_HOSTS == mailbox.MAX_HOST_ID
    ms.MailboxServer(master, FakeExtend(), max_hosts=mailbox.MAX_HOST_ID)
    with pytest.raises(VirtnodeError, match='max_hosts'):
        ms.MailboxServer(master, FakeExtend(), max_hosts=mailbox.MAX_HOST_ID + 1)
    with pytest.raises(VirtnodeError, match='host id'):
        ms.ExtendRequester(master, mailbox.MAX_HOST_ID + 1)


@pytest.mark.parametrize('box', ['inbox', 'outbox'])
@pytest.mark.parametrize('planted', ['link-to-host-file', 'dom-md-link'])
def test_mailbox_files_planted_as_links_are_never_read_or_written(master, tmp_path, box, planted):
    # The mailbox is on shared storage: a link there would have the SPM write its replies,
    # or a host its requests, into a host file.
    outside = tmp_path / 'host-file'
    outside.write_bytes(b'host file\n' * 100000)
    before = outside.read_bytes()
    dom_md = tmp_path / 'dom_md'
    if planted == 'link-to-host-file':
        (dom_md / box).unlink()
        (dom_md / box).symlink_to(outside)
    else:
        real = tmp_path / 'real_dom_md'
        dom_md.rename(real)
        (real / box).unlink()
        (real / box).symlink_to(outside)
        dom_md.symlink_to(real)
    path = ms.mailbox_paths(master)[0 if box == 'inbox' else 1]
    with pytest.raises(VirtnodeError, match='link'):
        ms.write_block(path, 4096, b'\1' * 4096)
    with pytest.raises(VirtnodeError, match='link'):
        ms.read_blocks(path, 0, 4096)
    events = []
    server = make_server(master, FakeExtend(), events)
    server.serve_once()
    requester = ms.ExtendRequester(master, 2, poll_interval=0.01, io_timeout=2)
    with pytest.raises(VirtnodeError):
        requester.request(SD, VOL, 1024, timeout=0.5)
    assert outside.read_bytes() == before
    assert [name for name, _fields in events] == [ms.EVENT_IO_ERROR]


def test_a_fifo_planted_as_the_inbox_is_refused_without_blocking(master, tmp_path):
    (tmp_path / 'dom_md' / 'inbox').unlink()
    os.mkfifo(tmp_path / 'dom_md' / 'inbox')
    started = time.monotonic()
    with pytest.raises(VirtnodeError, match='not a regular file'):
        ms.read_blocks(ms.mailbox_paths(master)[0], 0, 4096)
    assert time.monotonic() - started < 1


def test_a_block_master_has_its_mailboxes_on_its_lvs_and_nothing_else_is_opened_for_them(tmp_path, monkeypatch):
    sd_uuid = '5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f'
    monkeypatch.setattr(ms.sd_layout, 'MOUNT_ROOT', str(tmp_path / 'mnt'))
    dom_dir = ms.sd_layout.block_domain_dir(sd_uuid)
    inbox, outbox = ms.mailbox_paths(dom_dir)
    assert (inbox, outbox) == ('/dev/%s/inbox' % sd_uuid, '/dev/%s/outbox' % sd_uuid)
    # Not an active LV on this host: refused as such, never opened through whatever /dev holds.
    with pytest.raises(VirtnodeError, match='is the logical volume active'):
        ms.read_blocks(inbox, 0, 4096)
