# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one atomic writer, and its readers, for every file the collection keeps.

Every metadata file of a storage domain (``dom_md/metadata``, volume
``.meta`` files) is replaced as a whole: the new content goes to a hidden
temp file of that one write in the same directory, is flushed to stable
storage and is then renamed over the target. A crash at any moment leaves
either the old or the new file, never a mix; concurrent writers never share
a temp file. VDSM's writer uses ``<path>.new``; a leftover of it is removed
after our next write, and readers skip both kinds of temp name
(:func:`is_temp_name`).

Shared storage is written by other hosts, so nothing on it is trusted: no
link below the domain directory is followed, only regular files are read,
and every read is bounded in size and time (:func:`read_bounded`).

Whatever is created on a storage domain belongs to VDSM's ``vdsm:kvm``
(36:36, :data:`STORAGE_OWNER`), so VDSM hosts sharing the storage can
read and write it (:func:`set_owner`, :func:`make_dirs`).

Local state files (pool and SPM state, network configuration and
transactions, VM exit records) are JSON written through :func:`write_json`,
so they get the same guarantee.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.common import deadline
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

TEMP_SUFFIX = '.new'
# Our own temp files are hidden (VDSM's globs and scans skip dot files) and unique per write.
TEMP_PREFIX = '.'
OWN_TEMP_SUFFIX = '.tmp'
_ENOENT = 2
# Anything read from shared storage is bounded: a link to /dev/zero or a huge file must not
# exhaust memory. Callers pass a limit that fits what they read; this is the default.
DEFAULT_READ_LIMIT = 1024 ** 2
# Local JSON state is larger (network transactions) but still bounded.
JSON_READ_LIMIT = 64 * 1024 ** 2
# A read abandoned after its timeout leaves a thread stuck in the kernel (hung NFS): at most
# this many may be pending before further reads are refused instead of leaking more threads.
MAX_PENDING_READS = 16
_PENDING_READS = threading.BoundedSemaphore(MAX_PENDING_READS)
# VDSM's vdsm user and kvm group (uid and gid 36 on every oVirt host): the owner of everything on a storage domain.
STORAGE_OWNER = (36, 36)


def set_owner(fd, owner):
    """Give the open file ``fd`` the numeric ``owner`` ``(uid, gid)``; None leaves it as created.

    Where this process may not (not root, or an NFS export that squashes
    root), the storage decides: VDSM asks such exports to map root to 36:36.
    """
    if owner is None:
        return
    try:
        os.fchown(fd, *owner)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EINVAL):
            raise


def make_dirs(path, mode, owner=None):
    """``os.makedirs(path, exist_ok=True)``, each directory it creates getting exactly ``mode`` and ``owner``."""
    parent = os.path.dirname(path.rstrip('/'))
    if parent and parent != path and not os.path.isdir(parent):
        make_dirs(parent, mode, owner)
    try:
        os.mkdir(path)
    except FileExistsError:
        if os.path.isdir(path):
            return
        raise
    set_mode_owner(path, mode, owner)  # mkdir's mode is filtered by the umask


def set_mode_owner(path, mode, owner=None):
    """Give the file or directory ``path`` (not followed if it is a link) exactly ``mode`` and ``owner``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        set_owner(fd, owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def is_temp_name(name):
    """True for temp files of any atomic writer (ours and VDSM's ``.new``): readers skip them."""
    return name.endswith(TEMP_SUFFIX) or (name.startswith(TEMP_PREFIX) and name.endswith(OWN_TEMP_SUFFIX))


def fsync_directory(directory):
    """Make entries just created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse(path, why, **details):
    details.setdefault('path', path)
    return VirtnodeError('refusing %s: %s' % (path, why), details)


def _split_beneath(path, root):
    """``(directory, [components below it], name)`` of ``path``; ``root`` defaults to its directory.

    ``root`` is trusted as it is (a mount point, a pool link); every component
    below it is opened without following links, so ``..`` is refused outright.
    """
    if not isinstance(path, str) or not path or '\0' in path:
        raise _refuse(repr(path), 'not a valid path')
    if '..' in path.split('/'):
        raise _refuse(path, 'the path contains a ".." component')
    if root is None:
        root, name = os.path.split(path)
        return root or '.', [], name
    root = root.rstrip('/') or '/'
    prefix = root if root == '/' else root + '/'
    if not path.startswith(prefix):
        raise _refuse(path, 'it is not inside %s' % root, root=root)
    parts = path[len(prefix):].split('/')
    if any(part in ('', '.') for part in parts):
        raise _refuse(path, 'empty or "." component below %s' % root, root=root)
    return root, parts[:-1], parts[-1]


def _link_error(path, name, dir_fd, err, action):
    """The clear error for an open that failed on ``name`` inside ``dir_fd``."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return _refuse(path, '%s is a symbolic link (links on shared storage are never followed)' % name,
                       errno=err.errno)
    return VirtnodeError('cannot %s %s: %s' % (action, path, err.strerror or err), {'path': path, 'errno': err.errno})


