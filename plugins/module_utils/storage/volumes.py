# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images and volumes of a file storage domain, as VDSM's fileVolume/image do them.

Create order (a crash leaves an ILLEGAL volume, never a LEGAL broken one):
data file (qemu-img), ``.meta`` with LEGALITY=ILLEGAL, ``.lease`` (a sanlock
resource named after the volume, offset 0; not on local domains), parent
turned INTERNAL, then LEGALITY=LEGAL. A snapshot is a COW volume whose
backing file is its parent's UUID (a name relative to the image directory),
``qemu-img create -b <parent> -F <parent format>``. A clone is a full copy
(``qemu-img convert``) of another volume into a new image.
Deleting an image first renames its directory ``_remove_me_<imgUUID>``.

Every change runs under the domain's metadata lock (:mod:`domain_lock`), so
the checks it makes (no children, not existing) still hold when it writes.
Under :func:`fenced` every metadata write, and the step after each qemu-img
run, first asks the fence whether this process may still write (the SPM
lease is still ours); when it may not, nothing more is written or removed,
not even the half-made volume: that is the new SPM's to clean.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import image_transfer
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

VOLUME_FILE_MODE = 0o660
MIN_CAPACITY = 1024 ** 2
_FENCES = threading.local()
_PREALLOCATION = {('RAW', 'SPARSE'): None, ('RAW', 'PREALLOCATED'): 'falloc',
                  ('COW', 'SPARSE'): None, ('COW', 'PREALLOCATED'): 'falloc'}


def paths(dom_dir, img_uuid, vol_uuid):
    """``(data, meta, lease)`` paths of a volume."""
    return sd_layout.volume_paths(os.path.dirname(dom_dir), os.path.basename(dom_dir), img_uuid, vol_uuid)


def image_path(dom_dir, img_uuid):
    return sd_layout.image_dir(os.path.dirname(dom_dir), os.path.basename(dom_dir), img_uuid)


def read_volume(dom_dir, img_uuid, vol_uuid):
    """Return the VolumeMetadata of a volume, or None if it has no ``.meta``."""
    meta = paths(dom_dir, img_uuid, vol_uuid)[1]
    if not os.path.exists(meta):
        return None
    return vmd.read_volume_metadata(meta, timeout=30)


def image_volumes(dom_dir, img_uuid):
    """``{vol_uuid: VolumeMetadata}`` of an image."""
    found = {}
    for info in storage.volume_chain_info(dom_dir, img_uuid):
        if 'error' not in info:
            found[info['volume_uuid']] = read_volume(dom_dir, img_uuid, info['volume_uuid'])
    return found


def check_capacity(capacity):
    if capacity < MIN_CAPACITY or capacity % 512:
        raise VirtnodeError('volume size must be at least 1 MiB and a multiple of 512 bytes, got %d' % capacity, {'field': 'size'})
    return capacity


@contextlib.contextmanager
def fenced(check):
    """Run the ``with`` body with ``check()`` called before every metadata write or removal.

    ``check`` raises VirtnodeError (details ``fenced``: True) once this
    process may no longer write, e.g. when the SPM lease is lost.
    """
    stack = getattr(_FENCES, 'stack', None)
    if stack is None:
        stack = _FENCES.stack = []
    stack.append(check)
    try:
        yield
    finally:
        stack.pop()


def check_fence():
    """Raise unless the fence of every :func:`fenced` body around this call lets the process write."""
    for check in getattr(_FENCES, 'stack', None) or ():
        check()


def is_fenced(err):
    return isinstance(err, VirtnodeError) and bool(err.details.get('fenced'))


def _write_meta(dom_dir, md, domain_version, path):
    check_fence()
    vmd.write_volume_metadata(path, md, domain_version)


