# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Thin COW volumes presented as block devices: one backend interface, two implementations.

A *block volume* is a qcow2 (COW) volume that QEMU reads through a block
device whose size (the *physical* size) is smaller than the image's
capacity and grows in chunks while the guest writes (thin provisioning, as
VDSM does it on block storage domains). Every backend offers:

    activate(sd, img, vol)        -> stable device path (a symlink)
    deactivate(sd, img, vol)
    physical_size(sd, img, vol)   -> bytes, as this host sees the device
    storage_size(sd, img, vol)    -> bytes, as the shared storage has it
    capacity(sd, img, vol)        -> virtual size in bytes
    extend(sd, img, vol, bytes)   -> bytes (SPM side: grow the storage)
    refresh(sd, img, vol)         -> bytes (every host using it: see the new size)
    image_of(sd, vol)             -> the image UUID holding the volume

Two implementations:

* :class:`LvmBackend` is the production path on block storage domains: the
  volume group is named after the domain, the logical volume after the
  volume; ``lvextend`` on the SPM, ``lvchange --refresh`` on the host running
  the VM, ``lvs`` for the size on storage and the ``IU_<image>`` tag, the
  active device itself for the size this host sees. Activation is VDSM's
  prepareImage: the volume and its parents, checked LEGAL in their metadata
  slots, active with links in the image directory (:mod:`block_volumes`). The stable path is
  VDSM's ``/rhev/data-center/mnt/blockSD/<sd>/images/<img>/<vol>``.
* :class:`LoopBackend` presents a volume of a *file* storage domain through
  a loop device over the volume file: extend grows the file on the shared
  storage, refresh is ``losetup -c``. libvirt still sees a real block device
  (``<disk type='block'>``), QEMU really pauses on ENOSPC and the threshold
  events are real, so hosts without device-mapper exercise the same code.
  The stable path is ``/run/virtnode/block/<sd>/<img>/<vol>``.

Which backend serves a domain: a domain found under the file mount root
uses the loop backend, any other one the LVM backend (:func:`backend_for`).
A volume becomes a block volume when it is activated through a backend and
the VM's disk points at the stable path; the path names the domain, image
and volume, so the node agent maps a drive back to its volume with
:func:`volume_of_path`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

MIB = 1024 ** 2
LOOP_LINK_ROOT = os.path.join(storage.RUN_DIR, 'block')
LVM_LINK_ROOT = os.path.join(sd_layout.MOUNT_ROOT, 'blockSD')
# A COW volume may grow past its capacity by the qcow2 metadata: VDSM allows 10 %.
COW_OVERHEAD = 1.1
COMMAND_TIMEOUT = 60
# ioctl of <linux/loop.h>: re-read the size of the backing file (what losetup --set-capacity does).
LOOP_SET_CAPACITY = 0x4C07
_UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_IMAGE_NAME_RE = re.compile(r'\A%s\Z' % _UUID)
_PATH_RE = re.compile(r'\A(?:%s|%s)/(%s)/(?:images/)?(%s)/(%s)\Z' % (
    re.escape(LOOP_LINK_ROOT), re.escape(LVM_LINK_ROOT), _UUID, _UUID, _UUID))


def round_up_mib(size):
    """``size`` bytes rounded up to a whole MiB."""
    return (int(size) + MIB - 1) // MIB * MIB


def max_physical(capacity):
    """The most a COW volume of ``capacity`` bytes may take on storage (capacity x 1.1, MiB aligned)."""
    return round_up_mib(capacity * COW_OVERHEAD)


def run_checked(argv, timeout=COMMAND_TIMEOUT):
    """The block backends' command runner (tests replace it): stdout, or VirtnodeError."""
    return command.run_checked(argv, timeout)


def volume_of_path(path):
    """``(sd, img, vol)`` of a block volume's stable path, or None for any other path."""
    match = _PATH_RE.match(os.path.normpath(path or '/'))
    return match.groups() if match else None


