# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files the network subsystem keeps on the host: configs, log and lock.

The *running config* (the networks and bonds this collection manages) is
kept in :data:`RUNNING_FILE` under ``/run``, so like the kernel state it
describes it is gone after a reboot; ``save`` copies it to
:data:`PERSISTENT_FILE`, which is what a boot-time restore applies. Both are
JSON state files written through common/fileio.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.fileio import read_json, write_json
from ansible_collections.virtnode.kvm.plugins.module_utils.network.model import empty_config

STATE_DIR = '/var/lib/virtnode/network'
PERSISTENT_FILE = STATE_DIR + '/persistent/netconf.json'
RUN_DIR = '/run/virtnode/network'
RUNNING_FILE = RUN_DIR + '/running.json'
LOCK_FILE = RUN_DIR + '/lock'
LOG_FILE = '/var/log/virtnode/network.log'
FORMAT_VERSION = 1


def read_running(path=None):
    path = path or RUNNING_FILE
    data = read_json(path) or {}
    return {'networks': data.get('networks') or {}, 'bonds': data.get('bonds') or {}}


def write_running(config, path=None):
    path = path or RUNNING_FILE
    write_json(path, {'version': FORMAT_VERSION, 'networks': config['networks'], 'bonds': config['bonds']}, indent=2)


def read_persistent(path=None):
    path = path or PERSISTENT_FILE
    data = read_json(path)
    if data is None:
        return None
    return {'networks': data.get('networks') or {}, 'bonds': data.get('bonds') or {}, 'saved_at': data.get('saved_at')}


def write_persistent(config, path=None):
    """setSafeNetworkConfig: the running config becomes what a boot-time restore applies."""
    path = path or PERSISTENT_FILE
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    write_json(path, {'version': FORMAT_VERSION, 'saved_at': now,
                      'networks': config['networks'], 'bonds': config['bonds']}, mode=0o600, indent=2)


def saved_config(persistent):
    """The networks and bonds of a persistent config (read_persistent), or None when nothing is saved."""
    return None if persistent is None else {'networks': persistent['networks'], 'bonds': persistent['bonds']}


def persisted_names(running, persistent):
    """Names of running networks and bonds whose persisted settings are identical."""
    persistent = persistent or empty_config()
    return dict((kind, sorted(n for n, spec in running[kind].items() if persistent[kind].get(n) == spec))
                for kind in ('networks', 'bonds'))


def log(message, path=None):
    path = path or LOG_FILE
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
        with open(path, 'a') as handle:
            handle.write('%s [%d] %s\n' % (stamp, os.getpid(), message))
    except OSError:
        pass


class HostLock(object):
    """Serializes network changes on one host (flock on a file under /run)."""

    def __init__(self, path=None, timeout=60):
        self.path = path or LOCK_FILE
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise VirtnodeError('another network change holds %s for more than %ss' % (self.path, self.timeout))
                time.sleep(0.1)

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None
        return False
