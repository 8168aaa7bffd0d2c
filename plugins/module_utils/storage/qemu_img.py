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

Images imported from outside storage (:meth:`CopySource.external`) get the
same care: their format is probed from the content (raw, qcow2, vmdk, vdi,
vhdx), and one that names any other file (a backing file, a qcow2 external
data file, a VMDK descriptor with extents) is refused, so an import never
reads more than the one file given.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time

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
# What an image from outside storage may be; each is one self-contained file once the checks below pass.
IMPORT_FORMATS = ('raw', 'qcow2', 'vmdk', 'vdi', 'vhdx')
# VMDK variants that hold their data in the file itself (the descriptor embedded); the others name extent files.
SELF_CONTAINED_VMDK = ('monolithicSparse', 'streamOptimized')
VMDK_SPARSE_MAGIC = b'KDMV'
_PROGRESS_RE = re.compile(r'\((\d+(?:\.\d+)?)/100%\)')


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
    return _measure(image_name(backing_chain(src, src_format)), src, dst_format)


def convert(src, dst, src_format, dst_format, preallocation=None):
    """Copy image ``src`` into a new image ``dst``, flattening its checked backing chain (see :func:`backing_chain`);
    returns qemu-img's last progress figure."""
    return _convert(image_name(backing_chain(src, src_format)), dst, dst_format, preallocation)


def _measure(name, path, dst_format):
    out = _run([QEMU_IMG, 'measure', '--output', 'json', '-O', qemu_format(dst_format), name], timeout=INFO_TIMEOUT)
    try:
        data = json.loads(out)
        return {key: int(data[key]) for key in ('required', 'fully-allocated')}
    except (ValueError, KeyError, TypeError) as err:
        raise VirtnodeError('qemu-img measure returned no sizes for %s' % path, {'path': path}) from err


def _convert(name, dst, dst_format, preallocation=None):
    argv = convert_argv(name, dst, None, dst_format, preallocation)
    try:
        out = _run(argv)
    except VirtnodeError:
        # O_DIRECT is not available on every file system (tmpfs); retry with the page cache.
        out = _run([arg for arg in argv if arg not in ('-t', '-T', 'none')])
    return last_progress(out)


def last_progress(output):
    """The last percentage ``qemu-img convert -p`` printed (None if it printed none)."""
    found = _PROGRESS_RE.findall(output or '')
    return float(found[-1]) if found else None


class VolumeCopy:
    """A storage volume as the source of a copy, its checked backing chain flattened (:func:`convert`);
    :meth:`convert` records ``progress`` (qemu-img's last figure) and ``seconds``."""

    virtual_size = None   # a clone has its source's capacity; nothing to grow

    def __init__(self, path, volume_format):
        self.path, self.volume_format = os.path.abspath(path), volume_format
        self.format = qemu_format(volume_format)
        self.progress = self.seconds = None

    def measure(self, dst_format):
        """``{'required': bytes, 'fully-allocated': bytes}`` of a copy in ``dst_format``."""
        return measure(self.path, self.volume_format, dst_format)

    def convert(self, dst, dst_format, preallocation=None):
        """Copy into ``dst`` (a new file, or an LV); returns qemu-img's last progress figure."""
        started = time.monotonic()
        self.progress = convert(self.path, dst, self.volume_format, dst_format, preallocation)
        self.seconds = round(time.monotonic() - started, 3)
        return self.progress


class CopySource(VolumeCopy):
    """An image from outside storage as the source of a copy, opened alone through an explicit ``json:`` node
    (see the module's description), with its probed format and virtual size."""

    def __init__(self, name, fmt, virtual_size, path):  # pylint: disable=super-init-not-called
        self.name, self.format, self.virtual_size, self.path = name, fmt, virtual_size, path
        self.progress = self.seconds = None

    @classmethod
    def external(cls, path, fmt=None):
        """A regular file from outside storage, alone: its format probed (or ``fmt``, one of IMPORT_FORMATS),
        refused if it would make qemu open any other file, or is encrypted."""
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError as err:
            raise VirtnodeError('cannot read image %s: %s' % (path, err.strerror or err), {'path': path}) from err
        if not stat.S_ISREG(st.st_mode):
            raise VirtnodeError('image %s is not a regular file' % path, {'path': path})
        if fmt is None:
            fmt = info(path).get('format')
        if fmt not in IMPORT_FORMATS:
            raise VirtnodeError('image %s is in format %s; one of %s can be imported'
                                % (path, ascii(fmt), ', '.join(IMPORT_FORMATS)), {'path': path, 'format': ascii(fmt)})
        if fmt == 'vmdk':
            # A text descriptor names its extents by path: only the sparse variants, one file, are opened at all.
            with open(path, 'rb') as stream:
                if stream.read(4) != VMDK_SPARSE_MAGIC:
                    raise VirtnodeError('image %s is a VMDK descriptor naming extent files; import a single-file VMDK '
                                        '(%s)' % (path, ', '.join(SELF_CONTAINED_VMDK)), {'path': path})
        node = {'driver': fmt, 'file': _protocol_node(path)}
        if fmt == 'qcow2':
            node['backing'] = None
        name = 'json:' + json.dumps(node, separators=(',', ':'), sort_keys=True)
        data = _run([QEMU_IMG, 'info', '--output', 'json', '-U', name], timeout=INFO_TIMEOUT)
        try:
            data = json.loads(data)
        except ValueError as err:
            raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path}) from err
        _check_self_contained(path, fmt, data)
        return cls(name, fmt, _virtual_size(data, path), path)

    def measure(self, dst_format):
        return _measure(self.name, self.path, dst_format)

    def convert(self, dst, dst_format, preallocation=None):
        started = time.monotonic()
        self.progress = _convert(self.name, dst, dst_format, preallocation)
        self.seconds = round(time.monotonic() - started, 3)
        return self.progress


def _check_self_contained(path, fmt, data):
    """Refuse an image whose header names another file, or that is encrypted."""
    if not isinstance(data, dict):
        raise VirtnodeError('qemu-img info returned invalid JSON for %s' % path, {'path': path})
    if data.get('backing-filename') is not None:
        raise VirtnodeError('image %s has a backing file (%s); import a flattened image (qemu-img convert)'
                            % (path, ascii(data['backing-filename'])), {'path': path})
    if data.get('encrypted'):
        raise VirtnodeError('image %s is encrypted; import a decrypted image' % path, {'path': path})
    specific = (data.get('format-specific') or {}).get('data') or {}
    if fmt == 'qcow2' and specific.get('data-file') is not None:
        raise VirtnodeError('image %s keeps its data in another file (%s); import a qcow2 without an external data file'
                            % (path, ascii(specific['data-file'])), {'path': path})
    if fmt == 'vmdk':
        create_type = specific.get('create-type')
        extents = [extent.get('filename') for extent in specific.get('extents') or []]
        if create_type not in SELF_CONTAINED_VMDK or any(name != path for name in extents):
            raise VirtnodeError('image %s is a VMDK of type %s with extents %s; import a single-file VMDK (%s)'
                                % (path, ascii(create_type), ascii(extents), ', '.join(SELF_CONTAINED_VMDK)),
                                {'path': path})


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