def _discard(path_list):
    for path in path_list:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _snapshot_parent(dom_dir, img_uuid, parent_uuid, volume_format, capacity):
    """The parent's VolumeMetadata and the snapshot's capacity, if a snapshot on it may be made."""
    parent_md = read_volume(dom_dir, img_uuid, parent_uuid)
    if parent_md is None:
        raise VirtnodeError('parent volume %s not found in image %s' % (parent_uuid, img_uuid), {'field': 'parent'})
    if parent_md.legality != 'LEGAL':
        raise VirtnodeError('parent volume %s is %s' % (parent_uuid, parent_md.legality), {'field': 'parent'})
    if parent_md.role == 'SHARED' and parent_md.image == img_uuid:
        raise VirtnodeError('volume %s is a template: its thin clones are made in other images (parent_image_uuid), '
                            'never on top of it in its own image' % parent_uuid, {'field': 'parent'})
    children = [v for v, m in image_volumes(dom_dir, img_uuid).items() if m.parent == parent_uuid]
    if children:
        raise VirtnodeError('parent volume %s already has a child (%s): only the leaf can be snapshotted'
                            % (parent_uuid, ', '.join(children)), {'field': 'parent'})
    if volume_format != 'COW':
        raise VirtnodeError('a volume on top of a parent must be COW', {'field': 'format'})
    return parent_md, capacity_on(parent_md, capacity, 'snapshot', 'parent')


def capacity_on(base_md, capacity, child, base):
    """The capacity of a volume on top of ``base_md`` (its own by default); never smaller than it."""
    capacity = base_md.capacity if capacity is None else capacity
    if capacity < base_md.capacity:
        raise VirtnodeError('a %s cannot be smaller than its %s (%d bytes)' % (child, base, base_md.capacity),
                            {'field': 'size'})
    return capacity


def _template_parent(dom_dir, template_img, template_vol, volume_format, capacity):
    """The template's VolumeMetadata and the thin clone's capacity, if a clone of it may be made."""
    template_md = read_volume(dom_dir, template_img, template_vol)
    if template_md is None:
        raise VirtnodeError('template volume %s not found in image %s' % (template_vol, template_img), {'field': 'parent'})
    if template_md.role != 'SHARED' or template_md.image != template_img:
        raise VirtnodeError('volume %s of image %s is not a template (VOLTYPE SHARED): only a template is the base of '
                            'volumes in other images' % (template_vol, template_img), {'field': 'parent'})
    if template_md.legality != 'LEGAL':
        raise VirtnodeError('template volume %s is %s' % (template_vol, template_md.legality), {'field': 'parent'})
    if volume_format != 'COW':
        raise VirtnodeError('a thin clone of a template must be COW', {'field': 'format'})
    return template_md, capacity_on(template_md, capacity, 'clone', 'template')


def share_template(dom_dir, template_img, img_uuid, template_vol):
    """Hard-link the template's data, ``.meta`` and ``.lease`` into image ``img_uuid``, as VDSM shares a template
    with the images based on it; returns the links made (those already there are kept)."""
    made = []
    for src, dst in zip(paths(dom_dir, template_img, template_vol), paths(dom_dir, img_uuid, template_vol)):
        if not os.path.lexists(src):
            continue  # a local domain's volume has no lease
        if os.path.lexists(dst):
            if not os.path.samefile(src, dst):
                raise VirtnodeError('image %s holds a %s that is not the template\'s' % (img_uuid, os.path.basename(dst)),
                                    {'image_uuid': img_uuid})
            continue
        os.link(src, dst)
        made.append(dst)
    return made


def sharing_images(dom_dir, template_img, template_vol):
    """The images other than ``template_img`` that hold a link to the template volume (its thin clones' images)."""
    found = []
    images_dir = os.path.dirname(image_path(dom_dir, template_img))
    for name in sorted(os.listdir(images_dir)):
        if name != template_img and os.path.lexists(os.path.join(images_dir, name, template_vol + sd_layout.META_SUFFIX)):
            found.append(name)
    return found


def check_not_shared(dom_dir, img_uuid, volume_mds):
    """Refuse to delete a template (of ``volume_mds``, ``{vol: VolumeMetadata}`` of image ``img_uuid``) that
    thin clones in other images are based on (VDSM's CannotDeleteSharedVolume)."""
    for vol, md in volume_mds.items():
        if md is not None and md.role == 'SHARED' and md.image == img_uuid:
            users = sharing_images(dom_dir, img_uuid, vol)
            if users:
                raise VirtnodeError('template volume %s of image %s is the base of image(s) %s: delete them first'
                                    % (vol, img_uuid, ', '.join(users)), {'volume_uuid': vol, 'images': users})


