# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one atomic writer, and its readers, for every file the collection keeps.

Every metadata file of a storage domain (``dom_md/metadata``, volume
``.meta`` files) is replaced as a whole: the new content goes to
``<path>.new`` in the same directory, is flushed to stable storage and is
then renamed over the target. A crash at any moment leaves either the old
or the new file, never a mix. VDSM uses the same ``.new`` name, so a
leftover from either side is recognised and simply overwritten next time.

Local state files (pool and SPM state, network configuration and
transactions, VM exit records) are JSON written through :func:`write_json`,
so they get the same guarantee.
"""

from __future__ import annotations

import json
import os
import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

TEMP_SUFFIX = '.new'
_ENOENT = 2


def fsync_directory(directory):
    """Make entries just created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path, data, mode=0o660):
    """Replace ``path`` with ``data`` (bytes) so readers see old or new, never half.

    The file gets exactly ``mode`` whatever the umask, because other hosts
    (vdsm, qemu) rely on group access to domain metadata.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VirtnodeError('refusing to write %s: data must be bytes, got %s' % (path, type(data).__name__))
    temp_path = path + TEMP_SUFFIX
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
        # The rename itself is only durable once the directory is synced.
        fsync_directory(directory)
    except OSError as err:
        _discard(temp_path)
        raise VirtnodeError('cannot write %s: %s' % (path, err.strerror or err),
                            {'path': path, 'errno': err.errno}) from err


def _read_text(path):
    try:
        with open(path, 'rb') as stream:
            raw = stream.read()
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err),
                            {'path': path, 'errno': err.errno}) from err
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise VirtnodeError('%s is not valid UTF-8 text: %s' % (path, err), {'path': path}) from err


def read_text(path, timeout=None):
    """Return the content of ``path`` decoded as UTF-8.

    With ``timeout`` (seconds) the read runs in a daemon thread so a hung
    NFS server costs the caller at most ``timeout`` instead of blocking it
    forever; the stuck thread is abandoned.
    """
    if timeout is None:
        return _read_text(path)
    outcome = {}

    def reader():
        try:
            outcome['text'] = _read_text(path)
        except VirtnodeError as err:
            outcome['error'] = err

    thread = threading.Thread(target=reader, name='read %s' % path, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise VirtnodeError('timed out after %ss reading %s (storage not responding?)' % (timeout, path),
                            {'path': path, 'timeout': timeout})
    if 'error' in outcome:
        raise outcome['error']
    return outcome['text']


def write_json(path, data, mode=0o644, dir_mode=0o755, indent=None):
    """Replace ``path`` with ``data`` as JSON (sorted keys), creating its directory if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=dir_mode, exist_ok=True)
    except OSError as err:
        raise VirtnodeError('cannot create %s: %s' % (directory, err.strerror or err),
                            {'path': directory, 'errno': err.errno}) from err
    write_atomic(path, (json.dumps(data, indent=indent, sort_keys=True) + '\n').encode('utf-8'), mode)


def read_json(path, default=None, lenient=False):
    """The JSON value in ``path``; ``default`` when the file does not exist.

    An unreadable or corrupt file raises VirtnodeError, or gives ``default``
    with ``lenient`` (for caches and records that are rebuilt when lost).
    """
    try:
        return json.loads(_read_text(path))
    except VirtnodeError as err:
        if lenient or err.details.get('errno') == _ENOENT:
            return default
        raise
    except ValueError as err:
        if lenient:
            return default
        raise VirtnodeError('%s is not valid JSON: %s' % (path, err), {'path': path}) from err
