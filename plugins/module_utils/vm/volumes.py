# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a VM's disks meet this host: paths of storage-domain volumes, block devices.

:func:`spec.normalize` is pure; :func:`normalize_on_host` gives it the host
(``os.stat``, the volume resolvers here). A disk given as a storage-domain
volume is found under VDSM's mount root, or with ``type=block`` presented
as a block device by the storage layer's block backend, which activates it
(check mode only asks where it would appear). When the VM is gone, those
block devices are given back (:func:`release_block_volume`).

Shared storage is written by other hosts, so a volume is given to a guest
only if it is a regular file inside its domain, reached without following
any link below the mount point (a block domain's volume is this host's own
link to its logical volume, nothing else), and only if neither it nor any
volume of its chain is ILLEGAL (an interrupted create, a half-removed
snapshot): QEMU would otherwise run a guest on inconsistent data.
"""

from __future__ import annotations

import glob
import os
import stat

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec

IMAGES = 'images'
BLOCK_MOUNT = 'blockSD'
BLANK_UUID = '00000000-0000-0000-0000-000000000000'


def _block_backend():
    # Imported when used: only VMs with block-presented disks pay for the storage layer's import.
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block  # pylint: disable=import-outside-toplevel
    return block


def _volume_metadata():
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata  # pylint: disable=import-outside-toplevel
    return volume_metadata


def _ids(domain_id, image_id, volume_id):
    # The ids become path components (and a glob pattern): only UUIDs, never "..", "*" or "/".
    return (validate.uuid_str(domain_id, 'storage domain UUID'), validate.uuid_str(image_id, 'image UUID'),
            validate.uuid_str(volume_id, 'volume UUID'))


def volume_path_candidates(domain_id, image_id, volume_id, mount_root=None):
    """Paths a storage-domain volume may have under VDSM's mount root (file and block domains)."""
    domain_id, image_id, volume_id = _ids(domain_id, image_id, volume_id)
    mount_root = paths.MOUNT_ROOT if mount_root is None else mount_root
    return sorted(glob.glob(os.path.join(glob.escape(mount_root), '*', domain_id, IMAGES, image_id, volume_id)))


def _qemu_img():
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img  # pylint: disable=import-outside-toplevel
    return qemu_img


def check_volume_chain_legal(dom_dir, image_id, volume_id, root=None):
    """Raise VirtnodeError unless volume ``volume_id`` and every volume below it are usable.

    Reads ``<dom_dir>/images/<image>/<vol>.meta`` up the PUUID chain, without
    following links below ``root`` (default ``dom_dir``). A volume without
    metadata, with unreadable metadata or marked ILLEGAL is refused. Returns
    the volume UUIDs, top first.
    """
    return [vol for vol, _fmt in _legal_chain(dom_dir, image_id, volume_id, root)]


def check_headers_match_chain(path, image_id, volume_id, chain):
    """Raise VirtnodeError unless the image headers from ``path`` down name exactly ``chain``.

    ``chain`` is [(volume UUID, FORMAT)] from the volumes' metadata, top
    first. Another host can rewrite a qcow2 header on shared storage; QEMU
    and libvirt follow headers, so a volume whose headers name anything but
    its metadata's parents, in their formats, is never given to a guest (the
    header check itself never follows a name outside the image directory,
    see qemu_img.backing_chain).
    """
    qemu_img = _qemu_img()
    try:
        layers = qemu_img.backing_chain(path, chain[0][1])
    except VirtnodeError as err:
        raise VirtnodeError('refusing storage volume %s of image %s: %s' % (volume_id, image_id, err.message),
                            dict(err.details, field='disks', volume_id=volume_id)) from err
    found = [(os.path.basename(layer), fmt) for layer, fmt in layers]
    expected = [(vol, qemu_img.qemu_format(fmt)) for vol, fmt in chain]
    if found != expected:
        raise VirtnodeError('refusing storage volume %s of image %s: its image headers name the chain %s, its '
                            'metadata %s' % (volume_id, image_id, ' <- '.join('%s (%s)' % pair for pair in found),
                                             ' <- '.join('%s (%s)' % pair for pair in expected)),
                            {'field': 'disks', 'volume_id': volume_id})
    return layers


def _legal_chain(dom_dir, image_id, volume_id, root=None):
    """[(volume UUID, FORMAT)] of :func:`check_volume_chain_legal`."""
    return _volume_metadata().legal_chain(dom_dir, image_id, volume_id, root, writable=True)


def _checked_block_link(path, domain_id, volume_id):
    """A block domain's volume: this host's link to ``/dev/<sd>/<vol>``, a block device; nothing else."""
    expected = '/dev/%s/%s' % (domain_id, volume_id)
    try:
        target = os.readlink(path)
        st = os.stat(path)
    except OSError as err:
        raise VirtnodeError('refusing storage volume %s: %s' % (path, err.strerror or err),
                            {'field': 'disks', 'path': path}) from err
    if target != expected or not stat.S_ISBLK(st.st_mode):
        raise VirtnodeError('refusing storage volume %s: it must be a link to the block device %s, it is %s'
                            % (path, expected, target), {'field': 'disks', 'path': path})
    return path


def _mount_of(path):
    # <mount>/<sd>/images/<img>/<vol>
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(path))))


