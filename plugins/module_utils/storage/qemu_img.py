# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one qemu-img wrapper: create, info, resize, convert.

Every call runs ``qemu-img`` with an argument list (never a shell), reads
``--output json`` where qemu-img offers it, and turns any failure into a
VirtnodeError carrying qemu-img's own message. Volume formats are given in
VDSM's words (``RAW``/``COW``) or qemu's (``raw``/``qcow2``).

Backing files: a qcow2 header names its backing file, and the header is
written by whoever holds the volume (a guest's image, another host, an NFS
client). qemu-img would open whatever it names: a host file (``/etc/shadow``),
``../`` paths into other images, ``json:``/``nbd:`` protocol names, a FIFO. So
qemu-img is never left to follow a header: :func:`backing_chain` reads each
layer's header alone (``qemu-img info`` without ``--backing-chain`` does not open
the backing) and accepts only a backing that is a volume file of the same image
directory, named by a plain relative name (VDSM writes the parent's volume UUID)
with an explicit raw/qcow2 format. Every command that would open a backing is
then given the checked chain as an explicit ``json:`` node tree ending in
``"backing": null``, so a header rewritten after the check is ignored, and
``create`` runs with ``-u`` (it would otherwise open the parent's chain).
"""

from __future__ import annotations

import json
import os
import stat

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

QEMU_IMG = 'qemu-img'
# VDSM creates qcow2 images compatible with QEMU >= 1.1 (domain version 4 and later).
QCOW2_COMPAT = '1.1'
PREALLOCATIONS = ('off', 'metadata', 'falloc', 'full')
_FORMATS = {'RAW': 'raw', 'COW': 'qcow2', 'raw': 'raw', 'qcow2': 'qcow2'}
DEFAULT_TIMEOUT = 3600
INFO_TIMEOUT = 120
# VDSM keeps chains far shorter; a longer one is a loop or a crafted image.
MAX_CHAIN_LENGTH = 128
BACKING_FORMATS = ('raw', 'qcow2')


def qemu_format(volume_format):
    """Return qemu's format name for a VDSM (``RAW``/``COW``) or qemu format name."""
    try:
        return _FORMATS[volume_format]
    except KeyError:
        raise VirtnodeError('unknown volume format %r (use RAW or COW)' % (volume_format,), {'field': 'format'}) from None


def _run(argv, timeout=None):
    return command.run_checked(argv, timeout or DEFAULT_TIMEOUT, label='qemu-img %s' % argv[1], install_hint='Debian: qemu-utils')


def _protocol_node(path):
    # The host_device driver for block volumes (LVs), file for the rest; never a protocol parsed from a name.
    try:
        is_block = stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        is_block = False
    return {'driver': 'host_device' if is_block else 'file', 'filename': path}


def _node(chain):
    """The qemu block node tree of ``chain`` [(path, fmt), ...], top first; the last layer has no backing."""
    path, fmt = chain[0]
    node = {'driver': fmt, 'file': _protocol_node(path)}
    if fmt == 'qcow2':
        node['backing'] = _node(chain[1:]) if len(chain) > 1 else None
    return node


def image_name(chain):
    """A ``json:`` file name that opens exactly ``chain`` and nothing its headers name."""
    return 'json:' + json.dumps(_node(chain), separators=(',', ':'), sort_keys=True)


def _refuse(path, message, backing=None):
    details = {'path': path}
    if backing is not None:
        details['backing'] = ascii(backing)
    raise VirtnodeError('refusing the backing file of %s: %s' % (path, message), details)


def _header(path, fmt):
    """``qemu-img info`` of the layer at ``path`` alone: its backing is not opened."""
    out = _run([QEMU_IMG, 'info', '--output', 'json', '-U', image_name([(path, fmt)])], timeout=INFO_TIMEOUT)
    try:
        data = json.loads(out)
    except ValueError as err:
        raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path}) from err
    if not isinstance(data, dict):
        raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path})
    return data


