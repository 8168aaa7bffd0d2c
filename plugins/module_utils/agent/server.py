# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's local query socket (the protocol is described in ``agent_client``)."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading

LOG = logging.getLogger('virtnode.agent.server')
MAX_REQUEST_BYTES = 65536


class _Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self):
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES)
            request = json.loads(line.decode('utf-8')) if line.strip() else None
            if not isinstance(request, dict):
                answer = {'ok': False, 'error': 'request must be one JSON object on one line'}
            else:
                answer = self.server.answer(request)
        except ValueError as err:
            answer = {'ok': False, 'error': 'bad request: %s' % err}
        except Exception as err:  # pylint: disable=broad-except
            LOG.exception('query failed')
            answer = {'ok': False, 'error': 'internal error: %s' % err}
        try:
            self.wfile.write((json.dumps(answer, separators=(',', ':')) + '\n').encode('utf-8'))
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path, answer):
        self.answer = answer
        super().__init__(path, _Handler)


def serve(path, answer, mode=0o660):
    """Listen on the unix socket ``path``; ``answer(request_dict) -> dict`` builds each reply.

    A stale socket file is replaced. Returns the server (``shutdown()`` then
    ``server_close()`` stop it).
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        server = _Server(path, answer)
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    thread = threading.Thread(target=server.serve_forever, name='query-socket', daemon=True)
    thread.start()
    return server