def _ids(sd_uuid, img_uuid, vol_uuid):
    return (validate.uuid_str(sd_uuid, 'storage domain UUID'), validate.uuid_str(img_uuid, 'image UUID'),
            validate.uuid_str(vol_uuid, 'volume UUID'))


def set_link(link, target):
    if os.path.islink(link) and os.readlink(link) == target:
        return
    os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
    temp = link + '.new'
    if os.path.lexists(temp):
        os.unlink(temp)
    os.symlink(target, temp)
    os.replace(temp, link)


def remove_link(link):
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass
    # Empty <img> and <sd> directories go too.
    directory = os.path.dirname(link)
    for _level in range(2):
        try:
            os.rmdir(directory)
        except OSError:
            break
        directory = os.path.dirname(directory)


def _device_size(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise VirtnodeError('cannot open %s: %s' % (path, err.strerror or err), {'path': path}) from err
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class LoopBackend:
    """A file domain's volume seen through a loop device (lab and file domains)."""

    name = 'loop'

    def __init__(self, runner=run_checked, link_root=LOOP_LINK_ROOT, find_domain=storage.find_domain):
        self.run = runner
        self.link_root = link_root
        self.find_domain = find_domain
        self._images = {}  # (sd, volume) -> image: a volume never changes image; checked at each use

    def link_path(self, sd_uuid, img_uuid, vol_uuid):
        return os.path.join(self.link_root, *_ids(sd_uuid, img_uuid, vol_uuid))

    def _volume_stat(self, sd_uuid, img_uuid, vol_uuid):
        """``(path, stat)`` of the volume file, reached without following any link below its domain.

        Shared storage is written by other hosts: a volume (or its image
        directory) that is a link to /dev/sda or a host file must never reach
        a loop device, so anything but a regular file inside the domain is refused.
        """
        sd_uuid, img_uuid, vol_uuid = _ids(sd_uuid, img_uuid, vol_uuid)
        dom_dir = self.find_domain(sd_uuid)
        path = os.path.join(dom_dir, sd_layout.IMAGES, img_uuid, vol_uuid)
        try:
            return path, fileio.stat_beneath(path, root=dom_dir)
        except VirtnodeError as err:
            if err.details.get('errno') in (errno.ENOENT, errno.ENOTDIR) and not err.message.startswith('refusing'):
                raise VirtnodeError('volume %s not found in image %s of domain %s' % (vol_uuid, img_uuid, sd_uuid),
                                    {'path': path}) from err
            raise

    def volume_file(self, sd_uuid, img_uuid, vol_uuid):
        return self._volume_stat(sd_uuid, img_uuid, vol_uuid)[0]

    def image_of(self, sd_uuid, vol_uuid):
        vol_uuid = validate.uuid_str(vol_uuid, 'volume UUID')
        known = self._images.get((sd_uuid, vol_uuid))
        if known is not None:
            try:
                self._volume_stat(sd_uuid, known, vol_uuid)
                return known
            except VirtnodeError:
                del self._images[(sd_uuid, vol_uuid)]
        images = os.path.join(self.find_domain(validate.uuid_str(sd_uuid, 'storage domain UUID')), sd_layout.IMAGES)
        try:
            names = sorted(os.listdir(images))
        except OSError as err:
            raise VirtnodeError('cannot list %s: %s' % (images, err.strerror or err), {'path': images}) from err
        for img in names:
            # Removed images and anything not named like an image (temp names, junk) are skipped.
            if not _IMAGE_NAME_RE.match(img):
                continue
            try:
                self._volume_stat(sd_uuid, img, vol_uuid)
            except VirtnodeError as err:
                if 'not found' in err.message:
                    continue
                raise
            self._images[(sd_uuid, vol_uuid)] = img
            return img
        raise VirtnodeError('volume %s not found in domain %s' % (vol_uuid, sd_uuid), {'vol_uuid': vol_uuid})

    def devices(self, sd_uuid, img_uuid, vol_uuid):
        """Loop devices attached to the volume file on this host."""
        out = self.run(['losetup', '--list', '--json', '--output', 'NAME,BACK-FILE'])
        wanted = os.path.realpath(self.volume_file(sd_uuid, img_uuid, vol_uuid))
        try:
            entries = json.loads(out or '{}').get('loopdevices', [])
        except ValueError as err:
            raise VirtnodeError('losetup returned invalid JSON', {'output': out[:200]}) from err
        return sorted(e['name'] for e in entries if (e.get('back-file') or '').strip() == wanted)

    def activate(self, sd_uuid, img_uuid, vol_uuid):
        path = self.volume_file(sd_uuid, img_uuid, vol_uuid)
        devices = self.devices(sd_uuid, img_uuid, vol_uuid)
        if devices:
            device = devices[0]
        else:
            device = self.run(['losetup', '--find', '--show', path]).strip()
            # losetup follows links: had the volume been swapped for one since it was checked, the new
            # device is backed by another file. Such a device is detached and never given out.
            if device not in self.devices(sd_uuid, img_uuid, vol_uuid):
                self.run(['losetup', '--detach', device])
                raise VirtnodeError('refusing %s: the loop device %s is not backed by the volume file (was it replaced '
                                    'by a link?)' % (path, device), {'path': path, 'device': device})
        link = self.link_path(sd_uuid, img_uuid, vol_uuid)
        set_link(link, device)
        return link

    def is_active(self, sd_uuid, img_uuid, vol_uuid):
        """True when the volume's link names a loop device backed by the volume file."""
        link = self.link_path(sd_uuid, img_uuid, vol_uuid)
        return os.path.islink(link) and os.readlink(link) in self.devices(sd_uuid, img_uuid, vol_uuid)

    def deactivate(self, sd_uuid, img_uuid, vol_uuid):
        link = self.link_path(sd_uuid, img_uuid, vol_uuid)
        for device in self.devices(sd_uuid, img_uuid, vol_uuid):
            self.run(['losetup', '--detach', device])
        remove_link(link)

    def physical_size(self, sd_uuid, img_uuid, vol_uuid):
        return _device_size(self.link_path(sd_uuid, img_uuid, vol_uuid))

    def storage_size(self, sd_uuid, img_uuid, vol_uuid):
        return self._volume_stat(sd_uuid, img_uuid, vol_uuid)[1].st_size

    def capacity(self, sd_uuid, img_uuid, vol_uuid):
        meta = self.volume_file(sd_uuid, img_uuid, vol_uuid) + sd_layout.META_SUFFIX
        return volume_metadata.read_volume_metadata(meta, timeout=30).capacity

    def extend(self, sd_uuid, img_uuid, vol_uuid, size):
        path = self.volume_file(sd_uuid, img_uuid, vol_uuid)
        fd = fileio.open_beneath(path, os.O_WRONLY, root=self.find_domain(sd_uuid))
        try:
            try:
                current = os.fstat(fd).st_size
                if size > current:
                    # No fsync of its own (it was half the cost of an extension): a guest's flush
                    # through the loop device syncs the file, its new size included, and an NFS
                    # server commits a size change before it answers.
                    os.ftruncate(fd, size)
                    current = size
            finally:
                os.close(fd)
        except OSError as err:
            raise VirtnodeError('cannot extend %s: %s' % (path, err.strerror or err), {'path': path}) from err
        return current

    def refresh(self, sd_uuid, img_uuid, vol_uuid):
        # The device behind this host's stable link, refreshed with one ioctl: no command to start
        # while a guest is about to run out of space.
        link = self.link_path(sd_uuid, img_uuid, vol_uuid)
        try:
            fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise VirtnodeError('volume %s is not active on this host (%s: %s)' % (vol_uuid, link, err.strerror or err),
                                {'path': link}) from err
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError as err:
            raise VirtnodeError('cannot refresh the loop device of %s: %s' % (link, err.strerror or err),
                                {'path': link}) from err
        finally:
            os.close(fd)


class LvmBackend:
    """The production path: a logical volume ``<sd>/<vol>`` of a block storage domain.

    Two sizes differ on a host that did not run the ``lvextend``: the LV's size
    in the VG metadata (:meth:`storage_size`, what every host's ``lvs`` reads
    from the shared PV) and the size of this host's device-mapper table
    (:meth:`physical_size`, what QEMU here can write), which only follows
    after ``lvchange --refresh``. The thin provisioning monitor must compare
    the guest's allocation with the latter.
    """

    name = 'lvm'

    def __init__(self, runner=command.run_checked, link_root=LVM_LINK_ROOT, dev_root='/dev', volumes_for=None):
        self.lvm = lvm_cmd.Lvm(runner=runner)
        self.link_root = link_root
        self.dev_root = dev_root
        self._volumes_for = volumes_for
        self._reported = {}

    def link_path(self, sd_uuid, img_uuid, vol_uuid):
        sd_uuid, img_uuid, vol_uuid = _ids(sd_uuid, img_uuid, vol_uuid)
        return os.path.join(self.link_root, sd_uuid, sd_layout.IMAGES, img_uuid, vol_uuid)

    @staticmethod
    def lv_name(sd_uuid, vol_uuid):
        return '%s/%s' % (validate.uuid_str(sd_uuid, 'storage domain UUID'), validate.uuid_str(vol_uuid, 'volume UUID'))

    def device(self, sd_uuid, vol_uuid):
        """The LV's device node (a link LVM keeps only while the LV is active on this host)."""
        return os.path.join(self.dev_root, self.lv_name(sd_uuid, vol_uuid))

    def _lv(self, sd_uuid, vol_uuid):
        """The LV's tags and size and its VG's tags and extent size, from one ``lvs`` (an SPM extend needs all of
        them, and every LVM command counts: each is a process scanning the LUNs). Kept until :meth:`extend`."""
        name = self.lv_name(sd_uuid, vol_uuid)
        if name not in self._reported:
            rows = self.lvm.report('lvs', 'lv_tags,lv_size,vg_tags,vg_extent_size', name)
            if not rows:
                raise VirtnodeError('logical volume %s not found' % name)
            row = rows[0]
            self._reported[name] = {'tags': [t for t in row['lv_tags'].split(',') if t], 'size': int(row['lv_size']),
                                    'vg_tags': [t for t in row['vg_tags'].split(',') if t],
                                    'extent': int(row['vg_extent_size'])}
        return self._reported[name]

    def image_of(self, sd_uuid, vol_uuid):
        for tag in self._lv(sd_uuid, vol_uuid)['tags']:
            if tag.startswith('IU_'):
                return validate.uuid_str(tag[3:], 'image UUID')
        raise VirtnodeError('logical volume %s has no IU_ image tag' % self.lv_name(sd_uuid, vol_uuid))

    def volumes(self, sd_uuid):
        """The domain's :class:`block_volumes.BlockVolumes`: activation goes through the volumes' metadata."""
        if self._volumes_for is not None:
            return self._volumes_for(sd_uuid)
        # Imported when used: block_volumes builds on this module.
        from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes  # pylint: disable=import-outside-toplevel
        sd_uuid = validate.uuid_str(sd_uuid, 'storage domain UUID')
        dom_dir = storage.find_domain(sd_uuid, required=False)
        volumes = block_volumes.for_domain(dom_dir) if dom_dir else None
        if volumes is None:
            raise VirtnodeError('storage domain %s is not a block storage domain this host sees: connect its storage '
                                'server and its pool first' % sd_uuid, {'field': 'domain_id', 'sd_uuid': sd_uuid})
        return volumes

    def activate(self, sd_uuid, img_uuid, vol_uuid):
        """The volume and its parents checked LEGAL, active here and linked; the volume's link."""
        sd_uuid, img_uuid, vol_uuid = _ids(sd_uuid, img_uuid, vol_uuid)
        return self.volumes(sd_uuid).prepare(img_uuid, vol_uuid)

    def planned(self, sd_uuid, img_uuid, vol_uuid):
        """Check mode's :meth:`activate`: the same checks, nothing activated."""
        sd_uuid, img_uuid, vol_uuid = _ids(sd_uuid, img_uuid, vol_uuid)
        return self.volumes(sd_uuid).prepare(img_uuid, vol_uuid, activate=False)

    def deactivate(self, sd_uuid, img_uuid, vol_uuid):
        sd_uuid, img_uuid, vol_uuid = _ids(sd_uuid, img_uuid, vol_uuid)
        self.volumes(sd_uuid).teardown(img_uuid, vol_uuid)

    def physical_size(self, sd_uuid, img_uuid, vol_uuid):  # pylint: disable=unused-argument
        """Bytes of the LV's device on this host (no command: one seek)."""
        device = self.device(sd_uuid, vol_uuid)
        if not os.path.exists(device):
            raise VirtnodeError('volume %s is not active on this host (%s does not exist)' % (vol_uuid, device),
                                {'path': device})
        return _device_size(device)

    def storage_size(self, sd_uuid, img_uuid, vol_uuid):  # pylint: disable=unused-argument
        """Bytes of the LV in the VG metadata on the shared storage (``lvs``)."""
        return self._lv(sd_uuid, vol_uuid)['size']

    def capacity(self, sd_uuid, img_uuid, vol_uuid):
        """The volume's capacity, as its metadata slot records it (VDSM's SPM caps an extension with it too).

        An LV with no slot in a storage domain's VG (no ``MD_`` tag, or a VG
        without domain metadata) has its capacity read from its qcow2 header;
        the SPM caps extensions of volumes that run on other hosts, where the
        LV is usually not active: it is activated for that read and
        deactivated again (left active if something on this host opened it
        meanwhile).
        """
        # Imported when used: block_volumes builds on this module.
        from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes  # pylint: disable=import-outside-toplevel
        from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img  # pylint: disable=import-outside-toplevel
        lv = self._lv(sd_uuid, vol_uuid)
        md = block_volumes.slot_metadata(validate.uuid_str(sd_uuid, 'storage domain UUID'), lv['tags'], lv['vg_tags'],
                                         os.path.join(self.dev_root, sd_uuid, 'metadata'))
        if md is not None:
            return md.capacity
        device = self.device(sd_uuid, vol_uuid)
        if os.path.exists(device):
            return qemu_img.virtual_size(device, 'COW')
        self.lvm.activate(sd_uuid, [vol_uuid])
        try:
            return qemu_img.virtual_size(device, 'COW')
        finally:
            try:
                self.lvm.deactivate(sd_uuid, [vol_uuid])
            except VirtnodeError:
                pass

    def extend(self, sd_uuid, img_uuid, vol_uuid, size):
        """The SPM's part: the size on storage grown to ``size`` bytes or more, whether or not the LV is active
        here; the new size, which LVM makes whole extents (no ``lvs`` to read it back)."""
        lv = self._lv(sd_uuid, vol_uuid)
        if size <= lv['size']:
            return lv['size']
        self.lvm.extend_lv(validate.uuid_str(sd_uuid, 'storage domain UUID'), validate.uuid_str(vol_uuid, 'volume UUID'),
                           round_up_mib(size) // MIB)
        del self._reported[self.lv_name(sd_uuid, vol_uuid)]
        return -(-round_up_mib(size) // lv['extent']) * lv['extent']

    def refresh(self, sd_uuid, img_uuid, vol_uuid):
        # Reloads this host's table from the VG metadata the SPM wrote; the result is what QEMU now sees.
        self.lvm.refresh(validate.uuid_str(sd_uuid, 'storage domain UUID'), [validate.uuid_str(vol_uuid, 'volume UUID')])
        return self.physical_size(sd_uuid, img_uuid, vol_uuid)


def _domain_dir(sd_uuid, find_domain):
    """The domain's directory on this host; a block domain this host joined is known by its host directory,
    without an LVM scan (the thin provisioning path counts every command)."""
    block_dir = sd_layout.block_domain_dir(sd_uuid)
    return block_dir if os.path.isdir(block_dir) else find_domain(sd_uuid, required=False)


def is_block_domain(sd_uuid, find_domain=storage.find_domain):
    """True if this host sees ``sd_uuid`` as a block storage domain."""
    dom_dir = _domain_dir(validate.uuid_str(sd_uuid, 'storage domain UUID'), find_domain)
    return bool(dom_dir) and sd_layout.is_block_domain_dir(dom_dir)


def backend_for(sd_uuid, find_domain=storage.find_domain):
    """The backend serving domain ``sd_uuid``: loop for a file domain, LVM otherwise."""
    dom_dir = _domain_dir(validate.uuid_str(sd_uuid, 'storage domain UUID'), find_domain)
    if dom_dir and not sd_layout.is_block_domain_dir(dom_dir):
        return LoopBackend(find_domain=find_domain)
    return LvmBackend()


def present_volume(sd_uuid, img_uuid, vol_uuid, activate=True):
    """Path of the volume as a block device on this host; ``activate=False`` only says where."""
    backend = backend_for(sd_uuid)
    if activate:
        return backend.activate(sd_uuid, img_uuid, vol_uuid)
    if isinstance(backend, LoopBackend):
        backend.volume_file(sd_uuid, img_uuid, vol_uuid)  # a missing volume fails in check mode too
        return backend.link_path(sd_uuid, img_uuid, vol_uuid)
    return backend.planned(sd_uuid, img_uuid, vol_uuid)


def release_path(path):
    """Deactivate the block volume behind its stable ``path`` (see :func:`volume_of_path`)."""
    ids = volume_of_path(path)
    if ids is None:
        raise VirtnodeError('%s is not the path of a block-presented volume' % path, {'path': path})
    backend_for(ids[0]).deactivate(*ids)


_EXTEND_LOCKS = {}
_EXTEND_LOCKS_GUARD = threading.Lock()


def _volume_lock(vol_uuid):
    with _EXTEND_LOCKS_GUARD:
        return _EXTEND_LOCKS.setdefault(vol_uuid, threading.Lock())


def extend_volume_on_spm(sd_uuid, vol_uuid, new_size_mib, backend=None, check=None):
    """Grow volume ``vol_uuid`` of domain ``sd_uuid`` to ``new_size_mib`` MiB on storage; the SPM's part.

    The request is capped at the volume's capacity x 1.1 and never shrinks
    anything. Returns the volume's size in MiB afterwards (0 is never
    returned: failures raise VirtnodeError). The caller makes sure this host
    is the SPM; ``check`` (an SPM task's, see agent/spm_extend.py) is called
    right before storage is changed and raises once this host may no longer.
    """
    if isinstance(new_size_mib, bool) or not isinstance(new_size_mib, int) or new_size_mib < 1:
        raise VirtnodeError('extend size must be a positive number of MiB, got %r' % (new_size_mib,), {'field': 'size_mib'})
    backend = backend or backend_for(sd_uuid)
    img_uuid = backend.image_of(sd_uuid, vol_uuid)
    with _volume_lock(vol_uuid):
        wanted = min(new_size_mib * MIB, max_physical(backend.capacity(sd_uuid, img_uuid, vol_uuid)))
        if check is not None:
            check()
        size = backend.extend(sd_uuid, img_uuid, vol_uuid, wanted)
    return size // MIB