def check_backing_name(path, backing):
    """Return the path of ``backing`` if it names a volume file next to the image at ``path``.

    The name must be one plain path component (no ``/``, ``..``, protocol
    ``:`` or odd characters), and the entry a regular file of the same
    directory (or, for block volumes, a link to the LV of the same name).
    """
    if not isinstance(backing, str) or ':' in backing or validate.char_problem(backing, spaces=False):
        _refuse(path, 'backing file %s is not a volume name of the image (protocols and odd characters are refused)'
                % ascii(backing), backing)
    try:
        validate.safe_name(backing, 'backing file')
    except VirtnodeError:
        _refuse(path, 'backing file %s is not a volume of the same image directory' % ascii(backing), backing)
    directory = os.path.dirname(os.path.abspath(path))
    target = os.path.join(directory, backing)
    try:
        info = os.lstat(target)
    except OSError:
        _refuse(path, 'backing file %s does not exist in %s' % (ascii(backing), directory), backing)
    if stat.S_ISLNK(info.st_mode):
        # Block domains link each volume of an image to its LV: /dev/<domain>/<volume>.
        link = os.readlink(target)
        parts = link.split('/')
        if not (len(parts) == 4 and parts[:2] == ['', 'dev'] and parts[3] == backing and validate.char_problem(link) is None
                and os.path.exists(link) and stat.S_ISBLK(os.stat(link).st_mode)):
            _refuse(path, 'backing file %s is a link to %s, not to the volume\'s LV' % (ascii(backing), ascii(link)), backing)
    elif not stat.S_ISREG(info.st_mode):
        _refuse(path, 'backing file %s is not a regular file' % ascii(backing), backing)
    return target


def backing_chain(path, volume_format):
    """The checked chain of the image at ``path``: [(path, qemu format), ...], top first, base last.

    Raises VirtnodeError (``path``: the layer whose header is refused) for a
    backing that is not a volume of the same image directory, has no
    explicit raw/qcow2 format, or loops.
    """
    path = os.path.abspath(path)
    fmt = qemu_format(volume_format)
    chain = []
    while True:
        if any(path == seen for seen, _fmt in chain) or len(chain) >= MAX_CHAIN_LENGTH:
            _refuse(chain[-1][0], 'the backing chain loops or is longer than %d layers' % MAX_CHAIN_LENGTH)
        chain.append((path, fmt))
        if fmt != 'qcow2':
            return chain
        data = _header(path, fmt)
        backing = data.get('backing-filename')
        if backing is None:
            return chain
        target = check_backing_name(path, backing)
        full = data.get('full-backing-filename')
        if full is not None and os.path.normpath(os.path.join(os.path.dirname(path), full)) != target:
            _refuse(path, 'backing file %s resolves to %s' % (ascii(backing), ascii(full)), backing)
        backing_format = data.get('backing-filename-format')
        if backing_format not in BACKING_FORMATS:
            # Without it qemu would guess the format from the data, which a guest writes.
            _refuse(path, 'backing file %s has format %s; only an explicit raw or qcow2 is followed'
                    % (ascii(backing), ascii(backing_format)), backing)
        path, fmt = target, backing_format


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


def _checked_layers(path, fmt):
    # info() has a parameter named like backing_chain(): reach the function through here.
    return backing_chain(path, fmt)


def create(path, volume_format, size=None, backing=None, backing_format=None, preallocation=None):
    """Create an image at ``path``; ``backing`` is a volume name of the image's own directory.

    The parent's chain is checked first (see :func:`backing_chain`), and
    qemu-img runs with ``-u`` and an explicit size, since it would otherwise
    open the parent's whole chain as its header names it.
    """
    argv = create_argv(path, volume_format, size, backing, backing_format, preallocation)
    if backing is not None:
        parent = check_backing_name(path, backing)
        parent_chain = backing_chain(parent, backing_format or 'raw')
        if size is None:
            size = _virtual_size(_header(parent, parent_chain[0][1]), parent)
        argv = create_argv(path, volume_format, size, backing, backing_format, preallocation)
        argv.insert(2, '-u')
    _run(argv)