def _clone_source(clone_source, capacity):
    """The source's data path and VolumeMetadata and the clone's capacity, if it may be cloned."""
    src_dir, src_img, src_vol = clone_source
    source_md = read_volume(src_dir, src_img, src_vol)
    return paths(src_dir, src_img, src_vol)[0], source_md, check_clone_source(source_md, src_img, src_vol, capacity)


def check_clone_source(source_md, src_img, src_vol, capacity):
    """The clone's capacity, if the source volume (its VolumeMetadata ``source_md``) may be cloned."""
    if source_md is None:
        raise VirtnodeError('source volume %s not found in image %s' % (src_vol, src_img), {'field': 'clone_from'})
    if source_md.legality != 'LEGAL':
        raise VirtnodeError('source volume %s is %s' % (src_vol, source_md.legality), {'field': 'clone_from'})
    capacity = source_md.capacity if capacity is None else capacity
    if capacity != source_md.capacity:
        raise VirtnodeError('a clone has the size of its source (%d bytes)' % source_md.capacity, {'field': 'size'})
    return capacity


def _create_lease(domain_md, vol_uuid, lease):
    fd = os.open(lease, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, VOLUME_FILE_MODE)
    os.close(fd)
    fileio.set_mode_owner(lease, VOLUME_FILE_MODE, fileio.STORAGE_OWNER)
    sanlock_lock.write_resource(domain_md.sd_uuid, vol_uuid, lease, 0, domain_md.alignment, domain_md.block_size)


def create_volume(dom_dir, domain_md, img_uuid, vol_uuid, volume_format, allocation, capacity=None, parent_uuid=None,
                  description='', disk_type='DATA', clone_source=None, import_source=None, template=False,
                  parent_image=None):
    """Create a volume; returns its VolumeMetadata.

    ``clone_source`` is ``(dom_dir, img_uuid, vol_uuid)`` of a volume to copy (its chain flattened);
    ``import_source`` a checked image from outside storage (:meth:`qemu_img.CopySource.external`).
    ``template`` makes it a template volume (VOLTYPE SHARED); ``parent_image``, when not ``img_uuid``, is the
    image of the template ``parent_uuid`` the new volume is a thin clone of (see :func:`share_template`).
    """
    with domain_lock.dir_lock(dom_dir):
        return _create_volume(dom_dir, domain_md, img_uuid, vol_uuid, volume_format, allocation, capacity, parent_uuid,
                              description, disk_type, clone_source, import_source, template, parent_image)