def _open_directory(path, root, parts, action):
    """A file descriptor of ``root``/``parts``, each part opened without following links."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise VirtnodeError('cannot %s %s: %s' % (action, path, err.strerror or err), {'path': path, 'errno': err.errno}) from err
    for part in parts:
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as err:
            error = _link_error(path, part, fd, err, action)
            os.close(fd)
            raise error from err
        os.close(fd)
        fd = child
    return fd


def open_beneath(path, flags, root=None, mode=0o600, regular=True, action='open'):
    """Open ``path`` with no link followed below ``root`` (default: its directory); a file descriptor.

    With ``regular`` anything but a regular file (device, FIFO, socket,
    directory) is refused. Opens never block on a FIFO (O_NONBLOCK is used
    for the open and cleared afterwards).
    """
    directory, parts, name = _split_beneath(path, root)
    dir_fd = _open_directory(path, directory, parts, action)
    try:
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as err:
            raise _link_error(path, name, dir_fd, err, action) from err
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if regular and not stat.S_ISREG(st.st_mode):
            raise _refuse(path, 'it is not a regular file (mode %o)' % st.st_mode)
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_lv_path(path):
    """True for ``/dev/<vg>/<lv>``: where a block storage domain's areas and volumes are."""
    parts = os.path.normpath(path).split('/')
    return len(parts) == 4 and parts[:2] == ['', 'dev'] and all(part not in ('', '.', '..') for part in parts[2:])


def _dm_name(rdev):
    try:
        with open('/sys/dev/block/%d:%d/dm/name' % (os.major(rdev), os.minor(rdev)), encoding='utf-8') as stream:
            return stream.read().strip()
    except OSError:
        return None


def open_logical_volume(path, flags):
    """Open the active logical volume ``/dev/<vg>/<lv>``; a file descriptor.

    LVM's link must lead to a block device whose device-mapper name is that
    LV's (``-`` doubled in each part): nothing else on the host is opened in
    its place, whatever the link says.
    """
    if not is_lv_path(path):
        raise _refuse(path, 'it is not the path of a logical volume (/dev/<vg>/<lv>)')
    _dev, _top, vg_name, lv_name = os.path.normpath(path).split('/')
    real = os.path.realpath(path)
    try:
        fd = os.open(real, flags | os.O_CLOEXEC)
    except OSError as err:
        raise VirtnodeError('cannot open %s: %s (is the logical volume active on this host?)' % (path, err.strerror or err),
                            {'path': path, 'errno': err.errno}) from err
    try:
        st = os.fstat(fd)
        expected = '%s-%s' % (vg_name.replace('-', '--'), lv_name.replace('-', '--'))  # device-mapper's name of the LV
        if not stat.S_ISBLK(st.st_mode) or _dm_name(st.st_rdev) != expected:
            raise _refuse(path, 'it leads to %s, not the device of that logical volume' % real)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_storage(path, flags, root=None, action='open'):
    """Open a lease area or volume on shared storage: an active LV, else a regular file beneath ``root``."""
    if is_lv_path(path):
        return open_logical_volume(path, flags)
    return open_beneath(path, flags, root=root, action=action)


_DIRECT = getattr(os, 'O_DIRECT', 0)


def open_storage_direct(path, flags, root=None):
    """:func:`open_storage` with O_DIRECT: what is read is on storage, not in this host's page cache (another
    host may have just written it), and what is written is there when the call returns. File systems
    that refuse O_DIRECT (tmpfs) get the page cache."""
    if _DIRECT:
        try:
            return open_storage(path, flags | _DIRECT, root=root)
        except VirtnodeError as err:
            if err.details.get('errno') != errno.EINVAL:
                raise
    return open_storage(path, flags, root=root)


