# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images and volumes of a block storage domain, as VDSM's blockVolume/blockSD do them.

A volume is a logical volume of the domain's VG named after it and tagged
``IU_<image>``, ``PU_<parent>`` (the blank UUID for a base volume) and
``MD_<slot>``. Its metadata is the 512-byte record (the same text as a file
volume's ``.meta``) in slot ``<slot>`` of the ``metadata`` LV: version 5
slots are 8 KiB from 1 MiB (slot 0 is the metadata LV's own), version 4
slots 512 bytes from 0 (slots 0-3 were the domain's). Its lease is the
sanlock resource named after it at (100 + slot) x ALIGNMENT of ``leases``.
A slot is taken by the ``MD_`` tag that names it, never by what the slot
holds: a record left by a removed volume is overwritten.

Create order, as VDSM's: the LV, tagged ``OVIRT_VOL_INITIALIZING``; for COW
the qcow2 header, written through the volume's link in the image directory
(``/rhev/data-center/mnt/blockSD/<sd>/images/<img>/<vol>``) so a snapshot's
backing name resolves to its parent's LV; one tag change replacing the
initializing tag by the ``IU_``/``PU_``/``MD_`` tags; the metadata written
ILLEGAL; the lease; the parent turned INTERNAL; the metadata LEGAL. An LV
still tagged initializing, or whose metadata is not LEGAL, is what an
interrupted create leaves: :func:`read_volume` reports it and the ``volume``
module removes it and creates the volume again.

Sizes: RAW volumes are preallocated LVs of their whole capacity (VDSM has no
sparse RAW volume on block storage); the LV is rounded up to the VG's extent
and the capacity recorded is the LV's, as VDSM records a RAW volume's
apparent size. COW volumes start at one chunk (1 GiB, VDSM's
``volume_utilization_chunk_mb``), or their capacity if smaller, and grow as
the guest writes (thin provisioning, :mod:`block`); preallocated COW volumes
get their whole capacity at once.

Only the SPM changes any of this (VG metadata included); the LVs it activates
for the work are deactivated again unless they were active before.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_domain
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import image_transfer
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes

MIB = 1024 ** 2
INITIALIZING_TAG = 'OVIRT_VOL_INITIALIZING'
IMAGE_TAG, PARENT_TAG, SLOT_TAG = 'IU_', 'PU_', 'MD_'
RESERVED_LEASES = 100
CHUNK = 1024 * MIB
METADATA_BASE = {4: 0, 5: MIB}
SLOT_SIZE = {4: 512, 5: 8 * 1024}
FIRST_SLOT = {4: 4, 5: 1}
LEASE_SLOTS = 2048


def _tag(lv, prefix):
    return next((tag[len(prefix):] for tag in lv['tags'] if tag.startswith(prefix)), None)


def slot_offset(version, slot):
    """Where slot ``slot`` of a domain of metadata ``version`` starts in its ``metadata`` LV."""
    layout = 4 if version < 5 else 5
    return METADATA_BASE[layout] + slot * SLOT_SIZE[layout]


def slot_io(metadata_path, offset, what, data=None, details=None):
    """Read the 512-byte record at ``offset`` of the metadata LV, or write ``data`` there (zero-padded) in one
    direct sector write, so a reader sees the old record or the new one, never half. ``what`` names it in errors."""
    if data is not None and len(data) > vmd.METADATA_SIZE:
        raise VirtnodeError('volume metadata is %d bytes, more than the %d of a slot' % (len(data), vmd.METADATA_SIZE))
    fd = fileio.open_storage_direct(metadata_path, os.O_RDONLY if data is None else os.O_WRONLY)
    buf = mmap.mmap(-1, mmap.PAGESIZE)  # page aligned, as O_DIRECT wants
    try:
        with memoryview(buf) as whole, whole[:vmd.METADATA_SIZE] as view:
            if data is None:
                return bytes(view[:os.preadv(fd, [view], offset)])
            view[:len(data)] = data
            os.pwritev(fd, [view], offset)
        os.fsync(fd)
        return None
    except OSError as err:
        raise VirtnodeError('cannot %s %s: %s' % ('read' if data is None else 'write', what, err.strerror or err),
                            details or {}) from err
    finally:
        buf.close()
        os.close(fd)


def slot_metadata(sd_uuid, lv_tags, vg_tags, metadata_path=None):
    """The VolumeMetadata in the slot an LV's ``MD_`` tag names, read with the layout of the domain version its
    VG's tags record; None when the LV has no slot or the VG holds no domain metadata (the SPM's extend reads a
    volume's capacity so, with no LV activated and no qemu-img run)."""
    slot = _tag({'tags': lv_tags}, SLOT_TAG)
    if slot is None or not slot.isdigit() or not any(tag.startswith(block_domain.METADATA_TAG_PREFIX) for tag in vg_tags):
        return None
    version = sdm.DomainMetadata.from_dict(block_domain.parse_tags(vg_tags, sd_uuid)).version
    record = slot_io(metadata_path or block_domain.lv_path(sd_uuid, 'metadata'), slot_offset(version, int(slot)),
                     'metadata slot %s of %s' % (slot, sd_uuid))
    return vmd.parse(record) if record.strip(b'\0') else None


class BlockVolumes:
    """The volumes of one block domain (``domain``: a :class:`block_domain.BlockDomain`, ``md`` its metadata)."""

    def __init__(self, domain, md, metadata_path=None):
        self.domain, self.md, self.lvm = domain, md, domain.lvm
        self.sd_uuid = domain.sd_uuid
        self.metadata_path = metadata_path or block_domain.lv_path(self.sd_uuid, 'metadata')
        self.dom_dir = sd_layout.block_domain_dir(self.sd_uuid)
        self._lvs = None

    # ---------------------------------------------------------------- reading

    def lvs(self, refresh=False):
        if self._lvs is None or refresh:
            self._lvs = self.domain.volumes()
        return self._lvs

    def volume_lv(self, vol_uuid):
        return self.lvs().get(vol_uuid)

    def image_lvs(self, img_uuid):
        return {name: lv for name, lv in self.lvs().items() if _tag(lv, IMAGE_TAG) == img_uuid}

    def has_data(self, img_uuid, vol_uuid):  # pylint: disable=unused-argument
        """True if the volume's LV exists, whatever its tags say (an interrupted create has none yet)."""
        return self.volume_lv(vol_uuid) is not None

    def image_exists(self, img_uuid):
        return bool(self.image_lvs(img_uuid))

    def path(self, img_uuid, vol_uuid):
        """The volume's link in this host's image directory (to ``/dev/<sd>/<vol>`` while active)."""
        return os.path.join(self.dom_dir, sd_layout.IMAGES, validate.uuid_str(img_uuid, 'image UUID'),
                            validate.uuid_str(vol_uuid, 'volume UUID'))

    def slot_of(self, lv):
        slot = _tag(lv, SLOT_TAG)
        return int(slot) if slot is not None and slot.isdigit() else None

    def slot_offset(self, slot):
        return slot_offset(self.md.version, slot)

    def _version(self):
        return 4 if self.md.version < 5 else 5

    def slot_count(self):
        """Slots the metadata LV holds that also have a lease slot in ``leases``."""
        metadata_bytes = block_domain.special_lv_sizes_mib(self.md.version, self.md.alignment)['metadata'] * MIB
        return min((metadata_bytes - METADATA_BASE[self._version()]) // SLOT_SIZE[self._version()],
                   LEASE_SLOTS - RESERVED_LEASES)

    def read_volume(self, img_uuid, vol_uuid):
        """The volume's VolumeMetadata; None when there is no such LV in the image.

        An LV still being created (initializing tag, no slot, or a slot never
        written) reads as an ILLEGAL volume: what an interrupted create leaves.
        """
        lv = self.volume_lv(vol_uuid)
        if lv is None or _tag(lv, IMAGE_TAG) not in (img_uuid, None):
            return None
        slot = self.slot_of(lv)
        record = None if INITIALIZING_TAG in lv['tags'] or slot is None else self._slot_io(slot)
        if not (record or b'').strip(b'\0'):
            return vmd.VolumeMetadata(domain=self.sd_uuid, image=img_uuid, capacity=0, volume_format='RAW',
                                      allocation='PREALLOCATED', role='LEAF', disk_type='DATA',
                                      parent=_tag(lv, PARENT_TAG) or vmd.BLANK_UUID, legality='ILLEGAL')
        try:
            return vmd.parse(record)
        except VirtnodeError as err:
            raise VirtnodeError('volume %s: metadata slot %d of %s: %s' % (vol_uuid, slot, self.sd_uuid, err.message),
                                dict(err.details, volume_uuid=vol_uuid, slot=slot)) from err

    def image_volumes(self, img_uuid):
        """``{vol_uuid: VolumeMetadata}`` of an image."""
        return {vol: self.read_volume(img_uuid, vol) for vol in sorted(self.image_lvs(img_uuid))}

    def chain_info(self, img_uuid):
        """The image's volumes, base first, described as :func:`storage.volume_chain_info` describes file volumes."""
        found = {}
        for vol, lv in sorted(self.image_lvs(img_uuid).items()):
            try:
                md = self.read_volume(img_uuid, vol)
            except VirtnodeError as err:
                found[vol] = {'volume_uuid': vol, 'error': err.message}
                continue
            found[vol] = {
                'volume_uuid': vol, 'image_uuid': img_uuid, 'parent': md.parent, 'format': md.volume_format,
                'allocation': md.allocation, 'role': md.role, 'legality': md.legality, 'capacity': md.capacity,
                'apparent_size': lv['size'], 'true_size': lv['size'], 'description': md.description,
                'disk_type': md.disk_type, 'generation': md.generation, 'ctime': md.ctime,
            }
        return storage.order_chain(found)

    # Templates (VOLTYPE SHARED) and thin clones based on them are made on file domains only for now.
    supports_templates = False

    def check_deletable(self, img_uuid, vol_uuid=None):
        """Nothing here is a template another image is based on (see ``supports_templates``)."""

    @staticmethod
    def check_format(volume_format, allocation):
        if volume_format == 'RAW' and allocation == 'SPARSE':
            raise VirtnodeError('block storage domains have no sparse RAW volumes (VDSM neither): use COW for thin '
                                'provisioning or allocation PREALLOCATED', {'field': 'allocation'})

    def capacity_for(self, volume_format, capacity):
        """The capacity a volume asked to have ``capacity`` gets: a RAW one the whole LV, rounded up to an extent."""
        if volume_format != 'RAW':
            return capacity
        extent = self.domain.vg()['vg_extent_size']
        return -(-capacity // extent) * extent

    # ---------------------------------------------------------------- metadata slots

    def _slot_io(self, slot, data=None):
        """Read the record of ``slot``, or write ``data`` there (see :func:`slot_io`)."""
        return slot_io(self.metadata_path, self.slot_offset(slot), 'metadata slot %d of %s' % (slot, self.sd_uuid), data,
                       {'slot': slot})

    def write_volume(self, vol_uuid, md):
        lv = self.volume_lv(vol_uuid)
        slot = None if lv is None else self.slot_of(lv)
        if slot is None:
            raise VirtnodeError('volume %s has no metadata slot' % vol_uuid, {'volume_uuid': vol_uuid})
        volumes.check_fence()
        self._slot_io(slot, vmd.serialize(md, self.md.version))

    def free_slot(self):
        taken = sorted(slot for slot in (self.slot_of(lv) for lv in self.lvs().values()) if slot is not None)
        slot = FIRST_SLOT[self._version()]
        for used in taken:
            if used > slot:
                break
            slot = max(slot, used + 1)
        if slot >= self.slot_count():
            raise VirtnodeError('storage domain %s has no free volume metadata slot (%d volumes)' % (self.sd_uuid, len(taken)))
        return slot

    # ---------------------------------------------------------------- activation

    @contextlib.contextmanager
    def active(self, img_uuid, vol_uuids, created=None):
        """The LVs active with their links in the image directory for the ``with`` body; those this
        call activated, and the ``created`` one (lvcreate activates it), are deactivated after it
        (something else on this host may use the others)."""
        lvs = self.lvs()
        activated = [vol for vol in vol_uuids if not lvs[vol]['active']]
        self.lvm.activate(self.sd_uuid, activated)
        try:
            for vol in vol_uuids:
                block.set_link(self.path(img_uuid, vol), block_domain.lv_path(self.sd_uuid, vol))
            yield
        finally:
            try:
                self.lvm.deactivate(self.sd_uuid, activated + ([created] if created and created not in activated else []))
            except VirtnodeError:
                pass  # opened meanwhile (a VM started here): it stays active, as VDSM leaves it

    @contextlib.contextmanager
    def readable(self, img_uuid, vol_uuid):
        """The volume's link, its chain checked and active on this host for the ``with`` body."""
        with self.active(img_uuid, self.legal_chain(img_uuid, vol_uuid)):
            yield self.path(img_uuid, vol_uuid)

    def legal_chain(self, img_uuid, vol_uuid):
        """``[vol_uuid, parent, ...]`` to the base, refused unless each volume is of this image, LEGAL, and names in
        its metadata the parent its ``PU_`` tag names (another host's interrupted work, or a loop, is never used)."""
        chain = self.chain_of(img_uuid, vol_uuid)
        for index, vol in enumerate(chain):
            md = self.read_volume(img_uuid, vol)
            if md is None:
                raise VirtnodeError('volume %s of image %s is not on storage domain %s' % (vol, img_uuid, self.sd_uuid),
                                    {'field': 'volume_uuid', 'volume_uuid': vol})
            what = 'it is' if vol == vol_uuid else 'volume %s of its chain is' % vol
            if md.legality != 'LEGAL':
                raise VirtnodeError('refusing volume %s of image %s: %s %s (an interrupted create or a half-removed '
                                    'snapshot)' % (vol_uuid, img_uuid, what, md.legality),
                                    {'field': 'volume_uuid', 'volume_uuid': vol, 'legality': md.legality})
            below = chain[index + 1] if index + 1 < len(chain) else vmd.BLANK_UUID
            if md.parent != below:
                raise VirtnodeError('refusing volume %s of image %s: the metadata of %s names parent %s, its LV tag %s'
                                    % (vol_uuid, img_uuid, vol, md.parent, below), {'field': 'volume_uuid', 'volume_uuid': vol})
        return chain

    def prepare(self, img_uuid, vol_uuid, activate=True):
        """A volume for a guest on this host, as VDSM's prepareImage: the volume and its parents checked
        (:meth:`legal_chain`), activated, and linked in the image directory so the qcow2 backing names
        resolve to the parents' LVs (those already active refreshed). Returns the volume's link; ``activate=False`` (check mode) checks
        and only says where it would be."""
        chain = self.legal_chain(img_uuid, vol_uuid)
        if activate:
            lvs = self.lvs()
            self.lvm.activate(self.sd_uuid, [vol for vol in chain if not lvs[vol]['active']])
            # One already active here may have been grown by the SPM since: its table is reloaded, as VDSM does.
            self.lvm.refresh(self.sd_uuid, [vol for vol in chain if lvs[vol]['active']])
            for vol in chain:
                block.set_link(self.path(img_uuid, vol), block_domain.lv_path(self.sd_uuid, vol))
        return self.path(img_uuid, vol_uuid)

    def is_prepared(self, img_uuid, vol_uuid):
        """True when :meth:`prepare` has nothing to activate or link: every LV of the chain active here, linked."""
        lvs = self.lvs()
        for vol in self.chain_of(img_uuid, vol_uuid):
            link = self.path(img_uuid, vol)
            if not (vol in lvs and lvs[vol]['active'] and os.path.islink(link)
                    and os.readlink(link) == block_domain.lv_path(self.sd_uuid, vol)):
                return False
        return True

    def teardown(self, img_uuid, vol_uuid):
        """Undo :meth:`prepare` once no guest here uses the volume: the chain's LVs deactivated, their links gone."""
        chain = self.chain_of(img_uuid, vol_uuid)
        lvs = self.lvs()
        self.lvm.deactivate(self.sd_uuid, [vol for vol in chain if lvs[vol]['active']])
        for vol in chain:
            block.remove_link(self.path(img_uuid, vol))

    def chain_of(self, img_uuid, vol_uuid):
        """``[vol_uuid, parent, ...]`` up to the base."""
        chain, current = [], vol_uuid
        while current and current != vmd.BLANK_UUID and current not in chain:
            chain.append(current)
            lv = self.volume_lv(current)
            current = _tag(lv, PARENT_TAG) if lv else None
        return chain

    # ---------------------------------------------------------------- changes (the SPM)

    @lvm_cmd.reporting_lost_luns
    def create_volume(self, img_uuid, vol_uuid, volume_format, allocation, capacity=None, parent_uuid=None,
                      description='', disk_type='DATA', initial_size=None, clone_source=None, import_source=None,
                      template=False, parent_image=None):
        """Create a volume (a base, a COW snapshot of ``parent_uuid``, or a copy of ``clone_source``); its
        VolumeMetadata. ``initial_size`` (COW only, checked by the caller) is the space to allocate at once, as
        VDSM's. ``clone_source`` is ``(store, img_uuid, vol_uuid)``: a volume of a file domain, or of this domain,
        copied with its chain flattened into an LV the size the copy needs; ``import_source`` an image from outside
        storage (:mod:`image_transfer`), copied the same way."""
        volumes.check_fence()
        if template or parent_image not in (None, img_uuid):
            raise VirtnodeError('templates and their thin clones are not supported on block storage domains yet (%s); '
                                'use a file domain, or clone_from for a full copy' % self.sd_uuid, {'field': 'template'})
        if self.volume_lv(vol_uuid) is not None:
            raise VirtnodeError('volume %s already exists in domain %s' % (vol_uuid, self.sd_uuid), {'vol_uuid': vol_uuid})
        self.check_format(volume_format, allocation)
        with contextlib.ExitStack() as source:
            clone = self._clone_source(source, clone_source, capacity) if clone_source is not None else None
            if import_source is not None:
                clone = {'source': import_source, 'capacity': image_transfer.import_capacity(import_source, capacity)}
            capacity = clone['capacity'] if clone else capacity
            return self._create_volume(img_uuid, vol_uuid, volume_format, allocation, capacity, parent_uuid, description,
                                       disk_type, initial_size, clone)

    def _clone_source(self, stack, clone_source, capacity):
        """``{'source', 'capacity'}`` of a clone's source (a :class:`qemu_img.CopySource`), readable for the
        ``stack``'s life (a volume of this domain has its chain activated)."""
        source, src_img, src_vol = clone_source
        if isinstance(source, BlockVolumes) and source is not self:
            raise VirtnodeError('cloning from another block storage domain (%s) is not supported yet' % source.sd_uuid,
                                {'field': 'clone_from'})
        md = source.read_volume(src_img, src_vol)
        capacity = volumes.check_clone_source(md, src_img, src_vol, capacity)
        if source is self:
            stack.enter_context(self.active(src_img, self.legal_chain(src_img, src_vol)))
        return {'source': qemu_img.VolumeCopy(source.path(src_img, src_vol), md.volume_format), 'capacity': capacity}

    def _create_volume(self, img_uuid, vol_uuid, volume_format, allocation, capacity, parent_uuid, description, disk_type,
                       initial_size, clone):
        parent_md = None
        if parent_uuid is not None:
            parent_md = self._snapshot_parent(img_uuid, parent_uuid, volume_format)
            capacity = parent_md.capacity if capacity is None else capacity
            if capacity < parent_md.capacity:
                raise VirtnodeError('a snapshot cannot be smaller than its parent (%d bytes)' % parent_md.capacity,
                                    {'field': 'size'})
        if capacity is None:
            raise VirtnodeError('size is required to create a volume', {'field': 'size'})
        capacity = self.capacity_for(volume_format, capacity)
        if clone and volume_format == 'COW':
            # The copy's qcow2 needs what qemu-img measures (all of it, preallocated), never less than a thin start.
            needed = clone['source'].measure('COW')
            lv_bytes = needed['fully-allocated'] if allocation == 'PREALLOCATED' else \
                max(needed['required'], self._lv_size(volume_format, allocation, capacity, initial_size))
        else:
            lv_bytes = self._lv_size(volume_format, allocation, capacity, initial_size)
        lv_mib = -(-lv_bytes // MIB)
        self._check_free(vol_uuid, lv_mib)
        slot = self.free_slot()
        self.lvm.create_lv(self.sd_uuid, vol_uuid, lv_mib, tags=[INITIALIZING_TAG])
        self._lvs = None
        crash_point('block_volume_create.lv')
        with self.active(img_uuid, self.chain_of(img_uuid, parent_uuid) + [vol_uuid], created=vol_uuid):
            if clone:
                clone['source'].convert(self.path(img_uuid, vol_uuid), volume_format)
                copied = clone['source'].virtual_size
                if volume_format == 'COW' and copied is not None and capacity > copied:
                    qemu_img.resize(self.path(img_uuid, vol_uuid), capacity, 'COW')
            elif volume_format == 'COW':
                qemu_img.create(self.path(img_uuid, vol_uuid), 'COW', None if parent_md else capacity, parent_uuid,
                                parent_md.volume_format if parent_md else None)
                if parent_md and capacity > parent_md.capacity:
                    qemu_img.resize(self.path(img_uuid, vol_uuid), capacity, 'COW')
            volumes.check_fence()  # qemu-img may have run for long: is the lease still ours?
            self.lvm.change_lv_tags(self.sd_uuid, vol_uuid, remove=[INITIALIZING_TAG],
                                    add=[SLOT_TAG + str(slot), PARENT_TAG + (parent_uuid or vmd.BLANK_UUID),
                                         IMAGE_TAG + img_uuid])
            self._lvs = None
            crash_point('block_volume_create.tags')
        md = vmd.VolumeMetadata(domain=self.sd_uuid, image=img_uuid, capacity=capacity, volume_format=volume_format,
                                allocation=allocation, role='LEAF', disk_type=disk_type,
                                parent=parent_uuid or vmd.BLANK_UUID, description=description, legality='ILLEGAL')
        self.write_volume(vol_uuid, md)
        crash_point('block_volume_create.meta_illegal')
        volumes.check_fence()
        sanlock_lock.write_resource(self.sd_uuid, vol_uuid, block_domain.lv_path(self.sd_uuid, 'leases'),
                                    (RESERVED_LEASES + slot) * self.md.alignment, self.md.alignment, self.md.block_size)
        crash_point('block_volume_create.lease')
        if parent_md is not None and parent_md.role == 'LEAF':
            parent_md.role = 'INTERNAL'
            self.write_volume(parent_uuid, parent_md)
            crash_point('block_volume_create.parent_internal')
        md.legality = 'LEGAL'
        self.write_volume(vol_uuid, md)
        return md

    @staticmethod
    def _lv_size(volume_format, allocation, capacity, initial_size=None):
        """VDSM's allocation: a sparse COW volume one chunk, or ``initial_size`` x 1.1 (qcow2 overhead);
        a preallocated COW volume ``initial_size`` or its capacity; a RAW volume its capacity."""
        if volume_format == 'COW' and allocation == 'SPARSE':
            return int(initial_size * block.COW_OVERHEAD) if initial_size else min(CHUNK, capacity)
        if volume_format == 'COW' and initial_size:
            return initial_size
        return capacity

    def _check_free(self, vol_uuid, lv_mib):
        vg = self.domain.vg()
        extent = vg['vg_extent_size']
        need = -(-lv_mib * MIB // extent) * extent
        if need > vg['vg_free']:
            raise VirtnodeError('volume %s needs %d MiB and storage domain %s has %d MiB free'
                                % (vol_uuid, need // MIB, self.sd_uuid, vg['vg_free'] // MIB),
                                {'field': 'size', 'free_bytes': vg['vg_free']})

    def _snapshot_parent(self, img_uuid, parent_uuid, volume_format):
        parent_md = self.read_volume(img_uuid, parent_uuid)
        if parent_md is None:
            raise VirtnodeError('parent volume %s not found in image %s' % (parent_uuid, img_uuid), {'field': 'parent'})
        if parent_md.legality != 'LEGAL':
            raise VirtnodeError('parent volume %s is %s' % (parent_uuid, parent_md.legality), {'field': 'parent'})
        children = self.children(img_uuid, parent_uuid)
        if children:
            raise VirtnodeError('parent volume %s already has a child (%s): only the leaf can be snapshotted'
                                % (parent_uuid, ', '.join(children)), {'field': 'parent'})
        if volume_format != 'COW':
            raise VirtnodeError('a volume on top of a parent must be COW', {'field': 'format'})
        return parent_md

    def children(self, img_uuid, vol_uuid):
        return sorted(vol for vol, lv in self.image_lvs(img_uuid).items() if _tag(lv, PARENT_TAG) == vol_uuid)

    @lvm_cmd.reporting_lost_luns
    def extend_volume(self, img_uuid, vol_uuid, capacity):
        """Grow a volume to ``capacity`` bytes (a RAW LV with it; a COW header, its LV growing as written)."""
        volumes.check_fence()
        md = self.read_volume(img_uuid, vol_uuid)
        capacity = self.capacity_for(md.volume_format, capacity) if md else capacity
        if not volumes.grows(img_uuid, vol_uuid, md, capacity):
            return False
        if md.volume_format == 'RAW' or md.allocation == 'PREALLOCATED':
            lv_size = self.volume_lv(vol_uuid)['size']
            if capacity > lv_size:
                self._check_free(vol_uuid, (capacity - lv_size) // MIB)
                self.lvm.extend_lv(self.sd_uuid, vol_uuid, capacity // MIB)
                self._lvs = None
        if md.volume_format == 'COW':
            with self.active(img_uuid, self.chain_of(img_uuid, vol_uuid)):
                qemu_img.resize(self.path(img_uuid, vol_uuid), capacity, 'COW')
        md.capacity = capacity
        md.generation = vmd.next_generation(md.generation)
        self.write_volume(vol_uuid, md)
        return True

    @lvm_cmd.reporting_lost_luns
    def grow_for_commit(self, img_uuid, base_uuid, top_uuid):
        """Before ``top`` is committed into ``base`` (a live merge): a thin COW base grows by what ``top`` has on
        storage plus one chunk, capped at capacity x 1.1, as VDSM extends it up front (libvirt reports no
        watermark of a base during a commit). Returns the base LV's new size in bytes, or None if unchanged."""
        base_md = self.read_volume(img_uuid, base_uuid)
        base_lv, top_lv = self.volume_lv(base_uuid), self.volume_lv(top_uuid)
        if base_md is None or top_lv is None or base_md.volume_format != 'COW':
            return None
        extent = self.domain.vg()['vg_extent_size']
        wanted = min(base_lv['size'] + top_lv['size'] + CHUNK, block.max_physical(base_md.capacity))
        wanted = -(-wanted // extent) * extent
        if wanted <= base_lv['size']:
            return None
        self._check_free(base_uuid, (wanted - base_lv['size']) // MIB)
        volumes.check_fence()
        self.lvm.extend_lv(self.sd_uuid, base_uuid, wanted // MIB)
        self._lvs = None
        return wanted

    @lvm_cmd.reporting_lost_luns
    def sync_volume_chain(self, img_uuid, top_uuid, actual_chain):
        """VDSM's syncVolumeChain on a block domain, as :func:`volumes.sync_volume_chain` on a file domain: the
        volumes of the chain from ``top_uuid`` that QEMU no longer uses (``actual_chain``, base first) are marked
        ILLEGAL in their slots; a kept volume whose parent went gets the nearest kept ancestor in its slot and
        its ``PU_`` tag. Returns the removed volume UUIDs."""
        chain = list(reversed(self.chain_of(img_uuid, top_uuid)))
        removed = [vol for vol in chain if vol not in actual_chain]
        parents = {vol: (chain[index - 1] if index else vmd.BLANK_UUID) for index, vol in enumerate(chain)}
        for vol in chain:
            md = self.read_volume(img_uuid, vol)
            if vol in removed:
                if md.legality != 'ILLEGAL':
                    md.legality = 'ILLEGAL'
                    self.write_volume(vol, md)
                continue
            parent = parents[vol]
            while parent in removed:
                parent = parents[parent]
            if parent != parents[vol]:
                md.parent = parent
                md.generation = vmd.next_generation(md.generation)
                self.write_volume(vol, md)
                volumes.check_fence()
                self.lvm.change_lv_tags(self.sd_uuid, vol, remove=[PARENT_TAG + parents[vol]], add=[PARENT_TAG + parent])
                self._lvs = None
        return removed

    @lvm_cmd.reporting_lost_luns
    def delete_volume(self, img_uuid, vol_uuid):
        """Delete a volume that has no children; its parent becomes the leaf again. True if anything was removed."""
        volumes.check_fence()
        lv = self.volume_lv(vol_uuid)
        if lv is None or _tag(lv, IMAGE_TAG) not in (img_uuid, None):
            return False
        children = self.children(img_uuid, vol_uuid)
        if children:
            raise VirtnodeError('volume %s has child volume(s) %s: delete them first' % (vol_uuid, ', '.join(children)),
                                {'vol_uuid': vol_uuid})
        md = self.read_volume(img_uuid, vol_uuid)
        slot = self.slot_of(lv)
        if slot is not None and md.legality != 'ILLEGAL':
            md.legality = 'ILLEGAL'
            self.write_volume(vol_uuid, md)
        parent = md.parent
        if parent != vmd.BLANK_UUID and self.volume_lv(parent) is not None and self.children(img_uuid, parent) == [vol_uuid]:
            parent_md = self.read_volume(img_uuid, parent)
            if parent_md.role == 'INTERNAL':
                parent_md.role = 'LEAF'
                self.write_volume(parent, parent_md)
        volumes.check_fence()
        if lv['active']:
            self.lvm.deactivate(self.sd_uuid, [vol_uuid])
        self.lvm.remove_lvs(self.sd_uuid, [vol_uuid])
        self._lvs = None
        block.remove_link(self.path(img_uuid, vol_uuid))
        if slot is not None:
            self._slot_io(slot, b'')
        return True

    def delete_image(self, img_uuid):
        """Delete every volume of an image, leaf first."""
        volumes = [info['volume_uuid'] for info in self.chain_info(img_uuid)]
        if not volumes:
            return False
        for vol in reversed(volumes):
            self.delete_volume(img_uuid, vol)
        for vol in self.image_lvs(img_uuid):  # not on the chain (a broken or forked image)
            self.delete_volume(img_uuid, vol)
        try:
            os.rmdir(os.path.join(self.dom_dir, sd_layout.IMAGES, img_uuid))
        except OSError:
            pass
        return True


def for_domain(dom_dir, md=None):
    """:class:`BlockVolumes` of the block domain whose host directory is ``dom_dir`` (``md`` its metadata if
    already read), or None for a file domain."""
    domain = storage.block_domain_of(dom_dir)
    if domain is None:
        return None
    return BlockVolumes(domain, md or domain.read_md())
