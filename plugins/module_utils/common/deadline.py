# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Calls that must not wait longer than a deadline for storage or a daemon.

A read from hung NFS, or a question to a frozen sanlock daemon, blocks in the
kernel or in a socket and cannot be interrupted from Python. The call runs in
a daemon thread instead; the caller waits at most ``timeout`` seconds and gets
a clear error, and the stuck thread is left to end by itself (callers that may
be asked again bound how many such threads pile up).
"""

from __future__ import annotations

import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


def call_within(timeout, work, message, details=None, name=None):
    """``work()``'s result; VirtnodeError(message, details) when it has not returned within ``timeout`` seconds.

    An exception ``work`` raises is raised again in the caller's thread.
    """
    outcome = {}

    def runner():
        try:
            outcome['value'] = work()
        except Exception as err:  # pylint: disable=broad-except  # raised again in the caller's thread
            outcome['error'] = err

    thread = threading.Thread(target=runner, name=name or 'bounded call', daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise VirtnodeError(message, details)
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']
