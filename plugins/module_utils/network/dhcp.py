# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""DHCP clients of the devices this collection manages: one per device and family.

A client's pid file outlives it (a crash, a kill, a reboot of the client
only), and its pid may by then belong to another process, a VM's qemu say.
A pid is trusted only if that process's command line is the one we started
(it names this very pid file and device) and, when we recorded it at start,
its start time is the recorded one; otherwise it is never signalled.

busybox udhcpc applies nothing itself: it hands what it obtained to a
script, and busybox alone (Debian's busybox-static) ships none, so without
:data:`UDHCPC_SCRIPT` a lease is taken and the device never gets the address.
The script gives the address the lease's lifetime, which makes it *dynamic*
to the kernel: the network code leaves dynamic addresses to DHCP. Stopping a
client releases its lease (udhcpc ``-R``) and waits for it to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.detached import process_start_time
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.fileio import read_json, write_atomic, write_json
from ansible_collections.virtnode.kvm.plugins.module_utils.network.store import RUN_DIR, STATE_DIR

DHCP_DIR = RUN_DIR + '/dhcp'
# Not under /run: Debian's initramfs mounts it noexec.
UDHCPC_SCRIPT = STATE_DIR + '/udhcpc.script'
UDHCPC_SCRIPT_TEXT = r'''#!/bin/sh
# Written by virtnode.kvm (network module): applies the IPv4 lease busybox udhcpc obtained.
# The address lives as long as the lease (the kernel marks it dynamic); routes are not touched.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -n "$interface" ] || exit 1
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface" dynamic
    ;;
bound|renew)
    [ -n "$ip" ] && [ -n "$mask" ] || exit 1
    if ! ip -4 -o addr show dev "$interface" dynamic | grep -q " $ip/$mask "; then
        ip -4 addr flush dev "$interface" dynamic
    fi
    ip -4 addr replace "$ip/$mask" dev "$interface" ${broadcast:+broadcast "$broadcast"} \
        valid_lft "${lease:-forever}" preferred_lft "${lease:-forever}"
    ;;
esac
exit 0
'''
STOP_TIMEOUT = 5.0
DHCP_CLIENTS = ('/usr/sbin/dhclient', '/sbin/dhclient', '/usr/sbin/udhcpc', '/sbin/udhcpc', '/bin/busybox', '/usr/bin/busybox')


def find_dhcp_client():
    for path in DHCP_CLIENTS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class DhcpClients(object):
    """Starts and stops one DHCP client per device and family, tracked by pid files under /run."""

    def __init__(self, directory=None, client=None, script=None):
        self.directory = directory or DHCP_DIR
        self.client = client if client is not None else find_dhcp_client()
        self.script = script or UDHCPC_SCRIPT

    def _ensure_script(self):
        data = UDHCPC_SCRIPT_TEXT.encode()
        try:
            with open(self.script, 'rb') as handle:
                if handle.read(len(data) + 1) == data and os.access(self.script, os.X_OK):
                    return
        except OSError:
            pass
        try:
            os.makedirs(os.path.dirname(self.script), exist_ok=True)
        except OSError as err:
            raise VirtnodeError('cannot create %s: %s' % (os.path.dirname(self.script), err.strerror or err))
        write_atomic(self.script, data, mode=0o755)

    def _pidfile(self, dev, family):
        return os.path.join(self.directory, '%s.%d.pid' % (dev, family))

    def running(self, dev):
        return [family for family in (4, 6) if self._pid(dev, family)]

    def _owner_file(self, dev, family):
        return os.path.join(self.directory, '%s.%d.owner' % (dev, family))

    def _pid(self, dev, family):
        """The pid of the DHCP client we started for ``dev``/``family``, if it still runs; else None."""
        pidfile = self._pidfile(dev, family)
        try:
            with open(pidfile, 'rb') as handle:
                pid = int(handle.read(64).split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if pid <= 1 or not self._is_our_client(pid, dev, pidfile):
            return None
        owner = read_json(self._owner_file(dev, family), lenient=True) or {}
        if owner.get('pid') == pid and owner.get('start') != process_start_time(pid):
            return None
        return pid

    @staticmethod
    def _is_our_client(pid, dev, pidfile):
        # Every client is started with its pid file and its device as arguments (dhclient -pf, udhcpc -p/-i).
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                argv = handle.read(65536).split(b'\0')
        except OSError:
            return False
        return process_start_time(pid) is not None and os.fsencode(pidfile) in argv and os.fsencode(dev) in argv

    def _record_owner(self, dev, family, timeout=5.0):
        """Remember the started client's pid and start time, to tell it from a later process with its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._pid(dev, family)
            if pid:
                write_json(self._owner_file(dev, family), {'pid': pid, 'start': process_start_time(pid)}, mode=0o600)
                return
            time.sleep(0.05)

    def start(self, dev, family):
        if self.client is None:
            raise VirtnodeError('no DHCP client (dhclient or busybox udhcpc) is installed')
        os.makedirs(self.directory, exist_ok=True)
        pidfile = self._pidfile(dev, family)
        try:
            os.unlink(self._owner_file(dev, family))
        except OSError:
            pass
        name = os.path.basename(self.client)
        if name == 'dhclient':
            argv = [self.client, '-%d' % family, '-nw', '-pf', pidfile, dev]
        elif family == 4:
            self._ensure_script()
            argv = ([self.client, 'udhcpc'] if name == 'busybox' else [self.client]) + \
                ['-b', '-R', '-s', self.script, '-p', pidfile, '-i', dev]
        else:
            argv = ([self.client, 'udhcpc6'] if name == 'busybox' else [self.client.replace('udhcpc', 'udhcpc6')]) + \
                ['-b', '-p', pidfile, '-i', dev]
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise VirtnodeError('cannot start DHCPv%d client on %s: %s' % (family, dev, err))
        self._record_owner(dev, family)

    def stop(self, dev, family):
        pid = self._pid(dev, family)
        if pid:
            start = process_start_time(pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
            # It releases its lease on the way out: let it, before the device goes away.
            deadline = time.monotonic() + STOP_TIMEOUT
            while start is not None and process_start_time(pid) == start and time.monotonic() < deadline:
                time.sleep(0.05)
        for path in (self._pidfile(dev, family), self._owner_file(dev, family)):
            try:
                os.unlink(path)
            except OSError:
                pass
