# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one sanlock wrapper of virtnode.kvm.

* ``import sanlock`` is optional (``HAS_SANLOCK`` / ``SANLOCK_IMPORT_ERROR``),
  so modules report a clean "missing library" error instead of a traceback.
* Names are passed as ``str`` and encoded here; sanlock wants bytes.
* ``sanlock.SanlockException`` never escapes: it becomes a
  :class:`VirtnodeError` whose message says what the error number means
  (``EEXIST``/``EBUSY``/``-243`` on acquire: the lease is held by a live host,
  named when the lease's owners can be read).

Only the calls the storage code needs are wrapped. Lockspaces are held by
the sanlock daemon and survive the calling process; resource leases belong
to the process that acquired them (its ``register()`` connection) and are
released by sanlock at once when that process exits.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
import traceback

from ansible_collections.virtnode.kvm.plugins.module_utils.common import deadline
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

try:
    import sanlock
except ImportError:
    sanlock = None
    HAS_SANLOCK = False
    SANLOCK_IMPORT_ERROR = traceback.format_exc()

    class SanlockException(Exception):
        """Stand-in for ``sanlock.SanlockException`` when the bindings are missing."""

else:
    HAS_SANLOCK = True
    SANLOCK_IMPORT_ERROR = None
    SanlockException = sanlock.SanlockException

SANLOCK_REQUIREMENT = 'sanlock python bindings (Debian: python3-sanlock)'

DEFAULT_ALIGNMENT = 1024 ** 2
DEFAULT_SECTOR = 512
MIN_HOST_ID = 1
MAX_HOST_ID = 2000
# How long an inquire waits out a process that is busy with another sanlock command.
INQUIRE_BUSY_WAIT = 2.0

# sanlock's own return codes (sanlock_rv.h); the binding passes them as negative errno values.
SANLK_LEADER_MAGIC = -223
SANLK_ACQUIRE_IDLIVE = -243
SANLK_ACQUIRE_OWNED = -244
SANLK_ACQUIRE_OTHER = -245
SANLK_ACQUIRE_SHRETRY = -246
SANLK_ACQUIRE_OWNED_RETRY = -247

_HELD_ERRNOS = (errno.EEXIST, errno.EBUSY, errno.EAGAIN, SANLK_ACQUIRE_IDLIVE, SANLK_ACQUIRE_OWNED,
                SANLK_ACQUIRE_OTHER, SANLK_ACQUIRE_SHRETRY, SANLK_ACQUIRE_OWNED_RETRY)

_MEANINGS = {
    errno.EEXIST: 'already held (by this host)',
    errno.EBUSY: 'busy: held by another host',
    errno.EAGAIN: 'temporarily unavailable (held by another host, or sanlock is still joining the lockspace)',
    errno.ENOENT: 'no such lockspace or resource (has this host joined the lockspace?)',
    errno.EINVAL: 'invalid argument (wrong offset, alignment or uninitialised lease area?)',
    errno.EPERM: 'not permitted',
    errno.EINPROGRESS: 'in progress: sanlock is still adding or removing the lockspace',
    errno.ECONNREFUSED: 'cannot reach the sanlock daemon (is it running?)',
    errno.ENOSPC: 'no space for the lease on storage',
    SANLK_LEADER_MAGIC: 'no sanlock lease at this offset (area not initialised)',
    SANLK_ACQUIRE_IDLIVE: 'held by another live host',
    SANLK_ACQUIRE_OWNED: 'owned by another host',
    SANLK_ACQUIRE_OTHER: 'held by another host',
    SANLK_ACQUIRE_SHRETRY: 'held shared by another host, retry later',
    SANLK_ACQUIRE_OWNED_RETRY: 'owned by another host, retry later',
}


def require_sanlock(module):
    """Fail ``module`` with the standard missing-library message unless sanlock imports."""
    if HAS_SANLOCK:
        return
    from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
    module.fail_json(msg=missing_required_lib(SANLOCK_REQUIREMENT), exception=SANLOCK_IMPORT_ERROR)


def _need():
    if not HAS_SANLOCK:
        raise VirtnodeError('the sanlock python bindings are not installed; %s is required' % SANLOCK_REQUIREMENT,
                            {'import_error': SANLOCK_IMPORT_ERROR})


def _b(value):
    return value.encode('utf-8') if isinstance(value, str) else value


def _s(value):
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else value


def error_errno(exc):
    """The error number of a SanlockException (None if it has none)."""
    number = getattr(exc, 'errno', None)
    if number is None and exc.args and isinstance(exc.args[0], int):
        number = exc.args[0]
    return number


def meaning(number):
    """Human meaning of a sanlock error number."""
    if number in _MEANINGS:
        return _MEANINGS[number]
    if isinstance(number, int) and 0 < number < 200:
        return errno.errorcode.get(number, 'error %d' % number)
    return 'sanlock error %s' % number


def is_held_error(exc):
    """True if ``exc`` means a lease is held by someone else."""
    return error_errno(exc) in _HELD_ERRNOS


def to_error(exc, what, owner_host_id=None):
    """Return a VirtnodeError for SanlockException ``exc`` raised while doing ``what``."""
    number = error_errno(exc)
    text = meaning(number)
    if owner_host_id is not None and number in _HELD_ERRNOS:
        text = 'held by host %s' % owner_host_id
    details = {'errno': number, 'sanlock_error': str(exc)}
    if owner_host_id is not None:
        details['owner_host_id'] = owner_host_id
    return VirtnodeError('%s failed: %s' % (what, text), details)


# ------------------------------------------------------------------ the daemon's access to lease files

SANLOCK_PIDFILE = '/run/sanlock/sanlock.pid'


def daemon_credentials(pidfile=None, proc='/proc'):
    """``(uid, gid, groups)`` the sanlock daemon runs with (effective ids), or None if root or unknown."""
    try:
        with open(pidfile or SANLOCK_PIDFILE) as stream:
            pid = int(stream.read().split()[0])
        with open(os.path.join(proc, str(pid), 'status')) as stream:
            fields = dict(line.split(':', 1) for line in stream if ':' in line)
        uid, gid = int(fields['Uid'].split()[1]), int(fields['Gid'].split()[1])
        groups = {int(group) for group in fields.get('Groups', '').split()}
    except (OSError, ValueError, IndexError, KeyError):
        return None
    return None if uid == 0 else (uid, gid, groups | {gid})


def _may_read_write(st, creds):
    uid, _gid, groups = creds
    if st.st_uid == uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in groups:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def _access_problem(path, creds):
    """Why the daemon with ``creds`` cannot open ``path`` read-write (None if it can, or cannot be told)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if _may_read_write(st, creds):
        return None
    return ('the sanlock daemon (uid %d, groups %s) cannot read and write %s (owner %d:%d, mode %04o)'
            % (creds[0], ','.join(str(g) for g in sorted(creds[2])), path, st.st_uid, st.st_gid,
               stat.S_IMODE(st.st_mode)))


def give_to_daemon(path, creds=None):
    """Let the sanlock daemon read and write the lease file ``path`` before it is handed to the daemon.

    Packaged sanlock runs as its own user (sanlock:sanlock on Debian and EL).
    Lease files are vdsm:kvm (36:36) with mode 0660, and the bootstrap role
    makes sanlock a member of gid 36, as VDSM's host set-up does: then nothing
    changes here. On a host where sanlock is not a member, sanlock would fail
    with ENODEV, so a regular file, or a block domain's LV, gets the daemon's
    group and g+rw instead (VDSM hosts sharing that storage then lose access
    to it until the group is 36 again).
    """
    creds = creds or daemon_credentials()
    if creds is None:
        return
    try:
        st = os.stat(path)
    except OSError:
        return  # sanlock reports the missing file itself
    if _may_read_write(st, creds):
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise VirtnodeError(_access_problem(path, creds), {'path': path})
    try:
        os.chown(path, -1, creds[1])
        os.chmod(path, stat.S_IMODE(st.st_mode) | 0o060)
    except OSError as err:
        raise VirtnodeError('%s, and its group cannot be changed: %s' % (_access_problem(path, creds), err.strerror),
                            {'path': path, 'errno': err.errno}) from err


def _failed(exc, what, path, owner_host_id=None):
    """to_error, saying so when the daemon cannot open ``path`` (sanlock itself only says ENODEV)."""
    error = to_error(exc, what, owner_host_id)
    creds = daemon_credentials() if error_errno(exc) in (errno.ENODEV, errno.EACCES, errno.EPERM) else None
    problem = _access_problem(path, creds) if creds else None
    if problem:
        return VirtnodeError('%s (%s)' % (error.message, problem), dict(error.details, path=path))
    return error


def check_host_id(host_id):
    """Return ``host_id`` if it is a valid sanlock host id (1..2000)."""
    if isinstance(host_id, bool) or not isinstance(host_id, int) or not MIN_HOST_ID <= host_id <= MAX_HOST_ID:
        raise VirtnodeError('host id must be an integer from %d to %d, got %r' % (MIN_HOST_ID, MAX_HOST_ID, host_id),
                            {'field': 'host_id'})
    return host_id


def write_lockspace(lockspace, path, io_timeout=0, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Initialise the lockspace ``lockspace`` on ``path`` (offset 0)."""
    _need()
    give_to_daemon(path)
    try:
        sanlock.write_lockspace(_b(lockspace), path, iotimeout=io_timeout, align=alignment, sector=sector)
    except SanlockException as exc:
        raise _failed(exc, 'initialising lockspace %s on %s' % (lockspace, path), path) from exc


def read_lockspace(path, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Return the lockspace written on ``path`` as a dict, or None if what is there is no lockspace.

    Any other failure (I/O error, timeout) raises: it says nothing about what
    is on storage, so it must never be taken for an empty area.
    """
    _need()
    try:
        found = sanlock.read_lockspace(path, align=alignment, sector=sector)
    except SanlockException as exc:
        if error_errno(exc) == SANLK_LEADER_MAGIC:
            return None
        raise _failed(exc, 'reading lockspace on %s' % path, path) from exc
    return {'lockspace': _s(found.get('lockspace')), 'io_timeout': found.get('iotimeout')}


AREA_READ_TIMEOUT = 30
_AREA_CHUNK = 1024 ** 2
_PAGE = 4096


def _area_blank(path, offset, length):
    # No link is followed on a file domain: a planted link to a blank file must not
    # pass for the area (a block domain's LV is checked to be that LV).
    fd = fileio.open_storage_direct(path, os.O_RDONLY)
    # An anonymous mmap is page aligned, as O_DIRECT wants; reads are whole pages.
    buf = mmap.mmap(-1, _AREA_CHUNK)
    try:
        done = 0
        while done < length:
            want = min(_AREA_CHUNK, -(-(length - done) // _PAGE) * _PAGE)
            try:
                with memoryview(buf) as whole, whole[:want] as view:
                    got = os.preadv(fd, [view], offset + done)
            except OSError as err:
                raise VirtnodeError('cannot read %s at %d: %s' % (path, offset + done, err.strerror or err),
                                    {'path': path, 'errno': err.errno}) from err
            if got == 0:
                return True           # past the end of the file: never written
            got = min(got, length - done)
            if buf[:got].count(0) != got:
                return False
            done += got
        return True
    finally:
        buf.close()
        os.close(fd)


def area_is_blank(path, offset, length, timeout=AREA_READ_TIMEOUT):
    """True if the ``length`` bytes at ``offset`` of ``path`` were provably never written.

    Provably: every byte was read and is zero, or lies past the end of the
    file. False as soon as one byte is set. Anything that prevents reading
    the whole area (missing file, a link, not a regular file, I/O error,
    ``timeout`` seconds without an answer) raises VirtnodeError, so a lease
    area is never formatted because it could not be read.
    """
    return deadline.call_within(timeout, lambda: _area_blank(path, offset, length),
                                'timed out after %ss reading %s (storage not responding?)' % (timeout, path),
                                {'path': path, 'timeout': timeout}, name='read %s' % path)


def write_resource(lockspace, resource, path, offset=0, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Initialise resource lease ``resource`` at ``offset`` of ``path``."""
    _need()
    give_to_daemon(path)
    try:
        sanlock.write_resource(_b(lockspace), _b(resource), [(path, offset)], align=alignment, sector=sector)
    except SanlockException as exc:
        raise _failed(exc, 'initialising lease %s on %s:%d' % (resource, path, offset), path) from exc


def read_resource(path, offset=0, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Return ``{'lockspace', 'resource', 'version'}`` of the lease at ``offset``, or None if none."""
    _need()
    try:
        found = sanlock.read_resource(path, offset, align=alignment, sector=sector)
    except SanlockException as exc:
        if error_errno(exc) in (SANLK_LEADER_MAGIC, errno.EINVAL, errno.ENODATA):
            return None
        raise _failed(exc, 'reading lease at %s:%d' % (path, offset), path) from exc
    if not found.get('resource'):
        return None
    return {'lockspace': _s(found['lockspace']), 'resource': _s(found['resource']), 'version': found.get('version')}


def resource_owners(lockspace, resource, path, offset=0, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Return the host ids recorded as owners of a lease (may include dead hosts)."""
    _need()
    try:
        owners = sanlock.read_resource_owners(_b(lockspace), _b(resource), [(path, offset)], align=alignment, sector=sector)
    except SanlockException as exc:
        raise _failed(exc, 'reading owners of lease %s' % resource, path) from exc
    return sorted(owner['host_id'] for owner in owners)


def add_lockspace(lockspace, host_id, path, io_timeout=0, wait=True):
    """Join ``lockspace`` with ``host_id``; returns False if it was already joined."""
    _need()
    check_host_id(host_id)
    give_to_daemon(path)
    try:
        sanlock.add_lockspace(_b(lockspace), host_id, path, iotimeout=io_timeout, wait=wait)
    except SanlockException as exc:
        if error_errno(exc) == errno.EEXIST:
            return False
        raise _failed(exc, 'joining lockspace %s as host %d' % (lockspace, host_id), path) from exc
    return True


def rem_lockspace(lockspace, host_id, path):
    """Leave ``lockspace``; returns False if it was not joined."""
    _need()
    try:
        sanlock.rem_lockspace(_b(lockspace), host_id, path)
    except SanlockException as exc:
        if error_errno(exc) == errno.ENOENT:
            return False
        raise to_error(exc, 'leaving lockspace %s' % lockspace) from exc
    return True


def inq_lockspace(lockspace, host_id, path):
    """True if this host holds ``host_id`` in the lockspace, False if not, None while joining."""
    _need()
    try:
        return sanlock.inq_lockspace(_b(lockspace), host_id, path)
    except SanlockException as exc:
        raise to_error(exc, 'querying lockspace %s' % lockspace) from exc


def lockspaces():
    """Return the lockspaces the local sanlock daemon holds: ``{name: {'host_id', 'path'}}``."""
    _need()
    try:
        found = sanlock.get_lockspaces()
    except SanlockException as exc:
        raise to_error(exc, 'listing lockspaces') from exc
    return {_s(entry['lockspace']): {'host_id': entry['host_id'], 'path': entry['path'], 'flags': entry.get('flags', 0)}
            for entry in found}


def register():
    """Register this process with the sanlock daemon; return the connection fd."""
    _need()
    try:
        return sanlock.register()
    except SanlockException as exc:
        raise to_error(exc, 'registering with the sanlock daemon') from exc


def acquire(lockspace, resource, path, offset, fd, alignment=DEFAULT_ALIGNMENT, sector=DEFAULT_SECTOR):
    """Acquire a resource lease for the process registered on ``fd``.

    On failure the error names the host holding the lease when it can be read.
    """
    _need()
    give_to_daemon(path)
    try:
        sanlock.acquire(_b(lockspace), _b(resource), [(path, offset)], slkfd=fd)
    except SanlockException as exc:
        owner = None
        if is_held_error(exc):
            try:
                owners = resource_owners(lockspace, resource, path, offset, alignment, sector)
            except VirtnodeError:
                owners = []
            owner = owners[0] if owners else None
        raise _failed(exc, 'acquiring lease %s in lockspace %s' % (resource, lockspace), path, owner) from exc


def release(lockspace, resource, path, offset, fd):
    """Release a lease held by the process registered on ``fd``."""
    _need()
    try:
        sanlock.release(_b(lockspace), _b(resource), [(path, offset)], slkfd=fd)
    except SanlockException as exc:
        raise to_error(exc, 'releasing lease %s' % resource) from exc


def held_resources(fd=None, pid=None):
    """Return ``[(lockspace, resource)]`` held by the process on ``fd`` or with ``pid``.

    A process sanlock does not know (never registered, or gone) holds nothing.
    """
    _need()
    kwargs = {'slkfd': fd} if fd is not None else {'pid': pid}
    # sanlock answers EBUSY while the process runs another command of its own (the SPM holder
    # checks its lease while a module asks about it): that is a moment, not a lease held elsewhere.
    deadline = time.monotonic() + INQUIRE_BUSY_WAIT
    while True:
        try:
            found = sanlock.inquire(**kwargs)
            break
        except SanlockException as exc:
            code = error_errno(exc)
            if code in (errno.ESRCH, errno.ENOENT, errno.EINVAL, errno.ECHILD):
                return []
            if code == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            what = 'asking sanlock which leases process %s holds' % (pid or 'self')
            if code == errno.EBUSY:
                raise VirtnodeError('%s failed: the process stayed busy with another sanlock command for %ss'
                                    % (what, INQUIRE_BUSY_WAIT), {'errno': code}) from exc
            raise to_error(exc, what) from exc
    return [(_s(entry['lockspace']), _s(entry['resource'])) for entry in found]


def held_resources_within(timeout, fd=None, pid=None):
    """:func:`held_resources`, but a daemon that does not answer within ``timeout`` seconds raises.

    A stopped (frozen) sanlock daemon accepts connections and never replies;
    a caller deciding whether it may still write must not wait for it.
    """
    return deadline.call_within(timeout, lambda: held_resources(fd=fd, pid=pid),
                                'the sanlock daemon did not answer within %ss' % timeout, {'timeout': timeout},
                                name='sanlock inquire')