def resolve_volume(domain_id, image_id, volume_id):
    """Path of a volume already prepared on this host (mounted file domain, or an active block
    volume linked under the mount root), or VirtnodeError.

    The path is refused if anything below the mount point is a link (but a
    block domain's own link to its logical volume) or if the volume is not a
    regular file. Its legality is not looked at (a merged-away ILLEGAL volume
    is found to be deleted): what a guest is given goes through
    :func:`resolve_legal_volume`.
    """
    domain_id, image_id, volume_id = _ids(domain_id, image_id, volume_id)
    found = volume_path_candidates(domain_id, image_id, volume_id)
    if not found:
        if _block_backend().is_block_domain(domain_id):
            raise VirtnodeError('storage volume %s/%s/%s is on a block storage domain: give the disk type: block, '
                                'which activates it and its parents on this host'
                                % (domain_id, image_id, volume_id), {'field': 'disks'})
        raise VirtnodeError('storage volume %s/%s/%s is not prepared on this host (no %s/*/%s/images/%s/%s)'
                            % (domain_id, image_id, volume_id, paths.MOUNT_ROOT, domain_id, image_id, volume_id),
                            {'field': 'disks'})
    path = found[0]
    mount = _mount_of(path)
    if os.path.basename(mount) == BLOCK_MOUNT:
        return _checked_block_link(path, domain_id, volume_id)
    # Only the mount point itself may be a link (VDSM links local storage there); nothing below it.
    fileio.stat_beneath(path, root=mount)
    return path


def legal_volume_source(domain_id, image_id, volume_id):
    """What a guest's disk on a storage volume is made of: ``{'path', 'backing'}``.

    ``path`` is :func:`resolve_legal_volume`'s. For a file domain ``backing``
    is the checked chain below the volume, ``[(path, qemu format)]`` top
    first, which the domain XML names explicitly so that libvirt and QEMU
    never read a backing file from a header; ``None`` for a block domain.
    """
    domain_id, image_id, volume_id = _ids(domain_id, image_id, volume_id)
    path = resolve_volume(domain_id, image_id, volume_id)
    mount = _mount_of(path)
    if os.path.basename(mount) == BLOCK_MOUNT:
        return {'path': path, 'backing': None}
    chain = _legal_chain(os.path.join(mount, domain_id), image_id, volume_id, root=mount)
    layers = check_headers_match_chain(path, image_id, volume_id, chain)
    return {'path': path, 'backing': [list(layer) for layer in layers[1:]]}


def resolve_legal_volume(domain_id, image_id, volume_id):
    """:func:`resolve_volume` for a volume given to a guest: refused if it or its chain is ILLEGAL.

    A file domain's chain is also checked in the images' headers: they must
    name the metadata's chain (:func:`check_headers_match_chain`). A block
    domain's chain lives in its metadata logical volume, which this host does
    not read here: only file domain chains are checked.
    """
    return legal_volume_source(domain_id, image_id, volume_id)['path']


def _check_block_source(domain_id, image_id, volume_id):
    """Before a volume is presented as a block device: a file domain's volume must be legal (a block
    domain's chain is checked in its metadata slots when the LVM backend activates it)."""
    block = _block_backend()
    backend = block.backend_for(domain_id)
    find_domain = getattr(backend, 'find_domain', None)
    if find_domain is not None:
        dom_dir = find_domain(domain_id)
        backend.volume_file(domain_id, image_id, volume_id)
        check_volume_chain_legal(dom_dir, image_id, volume_id)
    return block


def activate_block_volume(domain_id, image_id, volume_id):
    """The volume activated as a block device on this host; its stable path."""
    domain_id, image_id, volume_id = _ids(domain_id, image_id, volume_id)
    return _check_block_source(domain_id, image_id, volume_id).present_volume(domain_id, image_id, volume_id, activate=True)


def planned_block_volume(domain_id, image_id, volume_id):
    """For check mode: where the volume would appear as a block device, activating nothing."""
    domain_id, image_id, volume_id = _ids(domain_id, image_id, volume_id)
    return _check_block_source(domain_id, image_id, volume_id).present_volume(domain_id, image_id, volume_id, activate=False)


def normalize_on_host(params, check_mode=False):
    """:func:`spec.normalize` of module options against this host's files and storage volumes."""
    return vm_spec.normalize(params, stat_fn=os.stat, resolver=legal_volume_source,
                             block_resolver=planned_block_volume if check_mode else activate_block_volume,
                             lexists=os.path.lexists, host_cpus=online_cpus(),
                             host_nodes=online_cpus('/sys/devices/system/node/online'),
                             host_hugepages=reserved_hugepages())


def online_cpus(path='/sys/devices/system/cpu/online'):
    """This host's online CPUs, or NUMA nodes from ``/sys/devices/system/node/online`` (None when the kernel
    does not say)."""
    try:
        with open(path) as stream:
            return vm_spec.parse_cpuset(stream.read().strip(), 'online CPUs')
    except (OSError, VirtnodeError):
        return None


def reserved_hugepages(root='/sys/kernel/mm/hugepages'):
    """``{page size KiB: pages the kernel reserves}`` (None when the kernel does not say)."""
    try:
        names = os.listdir(root)
    except OSError:
        return None
    found = {}
    for name in names:
        if name.startswith('hugepages-') and name.endswith('kB'):
            try:
                with open(os.path.join(root, name, 'nr_hugepages')) as stream:
                    found[int(name[len('hugepages-'):-2])] = int(stream.read().strip() or 0)
            except (OSError, ValueError):
                continue
    return found


def is_block_volume_path(path):
    """True for the stable path of a block-presented storage volume."""
    return _block_backend().volume_of_path(path) is not None


def release_block_volume(path):
    """Deactivate the block-presented volume behind ``path``."""
    _block_backend().release_path(path)