def stat_beneath(path, root=None):
    """``os.stat_result`` of the regular file ``path`` reached without following links below ``root``."""
    fd = open_beneath(path, os.O_RDONLY, root)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _discard(name, dir_fd):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def write_atomic(path, data, mode=0o660, root=None, owner=None):
    """Replace ``path`` with ``data`` (bytes) so readers see old or new, never half.

    The new content goes to a temp file of this write's own (created with
    O_EXCL|O_NOFOLLOW, so neither a planted link nor a concurrent writer is
    ever written through), is synced and renamed over the target, and the
    directory is synced. Nothing below ``root`` (default: the file's
    directory) is followed if it is a link, and a target that is a link or
    not a regular file is refused. The file gets exactly ``mode`` whatever
    the umask, because other hosts (vdsm, qemu) rely on group access to
    domain metadata, and ``owner`` (see :func:`set_owner`).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VirtnodeError('refusing to write %s: data must be bytes, got %s' % (path, type(data).__name__))
    directory, parts, name = _split_beneath(path, root)
    dir_fd = _open_directory(path, directory, parts, 'write')
    temp = None
    try:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _refuse(path, 'it is a symbolic link (links on shared storage are never followed)')
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _refuse(path, 'it is not a regular file (mode %o)' % st.st_mode)
        temp = '%s%s.%s%s' % (TEMP_PREFIX, name, secrets.token_hex(8), OWN_TEMP_SUFFIX)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            set_owner(fd, owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        temp = None
        # A leftover of VDSM's writer (or of an older version of this one) is garbage from a crash;
        # unlink never follows a link, and whatever else is there must not fail a write that is done.
        try:
            _discard(name + TEMP_SUFFIX, dir_fd)
        except OSError:
            pass
        # The rename itself is only durable once the directory is synced.
        os.fsync(dir_fd)
    except OSError as err:
        raise VirtnodeError('cannot write %s: %s' % (path, err.strerror or err),
                            {'path': path, 'errno': err.errno}) from err
    finally:
        if temp is not None:
            try:
                _discard(temp, dir_fd)
            except OSError:
                pass
        os.close(dir_fd)


def _read_limited(path, limit, root):
    fd = open_beneath(path, os.O_RDONLY, root, action='read')
    try:
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err),
                            {'path': path, 'errno': err.errno}) from err
    finally:
        os.close(fd)
    data = b''.join(chunks)
    if len(data) > limit:
        raise _refuse(path, 'it is larger than the %d bytes such a file may have' % limit, limit=limit)
    return data


def read_bounded(path, limit=DEFAULT_READ_LIMIT, timeout=None, root=None):
    """The bytes of the regular file ``path``: the one reader of anything on shared storage.

    Refuses links (below ``root``, default the file's directory), FIFOs,
    devices and files larger than ``limit`` bytes without reading more than
    ``limit + 1``. With ``timeout`` (seconds) the read runs in a daemon
    thread so a hung NFS server costs the caller at most ``timeout``; the
    stuck thread is abandoned, and once MAX_PENDING_READS are stuck further
    reads fail at once instead of piling up threads.
    """
    if timeout is None:
        return _read_limited(path, limit, root)
    pending = _PENDING_READS
    if not pending.acquire(blocking=False):  # pylint: disable=consider-using-with
        raise VirtnodeError('refusing to read %s: %d earlier reads are still stuck (storage not responding?)'
                            % (path, MAX_PENDING_READS), {'path': path, 'timeout': timeout})

    def read_and_release():
        try:
            return _read_limited(path, limit, root)
        finally:
            pending.release()

    return deadline.call_within(timeout, read_and_release,
                                'timed out after %ss reading %s (storage not responding?)' % (timeout, path),
                                {'path': path, 'timeout': timeout}, name='read %s' % path)


def _decode(path, raw):
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise VirtnodeError('%s is not valid UTF-8 text: %s' % (path, err), {'path': path}) from err


def read_text(path, timeout=None, limit=DEFAULT_READ_LIMIT, root=None):
    """Return the content of ``path`` decoded as UTF-8 (see :func:`read_bounded`)."""
    return _decode(path, read_bounded(path, limit, timeout, root))


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
        return json.loads(_decode(path, read_bounded(path, JSON_READ_LIMIT)))
    except VirtnodeError as err:
        if lenient or err.details.get('errno') == _ENOENT:
            return default
        raise
    except ValueError as err:
        if lenient:
            return default
        raise VirtnodeError('%s is not valid JSON: %s' % (path, err), {'path': path}) from err
