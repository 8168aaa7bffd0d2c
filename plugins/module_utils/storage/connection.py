# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage server connections, as VDSM's storageServer.connectStorageServer does them.

* ``localfs``: a local directory; a symlink under the mount root points at it.
* ``posixfs``: ``mount -t <vfstype> -o <options> <spec> <mount point>``.
* ``nfs``: ``mount -t nfs -o soft,nosharecache,timeo=..,retrans=..[,vers=..]``.
* ``iscsi`` and ``fcp``: block storage servers, in :mod:`.iscsi`.

The mount point is always ``sd_layout.mount_point(spec)``.

Every mount is ``nosuid,nodev``: the storage is written by other hosts and NFS
clients, so a set-uid binary or a device node found there must not work on this
host. The options are given last (mount(8) keeps the last word on an option) and
user options that would undo them are refused. A mount made without them (by an
older version, or by hand) is remounted with them.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import iscsi
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

TYPES = ('localfs', 'posixfs', 'nfs')
BLOCK_TYPES = ('iscsi', 'fcp')
NFS_VERSIONS = ('3', '4', '4.0', '4.1', '4.2', 'auto')
# VDSM's NFS defaults: 60 s timeout (in deciseconds), 6 retransmissions.
DEFAULT_NFS_TIMEO = 600
DEFAULT_NFS_RETRANS = 6
MOUNT_TIMEOUT = 180
_OPTION_RE = re.compile(r'\A[A-Za-z0-9_.,=:/@+-]*\Z')
_VFSTYPE_RE = re.compile(r'\A[A-Za-z0-9_.+-]+\Z')
MOUNTINFO = '/proc/self/mountinfo'
# Always applied to a storage mount; see the module docstring.
ENFORCED_OPTIONS = ('nosuid', 'nodev')
# User options that would turn them off again.
_UNDOING_OPTIONS = {'suid': 'nosuid', 'dev': 'nodev'}


def _decode_mountinfo(field):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo_lines(mountinfo):
    mountinfo = mountinfo or MOUNTINFO
    try:
        with open(mountinfo) as stream:
            return [line.split() for line in stream]
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (mountinfo, err.strerror), {'path': mountinfo}) from err


def mounted_targets(mountinfo=None):
    """Return the set of mount targets of this mount namespace."""
    return {_decode_mountinfo(fields[4]) for fields in _mountinfo_lines(mountinfo) if len(fields) > 4}


def is_mounted(path, mountinfo=None):
    """True if something is mounted on ``path`` in this mount namespace."""
    return os.path.normpath(path) in mounted_targets(mountinfo)


def missing_options(target, mountinfo=None):
    """The ENFORCED_OPTIONS that the mount on ``target`` lacks (of the topmost mount there)."""
    options = None
    for fields in _mountinfo_lines(mountinfo):
        if len(fields) > 5 and _decode_mountinfo(fields[4]) == target:
            options = fields[5].split(',')  # per-mount options; later lines are mounted on top
    if options is None:
        return []
    return [opt for opt in ENFORCED_OPTIONS if opt not in options]


def remount_argv(target):
    """Add ENFORCED_OPTIONS to the mount on ``target``; 'bind' changes only the per-mount flags."""
    return ['mount', '-o', 'remount,bind,' + ','.join(ENFORCED_OPTIONS), target]


def validate_spec(conn_type, spec):
    """Check a connection's spec: a local absolute path, or ``server:/export`` for NFS/posixfs."""
    if conn_type not in TYPES:
        raise VirtnodeError('storage server type must be one of %s, got %r' % (', '.join(TYPES), conn_type), {'field': 'type'})
    if not isinstance(spec, str) or not spec or '\0' in spec:
        raise VirtnodeError('storage server path is not valid: %r' % (spec,), {'field': 'path'})
    problem = validate.char_problem(spec, spaces=False)
    if problem:
        # Controls, bidi and invisible characters end up in /proc/mounts, logs and the mount point's name.
        raise VirtnodeError('storage server path %s: %s' % (problem, ascii(spec)), {'field': 'path'})
    if conn_type == 'localfs' and not spec.startswith('/'):
        raise VirtnodeError('a localfs path must be absolute: %s' % spec, {'field': 'path'})
    if conn_type == 'nfs' and (':/' not in spec or spec.startswith('/')):
        raise VirtnodeError('an NFS path must look like server:/export, got %s' % spec, {'field': 'path'})
    if '/../' in spec + '/' or spec.startswith('-'):
        raise VirtnodeError('storage server path must not contain ".." or start with "-": %s' % spec, {'field': 'path'})
    return spec