def _create_volume(dom_dir, domain_md, img_uuid, vol_uuid, volume_format, allocation, capacity, parent_uuid,
                   description, disk_type, clone_source, import_source=None, template=False, parent_image=None):
    check_fence()
    data, meta, lease = paths(dom_dir, img_uuid, vol_uuid)
    img_dir = os.path.dirname(data)
    if os.path.lexists(data) or os.path.lexists(meta):
        raise VirtnodeError('volume %s already exists in image %s' % (vol_uuid, img_uuid), {'vol_uuid': vol_uuid})
    parent_md = source_path = source_md = None
    if template and parent_uuid is not None:
        raise VirtnodeError('a template volume is a base: it has no parent', {'field': 'template'})
    shared_from = parent_image if parent_image not in (None, img_uuid) else None
    if shared_from is not None:
        parent_md, capacity = _template_parent(dom_dir, shared_from, parent_uuid, volume_format, capacity)
    elif parent_uuid is not None:
        parent_md, capacity = _snapshot_parent(dom_dir, img_uuid, parent_uuid, volume_format, capacity)
    if clone_source is not None:
        source_path, source_md, capacity = _clone_source(clone_source, capacity)
    if import_source is not None:
        capacity = image_transfer.import_capacity(import_source, capacity)
    if capacity is None:
        raise VirtnodeError('size is required to create a volume', {'field': 'size'})
    check_capacity(capacity)

    created_dir = not os.path.isdir(img_dir)
    if created_dir:
        fileio.make_dirs(img_dir, sd_layout.IMAGES_DIR_MODE, fileio.STORAGE_OWNER)
    created = []
    try:
        if shared_from is not None:
            created += share_template(dom_dir, shared_from, img_uuid, parent_uuid)
        created.append(data)
        if source_path is not None:
            qemu_img.convert(source_path, data, source_md.volume_format, volume_format, _PREALLOCATION[(volume_format, allocation)])
        elif import_source is not None:
            import_source.convert(data, volume_format, _PREALLOCATION[(volume_format, allocation)])
            if capacity > import_source.virtual_size:
                qemu_img.resize(data, capacity, volume_format)
        else:
            qemu_img.create(data, volume_format, None if parent_md else capacity, parent_uuid,
                            parent_md.volume_format if parent_md else None, _PREALLOCATION[(volume_format, allocation)])
            if parent_md and capacity > parent_md.capacity:
                qemu_img.resize(data, capacity, volume_format)
        check_fence()  # qemu-img may have run for long: is the lease still ours?
        fileio.set_mode_owner(data, VOLUME_FILE_MODE, fileio.STORAGE_OWNER)
        crash_point('volume_create.data')
        md = vmd.VolumeMetadata(domain=domain_md.sd_uuid, image=img_uuid, capacity=capacity, volume_format=volume_format,
                                allocation=allocation, role='SHARED' if template else 'LEAF', disk_type=disk_type,
                                parent=parent_uuid or vmd.BLANK_UUID, description=description, legality='ILLEGAL')
        created.append(meta)
        _write_meta(dom_dir, md, domain_md.version, meta)
        crash_point('volume_create.meta_illegal')
        if storage.uses_sanlock(domain_md.sd_type):
            created.append(lease)
            _create_lease(domain_md, vol_uuid, lease)
            crash_point('volume_create.lease')
        if parent_md is not None and parent_md.role == 'LEAF':
            parent_md.role = 'INTERNAL'
            _write_meta(dom_dir, parent_md, domain_md.version, paths(dom_dir, img_uuid, parent_uuid)[1])
            crash_point('volume_create.parent_internal')
        md.legality = 'LEGAL'
        _write_meta(dom_dir, md, domain_md.version, meta)
        crash_point('volume_create.legal')
    except (VirtnodeError, OSError) as err:
        if is_fenced(err):
            raise  # no longer the writer: leave the ILLEGAL leftover to the SPM
        _discard(created)
        if created_dir:
            shutil.rmtree(img_dir, ignore_errors=True)
        if isinstance(err, OSError):
            raise VirtnodeError('cannot create volume %s: %s' % (vol_uuid, err.strerror or err), {'vol_uuid': vol_uuid}) from err
        raise
    fileio.fsync_directory(img_dir)
    return md


def grows(img_uuid, vol_uuid, md, capacity):
    """True if the volume (its VolumeMetadata ``md``) is to grow to ``capacity``; raises if it may not."""
    if md is None:
        raise VirtnodeError('volume %s not found in image %s' % (vol_uuid, img_uuid), {'vol_uuid': vol_uuid})
    if capacity < md.capacity:
        raise VirtnodeError('volume %s is %d bytes; shrinking to %d bytes is not supported' % (vol_uuid, md.capacity, capacity),
                            {'field': 'size'})
    if capacity == md.capacity:
        return False
    if md.role != 'LEAF':
        raise VirtnodeError('only the leaf volume of an image can be extended; %s is %s' % (vol_uuid, md.role), {'field': 'size'})
    return True


def extend_volume(dom_dir, domain_md, img_uuid, vol_uuid, capacity):
    """Grow a volume to ``capacity`` bytes; shrinking is refused. Returns True if it grew."""
    with domain_lock.dir_lock(dom_dir):
        return _extend_volume(dom_dir, domain_md, img_uuid, vol_uuid, capacity)


def _extend_volume(dom_dir, domain_md, img_uuid, vol_uuid, capacity):
    check_fence()
    md = read_volume(dom_dir, img_uuid, vol_uuid)
    if not grows(img_uuid, vol_uuid, md, check_capacity(capacity)):
        return False
    data, meta, _lease = paths(dom_dir, img_uuid, vol_uuid)
    qemu_img.resize(data, capacity, md.volume_format)
    check_fence()
    md.capacity = capacity
    md.generation = vmd.next_generation(md.generation)
    _write_meta(dom_dir, md, domain_md.version, meta)
    return True


