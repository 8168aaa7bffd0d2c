# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's query socket and metrics endpoint against idle, slow and flooding clients, and a second agent."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon as agent_daemon
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import metrics as agent_metrics
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import server as agent_server
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

ANSWER = {'ok': True, 'query': 'status', 'interval': 15, 'data': {}}
SNAPSHOT = {'agent': {'libvirt_connected': True, 'samples': 1}, 'host': None, 'vms': None, 'storage': None}


def _free_port():
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def _unix_socket_server(path, **bounds):
    return agent_server.serve(path, lambda request: dict(ANSWER), **bounds)


def _metrics_server(**bounds):
    port = _free_port()
    return agent_metrics.serve('127.0.0.1', port, lambda: SNAPSHOT, **bounds), port


def _connect_unix(path):
    deadline = time.monotonic() + 5
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:     # backlog full for a moment: a real client would retry or fall back
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _connect_tcp(port):
    return socket.create_connection(('127.0.0.1', port), timeout=5)


def _scrape(port, timeout=3.0):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', '/metrics')
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _stop(server):
    started = time.monotonic()
    server.shutdown()
    server.server_close()
    return time.monotonic() - started


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / 'run' / 'agent.sock')


def _closed_by_server(sock, within):
    """True when the server hangs up on ``sock`` within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
            if b'busy' in data:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


# ---------------------------------------------------------------- metrics endpoint

def test_idle_metrics_clients_do_not_block_a_scrape(sock_path):
    server, port = _metrics_server()
    idle = [_connect_tcp(port) for _attempt in range(3)]
    try:
        started = time.monotonic()
        status, body = _scrape(port)
        assert status == 200 and 'virtnode_agent_libvirt_connected' in body
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
        assert _stop(server) < 2


def test_metrics_shutdown_does_not_wait_for_idle_clients():
    server, port = _metrics_server()
    idle = [_connect_tcp(port) for _attempt in range(3)]
    time.sleep(0.2)
    done = []
    stopper = threading.Thread(target=lambda: done.append(_stop(server)), daemon=True)
    stopper.start()
    stopper.join(5)
    try:
        assert done and done[0] < 2, 'shutdown waited for idle clients'
        # The idle clients were hung up on, not left holding threads.
        assert all(_closed_by_server(sock, 2) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize('kind', ['metrics', 'socket'])
def test_slow_clients_are_cut_off_at_the_connection_timeout(kind, sock_path):
    """A client dripping bytes (each under the per-read timeout) is still closed when its time is up."""
    if kind == 'metrics':
        server, port = _metrics_server(connection_timeout=1.0)
        sock = _connect_tcp(port)
        drip = b'GET /metrics HTTP/1.1\r\nX-Slow: ' + b'a' * 200
    else:
        server = _unix_socket_server(sock_path, connection_timeout=1.0)
        sock = _connect_unix(sock_path)
        drip = b'{"query": "' + b'a' * 200
    started = time.monotonic()
    closed = False
    try:
        for byte in drip:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > 4:
                break
        closed = closed or _closed_by_server(sock, 0.5)
        assert closed and time.monotonic() - started < 4, 'slow client kept its connection'
    finally:
        sock.close()
        _stop(server)


def _handler_threads():
    return sum(1 for thread in threading.enumerate() if 'process_request_thread' in thread.name)


@pytest.mark.parametrize('kind', ['metrics', 'socket'])
def test_a_flood_of_connections_is_capped(kind, sock_path):
    if kind == 'metrics':
        server, port = _metrics_server(max_connections=4, connection_timeout=30)
        connect, address = _connect_tcp, port
    else:
        server = _unix_socket_server(sock_path, max_connections=4, connection_timeout=30)
        connect, address = _connect_unix, sock_path
    before = _handler_threads()
    flood = []
    try:
        for _attempt in range(40):
            flood.append(connect(address))
        time.sleep(0.5)
        assert _handler_threads() - before <= 4
        # The connections over the cap were answered "busy" and closed at once, not queued.
        assert sum(1 for sock in flood[4:] if _closed_by_server(sock, 0.2)) == len(flood) - 4
        # Once the flood is gone, queries are answered again.
        for sock in flood:
            sock.close()
        time.sleep(0.3)
        if kind == 'metrics':
            assert _scrape(port)[0] == 200
        else:
            assert agent_client.request({'query': 'status'}, path=sock_path)['ok'] is True
    finally:
        for sock in flood:
            sock.close()
        _stop(server)


# ---------------------------------------------------------------- query socket: a second agent

def test_socket_shutdown_does_not_wait_for_idle_clients(sock_path):
    server = _unix_socket_server(sock_path)
    idle = [_connect_unix(sock_path) for _attempt in range(3)]
    try:
        assert _stop(server) < 2
        assert all(_closed_by_server(sock, 2) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_a_second_agent_refuses_a_live_socket(sock_path):
    first = _unix_socket_server(sock_path)
    try:
        inode = os.stat(sock_path).st_ino
        with pytest.raises(VirtnodeError, match='another virtnode-agent'):
            _unix_socket_server(sock_path)
        with pytest.raises(VirtnodeError, match='another virtnode-agent'):
            agent_server.check_free(sock_path)
        assert os.stat(sock_path).st_ino == inode
        assert agent_client.request({'query': 'status'}, path=sock_path)['ok'] is True
    finally:
        _stop(first)


def test_a_live_agent_of_an_older_version_is_detected_by_its_answer(sock_path):
    """No lock file (an agent that predates it): the socket answering is enough to refuse."""
    os.makedirs(os.path.dirname(sock_path))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(1)
    try:
        with pytest.raises(VirtnodeError, match='another virtnode-agent'):
            _unix_socket_server(sock_path)
        assert os.path.exists(sock_path)
    finally:
        listener.close()


def test_a_stale_socket_is_replaced(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(sock_path)
    dead.close()       # the file stays, nobody listens: connect is refused
    server = _unix_socket_server(sock_path)
    try:
        assert agent_client.request({'query': 'status'}, path=sock_path)['ok'] is True
    finally:
        _stop(server)


@pytest.mark.parametrize('kind', ['file', 'symlink', 'directory'])
def test_something_else_at_the_socket_path_is_left_alone(sock_path, tmp_path, kind):
    os.makedirs(os.path.dirname(sock_path))
    target = tmp_path / 'precious'
    target.write_text('keep me')
    if kind == 'file':
        with open(sock_path, 'w') as handle:
            handle.write('keep me')
    elif kind == 'symlink':
        os.symlink(str(target), sock_path)
    else:
        os.mkdir(sock_path)
    with pytest.raises(VirtnodeError, match='not a socket'):
        _unix_socket_server(sock_path)
    assert os.path.lexists(sock_path) and target.read_text() == 'keep me'


def test_a_stopping_agent_leaves_its_successors_socket(sock_path):
    first = _unix_socket_server(sock_path)
    first.shutdown()
    # A successor took the path over (the first one's file replaced) before the first one closed.
    os.unlink(sock_path)
    successor = socket.socket(socket.AF_UNIX)
    successor.bind(sock_path)
    successor.listen(1)
    try:
        first.server_close()
        assert os.path.exists(sock_path)
    finally:
        successor.close()


def _write_config(tmp_path, sock_path):
    path = tmp_path / 'agent.conf'
    path.write_text(json.dumps({'socket_path': sock_path, 'events_file': str(tmp_path / 'events.jsonl'),
                                'storage_root': str(tmp_path / 'mnt'), 'log_file': '', 'metrics_enabled': False,
                                'storage_enabled': False, 'mailbox_enabled': False, 'thin_enabled': False}))
    return str(path)


@pytest.mark.parametrize('holder', ['socket', 'pidfile'])
def test_main_refuses_before_detaching_when_an_agent_runs(holder, tmp_path, sock_path, monkeypatch, fake_libvirt):
    """The caller of ``--daemon`` sees the refusal as a non-zero exit; nothing of the live agent is touched."""
    config = _write_config(tmp_path, sock_path)
    pidfile = str(tmp_path / 'agent.pid')
    live = _unix_socket_server(sock_path) if holder == 'socket' else None
    held = None
    if holder == 'pidfile':
        held = agent_daemon._lock_pidfile(pidfile)  # pylint: disable=protected-access
        agent_daemon._write_pid(held)  # pylint: disable=protected-access
    detached = []
    monkeypatch.setattr(agent_daemon, '_daemonize', lambda: detached.append(True))
    monkeypatch.setattr(agent_daemon, '_setup_logging', lambda config, foreground: None)
    monkeypatch.setattr(agent_daemon.Agent, 'run', lambda self: None)
    try:
        assert agent_daemon.main(['--config', config, '--daemon', '--pidfile', pidfile]) != 0
        assert not detached
        if live is not None:
            assert agent_client.request({'query': 'status'}, path=sock_path)['ok'] is True
        else:
            assert open(pidfile).read().strip() == str(os.getpid())
    finally:
        if live is not None:
            _stop(live)
        if held is not None:
            os.close(held)


def test_a_pidfile_lock_won_on_a_removed_file_is_taken_again(tmp_path, monkeypatch):
    """The previous agent unlinks its pidfile as it exits: a lock won on that old file is worth nothing."""
    pidfile = str(tmp_path / 'agent.pid')
    real_flock = agent_daemon.fcntl.flock
    calls = []

    def flock(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            # Between our open and our lock, the old agent exits (unlinks) and a new file appears.
            os.unlink(pidfile)
            with open(pidfile, 'w') as handle:
                handle.write('')
        return real_flock(fd, operation)

    monkeypatch.setattr(agent_daemon.fcntl, 'flock', flock)
    fd = agent_daemon._lock_pidfile(pidfile)  # pylint: disable=protected-access
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(pidfile))
        monkeypatch.setattr(agent_daemon.fcntl, 'flock', real_flock)
        with pytest.raises(VirtnodeError, match='another virtnode-agent'):
            agent_daemon._lock_pidfile(pidfile)  # pylint: disable=protected-access
    finally:
        os.close(fd)


def test_the_agent_applies_its_configured_caps_and_timeout(tmp_path, sock_path, monkeypatch, fake_libvirt):
    """node_agent_socket_max_connections, _metrics_max_connections and _connection_timeout reach the listeners."""
    config = agent_daemon.load_config(_write_config(tmp_path, sock_path), {
        'metrics_enabled': True, 'metrics_port': _free_port(),
        'socket_max_connections': 2, 'metrics_max_connections': 1, 'connection_timeout': 0.5})
    monkeypatch.setattr(agent_daemon.agent_libvirt, 'start_event_loop', lambda module: None)
    agent = agent_daemon.Agent(config, libvirt_module=fake_libvirt.module)
    agent.start()
    held = []
    try:
        held = [_connect_unix(sock_path) for _attempt in range(2)]
        time.sleep(0.1)
        third = _connect_unix(sock_path)
        held.append(third)
        assert _closed_by_server(third, 0.3), 'a third client was served beside two'
        scrape = _connect_tcp(config['metrics_port'])
        held.append(scrape)
        time.sleep(0.1)
        assert _closed_by_server(_connect_tcp(config['metrics_port']), 0.3), 'a second scrape was served beside one'
        # The idle clients are dropped after the configured 0.5 s, not the default 10 s.
        assert _closed_by_server(held[0], 2) and _closed_by_server(scrape, 2)
    finally:
        for sock in held:
            sock.close()
        agent.stop()


@pytest.mark.parametrize('key, value', [('socket_max_connections', 0), ('metrics_max_connections', True),
                                        ('socket_max_connections', 2.5), ('connection_timeout', 0)])
def test_caps_and_timeout_must_be_positive(tmp_path, key, value):
    with pytest.raises(VirtnodeError, match=key):
        agent_daemon.load_config(None, {key: value})
