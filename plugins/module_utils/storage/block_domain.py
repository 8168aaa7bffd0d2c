# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block storage domains (iSCSI, FC) in VDSM's format, version 5 (4 readable).

The domain is a volume group named after its UUID, on multipath devices
(LUNs, named by GUID). Its metadata is in the VG's tags, one ``MDT_<KEY=VALUE>``
tag per line of the file domain's metadata, escaped (``lvm.encode_tag``) and
sealed with ``MDT__SHA_CKSUM``: a change is one ``vgchange`` removing and
adding tags, a single VG metadata commit, so no reader sees half of it.

Creation follows VDSM's order, and a VG is a domain only once it carries
``RHAT_storage_domain`` (``RHAT_storage_domain_UNREADY`` until then):
PVs with two 128 MiB metadata areas (enabled on the first PV only), the VG
with 128 MiB extents, the ``metadata`` LV on the first extent of the first
PV, the other special LVs (``ids``, ``leases``, ``inbox``, ``outbox``,
``xleases``, ``master``), the xleases index, a file system on ``master``, the
first 17 MiB of ``metadata`` and the mailboxes zeroed, the metadata tags
(with ``PVn`` mapping keys and ``VGUUID``), the ready tag, and last the
lockspace on ``ids`` and the SPM lease on ``leases``. A creation that stopped
before the ready tag left a VG no host uses: the next run removes it and
starts again. One that stopped after it left blank lease areas, which are
formatted once proven blank, as on file domains.

Every host reads a domain with read-only LVM commands; the VG is changed by
its creator, or the pool's SPM once it is in a pool.
"""

from __future__ import annotations

import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import devices as luns
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sdm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm as lvm_cmd

MIB = 1024 ** 2
TYPE_NAMES = {'iscsi': 'ISCSI', 'fcp': 'FCP'}
SD_TYPES = frozenset(TYPE_NAMES.values())
DOMAIN_TAG = 'RHAT_storage_domain'
UNREADY_TAG = DOMAIN_TAG + '_UNREADY'
METADATA_TAG_PREFIX = 'MDT_'
EXTENT_SIZE = 128 * MIB
VG_METADATA_SIZE_MIB = 128
MAX_PVS = 10
BLOCK_SIZE = 512
# Special LVs: name -> size in MiB (leases and xleases scale with the alignment).
METADATA_LV, MASTER_LV = 'metadata', 'master'
FIXED_LV_SIZES_MIB = {'ids': 8, 'inbox': 16, 'outbox': 16}
LEASES_SLOTS, XLEASES_SLOTS = 2048, 1024
METADATA_LV_SIZE_MIB, MASTER_LV_SIZE_MIB = 128, 1024
# 0-1 MiB: v4 volume metadata slots; 1-17 MiB: v5 slots. Zeroed at creation.
RESERVED_METADATA_SIZE = 17 * MIB
# One 4 KiB mailbox per host, 250 hosts.
RESERVED_MAILBOX_SIZE = 4096 * 250
VGUUID = 'VGUUID'
PV_KEY_PREFIX = 'PV'
MKFS = ('mkfs.ext3', '-q', '-j', '-E', 'nodiscard')
MKFS_TIMEOUT = 300
# e2fsck -p exit statuses that leave a mountable file system (VDSM's mountMaster): 1 and 2 mean errors corrected.
FSCK = ('e2fsck', '-p')
FSCK_REPAIRED = (1, 2)
MASTER_MOUNT_TIMEOUT = 120


def special_lv_sizes_mib(version, alignment=sdm.DEFAULT_ALIGNMENT):
    """``{lv name: MiB}`` of the special LVs of a domain of ``version``, in VDSM's creation order."""
    sizes = {METADATA_LV: METADATA_LV_SIZE_MIB}
    sizes.update(FIXED_LV_SIZES_MIB)
    sizes['leases'] = LEASES_SLOTS * alignment // MIB
    if version >= 4:
        sizes['xleases'] = XLEASES_SLOTS * alignment // MIB
    sizes[MASTER_LV] = MASTER_LV_SIZE_MIB
    return sizes