def delete_volume(dom_dir, domain_md, img_uuid, vol_uuid):
    """Delete a volume that has no children; the parent becomes the leaf again."""
    with domain_lock.dir_lock(dom_dir):
        return _delete_volume(dom_dir, domain_md, img_uuid, vol_uuid)


def _delete_volume(dom_dir, domain_md, img_uuid, vol_uuid):
    check_fence()
    md = read_volume(dom_dir, img_uuid, vol_uuid)
    data, meta, lease = paths(dom_dir, img_uuid, vol_uuid)
    if md is None:
        if os.path.lexists(data):
            _discard([data, lease])
            return True
        return False
    volumes = image_volumes(dom_dir, img_uuid)
    children = [v for v, m in volumes.items() if m.parent == vol_uuid]
    if children:
        raise VirtnodeError('volume %s has child volume(s) %s: delete them first' % (vol_uuid, ', '.join(children)),
                            {'vol_uuid': vol_uuid})
    check_not_shared(dom_dir, img_uuid, {vol_uuid: md})
    if md.role == 'SHARED' and md.image != img_uuid:
        _discard([data, lease, meta])  # a link to the template in a clone's image: the template stays
    else:
        md.legality = 'ILLEGAL'
        _write_meta(dom_dir, md, domain_md.version, meta)
        _discard([data, lease, meta])
    parent = volumes.get(md.parent)
    siblings = [v for v, m in volumes.items() if m.parent == md.parent and v != vol_uuid]
    if parent is not None and parent.role == 'INTERNAL' and not siblings:
        parent.role = 'LEAF'
        _write_meta(dom_dir, parent, domain_md.version, paths(dom_dir, img_uuid, md.parent)[1])
    img_dir = image_path(dom_dir, img_uuid)
    # What is left of the image may be only the link to its template (VDSM removes the folder then too).
    if not [v for v, m in volumes.items() if v != vol_uuid and (m.role != 'SHARED' or m.image == img_uuid)]:
        shutil.rmtree(img_dir, ignore_errors=True)
    else:
        fileio.fsync_directory(img_dir)
    return True


def sync_volume_chain(dom_dir, domain_md, img_uuid, top_uuid, actual_chain):
    """Make an image's metadata follow the chain QEMU really uses after a live merge (VDSM's syncVolumeChain).

    ``top_uuid`` is the leaf the metadata knew before the merge, ``actual_chain`` the
    volume UUIDs the VM uses now (base first). Volumes of the old chain missing from
    it are marked ILLEGAL (safe to delete; deleting them is the SPM's job); a kept
    volume whose parent was removed gets the nearest kept ancestor as its parent.
    Returns the removed volume UUIDs.
    """
    with domain_lock.dir_lock(dom_dir):
        return _sync_volume_chain(dom_dir, domain_md, img_uuid, top_uuid, actual_chain)


def _sync_volume_chain(dom_dir, domain_md, img_uuid, top_uuid, actual_chain):
    volumes = image_volumes(dom_dir, img_uuid)
    chain, current = [], top_uuid
    while current in volumes and current not in chain:
        chain.insert(0, current)
        current = volumes[current].parent
    removed = [vol for vol in chain if vol not in actual_chain]
    for vol in chain:
        md = volumes[vol]
        meta = paths(dom_dir, img_uuid, vol)[1]
        if vol in removed:
            if md.legality != 'ILLEGAL':
                md.legality = 'ILLEGAL'
                _write_meta(dom_dir, md, domain_md.version, meta)
            continue
        parent = md.parent
        while parent in removed:
            parent = volumes[parent].parent
        if parent != md.parent:
            md.parent = parent
            md.generation = vmd.next_generation(md.generation)
            _write_meta(dom_dir, md, domain_md.version, meta)
    return removed


def delete_image(dom_dir, img_uuid):
    """Delete a whole image: rename it ``_remove_me_<img>``, then purge it."""
    with domain_lock.dir_lock(dom_dir):
        check_fence()
        return _delete_image(dom_dir, img_uuid)


