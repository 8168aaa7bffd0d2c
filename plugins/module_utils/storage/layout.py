# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where things live in a VDSM file storage domain, and how one is created.

    /rhev/data-center/mnt/<mount name>/<sd>/dom_md/{metadata,ids,leases,inbox,outbox[,xleases]}
    /rhev/data-center/mnt/<mount name>/<sd>/images/<img>/<vol>{,.meta,.lease}
    /rhev/data-center/<sp>/{<sd>,mastersd} -> the domain directories

Every UUID is validated before it becomes part of a path, so no caller can
build a path outside the domain.
"""

from __future__ import annotations

import collections
import os
import shutil
import stat
import tempfile

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

DATA_CENTER_ROOT = paths.DATA_CENTER_ROOT
MOUNT_ROOT = paths.MOUNT_ROOT
DOM_MD = 'dom_md'
IMAGES = 'images'
METADATA_FILE = 'metadata'
META_SUFFIX = '.meta'
LEASE_SUFFIX = '.lease'
REMOVED_IMAGE_PREFIX = '_remove_me_'
ISO_IMAGE_UUID = '11111111-1111-1111-1111-111111111111'
# VDSM's host directory of block domains: MOUNT_ROOT/blockSD/<sd>, links to the domain's LVs.
BLOCK_SD_DIR = 'blockSD'

DOMAIN_DIR_MODE = 0o755
DOM_MD_DIR_MODE = 0o775
IMAGES_DIR_MODE = 0o755
DOM_MD_FILE_MODE = 0o660
MAILBOX_SIZE = 16 * 1024 ** 2

# External (VM) leases appeared in domain version 4; local domains never have them.
XLEASES_MIN_VERSION = 4

DomMdFile = collections.namedtuple('DomMdFile', 'name size mode')

# ids, leases and xleases start empty: sanlock formats and grows them.
# metadata is not listed: it is written by sd_metadata, not pre-sized.
DOM_MD_FILES = (
    DomMdFile('ids', 0, DOM_MD_FILE_MODE),
    DomMdFile('leases', 0, DOM_MD_FILE_MODE),
    DomMdFile('inbox', MAILBOX_SIZE, DOM_MD_FILE_MODE),
    DomMdFile('outbox', MAILBOX_SIZE, DOM_MD_FILE_MODE),
    DomMdFile('xleases', 0, DOM_MD_FILE_MODE),
)


def dom_md_files(version, sd_type):
    """Return the DOM_MD_FILES entries a domain of this version and type has."""
    with_xleases = version >= XLEASES_MIN_VERSION and sd_type != 'LOCALFS'
    return tuple(entry for entry in DOM_MD_FILES if entry.name != 'xleases' or with_xleases)


def _normalize_path(path):
    # normpath keeps a leading "//" (POSIX allows it a meaning); Linux does not, nor does VDSM.
    return '/' + os.path.normpath('/' + path).lstrip('/')


def _normalize_remote(remote):
    # As VDSM does before naming the mount point: the path part of
    # "server:/path" (or a local "/path") is normalised, so "server:/a/" and
    # "server:/a" share one mount point.
    if remote.startswith('/'):
        return _normalize_path(remote)
    host, sep, path = remote.partition(':/')
    return host + ':' + _normalize_path(path) if sep else remote


def mount_point(remote):
    """Return the directory VDSM mounts ``remote`` ("server:/export" or a local path) on."""
    if not isinstance(remote, str) or not remote or '\0' in remote:
        raise VirtnodeError('storage path is not valid: %r' % (remote,), {'field': 'remote'})
    name = _normalize_remote(remote).replace('_', '__').replace('/', '_')
    return os.path.join(MOUNT_ROOT, validate.safe_name(name, 'mount point name of %s' % ascii(remote)))


def block_domain_dir(sd_uuid):
    """This host's directory of the block domain ``sd_uuid`` (local: its metadata is in the VG's tags)."""
    return os.path.join(MOUNT_ROOT, BLOCK_SD_DIR, validate.uuid_str(sd_uuid, 'storage domain UUID'))


def is_block_domain_dir(dom_dir):
    return os.path.dirname(os.path.normpath(dom_dir)) == os.path.join(MOUNT_ROOT, BLOCK_SD_DIR)


def domain_dir(mount, sd_uuid):
    """Return the directory of domain ``sd_uuid`` under ``mount``."""
    return os.path.join(mount, validate.uuid_str(sd_uuid, 'storage domain UUID'))


def dom_md_dir(mount, sd_uuid):
    """Return the domain's ``dom_md`` directory."""
    return os.path.join(domain_dir(mount, sd_uuid), DOM_MD)


def images_dir(mount, sd_uuid):
    """Return the domain's ``images`` directory."""
    return os.path.join(domain_dir(mount, sd_uuid), IMAGES)


def image_dir(mount, sd_uuid, img_uuid):
    """Return the directory of image ``img_uuid``."""
    return os.path.join(images_dir(mount, sd_uuid), validate.uuid_str(img_uuid, 'image UUID'))


def volume_paths(mount, sd_uuid, img_uuid, vol_uuid):
    """Return ``(data, meta, lease)`` paths of volume ``vol_uuid``."""
    data = os.path.join(image_dir(mount, sd_uuid, img_uuid), validate.uuid_str(vol_uuid, 'volume UUID'))
    return data, data + META_SUFFIX, data + LEASE_SUFFIX