def info(path, backing_chain=False, volume_format=None):  # pylint: disable=redefined-outer-name
    """Return ``qemu-img info`` as a dict (or a list of dicts, top first, with ``backing_chain``).

    Each layer is read alone; a backing is only looked at after
    :func:`backing_chain` accepted it. Without ``volume_format`` the top's
    format is taken from qemu-img's probe (raw or qcow2 only).
    """
    path = os.path.abspath(path)
    if volume_format is None:
        out = _run([QEMU_IMG, 'info', '--output', 'json', '-U', 'json:' + json.dumps({'file': _protocol_node(path)})],
                   timeout=INFO_TIMEOUT)
        try:
            probed = json.loads(out)
        except ValueError as err:
            raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path}) from err
        if not backing_chain or not isinstance(probed, dict):
            return probed
        fmt = probed.get('format')
        if fmt not in BACKING_FORMATS:
            raise VirtnodeError('%s is a %s image; only raw and qcow2 are used' % (path, ascii(fmt)), {'path': path})
    else:
        fmt = qemu_format(volume_format)
    if not backing_chain:
        return _header(path, fmt)
    return [_header(layer, layer_fmt) for layer, layer_fmt in _checked_layers(path, fmt)]


def resize(path, size, volume_format):
    """Grow the image at ``path`` to ``size`` bytes (never shrinks); its backing is not opened."""
    _run([QEMU_IMG, 'resize', image_name([(os.path.abspath(path), qemu_format(volume_format))]), str(int(size))])


def convert_argv(src, dst, src_format, dst_format, preallocation=None):
    """Return the ``qemu-img convert`` command line (``src_format`` None: ``src`` is a ``json:`` name)."""
    fmt = qemu_format(dst_format)
    argv = [QEMU_IMG, 'convert', '-p', '-t', 'none', '-T', 'none']
    if src_format is not None:
        argv += ['-f', qemu_format(src_format)]
    argv += ['-O', fmt]
    options = []
    if fmt == 'qcow2':
        options.append('compat=%s' % QCOW2_COMPAT)
    if preallocation and preallocation != 'off':
        options.append('preallocation=%s' % preallocation)
    if options:
        argv += ['-o', ','.join(options)]
    return argv + [src, dst]


def measure(src, src_format, dst_format):
    """``qemu-img measure`` of a copy of ``src`` (its checked chain flattened) in ``dst_format``:
    ``{'required': bytes, 'fully-allocated': bytes}``."""
    chain = backing_chain(src, src_format)
    out = _run([QEMU_IMG, 'measure', '--output', 'json', '-O', qemu_format(dst_format), image_name(chain)], timeout=INFO_TIMEOUT)
    try:
        data = json.loads(out)
        return {key: int(data[key]) for key in ('required', 'fully-allocated')}
    except (ValueError, KeyError, TypeError) as err:
        raise VirtnodeError('qemu-img measure returned no sizes for %s' % src, {'path': src}) from err


def convert(src, dst, src_format, dst_format, preallocation=None):
    """Copy image ``src`` into a new image ``dst``, flattening its checked backing chain (see :func:`backing_chain`)."""
    chain = backing_chain(src, src_format)
    argv = convert_argv(image_name(chain), dst, None, dst_format, preallocation)
    try:
        _run(argv)
    except VirtnodeError:
        # O_DIRECT is not available on every file system (tmpfs); retry with the page cache.
        _run([arg for arg in argv if arg not in ('-t', '-T', 'none')])


def _virtual_size(data, path):
    try:
        return int(data['virtual-size'])
    except (KeyError, TypeError, ValueError) as err:
        raise VirtnodeError('qemu-img info gave no virtual size for %s' % path, {'path': path}) from err


def virtual_size(path, volume_format=None):
    """Capacity in bytes of the image at ``path``."""
    return _virtual_size(info(path, volume_format=volume_format), path)


def allocated_size(path):
    """Bytes allocated on storage for the file at ``path`` (0 if missing)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
