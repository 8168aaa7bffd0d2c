# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fail-soft readers of /proc and /sys: a missing or unreadable file gives None (or []), never an exception.

Every reader takes the path as seen under a ``root`` (see :func:`host_path`),
so tests can point it at a fake tree. Host facts, statistics and the SCSI
sysfs reader share them.
"""

from __future__ import annotations

import os


def host_path(root, path):
    """``path`` (absolute) seen under ``root``."""
    if not root or root == '/':
        return path
    return os.path.join(root, path.lstrip('/'))


def read_optional_text(path):
    """Content of ``path`` stripped of surrounding whitespace, or None when it cannot be read."""
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace').strip()
    except (OSError, ValueError):
        return None


def read_int(path):
    """Integer content of ``path``, or None."""
    text = read_optional_text(path)
    if text is None:
        return None
    try:
        return int(text, 0) if text.startswith('0x') else int(text)
    except ValueError:
        return None


def list_dir(path):
    """Sorted entries of the directory ``path``; ``[]`` when it cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
