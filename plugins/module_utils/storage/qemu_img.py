# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one qemu-img wrapper: create, info, resize, convert.

Every call runs ``qemu-img`` with an argument list (never a shell), reads
``--output json`` where qemu-img offers it, and turns any failure into a
VirtnodeError carrying qemu-img's own message. Volume formats are given in
VDSM's words (``RAW``/``COW``) or qemu's (``raw``/``qcow2``).
"""

from __future__ import annotations

import json
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

QEMU_IMG = 'qemu-img'
# VDSM creates qcow2 images compatible with QEMU >= 1.1 (domain version 4 and later).
QCOW2_COMPAT = '1.1'
PREALLOCATIONS = ('off', 'metadata', 'falloc', 'full')
_FORMATS = {'RAW': 'raw', 'COW': 'qcow2', 'raw': 'raw', 'qcow2': 'qcow2'}
DEFAULT_TIMEOUT = 3600


def qemu_format(volume_format):
    """Return qemu's format name for a VDSM (``RAW``/``COW``) or qemu format name."""
    try:
        return _FORMATS[volume_format]
    except KeyError:
        raise VirtnodeError('unknown volume format %r (use RAW or COW)' % (volume_format,), {'field': 'format'}) from None


def _run(argv, timeout=DEFAULT_TIMEOUT):
    return command.run_checked(argv, timeout, label='qemu-img %s' % argv[1], install_hint='Debian: qemu-utils')


def create_argv(path, volume_format, size=None, backing=None, backing_format=None, preallocation=None):
    """Return the ``qemu-img create`` command line (used by :func:`create`, exposed for tests)."""
    fmt = qemu_format(volume_format)
    argv = [QEMU_IMG, 'create', '-f', fmt]
    options = []
    if fmt == 'qcow2':
        options.append('compat=%s' % QCOW2_COMPAT)
    if preallocation and preallocation != 'off':
        if preallocation not in PREALLOCATIONS:
            raise VirtnodeError('unknown preallocation %r' % (preallocation,), {'field': 'preallocation'})
        options.append('preallocation=%s' % preallocation)
    if options:
        argv += ['-o', ','.join(options)]
    if backing is not None:
        if fmt != 'qcow2':
            raise VirtnodeError('only COW (qcow2) volumes can have a backing file', {'field': 'format'})
        argv += ['-b', backing, '-F', qemu_format(backing_format or 'raw')]
    argv.append(path)
    if size is not None:
        argv.append(str(int(size)))
    elif backing is None:
        raise VirtnodeError('a size is needed for an image without a backing file', {'field': 'size'})
    return argv


def create(path, volume_format, size=None, backing=None, backing_format=None, preallocation=None):
    """Create an image at ``path``; ``backing`` is taken relative to the image's directory."""
    _run(create_argv(path, volume_format, size, backing, backing_format, preallocation))


def info(path, backing_chain=False):
    """Return ``qemu-img info`` as a dict (or a list of dicts with ``backing_chain``)."""
    argv = [QEMU_IMG, 'info', '--output', 'json', '-U']
    if backing_chain:
        argv.append('--backing-chain')
    argv.append(path)
    out = _run(argv, timeout=120)
    try:
        return json.loads(out)
    except ValueError as err:
        raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path}) from err


def resize(path, size, volume_format):
    """Grow the image at ``path`` to ``size`` bytes (never shrinks)."""
    _run([QEMU_IMG, 'resize', '-f', qemu_format(volume_format), path, str(int(size))])


def convert_argv(src, dst, src_format, dst_format, preallocation=None):
    """Return the ``qemu-img convert`` command line."""
    fmt = qemu_format(dst_format)
    argv = [QEMU_IMG, 'convert', '-p', '-t', 'none', '-T', 'none', '-f', qemu_format(src_format), '-O', fmt]
    options = []
    if fmt == 'qcow2':
        options.append('compat=%s' % QCOW2_COMPAT)
    if preallocation and preallocation != 'off':
        options.append('preallocation=%s' % preallocation)
    if options:
        argv += ['-o', ','.join(options)]
    return argv + [src, dst]


def convert(src, dst, src_format, dst_format, preallocation=None):
    """Copy image ``src`` into a new image ``dst`` (flattening any backing chain)."""
    argv = convert_argv(src, dst, src_format, dst_format, preallocation)
    try:
        _run(argv)
    except VirtnodeError:
        # O_DIRECT is not available on every file system (tmpfs); retry with the page cache.
        _run([arg for arg in argv if arg not in ('-t', '-T', 'none')])


def virtual_size(path):
    """Capacity in bytes of the image at ``path``."""
    return int(info(path)['virtual-size'])


def allocated_size(path):
    """Bytes allocated on storage for the file at ``path`` (0 if missing)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