def lease_area_sizes(version, alignment=sdm.DEFAULT_ALIGNMENT):
    """``{lv name: bytes}`` from the start of each LV that holds what sanlock formats at creation.

    ids: the lockspace (one alignment unit); leases: the reserved slot 0 and the SPM lease
    (slot 1); xleases: slot 0, the index (slot 1) and sanlock's slot 2.
    """
    sizes = {'ids': alignment, 'leases': 2 * alignment}
    if version >= 4:
        sizes['xleases'] = 3 * alignment
    return sizes


def lv_path(sd_uuid, name):
    return lvm_cmd.lv_path(validate.uuid_str(sd_uuid, 'storage domain UUID'), name)


# ------------------------------------------------------------------ metadata in VG tags

def metadata_tags(pairs):
    """The ``MDT_`` tags holding the raw metadata ``pairs`` and their seal."""
    lines = sdm.serialize(pairs).decode('utf-8').splitlines()
    return [METADATA_TAG_PREFIX + lvm_cmd.encode_tag(line) for line in lines]


def parse_tags(tags, vg_name):
    """The raw metadata of a VG's tags (seal checked); VirtnodeError if it has none or they are invalid."""
    lines = [lvm_cmd.decode_tag(tag[len(METADATA_TAG_PREFIX):]) for tag in tags if tag.startswith(METADATA_TAG_PREFIX)]
    if not lines:
        raise VirtnodeError('volume group %s has no storage domain metadata (no %s tags)' % (vg_name, METADATA_TAG_PREFIX),
                            {'vg_name': vg_name})
    try:
        pairs = sdm.parse('\n'.join(sorted(lines)))
        md = sdm.DomainMetadata.from_dict(pairs)
    except VirtnodeError as err:
        raise VirtnodeError('volume group %s: %s' % (vg_name, err.message), dict(err.details, vg_name=vg_name)) from err
    if md.sd_uuid != vg_name:
        raise VirtnodeError('volume group %s holds the metadata of domain %s (a copied LUN?)' % (vg_name, md.sd_uuid),
                            {'vg_name': vg_name})
    return pairs


def _pv_fields(value):
    return dict(item.split(':', 1) for item in value.split(',') if ':' in item)


def pv_mapping(vg, old=None, first=None):
    """VDSM's ``PVn`` metadata keys for the VG's PVs.

    PVs already mapped keep their key and values; new ones get the next
    numbers (``first``, the metadata LV's PV, is PV0 of a new domain), each
    mapped after its predecessor's extents. PVs no longer in the VG lose theirs.
    """
    old = dict(old or {})
    known = {_pv_fields(value).get('pv'): key for key, value in old.items()}
    pvs = sorted(vg['pvs'], key=lambda pv: pv['name'] != first)
    mapping = {}
    number = max([int(key[len(PV_KEY_PREFIX):]) for key in old] + [-1]) + 1
    for pv in pvs:
        guid = os.path.basename(pv['name'])
        if guid in known:
            mapping[known[guid]] = old[known[guid]]
            continue
        previous = mapping.get('%s%d' % (PV_KEY_PREFIX, number - 1)) or old.get('%s%d' % (PV_KEY_PREFIX, number - 1))
        offset = 0
        if previous:
            fields = _pv_fields(previous)
            offset = int(fields['mapoffset']) + int(fields['pecount'])
        mapping['%s%d' % (PV_KEY_PREFIX, number)] = 'pv:%s,uuid:%s,pestart:0,pecount:%d,mapoffset:%d' % (
            guid, pv['uuid'], pv['pe_count'], offset)
        number += 1
    return mapping


def ordered_luns(pairs, vg):
    """GUIDs of the VG's PVs in the metadata's ``PVn`` order (the metadata LUN first), unmapped ones last."""
    mapped = sorted((int(key[len(PV_KEY_PREFIX):]), _pv_fields(value).get('pv')) for key, value in pairs.items() if _is_pv_key(key))
    present = [os.path.basename(pv['name']) for pv in vg['pvs']]
    first = [guid for _number, guid in mapped if guid in present]
    return first + [guid for guid in present if guid not in first]


def _is_pv_key(key):
    return key.startswith(PV_KEY_PREFIX) and key[len(PV_KEY_PREFIX):].isdigit()