def _delete_image(dom_dir, img_uuid):
    img_dir = image_path(dom_dir, img_uuid)
    if not os.path.isdir(img_dir):
        return False
    check_not_shared(dom_dir, img_uuid, image_volumes(dom_dir, img_uuid))
    doomed = os.path.join(os.path.dirname(img_dir), sd_layout.removed_image_name(img_uuid))
    try:
        if os.path.lexists(doomed):
            shutil.rmtree(doomed)
        os.rename(img_dir, doomed)
        fileio.fsync_directory(os.path.dirname(img_dir))
        shutil.rmtree(doomed)
    except OSError as err:
        raise VirtnodeError('cannot delete image %s: %s' % (img_uuid, err.strerror or err), {'image_uuid': img_uuid}) from err
    return True


class FileVolumes:
    """The volumes of one file domain, behind the methods :class:`block_volumes.BlockVolumes` has for a block one."""

    supports_templates = True

    def __init__(self, dom_dir, domain_md):
        self.dom_dir, self.md = dom_dir, domain_md

    def read_volume(self, img_uuid, vol_uuid):
        return read_volume(self.dom_dir, img_uuid, vol_uuid)

    def path(self, img_uuid, vol_uuid):
        return paths(self.dom_dir, img_uuid, vol_uuid)[0]

    def has_data(self, img_uuid, vol_uuid):
        """True if the volume's data exists, with or without metadata."""
        return os.path.lexists(self.path(img_uuid, vol_uuid))

    def image_volumes(self, img_uuid):
        return image_volumes(self.dom_dir, img_uuid)

    def image_exists(self, img_uuid):
        return os.path.isdir(image_path(self.dom_dir, img_uuid))

    def chain_info(self, img_uuid):
        return storage.volume_chain_info(self.dom_dir, img_uuid) if self.image_exists(img_uuid) else []

    def capacity_for(self, volume_format, capacity):  # pylint: disable=unused-argument
        return capacity

    @staticmethod
    def check_format(volume_format, allocation):  # pylint: disable=unused-argument
        """Every format and allocation is possible on a file domain."""

    def create_volume(self, img_uuid, vol_uuid, volume_format, allocation, capacity=None, parent_uuid=None,
                      description='', disk_type='DATA', clone_source=None, import_source=None, template=False,
                      parent_image=None):
        """``clone_source``: ``(store, img_uuid, vol_uuid)`` of a volume of a file domain to copy;
        ``import_source``: an image from outside storage (:mod:`image_transfer`); ``template`` and
        ``parent_image``: see :func:`create_volume`."""
        if clone_source is not None:
            source, src_img, src_vol = clone_source
            if not isinstance(source, FileVolumes):
                raise VirtnodeError('cloning a volume of a block storage domain onto a file domain is not supported yet',
                                    {'field': 'clone_from'})
            clone_source = (source.dom_dir, src_img, src_vol)
        return create_volume(self.dom_dir, self.md, img_uuid, vol_uuid, volume_format, allocation, capacity, parent_uuid,
                             description, disk_type, clone_source, import_source, template, parent_image)

    @contextlib.contextmanager
    def readable(self, img_uuid, vol_uuid):
        """The volume's path, its chain checked LEGAL, for the ``with`` body (the mount serves it)."""
        vmd.legal_chain(self.dom_dir, img_uuid, vol_uuid)
        yield self.path(img_uuid, vol_uuid)

    def extend_volume(self, img_uuid, vol_uuid, capacity):
        return extend_volume(self.dom_dir, self.md, img_uuid, vol_uuid, capacity)

    def check_deletable(self, img_uuid, vol_uuid=None):
        """Refuse (before anything is done, check mode too) to delete a template thin clones are based on."""
        mds = {vol_uuid: self.read_volume(img_uuid, vol_uuid)} if vol_uuid else self.image_volumes(img_uuid)
        check_not_shared(self.dom_dir, img_uuid, mds)

    def delete_volume(self, img_uuid, vol_uuid):
        return delete_volume(self.dom_dir, self.md, img_uuid, vol_uuid)

    def delete_image(self, img_uuid):
        return delete_image(self.dom_dir, img_uuid)
