# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk images in and out of volumes: an image file (on the host or at a URL) imported into a new volume,
a volume exported to a file.

An import is checked completely before anything on storage changes: the URL
downloaded to a private temporary file, its checksum compared, the image's
format probed from its content and refused if it names other files
(:meth:`qemu_img.CopySource.external`). The copy itself is the store's
``create_volume``, so it is written ILLEGAL first and LEGAL when complete,
as any new volume.

An export reads the volume's checked chain (flattened) and writes the file
next to its destination under a temporary name, renamed into place once
complete and synced: the destination is never a half-written image.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img

URL_SCHEMES = ('http', 'https')
DOWNLOAD_TIMEOUT = 60           # seconds without data before a download fails
CHUNK = 4 * 1024 * 1024
CHECKSUM_ALGORITHMS = ('sha256', 'sha384', 'sha512', 'sha1', 'md5')
_CHECKSUM_RE = re.compile(r'^([a-z0-9]+):([0-9a-fA-F]+)$')
EXPORT_FORMATS = ('qcow2', 'raw')


def parse_checksum(text):
    """``(algorithm, hex digest)`` of ``algorithm:hex`` (as ``get_url`` takes it); refused when malformed."""
    if text is None:
        return None
    match = _CHECKSUM_RE.match(text.strip()) if isinstance(text, str) else None
    if not match or match.group(1) not in CHECKSUM_ALGORITHMS:
        raise VirtnodeError('checksum must be <algorithm>:<hex digest> with an algorithm of %s'
                            % ', '.join(CHECKSUM_ALGORITHMS), {'field': 'import_from.checksum'})
    algorithm, digest = match.group(1), match.group(2).lower()
    if len(digest) != hashlib.new(algorithm).digest_size * 2:
        expected = hashlib.new(algorithm).digest_size * 2
        raise VirtnodeError('a %s checksum has %d hex digits, not %d' % (algorithm, expected, len(digest)),
                            {'field': 'import_from.checksum'})
    return algorithm, digest


def check_url(url):
    """``url`` if it is an http(s) URL with a host, else refused."""
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in URL_SCHEMES or not parsed.hostname or validate.char_problem(url, spaces=False):
        raise VirtnodeError('import_from.url must be an http or https URL, not %s' % ascii(url), {'field': 'import_from.url'})
    return url


def check_local_path(path, field):
    """An absolute path without ``..`` or odd characters, outside VDSM's data-center tree (domains, pools)."""
    if not isinstance(path, str) or not os.path.isabs(path) or '..' in path.split('/') or validate.char_problem(path):
        raise VirtnodeError('%s must be an absolute path without ".." or control characters, not %s'
                            % (field, ascii(path)), {'field': field})
    real = os.path.realpath(path)
    root = os.path.realpath(paths.DATA_CENTER_ROOT)
    if real == root or real.startswith(root + '/'):
        raise VirtnodeError('%s %s is under %s, where storage domains are; they are changed through their volumes only'
                            % (field, path, paths.DATA_CENTER_ROOT), {'field': field})
    return os.path.normpath(path)


def _digest(path, algorithm):
    hasher = hashlib.new(algorithm)
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(CHUNK), b''):
            hasher.update(block)
    return hasher.hexdigest()


def verify(path, checksum):
    """Raise unless the file at ``path`` has ``checksum`` (``(algorithm, digest)``; None: nothing to check)."""
    if checksum is None:
        return
    algorithm, expected = checksum
    found = _digest(path, algorithm)
    if found != expected:
        raise VirtnodeError('checksum mismatch for %s: %s is %s, expected %s' % (path, algorithm, found, expected),
                            {'field': 'import_from.checksum', 'expected': expected, 'found': found})


