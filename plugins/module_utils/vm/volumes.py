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
"""

from __future__ import annotations

import glob
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import paths
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec


def _block_backend():
    # Imported when used: only VMs with block-presented disks pay for the storage layer's import.
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block  # pylint: disable=import-outside-toplevel
    return block


def volume_path_candidates(domain_id, image_id, volume_id, mount_root=None):
    """Paths a storage-domain volume may have under VDSM's mount root (file and block domains)."""
    mount_root = paths.MOUNT_ROOT if mount_root is None else mount_root
    return sorted(glob.glob(os.path.join(glob.escape(mount_root), '*', domain_id, 'images', image_id, volume_id)))


def resolve_volume(domain_id, image_id, volume_id):
    """Path of a volume already prepared on this host (mounted file domain, or an active block
    volume linked under the mount root), or VirtnodeError."""
    found = volume_path_candidates(domain_id, image_id, volume_id)
    if not found:
        raise VirtnodeError('storage volume %s/%s/%s is not prepared on this host (no %s/*/%s/images/%s/%s)'
                            % (domain_id, image_id, volume_id, paths.MOUNT_ROOT, domain_id, image_id, volume_id),
                            {'field': 'disks'})
    return found[0]


def activate_block_volume(domain_id, image_id, volume_id):
    """The volume activated as a block device on this host; its stable path."""
    return _block_backend().present_volume(domain_id, image_id, volume_id, activate=True)


def planned_block_volume(domain_id, image_id, volume_id):
    """For check mode: where the volume would appear as a block device, activating nothing."""
    return _block_backend().present_volume(domain_id, image_id, volume_id, activate=False)


def normalize_on_host(params, check_mode=False):
    """:func:`spec.normalize` of module options against this host's files and storage volumes."""
    return vm_spec.normalize(params, stat_fn=os.stat, resolver=resolve_volume,
                             block_resolver=planned_block_volume if check_mode else activate_block_volume,
                             lexists=os.path.lexists)


def is_block_volume_path(path):
    """True for the stable path of a block-presented storage volume."""
    return _block_backend().volume_of_path(path) is not None


def release_block_volume(path):
    """Deactivate the block-presented volume behind ``path``."""
    _block_backend().release_path(path)
