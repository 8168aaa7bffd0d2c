# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start or restart one daemon of the virtnode lab (hosts without systemd).

Argument: one JSON object {"name", "action": "started"|"restarted", "pidfile",
"argv", "keep_env": [names], "wait_socket": path}. The daemon runs when its
pid file names a live process. A restart sends SIGTERM, waits for the process
to exit, and starts ``argv`` again with the environment variables named in
``keep_env`` taken from the old process (/proc/<pid>/environ), e.g. the
sanlock shim's LD_PRELOAD. Prints {"changed": bool, "pid": n, "msg": "..."}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

STOP_TIMEOUT = 30
START_TIMEOUT = 60


def read_pid(pidfile):
    try:
        with open(pidfile) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    if not pid:
        return False
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().split(') ', 1)[1][0] != 'Z'
    except (OSError, IndexError):
        return False


def environ_of(pid, names):
    values = {}
    try:
        with open('/proc/%d/environ' % pid, 'rb') as handle:
            entries = handle.read().split(b'\0')
    except OSError:
        return values
    for entry in entries:
        key, sep, value = entry.decode('utf-8', 'replace').partition('=')
        if sep and key in names:
            values[key] = value
    return values


def socket_answers(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid):
        if time.monotonic() > deadline:
            raise SystemExit(json.dumps({'failed': True, 'msg': 'pid %d did not exit after SIGTERM' % pid}))
        time.sleep(0.1)


def start(spec, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    proc = subprocess.run(spec['argv'], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True, check=False, timeout=START_TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(json.dumps({'failed': True, 'msg': '%s failed (%d): %s' % (
            ' '.join(spec['argv']), proc.returncode, proc.stderr.decode('utf-8', 'replace').strip())}))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        pid = read_pid(spec['pidfile'])
        ready = alive(pid) and (not spec.get('wait_socket') or socket_answers(spec['wait_socket']))
        if ready:
            return pid
        if time.monotonic() > deadline:
            raise SystemExit(json.dumps({'failed': True, 'msg': '%s did not come up' % spec['name']}))
        time.sleep(0.1)


def main():
    spec = json.loads(sys.argv[1])
    pid = read_pid(spec['pidfile'])
    running = alive(pid)
    if spec['action'] == 'started' and running:
        print(json.dumps({'changed': False, 'pid': pid, 'msg': '%s runs' % spec['name']}))
        return
    env_extra = environ_of(pid, set(spec.get('keep_env') or ())) if running else {}
    if running:
        stop(pid)
    new_pid = start(spec, env_extra)
    verb = 'restarted' if running else 'started'
    print(json.dumps({'changed': True, 'pid': new_pid, 'msg': '%s %s' % (spec['name'], verb)}))


if __name__ == '__main__':
    main()
