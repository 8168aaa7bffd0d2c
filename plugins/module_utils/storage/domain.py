# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File storage domains and storage pools, in VDSM's on-disk layout.

Domains are found where VDSM looks for them: ``/rhev/data-center/mnt/*/<sdUUID>``.
A pool lives in its master domain's metadata (POOL_* keys, MASTER_VERSION);
a host that connects to a pool joins the sanlock lockspace of every active
domain with its host id, links ``/rhev/data-center/<spUUID>/<sdUUID>`` and
``mastersd``, records its host name in ``<master>/master/hosts/<host id>``
(so other hosts can name the SPM) and keeps a local note in
``/run/virtnode/storage/pools/<spUUID>.json``. Changing which domains belong
to a pool is the SPM's work, in ``pool.py``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import deadline
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import xlease
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SPM_RESOURCE = 'SDM'
# Slot of the SPM lease in dom_md/leases (x ALIGNMENT).
SPM_LEASE_SLOT = 1
MASTER_DIR = 'master'
MASTER_SUBDIRS = ('vms', 'tasks', 'hosts')
MASTERSD_LINK = 'mastersd'
RUN_DIR = '/run/virtnode'
POOL_STATE_DIR = os.path.join(RUN_DIR, 'storage', 'pools')
MIN_IO_TIMEOUT = 1
MAX_IO_TIMEOUT = 300
STATUS_ACTIVE = 'Active'
STATUS_ATTACHED = 'Attached'
# Seconds one mount may take to list its domains. A dead NFS server answers a soft mount only after
# timeo x retrans (minutes with VDSM's defaults) and a hard mount never.
SCAN_TIMEOUT = 10


# ------------------------------------------------------------------ finding domains

def _mounts(mount_root):
    try:
        names = sorted(os.listdir(mount_root))
    except OSError:
        return []
    return [os.path.join(mount_root, name) for name in names if name != sd_layout.BLOCK_SD_DIR]


def _block_domains(unreachable):
    """``[(sd_uuid, dir)]`` of the block domains on this host's LUNs (no LVM command without multipath devices)."""
    try:
        if not lvm_cmd.shared_devices():
            return []
        return [(sd_uuid, sd_layout.block_domain_dir(sd_uuid)) for sd_uuid in block_domain.list_domains()]
    except VirtnodeError as err:
        if unreachable is not None:
            unreachable[os.path.join(sd_layout.MOUNT_ROOT, sd_layout.BLOCK_SD_DIR)] = \
                'cannot list block storage domains: %s' % err.message
        return []


def _domains_in_mount(mnt):
    found = []
    for name in sorted(os.listdir(mnt)):
        try:
            validate.uuid_str(name, 'storage domain UUID')
        except VirtnodeError:
            continue
        dom_dir = os.path.join(mnt, name)
        try:
            os.lstat(md_path(dom_dir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.append((name, dom_dir))
    return found


# Mount -> Event set when its latest listing returned. A listing still waiting on the server is not
# started again: each try would leave one more thread stuck there and wait SCAN_TIMEOUT again.
_SCANS = {}


def _scan_mount(mnt):
    pending = _SCANS.get(mnt)
    if pending is not None and not pending.is_set():
        raise VirtnodeError('no answer from %s: an earlier listing of it is still waiting (storage server not responding?)'
                            % mnt, {'path': mnt})
    done = threading.Event()
    _SCANS[mnt] = done

    def work():
        try:
            return _domains_in_mount(mnt)
        finally:
            done.set()

    return deadline.call_within(SCAN_TIMEOUT, work, 'no answer from %s within %ss (storage server not responding?)'
                                % (mnt, SCAN_TIMEOUT), {'path': mnt}, name='scan %s' % mnt)


def domain_dirs(mount_root=None, mount=None, unreachable=None, block=True):
    """``[(sd_uuid, domain dir)]`` of every directory named like a domain that has metadata, duplicates included.

    Only names that are UUIDs are looked into: nothing else on a mount is
    stat'ed or read. A mount that fails with an I/O error or gives no answer
    within SCAN_TIMEOUT is left out and, when ``unreachable`` (a dict) is
    given, recorded there as ``{mount: reason}``: "no domain there" and
    "cannot tell" must stay apart.
    """
    found = []
    for mnt in [mount] if mount else _mounts(mount_root or sd_layout.MOUNT_ROOT):
        reason = None
        try:
            found += _scan_mount(mnt)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            reason = 'cannot list %s: %s' % (mnt, err.strerror or err)
        except VirtnodeError as err:
            reason = err.message
        if reason and unreachable is not None:
            unreachable[mnt] = reason
    if block and mount is None and mount_root in (None, sd_layout.MOUNT_ROOT):
        found += _block_domains(unreachable)
    return found


def scan_domains(mount_root=None, mount=None, unreachable=None, block=True):
    """Return ``{sd_uuid: domain dir}`` of every domain under the mount root (or one mount), block domains
    included unless ``block`` is false."""
    found = {}
    for name, dom_dir in domain_dirs(mount_root, mount, unreachable, block):
        found.setdefault(name, dom_dir)
    return found


def unreachable_error(what, unreachable, details=None):
    """The error for ``what`` (a sentence start) that cannot be told because mounts did not answer."""
    return VirtnodeError('%s: %d storage mount(s) did not answer (%s)' % (what, len(unreachable), '; '.join(
        unreachable[mnt] for mnt in sorted(unreachable))), dict(details or {}, unreachable=sorted(unreachable)))


def find_domain(sd_uuid, required=True):
    """Return the directory of domain ``sd_uuid`` on a connected server (None if absent and not required)."""
    validate.uuid_str(sd_uuid, 'storage domain UUID')
    unreachable = {}
    # File domains first, as the full scan ranks them: a file domain's modules run no LVM command.
    dom_dir = scan_domains(unreachable=unreachable, block=False).get(sd_uuid)
    if dom_dir is None:
        dom_dir = dict(_block_domains(unreachable)).get(sd_uuid)
    if dom_dir is None and unreachable:
        # Even when not required: a domain on a mount that does not answer is not an absent one.
        raise unreachable_error('cannot tell whether storage domain %s exists' % sd_uuid, unreachable, {'sd_uuid': sd_uuid})
    if dom_dir is None and required:
        raise VirtnodeError('storage domain %s not found under %s (is its storage server connected?)'
                            % (sd_uuid, sd_layout.MOUNT_ROOT), {'sd_uuid': sd_uuid})
    return dom_dir


def find_file_domain(sd_uuid, what):
    """:func:`find_domain` for ``what`` (a sentence start) that file domains only have so far."""
    dom_dir = find_domain(sd_uuid)
    if sd_layout.is_block_domain_dir(dom_dir):
        raise VirtnodeError('%s on block storage domains is not supported yet (%s is one)' % (what, sd_uuid),
                            {'sd_uuid': sd_uuid})
    return dom_dir


def md_path(dom_dir):
    return os.path.join(dom_dir, sd_layout.DOM_MD, sd_layout.METADATA_FILE)


def block_domain_of(dom_dir):
    """The :class:`block_domain.BlockDomain` whose host directory is ``dom_dir``, or None for a file domain."""
    if not sd_layout.is_block_domain_dir(dom_dir):
        return None
    return block_domain.BlockDomain(os.path.basename(os.path.normpath(dom_dir)))


def read_raw(dom_dir):
    block = block_domain_of(dom_dir)
    if block is not None:
        return block.read_raw()
    return sdm.read_domain_metadata(md_path(dom_dir), timeout=30)


def read_md(dom_dir):
    """Return the DomainMetadata of the domain in ``dom_dir``."""
    try:
        return sdm.DomainMetadata.from_dict(read_raw(dom_dir))
    except VirtnodeError as err:
        raise VirtnodeError('%s: %s' % (md_path(dom_dir), err.message), err.details) from err


def update_md(dom_dir, changes):
    """Apply ``{key: value or None}`` to the domain metadata; return True if it changed."""
    with domain_lock.dir_lock(dom_dir):  # read-modify-write: one writer per domain
        return _update_md(dom_dir, changes)


def _update_md(dom_dir, changes):
    block = block_domain_of(dom_dir)
    if block is not None:
        return block.update_md(changes)
    pairs = read_raw(dom_dir)
    new = sdm.with_changes(pairs, changes)
    if new == pairs:
        return False
    sdm.write_domain_metadata(md_path(dom_dir), new)
    return True


def encode_pool_domains(domains):
    return ','.join('%s:%s' % (sd, status) for sd, status in sorted(domains.items()))


def check_io_timeout(value):
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_IO_TIMEOUT <= value <= MAX_IO_TIMEOUT:
        raise VirtnodeError('io_timeout must be an integer from %d to %d seconds, got %r' % (MIN_IO_TIMEOUT, MAX_IO_TIMEOUT, value),
                            {'field': 'io_timeout'})
    return value


# ------------------------------------------------------------------ domains

def uses_sanlock(sd_type):
    return sd_type != 'LOCALFS'


# Types whose areas are logical volumes of a VG named after the domain (block_domain.py).
BLOCK_SD_TYPES = ('ISCSI', 'FCP')


def area_path(dom_dir, md, name):
    """The path of the domain's special area ``name`` (ids, leases, xleases, ...).

    A file domain's ``dom_md/<name>``, checked to be a regular file inside it;
    a block domain's LV ``/dev/<sd>/<name>`` (``dom_dir`` unused), which every
    opener checks is that LV.
    """
    if md.sd_type in BLOCK_SD_TYPES:
        return os.path.join('/dev', validate.uuid_str(md.sd_uuid, 'storage domain UUID'), name)
    return sd_layout.dom_md_file(dom_dir, name)


def spm_lease(dom_dir, md):
    """Return ``(path, offset)`` of the SPM lease of a domain."""
    return area_path(dom_dir, md, 'leases'), SPM_LEASE_SLOT * md.alignment


def _has_xleases(dom_dir, md):
    if md.version < sd_layout.XLEASES_MIN_VERSION:
        return False
    return md.sd_type in BLOCK_SD_TYPES or os.path.lexists(os.path.join(dom_dir, sd_layout.DOM_MD, 'xleases'))


def lease_areas(dom_dir, md):
    """``[(name, path, offset, length)]`` of the areas sanlock (and the xleases index) formats on a domain."""
    if not uses_sanlock(md.sd_type):
        return []
    path, offset = spm_lease(dom_dir, md)
    areas = [('ids', area_path(dom_dir, md, 'ids'), 0, md.alignment), ('leases', path, offset, md.alignment)]
    if _has_xleases(dom_dir, md):
        areas.append(('xleases', area_path(dom_dir, md, 'xleases'), xlease.index_offset(md.alignment), xlease.INDEX_SIZE))
    return areas


def init_leases(dom_dir, md, io_timeout, areas):
    """Format the lockspace on ids, the SDM lease and (v4+, non-local) the xleases index.

    ``areas`` names the areas to format, which must be proven blank (see
    :func:`format_missing_leases`): formatting a live lockspace or SDM lease
    fences hosts or makes two SPMs.
    """
    for name, path, offset, _length in lease_areas(dom_dir, md):
        if name not in areas:
            continue
        if name == 'ids':
            sanlock_lock.write_lockspace(md.sd_uuid, path, io_timeout, md.alignment, md.block_size)
            crash_point('domain_create.lockspace')
        elif name == 'leases':
            sanlock_lock.write_resource(md.sd_uuid, SPM_RESOURCE, path, offset, md.alignment, md.block_size)
        else:
            xlease.format_index(path, md.sd_uuid, md.alignment)


def _area_owner(name, path, offset, md):
    """The lockspace a written area belongs to (None if it holds no lease sanlock recognises)."""
    if name == 'ids':
        found = sanlock_lock.read_lockspace(path, md.alignment, md.block_size)
        return found and found['lockspace']
    if name == 'leases':
        found = sanlock_lock.read_resource(path, offset, md.alignment, md.block_size)
        return found and found['resource'] == SPM_RESOURCE and found['lockspace']
    try:
        return xlease.read_index(path, md.alignment)[0]['lockspace']
    except VirtnodeError:
        return None


def missing_leases(dom_dir, md):
    """Names of the domain's lease areas that were never written, which only may be initialised.

    Raises if an area cannot be read (I/O error, timeout, a link, a missing
    file) or holds anything but this domain's own lease: such an area is left
    alone whatever it holds.
    """
    missing = []
    for name, path, offset, length in lease_areas(dom_dir, md):
        try:
            if sanlock_lock.area_is_blank(path, offset, length):
                missing.append(name)
                continue
            owner = _area_owner(name, path, offset, md)
        except VirtnodeError as err:
            raise VirtnodeError('cannot tell whether the %s area of storage domain %s was ever written, so it is left alone: %s'
                                % (name, md.sd_uuid, err.message), dict(err.details, sd_uuid=md.sd_uuid, area=name)) from err
        if owner != md.sd_uuid:
            raise VirtnodeError('the %s area of storage domain %s holds %s, not its lease: refusing to initialise it'
                                % (name, md.sd_uuid, 'the lease of %s' % owner if owner else 'data sanlock does not recognise'),
                                {'sd_uuid': md.sd_uuid, 'area': name, 'path': path})
    return missing


def format_missing_leases(dom_dir, md, dry_run=False, before_format=None):
    """Format the domain's lease areas that were provably never written; returns their names.

    The reading and the formatting are one step for every host (the domain's
    lease-format lock): two hosts repairing the same blank domain at once
    format it once, and neither wipes a lease the other already uses.
    ``before_format`` runs before anything is written (e.g. a check that
    this host is SPM); with ``dry_run`` nothing is locked or written.
    Areas are read once unlocked, so a domain with nothing missing costs no lock.
    """
    if not uses_sanlock(md.sd_type):
        return []
    missing = missing_leases(dom_dir, md)
    if dry_run or not missing:
        return missing
    with domain_lock.lease_format_lock(area_path(dom_dir, md, 'ids')):
        missing = missing_leases(dom_dir, md)  # again: another host may have formatted them meanwhile
        crash_point('domain_leases.proven_blank')
        if missing:
            if before_format is not None:
                before_format()
            init_leases(dom_dir, md, md.io_op_timeout_sec, missing)
    return missing


def create_domain(mount, sd_uuid, sd_type, domain_class, description, remote_path, version, io_timeout,
                  block_size=sdm.DEFAULT_BLOCK_SIZE, alignment=sdm.DEFAULT_ALIGNMENT):
    """Create a domain under ``mount``: tree, metadata, lockspace, SPM lease, xleases index."""
    pairs = sdm.new_domain_metadata(sd_uuid, sd_type, domain_class, description, remote_path, version,
                                    block_size, alignment)
    pairs[sdm.IOOPTIMEOUTSEC] = str(io_timeout)
    dom_dir = sd_layout.create_domain_tree(mount, sd_uuid, pairs, sd_type)
    crash_point('domain_create.renamed')
    try:
        # Another host may find the new domain before its leases exist and repair it: format what is still blank.
        format_missing_leases(dom_dir, read_md(dom_dir))
        crash_point('domain_create.leases')
    except VirtnodeError:
        _remove_tree(dom_dir)
        raise
    return dom_dir


def _remove_tree(dom_dir):
    parent, name = os.path.split(dom_dir)
    doomed = os.path.join(parent, '.%s.removing.%d' % (name, os.getpid()))
    try:
        os.rename(dom_dir, doomed)
    except OSError as err:
        raise VirtnodeError('cannot remove %s: %s' % (dom_dir, err.strerror), {'path': dom_dir}) from err
    fileio.fsync_directory(parent)
    shutil.rmtree(doomed, ignore_errors=True)


def list_image_uuids(dom_dir):
    """UUIDs of the images of a domain (images being removed are skipped)."""
    found = []
    images = os.path.join(dom_dir, sd_layout.IMAGES)
    for name in sorted(os.listdir(images)) if os.path.isdir(images) else []:
        try:
            found.append(validate.uuid_str(name, 'image UUID'))
        except VirtnodeError:
            continue
    return found


def remove_domain(dom_dir, force=False):
    """Remove a detached domain; refused while it has images unless ``force``."""
    md = read_md(dom_dir)
    if md.pool_uuids:
        raise VirtnodeError('storage domain %s is attached to pool %s: detach it first'
                            % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
    images = list_image_uuids(dom_dir)
    if images and not force:
        raise VirtnodeError('storage domain %s still has %d image(s); remove them first or use force'
                            % (md.sd_uuid, len(images)), {'sd_uuid': md.sd_uuid, 'images': images})
    _remove_tree(dom_dir)


def free_space(dom_dir):
    """Return ``(total, free)`` bytes of the file system holding the domain."""
    try:
        stat = os.statvfs(dom_dir)
    except OSError:
        return None, None
    return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize


def volume_chain_info(dom_dir, img_uuid):
    """Return the volumes of an image, each with its metadata, sizes and parent; leaf last."""
    img_dir = os.path.join(dom_dir, sd_layout.IMAGES, img_uuid)
    volumes = {}
    for meta in sorted(glob.glob(os.path.join(img_dir, '*' + sd_layout.META_SUFFIX))):
        vol_uuid = os.path.basename(meta)[:-len(sd_layout.META_SUFFIX)]
        try:
            validate.uuid_str(vol_uuid, 'volume UUID')
            md = volume_metadata.read_volume_metadata(meta, timeout=30)
        except VirtnodeError as err:
            volumes[vol_uuid] = {'volume_uuid': vol_uuid, 'error': err.message}
            continue
        data = os.path.join(img_dir, vol_uuid)
        try:
            st = os.stat(data)
            apparent, true_size = st.st_size, st.st_blocks * 512
        except OSError:
            apparent = true_size = None
        volumes[vol_uuid] = {
            'volume_uuid': vol_uuid, 'image_uuid': md.image, 'parent': md.parent, 'format': md.volume_format,
            'allocation': md.allocation, 'role': md.role, 'legality': md.legality, 'capacity': md.capacity,
            'apparent_size': apparent, 'true_size': true_size, 'description': md.description, 'disk_type': md.disk_type,
            'generation': md.generation, 'ctime': md.ctime,
        }
    return order_chain(volumes)


def order_chain(volumes):
    """Order ``{vol: info}`` from the base (no parent in the image) to the leaf."""
    ordered, seen = [], set()
    children = {}
    for vol, info in volumes.items():
        children.setdefault(info.get('parent'), []).append(vol)
    roots = [vol for vol, info in volumes.items() if info.get('parent') not in volumes]
    queue = sorted(roots)
    while queue:
        vol = queue.pop(0)
        if vol in seen:
            continue
        seen.add(vol)
        ordered.append(volumes[vol])
        queue = sorted(children.get(vol, [])) + queue
    ordered += [volumes[vol] for vol in sorted(volumes) if vol not in seen]
    return ordered


def domain_info(dom_dir, images=True):
    """Return a dict describing the domain (metadata, space, images)."""
    block = block_domain_of(dom_dir)
    if block is not None:
        return dict(block.info(), path=dom_dir)
    md = read_md(dom_dir)
    total, free = free_space(dom_dir)
    info = {
        'sd_uuid': md.sd_uuid, 'path': dom_dir, 'mount_point': os.path.dirname(dom_dir), 'version': md.version,
        'type': md.sd_type, 'class': md.domain_class, 'description': md.description, 'role': md.role,
        'pool_uuids': md.pool_uuids, 'remote_path': md.remote_path, 'io_timeout': md.io_op_timeout_sec,
        'alignment': md.alignment, 'block_size': md.block_size, 'total_bytes': total, 'free_bytes': free,
        'metadata': read_raw(dom_dir),
    }
    if images:
        info['images'] = [{'image_uuid': img, 'volumes': volume_chain_info(dom_dir, img)} for img in list_image_uuids(dom_dir)]
    return info


# ------------------------------------------------------------------ pools

MASTER_READ_TIMEOUT = 10


def read_sealed_md(dom_dir, timeout=None):
    """The DomainMetadata of a domain whose metadata is sealed and names the domain itself.

    Bounded in size and time, no link followed. Raises on anything else:
    unsealed, broken or copied metadata never decides who writes.
    """
    block = block_domain_of(dom_dir)
    if block is not None:
        return block.read_sealed_md()
    path = md_path(dom_dir)
    text = fileio.read_text(path, timeout=timeout or MASTER_READ_TIMEOUT)
    lines = text.rstrip('\n').split('\n')
    if not lines[-1].startswith(sdm.CHECKSUM_KEY + '='):
        raise VirtnodeError('%s is not sealed (no %s line)' % (path, sdm.CHECKSUM_KEY), {'path': path})
    try:
        md = sdm.DomainMetadata.from_dict(sdm.parse(text))
    except VirtnodeError as err:
        raise VirtnodeError('%s: %s' % (path, err.message), dict(err.details, path=path)) from err
    if md.sd_uuid != os.path.basename(dom_dir):
        raise VirtnodeError('%s names domain %s, not %s (a copy?)' % (path, md.sd_uuid, os.path.basename(dom_dir)), {'path': path})
    return md


def _pinned_master(sp_uuid, candidates):
    """The candidate this host already knows as the pool's master (its mastersd link or its pool note), or None."""
    try:
        target = os.path.normpath(os.readlink(os.path.join(sd_layout.pool_dir(sp_uuid), MASTERSD_LINK)))
    except OSError:
        target = None
    linked = [entry for entry in candidates if os.path.normpath(entry[0]) == target]
    if len(linked) == 1:
        return linked[0]
    named = [entry for entry in candidates if entry[1].sd_uuid == (read_pool_state(sp_uuid) or {}).get('master_sd')]
    return named[0] if len(named) == 1 else None


def _is_former_master(entry, candidates):
    """True if a newer master and this one list each other: a master move interrupted before the old one stepped down."""
    _dom_dir, md = entry
    for _other_dir, other in candidates:
        if other.sd_uuid != md.sd_uuid and (other.master_version or 0) > (md.master_version or 0) \
                and md.sd_uuid in (other.pool_domains or {}) and other.sd_uuid in (md.pool_domains or {}):
            return True
    return False


def find_master(sp_uuid, required=True, unreadable_ok=False):
    """Return ``(dom_dir, DomainMetadata)`` of the pool's master domain.

    The master is a domain whose sealed metadata has ROLE=Master, the pool in
    POOL_UUID and itself in POOL_DOMAINS. When several claim it, the one this
    host is linked to decides; a master version alone never does (a copied
    domain can carry any number), except between two masters that list each
    other. Several claimants and nothing to choose by is an error.

    A domain whose metadata cannot be read or trusted might be the master:
    when no master is found and ``unreadable_ok`` is false that is an error
    even if not ``required``, so a transient read error never passes for a
    pool that does not exist.
    """
    validate.uuid_str(sp_uuid, 'storage pool UUID')
    candidates, unreadable = [], {}
    for sd_uuid, dom_dir in domain_dirs(unreachable=unreadable):
        try:
            md = read_sealed_md(dom_dir)
        except VirtnodeError as err:
            unreadable[dom_dir] = err.message
            continue
        domains = md.pool_domains or {}
        if md.role == 'Master' and sp_uuid in md.pool_uuids and sd_uuid in domains:
            candidates.append((dom_dir, md))
    if candidates:
        chosen = _pinned_master(sp_uuid, candidates)
        current = [entry for entry in candidates if not _is_former_master(entry, candidates)]
        if chosen is None and len(current) == 1:
            chosen = current[0]
        if chosen is None:
            raise VirtnodeError('%d domains claim to be the master of pool %s (%s) and this host has no link to one of them: '
                                'refusing to choose' % (len(current), sp_uuid, ', '.join(entry[0] for entry in current)),
                                {'sp_uuid': sp_uuid, 'candidates': [entry[0] for entry in current]})
        return chosen
    if unreadable and not unreadable_ok:
        raise VirtnodeError('cannot tell whether pool %s has a master domain: %d mount(s) or domain metadata could not be read or '
                            'are not sealed (%s)' % (sp_uuid, len(unreadable), '; '.join(sorted(unreadable.values()))),
                            {'sp_uuid': sp_uuid, 'unreadable': sorted(unreadable)})
    if required:
        raise VirtnodeError('no master domain of storage pool %s found under %s (storage server connected?)'
                            % (sp_uuid, sd_layout.MOUNT_ROOT), {'sp_uuid': sp_uuid})
    return None, None


def pool_state_path(sp_uuid):
    return os.path.join(POOL_STATE_DIR, validate.uuid_str(sp_uuid, 'storage pool UUID') + '.json')


def read_pool_state(sp_uuid):
    """This host's note of its connection to the pool (None if not connected or unreadable)."""
    return fileio.read_json(pool_state_path(sp_uuid), lenient=True)


def write_pool_state(sp_uuid, state):
    fileio.write_json(pool_state_path(sp_uuid), state)


def host_record_path(master_dir, host_id):
    return os.path.join(master_dir, MASTER_DIR, 'hosts', str(sanlock_lock.check_host_id(host_id)))


def host_name_of(master_dir, host_id):
    """The host name recorded for ``host_id`` in the pool (None if unknown)."""
    if host_id is None or host_id < 1:
        return None
    try:
        return fileio.read_text(host_record_path(master_dir, host_id), timeout=10, limit=4096,
                                root=master_dir).strip() or None
    except VirtnodeError:
        return None


def master_fs_dir(master_dir):
    """Where the pool's master tree is: ``<domain>/master``, on a block domain the mount point of its ``master`` LV."""
    return os.path.join(master_dir, MASTER_DIR)


def master_tree_on_spm_only(master_dir):
    """True when only the SPM sees the master tree: a block master, whose file system only the SPM mounts."""
    return sd_layout.is_block_domain_dir(master_dir)


def mount_master(master_dir):
    """Make the master tree reachable on this host, the SPM (a block master's file system is mounted)."""
    block = block_domain_of(master_dir)
    if block is not None:
        block.mount_master(master_fs_dir(master_dir))


def unmount_master(master_dir, lazy=False):
    """Undo :func:`mount_master` (no-op for file domains and when not mounted)."""
    block = block_domain_of(master_dir)
    if block is not None:
        block.unmount_master(master_fs_dir(master_dir), lazy=lazy)


def record_host(master_dir, host_id, hostname):
    """Write ``hostname`` as the name of ``host_id`` in the master tree (kept if already so)."""
    if hostname and host_name_of(master_dir, host_id) != hostname:
        fileio.write_atomic(host_record_path(master_dir, host_id), (hostname + '\n').encode('utf-8'), 0o644,
                            owner=fileio.STORAGE_OWNER)


def ensure_master_tree(master_dir):
    top = master_fs_dir(master_dir)
    if master_tree_on_spm_only(master_dir) and not connection.is_mounted(top):
        # Never write into the bare mount point: the tree belongs on the master LV.
        raise VirtnodeError('the master file system of %s is not mounted on this host' % os.path.basename(master_dir),
                            {'path': top})
    for sub in MASTER_SUBDIRS:
        fileio.make_dirs(os.path.join(top, sub), 0o755, fileio.STORAGE_OWNER)


def new_pool_changes(sp_uuid, master_sd, description, domains):
    return {
        sdm.ROLE: 'Master', sdm.POOL_UUID: sp_uuid, sdm.POOL_DOMAINS: encode_pool_domains(domains),
        sdm.POOL_DESCRIPTION: description, sdm.POOL_SPM_ID: sdm.SPM_ID_FREE, sdm.POOL_SPM_LVER: sdm.SPM_LVER_INVALID,
        sdm.MASTER_VERSION: 1,
    }


def create_pool(sp_uuid, master_dir, description, host_id):
    """Make the domain in ``master_dir`` the master of a new pool.

    The SPM lease is taken while the metadata is written, so a pool is never
    created under a running SPM.
    """
    md = read_md(master_dir)
    # Reached only when no trusted master of the pool was found: a domain that
    # already claims a pool (even this one, in metadata that could not be
    # trusted) would lose its pool's keys.
    if md.pool_uuids:
        raise VirtnodeError('storage domain %s already claims pool %s: refusing to create a pool on it'
                            % (md.sd_uuid, ','.join(md.pool_uuids)), {'sd_uuid': md.sd_uuid})
    if md.domain_class != 'Data':
        raise VirtnodeError('a pool master must be a Data domain; %s is %s' % (md.sd_uuid, md.domain_class))
    join_lockspace(master_dir, md, host_id)
    fd = None
    path, offset = spm_lease(master_dir, md)
    if uses_sanlock(md.sd_type):
        fd = sanlock_lock.register()
        sanlock_lock.acquire(md.sd_uuid, SPM_RESOURCE, path, offset, fd, md.alignment, md.block_size)
        crash_point('pool_create.spm_lease')
    try:
        # A block master's tree is on its master LV, mounted for this while the SPM lease is ours.
        mount_master(master_dir)
        try:
            ensure_master_tree(master_dir)
            crash_point('pool_create.master_tree')
            update_md(master_dir, new_pool_changes(sp_uuid, md.sd_uuid, description, {md.sd_uuid: STATUS_ACTIVE}))
            crash_point('pool_create.metadata')
        finally:
            unmount_master(master_dir)
    finally:
        if fd is not None:
            sanlock_lock.release(md.sd_uuid, SPM_RESOURCE, path, offset, fd)
            os.close(fd)


def join_lockspace(dom_dir, md, host_id):
    """Join the domain's lockspace with ``host_id`` (no-op for local domains); True if joined now."""
    if not uses_sanlock(md.sd_type):
        return False
    held = sanlock_lock.lockspaces().get(md.sd_uuid)
    if held is not None:
        if held['host_id'] != host_id:
            raise VirtnodeError('this host is in lockspace %s as host %d, not %d: disconnect the pool first'
                                % (md.sd_uuid, held['host_id'], host_id), {'sd_uuid': md.sd_uuid})
        return False
    prepare_block_domain(dom_dir, md)
    return sanlock_lock.add_lockspace(md.sd_uuid, host_id, area_path(dom_dir, md, 'ids'), md.io_op_timeout_sec)


def prepare_block_domain(dom_dir, md):
    """Make a block domain usable on this host, as VDSM produces it: its special LVs active (``master`` is the
    SPM's), and its host directory with ``dom_md/<name>`` links to them. No-op for file domains."""
    block = block_domain_of(dom_dir)
    if block is None:
        return
    lvs = block.activate_special(md)
    md_dir = os.path.join(dom_dir, sd_layout.DOM_MD)
    fileio.make_dirs(md_dir, 0o755)
    fileio.make_dirs(os.path.join(dom_dir, sd_layout.IMAGES), 0o755)
    for name, path in lvs.items():
        _set_link(os.path.join(md_dir, name), path)


def forget_block_domain_dir(sd_uuid):
    """Remove this host's directory of a removed block domain (links to its LVs and empty directories only)."""
    dom_dir = sd_layout.block_domain_dir(sd_uuid)
    for root, dirs, files in os.walk(dom_dir, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.unlink(path)
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
    try:
        os.rmdir(dom_dir)
    except OSError:
        pass


def leave_lockspace(sd_uuid):
    """Leave the domain's lockspace if this host's sanlock holds it (by name: the
    domain's storage may already be gone)."""
    held = sanlock_lock.lockspaces().get(sd_uuid)
    if held is None:
        return False
    return sanlock_lock.rem_lockspace(sd_uuid, held['host_id'], held['path'])


def pool_domains(master_md):
    return dict(master_md.pool_domains or {})


def desired_links(sp_uuid, master_dir, master_md):
    """Return ``{link path: target}`` of the pool directory for the active domains found here."""
    pdir = sd_layout.pool_dir(sp_uuid)
    links = {os.path.join(pdir, MASTERSD_LINK): master_dir}
    found = scan_domains()
    for sd_uuid, status in pool_domains(master_md).items():
        if status == STATUS_ACTIVE and sd_uuid in found:
            links[os.path.join(pdir, sd_uuid)] = found[sd_uuid]
    return links


def pool_connection_state(sp_uuid, host_id, hostname):
    """Return ``(connected, details)`` for this host and the pool."""
    master_dir, master_md = find_master(sp_uuid)
    held = sanlock_lock.lockspaces()
    found = scan_domains()
    missing_lockspaces, missing_domains = [], []
    for sd_uuid, status in pool_domains(master_md).items():
        if status != STATUS_ACTIVE:
            continue
        if sd_uuid not in found:
            missing_domains.append(sd_uuid)
            continue
        if not uses_sanlock(read_md(found[sd_uuid]).sd_type):
            continue
        entry = held.get(sd_uuid)
        if entry is None or entry['host_id'] != host_id:
            missing_lockspaces.append(sd_uuid)
    links_ok = all(os.path.islink(link) and os.readlink(link) == target
                   for link, target in desired_links(sp_uuid, master_dir, master_md).items())
    state = read_pool_state(sp_uuid) or {}
    # Host records are in the master tree, which on a block master only the SPM mounts: none there.
    record_ok = state.get('host_id') == host_id and (master_tree_on_spm_only(master_dir)
                                                     or host_name_of(master_dir, host_id) == hostname)
    connected = not missing_lockspaces and links_ok and record_ok
    return connected, {'master_dir': master_dir, 'master_md': master_md, 'missing_lockspaces': missing_lockspaces,
                       'missing_domains': missing_domains}


def _set_link(link, target):
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


def refresh_links(sp_uuid, master_dir, master_md):
    pdir = sd_layout.pool_dir(sp_uuid)
    os.makedirs(pdir, mode=0o755, exist_ok=True)
    wanted = desired_links(sp_uuid, master_dir, master_md)
    for name in os.listdir(pdir):
        link = os.path.join(pdir, name)
        if link not in wanted and os.path.islink(link):
            os.unlink(link)
    for link, target in wanted.items():
        _set_link(link, target)


def connect_pool(sp_uuid, host_id, hostname=None):
    """Join the lockspaces of the pool's active domains, link the pool, record this host."""
    hostname = hostname or socket.gethostname()
    master_dir, master_md = find_master(sp_uuid)
    found = scan_domains()
    joined = []
    for sd_uuid, status in sorted(pool_domains(master_md).items()):
        if status == STATUS_ACTIVE and sd_uuid in found and join_lockspace(found[sd_uuid], read_md(found[sd_uuid]), host_id):
            joined.append(sd_uuid)
    if not master_tree_on_spm_only(master_dir):
        ensure_master_tree(master_dir)
        record_host(master_dir, host_id, hostname)
    refresh_links(sp_uuid, master_dir, master_md)
    # The lockspaces are recorded so disconnecting can leave them even when the
    # pool's storage is no longer reachable.
    held = sanlock_lock.lockspaces() if uses_sanlock(master_md.sd_type) else {}
    write_pool_state(sp_uuid, {'sp_uuid': sp_uuid, 'host_id': host_id, 'hostname': hostname,
                               'master_sd': master_md.sd_uuid, 'connected_at': int(time.time()),
                               'lockspaces': sorted(sd for sd in pool_domains(master_md) if sd in held)})
    return joined


def disconnect_pool(sp_uuid):
    """Leave the lockspaces of the pool's domains and remove its links and local state."""
    # The pool's storage may be gone or unclear: what this host recorded is enough to leave it.
    try:
        _master_dir, master_md = find_master(sp_uuid, required=False, unreadable_ok=True)
    except VirtnodeError:
        master_md = None
    recorded = (read_pool_state(sp_uuid) or {}).get('lockspaces', [])
    members = set(recorded) | (set(pool_domains(master_md)) if master_md is not None else set())
    for sd_uuid in sorted(members):
        _drop_stale_master_mount(sd_uuid)
    left = [sd_uuid for sd_uuid in sorted(members) if leave_lockspace(sd_uuid)]
    pdir = sd_layout.pool_dir(sp_uuid)
    if os.path.isdir(pdir):
        for name in os.listdir(pdir):
            if os.path.islink(os.path.join(pdir, name)):
                os.unlink(os.path.join(pdir, name))
        try:
            os.rmdir(pdir)
        except OSError:
            pass
    try:
        os.unlink(pool_state_path(sp_uuid))
    except FileNotFoundError:
        pass
    return left


def _drop_stale_master_mount(sd_uuid):
    """Unmount a block master's file system left mounted by an SPM holder of this host that was killed."""
    dom_dir = sd_layout.block_domain_dir(sd_uuid)
    if not connection.is_mounted(master_fs_dir(dom_dir)):
        return
    try:
        unmount_master(dom_dir)
    except VirtnodeError:
        unmount_master(dom_dir, lazy=True)


def is_pool_linked(sp_uuid):
    return os.path.isdir(sd_layout.pool_dir(sp_uuid)) or read_pool_state(sp_uuid) is not None