def download(url, directory, timeout=DOWNLOAD_TIMEOUT):
    """Fetch ``url`` into a new private file of ``directory``; its path and size. The caller removes it."""
    # Imported here: the node agent shares this package but never downloads, and has no ansible.module_utils.
    from ansible.module_utils.urls import open_url  # pylint: disable=import-outside-toplevel

    fd, path = tempfile.mkstemp(prefix='.virtnode-import-', dir=directory)
    size = 0
    try:
        with os.fdopen(fd, 'wb') as out:
            with open_url(url, timeout=timeout, http_agent='virtnode.kvm', follow_redirects='safe') as answer:
                for block in iter(lambda: answer.read(CHUNK), b''):
                    out.write(block)
                    size += len(block)
    except (urllib.error.URLError, OSError, ValueError) as err:
        os.unlink(path)
        reason = getattr(err, 'reason', None) or err
        raise VirtnodeError('cannot download %s: %s' % (url, reason), {'field': 'import_from.url', 'url': url}) from err
    except BaseException:
        os.unlink(path)
        raise
    return path, size


@contextlib.contextmanager
def import_source(spec, download_dir=None):
    """The :class:`qemu_img.CopySource` an ``import_from`` spec names, checked, for the ``with`` body
    (a downloaded copy is removed after it). ``spec``: ``{path | url, checksum, format}``."""
    checksum = parse_checksum(spec.get('checksum'))
    fmt = spec.get('format')
    if (spec.get('path') is None) == (spec.get('url') is None):
        raise VirtnodeError('import_from needs one of path and url', {'field': 'import_from'})
    if spec.get('url') is not None:
        url = check_url(spec['url'])
        directory = check_local_path(download_dir or tempfile.gettempdir(), 'import_from.download_dir')
        path, size = download(url, directory)
        try:
            verify(path, checksum)
            source = qemu_img.CopySource.external(path, fmt)
            source.origin, source.size = url, size
            yield source
        finally:
            os.unlink(path)
        return
    path = check_local_path(spec['path'], 'import_from.path')
    verify(path, checksum)
    source = qemu_img.CopySource.external(path, fmt)
    source.origin, source.size = path, os.stat(path).st_size
    yield source


def import_capacity(source, size):
    """The new volume's capacity: ``size`` if given (not below the image's), else the image's virtual size
    rounded up to 512 bytes, at least 1 MiB."""
    needed = -(-source.virtual_size // 512) * 512
    if size is None:
        return max(needed, 1024 * 1024)
    if size < source.virtual_size:
        raise VirtnodeError('size %d is smaller than the image to import (%d bytes)' % (size, source.virtual_size),
                            {'field': 'size'})
    return size


def transfer_report(source, capacity=None):
    """What the module returns of a copy (``transfer``)."""
    report = {'source': getattr(source, 'origin', source.path), 'format': source.format,
              'virtual_size': source.virtual_size, 'progress': source.progress, 'seconds': source.seconds}
    if getattr(source, 'size', None) is not None:
        report['bytes'] = source.size
    if capacity is not None:
        report['capacity'] = capacity
    return report


def check_export(spec):
    """``(path, format)`` of an ``export_to`` spec, checked."""
    path = check_local_path(spec.get('path'), 'export_to.path')
    fmt = spec.get('format') or 'qcow2'
    if fmt not in EXPORT_FORMATS:
        raise VirtnodeError('export_to.format must be one of %s' % ', '.join(EXPORT_FORMATS), {'field': 'export_to.format'})
    if not os.path.isdir(os.path.dirname(path)):
        raise VirtnodeError('the directory of export_to.path %s does not exist' % path, {'field': 'export_to.path'})
    if os.path.isdir(path):
        raise VirtnodeError('export_to.path %s is a directory' % path, {'field': 'export_to.path'})
    return path, fmt


def export(volume_path, volume_format, dest, fmt):
    """Copy the volume at ``volume_path`` (its checked chain flattened) to the file ``dest``, replacing it
    only once the copy is complete; the :class:`qemu_img.CopySource` copied (its progress and time)."""
    source = qemu_img.VolumeCopy(volume_path, volume_format)
    directory = os.path.dirname(dest)
    fd, partial = tempfile.mkstemp(prefix='.%s.' % os.path.basename(dest), suffix='.part', dir=directory)
    os.close(fd)
    try:
        os.unlink(partial)  # qemu-img creates it
        source.convert(partial, fmt)
        with open(partial, 'rb') as stream:
            os.fsync(stream.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        fileio.fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    source.origin = volume_path
    source.virtual_size = qemu_img.virtual_size(dest, fmt)
    return source
