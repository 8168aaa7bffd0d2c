# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import socket
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import server as agent_server


def serve(tmp_path, answer):
    path = str(tmp_path / 's' / 'agent.sock')
    server = agent_server.serve(path, answer)
    return server, path


def test_round_trip_and_staleness(tmp_path):
    now = time.time()
    answers = {
        'vms': {'ok': True, 'query': 'vms', 'sampled_at': now, 'age': 1.0, 'interval': 15, 'data': {'vms': []}},
        'host': {'ok': True, 'query': 'host', 'sampled_at': now, 'age': 100.0, 'interval': 15, 'data': {'stats': {}}},
        'storage': {'ok': False, 'error': 'no storage data yet'},
    }
    server, path = serve(tmp_path, lambda request: answers.get(request['query'], {'ok': False}))
    try:
        assert oct(os.stat(path).st_mode & 0o777) == '0o660'
        assert agent_client.query('vms', path=path)['data'] == {'vms': []}
        assert agent_client.query('host', path=path) is None           # older than 3 intervals
        assert agent_client.query('host', path=path, max_age=200)['data'] == {'stats': {}}
        assert agent_client.query('storage', path=path) is None
        assert agent_client.query('bogus', path=path) is None
    finally:
        server.shutdown()
        server.server_close()


def test_no_agent(tmp_path):
    assert agent_client.query('vms', path=str(tmp_path / 'missing.sock')) is None


def test_bad_request_gets_an_error(tmp_path):
    server, path = serve(tmp_path, lambda request: {'ok': True})
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.sendall(b'not json\n')
        assert b'"ok":false' in sock.makefile('rb').readline()
        sock.close()
    finally:
        server.shutdown()
        server.server_close()


def test_silent_agent_times_out(tmp_path):
    path = str(tmp_path / 'silent.sock')
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    started = time.monotonic()
    assert agent_client.query('vms', timeout=0.3, path=path) is None
    assert time.monotonic() - started < 2
    listener.close()