def domain_file(dom_dir, *parts):
    """``<dom_dir>/<parts...>`` once it is known to be a regular file inside the domain; VirtnodeError otherwise.

    For paths handed to something that follows links (sanlock for ``ids``,
    ``leases``, ``xleases`` and volume ``.lease`` files, qemu, losetup):
    shared storage is written by other hosts, and a link there to /dev/sda or
    a host file would have that file overwritten. No component below
    ``dom_dir`` may be a link, ``..`` or contain a ``/``.
    """
    for part in parts:
        if not isinstance(part, str) or part in ('', '.', '..') or '/' in part or '\0' in part:
            raise VirtnodeError('refusing %r as a name inside storage domain %s' % (part, dom_dir),
                                {'path': dom_dir, 'name': part})
    path = os.path.join(dom_dir, *parts)
    fileio.stat_beneath(path, root=dom_dir)
    return path


def dom_md_file(dom_dir, name):
    """The checked path of ``dom_md/<name>`` (see :func:`domain_file`)."""
    return domain_file(dom_dir, DOM_MD, name)


def volume_lease_file(dom_dir, img_uuid, vol_uuid):
    """The checked path of a volume's ``.lease`` file (see :func:`domain_file`)."""
    return domain_file(dom_dir, IMAGES, validate.uuid_str(img_uuid, 'image UUID'),
                       validate.uuid_str(vol_uuid, 'volume UUID') + LEASE_SUFFIX)


def removed_image_name(img_uuid):
    """Return the name an image directory is renamed to before it is purged."""
    return REMOVED_IMAGE_PREFIX + validate.uuid_str(img_uuid, 'image UUID')


def pool_dir(sp_uuid):
    """Return the storage pool's directory of links to its domains."""
    return os.path.join(DATA_CENTER_ROOT, validate.uuid_str(sp_uuid, 'storage pool UUID'))


def _make_dir(path, mode):
    os.mkdir(path)
    fileio.set_mode_owner(path, mode, fileio.STORAGE_OWNER)  # mkdir's mode is filtered by the umask


def _make_file(path, size, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        fileio.set_owner(fd, fileio.STORAGE_OWNER)
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _populate(root, md_pairs, version, sd_type, is_iso):
    md_dir = os.path.join(root, DOM_MD)
    _make_dir(md_dir, DOM_MD_DIR_MODE)
    for entry in dom_md_files(version, sd_type):
        _make_file(os.path.join(md_dir, entry.name), entry.size, entry.mode)
    sd_metadata.write_domain_metadata(os.path.join(md_dir, METADATA_FILE), md_pairs)
    images = os.path.join(root, IMAGES)
    _make_dir(images, IMAGES_DIR_MODE)
    if is_iso:
        _make_dir(os.path.join(images, ISO_IMAGE_UUID), IMAGES_DIR_MODE)
    for path in (md_dir, images, root):
        fileio.fsync_directory(path)


def _remove_stale_staging(mount, sd_uuid):
    """Remove the staging trees of ``sd_uuid`` that earlier, crashed creates left in ``mount``.

    Once the domain exists, no other staging tree of it can ever be renamed
    into place, so they are garbage wherever they came from. Only real
    directories named exactly like a staging tree are touched.
    """
    prefix, suffix = '.%s.' % sd_uuid, '.creating'
    for name in os.listdir(mount):
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        path = os.path.join(mount, name)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)


def create_domain_tree(mount, sd_uuid, md_pairs, sd_type):
    """Create the on-disk layout of a new file domain under ``mount``; return its directory.

    The tree is built in a hidden sibling directory and renamed into place
    last, so a crash leaves either no domain or a complete one (VDSM's scan
    globs for UUID-named directories and never sees the hidden one).
    Lockspace and leases are left to sanlock.
    """
    target = domain_dir(mount, sd_uuid)
    md = sd_metadata.DomainMetadata.from_dict(md_pairs)
    if md.sd_uuid != sd_uuid or md.sd_type != sd_type:
        raise VirtnodeError('metadata describes domain %s of type %s, not %s of type %s'
                            % (md.sd_uuid, md.sd_type, sd_uuid, sd_type), {'sd_uuid': sd_uuid})
    if not os.path.isdir(mount):
        raise VirtnodeError('mount point %s is not a directory' % mount, {'path': mount})
    if os.path.lexists(target):
        raise VirtnodeError('storage domain directory %s already exists' % target, {'path': target})
    staging = None
    try:
        staging = tempfile.mkdtemp(prefix='.%s.' % sd_uuid, suffix='.creating', dir=mount)
        fileio.set_mode_owner(staging, DOMAIN_DIR_MODE, fileio.STORAGE_OWNER)
        crash_point('domain_create.staging')
        _populate(staging, md_pairs, md.version, sd_type, md.domain_class == 'Iso')
        crash_point('domain_create.populated')
        # Checked again right before the rename: renaming onto an existing
        # empty directory would silently replace it.
        if os.path.lexists(target):
            raise VirtnodeError('storage domain directory %s already exists' % target, {'path': target})
        os.rename(staging, target)
        staging = None
        fileio.fsync_directory(mount)
        _remove_stale_staging(mount, sd_uuid)
    except OSError as err:
        raise VirtnodeError('cannot create storage domain %s in %s: %s' % (sd_uuid, mount, err.strerror or err),
                            {'path': err.filename or mount, 'errno': err.errno}) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
