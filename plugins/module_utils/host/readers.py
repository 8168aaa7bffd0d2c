# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fail-soft readers of a host's /proc, /sys and /etc, and of helper commands' output.

Host facts and statistics are reported as far as they can be read: an
unreadable or missing file gives ``None`` (or an empty list) and a helper
command that is missing or fails gives ``None``, never an exception. Every
reader takes the path as seen under a ``root`` (see :func:`host_path`), so
tests can point it at a fake tree.
"""

from __future__ import annotations

import os
import subprocess

from ansible_collections.virtnode.kvm.plugins.module_utils.common.readers import host_path, read_optional_text

COMMAND_TIMEOUT = 10
# Extra places for admin tools that are not on a non-login PATH.
_EXTRA_BIN_DIRS = ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin')


def mib(kib):
    """KiB to whole MiB, None staying None."""
    return None if kib is None else kib // 1024


def find_command(name):
    """Absolute path of ``name`` on PATH or in the usual sbin directories."""
    dirs = os.environ.get('PATH', '').split(os.pathsep) + list(_EXTRA_BIN_DIRS)
    for directory in dirs:
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_probe(argv, timeout=COMMAND_TIMEOUT):
    """Run ``argv`` and return its stdout, or None if it is missing or fails."""
    path = find_command(argv[0])
    if path is None:
        return None
    env = dict(os.environ, LC_ALL='C', LANG='C')
    try:
        proc = subprocess.run(
            [path] + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode('utf-8', 'replace')


def read_meminfo(root='/'):
    """/proc/meminfo as ``{key: value_in_KiB_or_count}``."""
    values = {}
    for line in (read_optional_text(host_path(root, '/proc/meminfo')) or '').splitlines():
        if ':' not in line:
            continue
        key, rest = line.split(':', 1)
        parts = rest.split()
        if not parts:
            continue
        try:
            values[key.strip()] = int(parts[0])
        except ValueError:
            continue
    return values


def available_kib(meminfo):
    if 'MemAvailable' in meminfo:
        return meminfo['MemAvailable']
    if 'MemFree' not in meminfo:
        return None
    # Pre-3.14 kernels: what VDSM counts as free.
    return sum(meminfo.get(key, 0) for key in ('MemFree', 'Buffers', 'Cached', 'SReclaimable'))