def mount_options(conn_type, options=None, nfs_version=None, timeo=None, retrans=None):
    """Return the ``-o`` option string for a posixfs or NFS mount ('' for none)."""
    if options is not None and not _OPTION_RE.match(options):
        raise VirtnodeError('mount options contain unexpected characters: %r' % (options,), {'field': 'options'})
    parts = [opt for opt in (options or '').split(',') if opt]
    undoing = [opt for opt in parts if opt in _UNDOING_OPTIONS]
    if undoing:
        raise VirtnodeError('storage mounts are always %s: option %s is refused (files on shared storage are written by '
                            'other hosts)' % (','.join(ENFORCED_OPTIONS), ','.join(undoing)), {'field': 'options'})
    if conn_type == 'nfs':
        for value, what in ((timeo, 'timeo'), (retrans, 'retrans')):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 100000):
                raise VirtnodeError('%s must be a positive integer, got %r' % (what, value), {'field': what})
        nfs = ['soft', 'nosharecache', 'timeo=%d' % (timeo or DEFAULT_NFS_TIMEO), 'retrans=%d' % (retrans or DEFAULT_NFS_RETRANS)]
        if nfs_version not in (None, 'auto'):
            if str(nfs_version) not in NFS_VERSIONS:
                raise VirtnodeError('NFS version must be one of %s, got %r' % (', '.join(NFS_VERSIONS), nfs_version),
                                    {'field': 'nfs_version'})
            nfs.append('vers=%s' % nfs_version)
        taken = {opt.split('=', 1)[0] for opt in parts}
        parts = [opt for opt in nfs if opt.split('=', 1)[0] not in taken] + parts
    return ','.join(parts)


def mount_argv(conn_type, spec, target, vfstype=None, options=None, nfs_version=None, timeo=None, retrans=None):
    """Return the mount command line for a posixfs or NFS connection."""
    validate_spec(conn_type, spec)
    if conn_type == 'localfs':
        raise VirtnodeError('localfs connections are symlinks, not mounts')
    fstype = 'nfs' if conn_type == 'nfs' else vfstype
    if conn_type == 'posixfs' and not vfstype:
        raise VirtnodeError('a posixfs connection needs vfstype (e.g. ext4, xfs, none for a bind mount)', {'field': 'vfstype'})
    if not _VFSTYPE_RE.match(fstype):
        raise VirtnodeError('vfstype is not valid: %r' % (fstype,), {'field': 'vfstype'})
    argv = ['mount', '-t', fstype]
    opts = mount_options(conn_type, options, nfs_version, timeo, retrans)
    if opts:
        argv += ['-o', opts]
    # A second -o: mount(8) joins them in order, so these come after (and win over) 'defaults' and the like.
    argv += ['-o', ','.join(ENFORCED_OPTIONS)]
    return argv + [spec, target]


def is_connected(conn_type, spec):
    """True if the connection's mount point is mounted (or linked, for localfs)."""
    target = sd_layout.mount_point(spec)
    if conn_type == 'localfs':
        return os.path.islink(target) and os.path.realpath(target) == os.path.realpath(spec)
    return target in mounted_targets()


def _run(argv):
    command.run_checked(argv, MOUNT_TIMEOUT)


def connect(conn_type, spec, vfstype=None, options=None, nfs_version=None, timeo=None, retrans=None):
    """Connect; return the mount point. Idempotent callers check :func:`is_connected` first."""
    target = sd_layout.mount_point(spec)
    if conn_type == 'localfs':
        if not os.path.isdir(spec):
            raise VirtnodeError('local storage directory %s does not exist' % spec, {'path': spec})
        os.makedirs(sd_layout.MOUNT_ROOT, exist_ok=True)
        if os.path.lexists(target):
            if not os.path.islink(target):
                raise VirtnodeError('%s exists and is not a symlink' % target, {'path': target})
            os.unlink(target)
        os.symlink(spec, target)
        return target
    argv = mount_argv(conn_type, spec, target, vfstype, options, nfs_version, timeo, retrans)
    os.makedirs(target, exist_ok=True)
    try:
        _run(argv)
    except VirtnodeError:
        _remove_empty_dir(target)
        raise
    return target


def _remove_empty_dir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def disconnect(conn_type, spec):
    """Unmount (or unlink) the connection; return the mount point."""
    target = sd_layout.mount_point(spec)
    if conn_type == 'localfs':
        if os.path.islink(target):
            os.unlink(target)
        return target
    if target in mounted_targets():
        _run(['umount', target])
    _remove_empty_dir(target)
    return target


def run_module(module):
    """The work of the ``storage_server`` module: connect or disconnect one storage server."""
    params = module.params
    conn_type, spec = params['type'], params['path']
    if conn_type in BLOCK_TYPES:
        return _run_block(module)
    validate_spec(conn_type, spec)
    target = sd_layout.mount_point(spec)
    result = {'mount_point': target}
    mount_args = (params['vfstype'], params['options'], params['nfs_version'], params['timeo'], params['retrans'])
    if conn_type != 'localfs':
        result['command'] = mount_argv(conn_type, spec, target, *mount_args)
    before = is_connected(conn_type, spec)
    wanted = params['state'] == 'connected'
    changed = before != wanted
    if changed and not module.check_mode:
        if wanted:
            connect(conn_type, spec, *mount_args)
        else:
            disconnect(conn_type, spec)
    if before and wanted and conn_type != 'localfs':
        missing = missing_options(target)
        if missing:
            # Mounted earlier without nosuid,nodev (by hand or an older version): add them in place.
            result['remounted'] = missing
            changed = True
            if not module.check_mode:
                _run(remount_argv(target))
    result.update(changed=changed, connected=wanted if changed else before)
    if module._diff:
        result['diff'] = {'before': {'connected': before}, 'after': {'connected': result['connected']},
                          'before_header': target, 'after_header': target}
    return result


def _run_block(module):
    params = module.params
    if params['type'] == 'iscsi':
        result = iscsi.run_iscsi(params, module.check_mode, module._diff)
    else:
        result = iscsi.run_fcp(params, module.check_mode)
    for warning in result.pop('warnings', []):
        module.warn(warning)
    return result