class BlockDomain:
    """One block domain (a VG named ``sd_uuid``), seen through one LVM runner."""

    def __init__(self, sd_uuid, lvm=None):
        self.sd_uuid = validate.uuid_str(sd_uuid, 'storage domain UUID')
        self.lvm = lvm or lvm_cmd.Lvm()

    def vg(self):
        return self.lvm.vg(self.sd_uuid)

    def read_raw(self, vg=None):
        vg = vg or self.vg()
        if vg is None:
            raise VirtnodeError('storage domain %s not found: no volume group of that name on this host\'s LUNs '
                                '(are its storage servers connected?)' % self.sd_uuid, {'sd_uuid': self.sd_uuid})
        if DOMAIN_TAG not in vg['tags']:
            raise VirtnodeError('volume group %s is not a storage domain (no %s tag)' % (self.sd_uuid, DOMAIN_TAG),
                                {'sd_uuid': self.sd_uuid, 'tags': vg['tags']})
        return parse_tags(vg['tags'], self.sd_uuid)

    def read_md(self, vg=None):
        return sdm.DomainMetadata.from_dict(self.read_raw(vg))

    def read_sealed_md(self):
        """:meth:`read_md` of metadata that carries its seal: unsealed tags never decide who writes."""
        vg = self.vg()
        md = self.read_md(vg)
        if METADATA_TAG_PREFIX + sdm.CHECKSUM_KEY + '=' not in {tag.split('=', 1)[0] + '=' for tag in vg['tags']}:
            raise VirtnodeError('the metadata of block domain %s is not sealed (no %s%s tag)'
                                % (self.sd_uuid, METADATA_TAG_PREFIX, sdm.CHECKSUM_KEY), {'sd_uuid': self.sd_uuid})
        return md

    def write_raw(self, new, vg_tags):
        """Replace the metadata in ``vg_tags`` by the raw dict ``new`` in one tag change."""
        sdm.DomainMetadata.from_dict(sdm.parse(sdm.serialize(new).decode('utf-8')))
        current = {tag for tag in vg_tags if tag.startswith(METADATA_TAG_PREFIX)}
        wanted = set(metadata_tags(new))
        if current == wanted:
            return False
        self.lvm.change_vg_tags(self.sd_uuid, remove=sorted(current - wanted), add=sorted(wanted - current))
        return True

    def update_md(self, changes):
        """Apply ``{key: value or None}`` to the metadata; True if it changed."""
        vg = self.vg()
        pairs = self.read_raw(vg)
        new = sdm.with_changes(pairs, changes)
        if new == pairs:
            return False
        return self.write_raw(new, vg['tags'])

    # ---------------------------------------------------------------- devices

    def special_lvs(self, md):
        return list(special_lv_sizes_mib(md.version, md.alignment))

    def host_lvs(self, md):
        """The special LVs every host using the domain keeps active: all but ``master`` (the SPM's)."""
        return [name for name in self.special_lvs(md) if name != MASTER_LV]

    def activate_special(self, md):
        """Activate :meth:`host_lvs` on this host; ``{name: path}``."""
        wanted = self.host_lvs(md)
        self.lvm.activate(self.sd_uuid, wanted)
        return {name: lv_path(self.sd_uuid, name) for name in wanted}

    # ---------------------------------------------------------------- the master file system (the SPM's)

    @lvm_cmd.reporting_lost_luns
    def mount_master(self, mount_point):
        """Mount the ``master`` LV's file system on ``mount_point``, as VDSM's mountMaster does on its SPM.

        A mount left by an earlier term of this host (a holder that was killed) is dropped first: its page
        cache predates what other SPMs wrote since. e2fsck repairs what a crashed SPM left half written.
        """
        self.unmount_master(mount_point, deactivate=False)
        self.lvm.activate(self.sd_uuid, [MASTER_LV], refresh=True)
        device = lv_path(self.sd_uuid, MASTER_LV)
        fileio.make_dirs(mount_point, 0o755)
        try:
            command.run_checked(FSCK + (device,), MASTER_MOUNT_TIMEOUT, label='e2fsck -p %s' % device,
                                install_hint='Debian: e2fsprogs')
        except VirtnodeError as err:
            if err.details.get('rc') not in FSCK_REPAIRED:
                raise VirtnodeError('the master file system of storage domain %s needs repair by hand (%s)'
                                    % (self.sd_uuid, err.message), dict(err.details, sd_uuid=self.sd_uuid)) from err
        command.run_checked(('mount', '-t', 'ext3', '-o', 'nosuid,nodev', device, mount_point), MASTER_MOUNT_TIMEOUT)
        fileio.set_mode_owner(mount_point, 0o755, fileio.STORAGE_OWNER)

    def unmount_master(self, mount_point, deactivate=True, lazy=False):
        """Unmount the master file system if mounted here, then deactivate ``master`` (unless told not to).

        ``lazy`` detaches the mount at once even when it is busy or its storage hangs (an SPM that lost its
        lease must stop writing there now); the LV then stays active until its last user closes it.
        """
        if connection.is_mounted(mount_point):
            command.run_checked(('umount',) + (('--lazy',) if lazy else ()) + (mount_point,), MASTER_MOUNT_TIMEOUT)
        if deactivate and not lazy:
            self.lvm.deactivate(self.sd_uuid, [MASTER_LV])

    def volumes(self, lvs=None):
        """``{lv name: lv}`` of the domain's LVs that are volumes (not special)."""
        lvs = self.lvm.lvs(self.sd_uuid) if lvs is None else lvs
        special = set(special_lv_sizes_mib(5)) | set(special_lv_sizes_mib(4))
        return {name: lv for name, lv in lvs.items() if name not in special}

    def info(self):
        vg = self.vg()
        pairs = self.read_raw(vg)
        md = sdm.DomainMetadata.from_dict(pairs)
        lvs = self.lvm.lvs(self.sd_uuid)
        images = {}
        for name, lv in sorted(self.volumes(lvs).items()):
            image = next((tag[3:] for tag in lv['tags'] if tag.startswith('IU_')), '')
            images.setdefault(image, []).append(name)
        return {
            'sd_uuid': md.sd_uuid, 'path': None, 'vg_name': vg['vg_name'], 'vg_uuid': vg['vg_uuid'], 'version': md.version,
            'type': md.sd_type, 'class': md.domain_class, 'description': md.description, 'role': md.role,
            'pool_uuids': md.pool_uuids, 'io_timeout': md.io_op_timeout_sec, 'alignment': md.alignment,
            'block_size': md.block_size, 'total_bytes': vg['vg_size'], 'free_bytes': vg['vg_free'],
            'extent_size': vg['vg_extent_size'],
            'luns': ordered_luns(pairs, vg),
            'special_lvs': {name: lvs[name]['size'] for name in self.special_lvs(md) if name in lvs},
            'metadata': pairs,
            'images': [{'image_uuid': img, 'volumes': [{'volume_uuid': vol} for vol in vols]} for img, vols in sorted(images.items())],
        }


