# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Processes that must outlive the module that starts them.

An Ansible module lives for one task, but some work cannot: the network
rollback watcher must act after the module returned, and sanlock drops a
lease when the process holding it exits, so the SPM holder must stay. Both
are started here, the one way the project detaches a process.
"""

from __future__ import annotations

import os
import signal

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


def process_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot; None if it is gone or a zombie.

    Compared with a recorded value it tells a live process from a new one
    that reused its pid.
    """
    try:
        with open('/proc/%d/stat' % pid) as handle:
            data = handle.read()
    except (OSError, TypeError):
        return None
    # The command name may contain spaces: count fields after its closing parenthesis.
    fields = data.rsplit(')', 1)[-1].split()
    if not fields or fields[0] == 'Z':
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _close_inherited(keep_fds):
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    low = 3
    for fd in sorted(fd for fd in keep_fds if fd > 2):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def spawn_detached(function, *args, keep_fds=()):
    """Run ``function(*args)`` in a detached grandchild process; return its pid.

    The grandchild starts a new session, ignores SIGHUP, has /dev/null as
    stdin/stdout/stderr and closes every other inherited descriptor except
    ``keep_fds`` (so an SSH session waiting for the module's output is not
    held open), then leaves with os._exit() without running the caller's
    clean-up. The intermediate child is reaped before this returns.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(write_end, str(grandchild).encode('ascii'))
                os._exit(0)
            os.chdir('/')
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            _close_inherited(keep_fds)
            function(*args)
        except BaseException:  # pylint: disable=broad-except  # nothing may escape into the caller's code
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    data = b''
    while True:
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    if not data:
        raise VirtnodeError('could not start a detached process for %s' % getattr(function, '__name__', function))
    return int(data)
