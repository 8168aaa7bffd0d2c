# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""DHCP clients of the devices this collection manages: one per device and family."""

from __future__ import annotations

import os
import signal
import subprocess

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.network.store import RUN_DIR

DHCP_DIR = RUN_DIR + '/dhcp'
DHCP_CLIENTS = ('/usr/sbin/dhclient', '/sbin/dhclient', '/usr/sbin/udhcpc', '/sbin/udhcpc', '/bin/busybox', '/usr/bin/busybox')


def find_dhcp_client():
    for path in DHCP_CLIENTS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class DhcpClients(object):
    """Starts and stops one DHCP client per device and family, tracked by pid files under /run."""

    def __init__(self, directory=None, client=None):
        self.directory = directory or DHCP_DIR
        self.client = client if client is not None else find_dhcp_client()

    def _pidfile(self, dev, family):
        return os.path.join(self.directory, '%s.%d.pid' % (dev, family))

    def running(self, dev):
        return [family for family in (4, 6) if self._pid(dev, family)]

    def _pid(self, dev, family):
        try:
            with open(self._pidfile(dev, family)) as handle:
                pid = int(handle.read().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def start(self, dev, family):
        if self.client is None:
            raise VirtnodeError('no DHCP client (dhclient or busybox udhcpc) is installed')
        os.makedirs(self.directory, exist_ok=True)
        pidfile = self._pidfile(dev, family)
        name = os.path.basename(self.client)
        if name == 'dhclient':
            argv = [self.client, '-%d' % family, '-nw', '-pf', pidfile, dev]
        elif family == 4:
            argv = ([self.client, 'udhcpc'] if name == 'busybox' else [self.client]) + ['-b', '-p', pidfile, '-i', dev]
        else:
            argv = ([self.client, 'udhcpc6'] if name == 'busybox' else [self.client.replace('udhcpc', 'udhcpc6')]) + \
                ['-b', '-p', pidfile, '-i', dev]
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise VirtnodeError('cannot start DHCPv%d client on %s: %s' % (family, dev, err))

    def stop(self, dev, family):
        pid = self._pid(dev, family)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            os.unlink(self._pidfile(dev, family))
        except OSError:
            pass