# ------------------------------------------------------------------ LUNs

def lun_devices(guids, lvm, force=False, vg_name=None):
    """The multipath devices of ``guids``, checked for a new PV of VG ``vg_name``.

    Refused: an unknown GUID, a GUID given twice, a LUN whose logical block size
    is not 512 bytes, and (unless ``force``) a LUN that is a PV of another VG or
    that something else is built on (a partition, a map).
    """
    guids = luns.validate_guids(guids)
    if not guids:
        raise VirtnodeError('luns must name at least one LUN GUID', {'field': 'luns'})
    if len(set(guids)) != len(guids):
        raise VirtnodeError('luns names a LUN twice: %s' % ', '.join(sorted({g for g in guids if guids.count(g) > 1})),
                            {'field': 'luns'})
    found = luns.multipath_devices()
    missing = [guid for guid in guids if guid not in found]
    if missing:
        raise VirtnodeError('LUN(s) not visible on this host: %s (is the storage server connected? lun_info lists the '
                            'LUNs it sees)' % ', '.join(missing), {'field': 'luns', 'missing': missing})
    devices = [found[guid]['device'] for guid in guids]
    lvm.add_devices(devices)
    pvs = lvm.pvs()
    for guid, device in zip(guids, devices):
        lun = found[guid]
        if lun['logical_block_size'] not in (None, BLOCK_SIZE):
            raise VirtnodeError('LUN %s has %d-byte logical blocks; block storage domains need %d'
                                % (guid, lun['logical_block_size'], BLOCK_SIZE), {'field': 'luns', 'guid': guid})
        owner = pvs.get(device, pvs.get('/dev/%s' % lun['dm']))
        if owner is not None and owner == vg_name:
            continue
        if force:
            continue
        if owner:
            raise VirtnodeError('LUN %s is already used by volume group %s: refusing to overwrite it (force: true '
                                'destroys what it holds)' % (guid, owner), {'field': 'luns', 'guid': guid, 'vg_name': owner})
        if owner is not None or lun['holders']:
            raise VirtnodeError('LUN %s is in use (%s): refusing to overwrite it (force: true destroys what it holds)'
                                % (guid, 'a physical volume' if owner is not None else ', '.join(lun['holders'])),
                                {'field': 'luns', 'guid': guid})
    return devices


