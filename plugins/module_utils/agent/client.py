# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client of the node agent's local socket, for modules that can answer from its cache.

Protocol (one request, one answer per connection, each one line of JSON
ending with a newline) on the unix socket ``/run/virtnode/agent.sock``::

    -> {"query": "vms"}
    <- {"ok": true, "query": "vms", "sampled_at": 1700000000.1, "age": 3.2,
        "interval": 15, "data": {...}}

Queries: ``vms`` (``data.vms``: entries shaped as ``vm_stats.vm_entry``
builds them), ``host`` (``data.stats``: shaped as ``host_info``'s ``stats``
section), ``storage`` (``data.domains``: per storage domain monitoring) and
``status`` (the agent's own state).

:func:`query` never raises: ``None`` means "ask libvirt/the host directly"
(no agent, an error, a timeout, or data older than ``max_age``).
"""

from __future__ import annotations

import json
import socket
import time

SOCKET_PATH = '/run/virtnode/agent.sock'
QUERIES = ('vms', 'host', 'storage', 'status')
MAX_ANSWER_BYTES = 256 * 1024 * 1024
# Without max_age, an answer is stale after this many sampling intervals.
STALE_INTERVALS = 3


def request(payload, timeout=2.0, path=SOCKET_PATH):
    """Send one request dict and return the answer dict; raises OSError/ValueError on failure."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall((json.dumps(payload) + '\n').encode('utf-8'))
        chunks = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout('agent did not answer within %ss' % timeout)
            sock.settimeout(remaining)
            chunk = sock.recv(1024 * 1024)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise ValueError('agent answer too large')
            if chunk.endswith(b'\n'):
                break
    finally:
        sock.close()
    answer = json.loads(b''.join(chunks).decode('utf-8'))
    if not isinstance(answer, dict):
        raise ValueError('agent answer is not an object')
    return answer


def query(kind, timeout=2.0, path=SOCKET_PATH, max_age=None):
    """The agent's cached ``kind`` answer (``ok``, ``sampled_at``, ``age``, ``interval``, ``data``), or None.

    ``max_age`` (seconds) refuses answers whose sample is older; by default
    an answer older than three sampling intervals is refused.
    """
    if kind not in QUERIES:
        return None
    try:
        answer = request({'query': kind}, timeout=timeout, path=path)
    except (OSError, ValueError):
        return None
    if answer.get('ok') is not True or not isinstance(answer.get('data'), dict):
        return None
    age = answer.get('age')
    if kind != 'status':
        if not isinstance(age, (int, float)):
            return None
        limit = max_age
        if limit is None:
            interval = answer.get('interval')
            limit = STALE_INTERVALS * interval if isinstance(interval, (int, float)) and interval > 0 else None
        if limit is not None and age > limit:
            return None
    return answer