def _zero(path, size):
    fd = fileio.open_logical_volume(path, os.O_WRONLY)
    try:
        chunk = bytes(MIB)
        done = 0
        while done < size:
            done += os.pwrite(fd, chunk[:min(MIB, size - done)], done)
        os.fsync(fd)
    except OSError as err:
        raise VirtnodeError('cannot zero %s: %s' % (path, err.strerror or err), {'path': path}) from err
    finally:
        os.close(fd)


# ------------------------------------------------------------------ create, extend, remove

def check_new(sd_uuid, sd_type, domain_class, description, version, guids):
    """Refuse options a new block domain cannot have, before anything is touched."""
    sdm.new_domain_metadata(sd_uuid, sd_type, domain_class, description, None, version, BLOCK_SIZE, sdm.DEFAULT_ALIGNMENT)
    if domain_class != 'Data':
        raise VirtnodeError('block storage domains are Data domains (ISO and export domains are file domains), got %s'
                            % domain_class, {'field': 'domain_class'})
    if len(guids or []) > MAX_PVS:
        raise VirtnodeError('a block storage domain spans at most %d LUNs, got %d' % (MAX_PVS, len(guids)),
                            {'field': 'luns'})


def create(sd_uuid, guids, sd_type, description, version, io_timeout, force=False, lvm=None, format_leases=None):
    """Create block domain ``sd_uuid`` on LUNs ``guids``; returns the BlockDomain.

    ``format_leases(domain, md)`` formats the lockspace and SPM lease
    (domain.py's, shared with file domains), given blank areas.
    """
    check_new(sd_uuid, sd_type, 'Data', description, version, guids)
    domain = BlockDomain(sd_uuid, lvm)
    lvm = domain.lvm
    devices = lun_devices(guids, lvm, force, vg_name=sd_uuid)
    existing = domain.vg()
    if existing is not None:
        if DOMAIN_TAG in existing['tags']:
            raise VirtnodeError('storage domain %s already exists' % sd_uuid, {'sd_uuid': sd_uuid})
        if UNREADY_TAG not in existing['tags']:
            raise VirtnodeError('a volume group named %s exists and is not a storage domain: refusing to touch it'
                                % sd_uuid, {'sd_uuid': sd_uuid})
        # A creation that stopped before the ready tag: no host uses this VG yet.
        discard_unready(domain, existing)
    lvm.create_pvs(devices, VG_METADATA_SIZE_MIB, force)
    lvm.enable_metadata(devices[0])
    lvm.create_vg(sd_uuid, devices, EXTENT_SIZE, UNREADY_TAG)
    crash_point('block_domain_create.vg')
    alignment = sdm.DEFAULT_ALIGNMENT
    sizes = special_lv_sizes_mib(version, alignment)
    # The metadata LV is first on the VG's metadata PV, so its extent 0 is the domain's.
    lvm.create_lv(sd_uuid, METADATA_LV, sizes[METADATA_LV], device=devices[0])
    for name, size in sizes.items():
        if name != METADATA_LV:
            lvm.create_lv(sd_uuid, name, size)
    crash_point('block_domain_create.lvs')
    master = lv_path(sd_uuid, MASTER_LV)
    with lvm_cmd.naming_lost_luns(devices):
        command.run_checked(MKFS + (master,), MKFS_TIMEOUT, label='mkfs.ext3 %s' % master, install_hint='Debian: e2fsprogs')
        lvm.deactivate(sd_uuid, [MASTER_LV])
        _zero(lv_path(sd_uuid, METADATA_LV), RESERVED_METADATA_SIZE)
        _zero(lv_path(sd_uuid, 'inbox'), RESERVED_MAILBOX_SIZE)
        _zero(lv_path(sd_uuid, 'outbox'), RESERVED_MAILBOX_SIZE)
        # A LUN used before keeps what it held where the new LVs land: the lease areas are zeroed too, so
        # they read as never written until formatted, and the proven-blank rule of repairs holds.
        for name, size in lease_area_sizes(version, alignment).items():
            _zero(lv_path(sd_uuid, name), size)
    vg = domain.vg()
    pairs = sdm.new_domain_metadata(sd_uuid, sd_type, 'Data', description, None, version, BLOCK_SIZE, alignment)
    pairs[sdm.IOOPTIMEOUTSEC] = str(io_timeout)
    pairs[VGUUID] = vg['vg_uuid']
    if version < sdm.FIRST_VERSION_WITH_ALIGNMENT:
        pairs.update(LOGBLKSIZE=str(BLOCK_SIZE), PHYBLKSIZE=str(BLOCK_SIZE))
    pairs.update(pv_mapping(vg, first=devices[0]))
    lvm.change_vg_tags(sd_uuid, add=metadata_tags(pairs))
    crash_point('block_domain_create.metadata')
    lvm.change_vg_tags(sd_uuid, remove=[UNREADY_TAG], add=[DOMAIN_TAG])
    crash_point('block_domain_create.ready')
    md = domain.read_md()
    domain.activate_special(md)
    if format_leases is not None:
        format_leases(domain, md)
    return domain


def discard_unready(domain, vg):
    """Remove a VG left by a creation that never reached the ready tag."""
    domain.lvm.deactivate_vg(domain.sd_uuid)
    domain.lvm.remove_vg(domain.sd_uuid, [pv['name'] for pv in vg['pvs']])


def missing_luns(domain, guids, vg=None):
    """The GUIDs of ``guids`` that are not PVs of the domain yet."""
    vg = vg or domain.vg()
    have = {os.path.basename(pv['name']) for pv in vg['pvs']}
    return [guid for guid in luns.validate_guids(guids) if guid not in have]


def extend(domain, guids, force=False):
    """Add the LUNs ``guids`` to the domain's VG and its ``PVn`` metadata keys; returns the GUIDs added."""
    vg = domain.vg()
    pairs = domain.read_raw(vg)
    new_guids = missing_luns(domain, guids, vg)
    if not new_guids:
        return []
    if len(vg['pvs']) + len(new_guids) > MAX_PVS:
        raise VirtnodeError('a block storage domain spans at most %d LUNs: %s has %d, %d more asked'
                            % (MAX_PVS, domain.sd_uuid, len(vg['pvs']), len(new_guids)), {'field': 'luns'})
    devices = lun_devices(new_guids, domain.lvm, force, vg_name=domain.sd_uuid)
    pvs = domain.lvm.pvs()
    fresh = [device for device in devices if pvs.get(device) != domain.sd_uuid]
    if fresh:
        domain.lvm.create_pvs(fresh, vg['vg_mda_size'] // MIB or VG_METADATA_SIZE_MIB, force)
        domain.lvm.extend_vg(domain.sd_uuid, fresh)
        crash_point('block_domain_extend.vg')
    update_pv_mapping(domain)
    return new_guids


def update_pv_mapping(domain):
    """Bring the ``PVn`` keys in line with the VG's PVs (after an extension, even an interrupted one)."""
    vg = domain.vg()
    pairs = domain.read_raw(vg)
    old = {key: value for key, value in pairs.items() if _is_pv_key(key)}
    mapping = pv_mapping(vg, old)
    changes = {key: None for key in old if key not in mapping}
    changes.update(mapping)
    return domain.update_md(changes)


def remove(domain):
    """Remove the domain's VG and wipe its PVs (the caller checked it may go)."""
    vg = domain.vg()
    if vg is None:
        return
    domain.lvm.deactivate_vg(domain.sd_uuid)
    domain.lvm.remove_vg(domain.sd_uuid, [pv['name'] for pv in vg['pvs']])


def list_domains(lvm=None):
    """UUIDs of the block domains on this host's LUNs (VGs with the ready tag)."""
    lvm = lvm or lvm_cmd.Lvm()
    found = []
    for name in lvm.vgs_tagged(DOMAIN_TAG):
        try:
            found.append(validate.uuid_str(name, 'storage domain UUID'))
        except VirtnodeError:
            continue
    return found
