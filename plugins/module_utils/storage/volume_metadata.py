# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volume metadata (``images/<img>/<vol>.meta``) in VDSM's format.

On disk: ``KEY=VALUE`` lines sorted by key, then a line ``EOF``; at most
512 bytes, because the same record must fit one sector when a disk moves to
block storage. Domain version 5 stores the capacity in bytes (``CAP``) and a
sequence number (``SEQ``); version 4 stores ``SIZE`` in 512-byte blocks and
an always-zero ``MTIME``. Both are read; version 5 is written unless the
domain is version 4.

Attribute names and their keys: domain=DOMAIN, image=IMAGE, parent=PUUID,
capacity=CAP (or SIZE x 512), volume_format=FORMAT, allocation=TYPE,
role=VOLTYPE, disk_type=DISKTYPE, description=DESCRIPTION,
legality=LEGALITY, ctime=CTIME, generation=GEN, sequence=SEQ.
"""

from __future__ import annotations

import dataclasses
import os
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

METADATA_SIZE = 512
DESCRIPTION_SIZE = 210
MAX_GENERATION = 999
SECTOR_SIZE = 512
BLANK_UUID = '00000000-0000-0000-0000-000000000000'
# VDSM limits a chain to well below this; a longer one is a loop written by someone else.
MAX_CHAIN_LENGTH = 256
METADATA_TIMEOUT = 30
END_MARKER = 'EOF'
# Older VDSM "cleared" the metadata of a removed volume by writing this key.
CLEARED_MARKER = 'NONE'

FORMATS = ('RAW', 'COW')
ALLOCATIONS = ('PREALLOCATED', 'SPARSE')
ROLES = ('LEAF', 'INTERNAL', 'SHARED')
LEGALITIES = ('LEGAL', 'ILLEGAL', 'FAKE')
# "1" and "2" are disk types written by old engines and virt-v2v; VDSM still accepts them.
DISK_TYPES = ('DATA', 'ISOF', 'MEMD', 'MEMM', 'OVFS', 'HEVD', 'HESD', 'HEMD', 'HECI', 'SCRD', '1', '2')
WRITABLE_VERSIONS = (4, 5)
# A line ends at '\n' and nowhere else, for the writer and the reader alike. Every other
# character some parser treats as a line end (str.splitlines, or bytes.splitlines for '\r')
# is refused in a value, and in a file, so no value can start a line of its own.
LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'
FORBIDDEN_IN_VALUES = LINE_BREAKS + '\0'
# The most a .meta file may hold: 512 bytes, padded at most to a large sector by a copy from block storage.
READ_LIMIT = 64 * 1024
IMAGES_DIR = 'images'


def next_generation(generation):
    """Return the generation after ``generation``; it wraps from 999 to 0."""
    return (generation + 1) % (MAX_GENERATION + 1)


def _now():
    return int(time.time())


@dataclasses.dataclass
class VolumeMetadata:
    """One volume's metadata; see the module docstring for the on-disk keys."""

    domain: str
    image: str
    capacity: int
    volume_format: str
    allocation: str
    role: str
    disk_type: str
    parent: str = BLANK_UUID
    description: str = ''
    legality: str = 'ILLEGAL'
    ctime: int = dataclasses.field(default_factory=_now)
    generation: int = 0
    sequence: int = 0

    def validate(self, domain_version=5):
        """Raise VirtnodeError naming the first field that cannot be written."""
        if domain_version not in WRITABLE_VERSIONS:
            raise VirtnodeError('cannot write volume metadata for domain version %r' % (domain_version,))
        validate.uuid_str(self.domain, 'DOMAIN')
        validate.uuid_str(self.image, 'IMAGE')
        validate.uuid_str(self.parent, 'PUUID')
        for key, value, choices in (('FORMAT', self.volume_format, FORMATS), ('TYPE', self.allocation, ALLOCATIONS),
                                    ('VOLTYPE', self.role, ROLES), ('LEGALITY', self.legality, LEGALITIES),
                                    ('DISKTYPE', self.disk_type, DISK_TYPES)):
            if value not in choices:
                raise VirtnodeError('volume %s must be one of %s, got %r' % (key, ', '.join(choices), value), {'field': key})
        for key, value, top in (('CAP', self.capacity, validate.MAX_SIZE_BYTES), ('CTIME', self.ctime, None),
                                ('GEN', self.generation, MAX_GENERATION), ('SEQ', self.sequence, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top is not None and value > top):
                limit = '' if top is None else ' and at most %d' % top
                raise VirtnodeError('volume %s must be an integer >= 0%s, got %r' % (key, limit, value), {'field': key})
        if domain_version < 5 and self.capacity % SECTOR_SIZE:
            raise VirtnodeError('volume capacity %d is not a multiple of %d bytes, which version 4 metadata needs'
                                % (self.capacity, SECTOR_SIZE), {'field': 'CAP'})
        if not isinstance(self.description, str) or any(char in self.description for char in FORBIDDEN_IN_VALUES):
            raise VirtnodeError('volume DESCRIPTION must be a single line of text without line, record or '
                                'paragraph separators or NUL: %r' % (self.description,), {'field': 'DESCRIPTION'})


def serialize(metadata, domain_version=5):
    """Return the ``.meta`` content (bytes) for ``metadata`` on a domain of ``domain_version``."""
    metadata.validate(domain_version)
    pairs = {
        'CTIME': metadata.ctime,
        # Long descriptions come from older engines and must not fail a write, so they are cut as VDSM does.
        'DESCRIPTION': metadata.description[:DESCRIPTION_SIZE],
        'DISKTYPE': metadata.disk_type,
        'DOMAIN': metadata.domain,
        'FORMAT': metadata.volume_format,
        'GEN': metadata.generation,
        'IMAGE': metadata.image,
        'LEGALITY': metadata.legality,
        'PUUID': metadata.parent,
        'TYPE': metadata.allocation,
        'VOLTYPE': metadata.role,
    }
    if domain_version < 5:
        pairs.update(MTIME=0, SIZE=metadata.capacity // SECTOR_SIZE)
    else:
        pairs.update(CAP=metadata.capacity, SEQ=metadata.sequence)
    text = ''.join('%s=%s\n' % (key, pairs[key]) for key in sorted(pairs)) + END_MARKER + '\n'
    data = text.encode('utf-8')
    if len(data) > METADATA_SIZE:
        raise VirtnodeError('volume metadata is %d bytes, more than the %d that fit a sector (shorten the description)'
                            % (len(data), METADATA_SIZE), {'size': len(data)})
    return data


def _raw_pairs(data):
    try:
        text = data.decode('utf-8') if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as err:
        raise VirtnodeError('volume metadata is not valid UTF-8: %s' % err) from err
    pairs = {}
    # Metadata copied from block storage is padded with NULs up to the sector size.
    for number, line in enumerate(text.rstrip('\0').split('\n'), 1):
        if line.startswith(END_MARKER):
            break
        odd = sorted(set(char for char in line if char in FORBIDDEN_IN_VALUES))
        if odd:
            # Another parser would split this line where this one does not: refuse rather than guess.
            raise VirtnodeError('volume metadata line %d holds a line break or NUL character (%s): %r'
                                % (number, ', '.join(repr(char) for char in odd), line), {'line': number})
        if '=' in line:
            key, value = line.split('=', 1)
            key = key.strip()
            if key in pairs:
                raise VirtnodeError('volume metadata has %s twice (line %d)' % (key, number), {'field': key, 'line': number})
            pairs[key] = value.strip()
    return pairs


def _required(pairs, key):
    try:
        return pairs[key]
    except KeyError:
        raise VirtnodeError('volume metadata lacks %s' % key, {'field': key}) from None


def _integer(pairs, key, default=None):
    if default is not None and key not in pairs:
        return default
    value = _required(pairs, key)
    try:
        return int(value)
    except ValueError:
        raise VirtnodeError('volume metadata %s is not an integer: %r' % (key, value), {'field': key}) from None


def parse(data):
    """Return the VolumeMetadata held in ``data`` (bytes or str), version 4 or 5."""
    pairs = _raw_pairs(data)
    if CLEARED_MARKER in pairs:
        raise VirtnodeError('volume metadata was cleared (the volume was being removed)', {'field': CLEARED_MARKER})
    if 'CAP' in pairs:
        capacity = _integer(pairs, 'CAP')
    elif 'SIZE' in pairs:
        capacity = _integer(pairs, 'SIZE') * SECTOR_SIZE
    else:
        raise VirtnodeError('volume metadata lacks CAP (or SIZE)', {'field': 'CAP'})
    return VolumeMetadata(
        domain=_required(pairs, 'DOMAIN'),
        image=_required(pairs, 'IMAGE'),
        capacity=capacity,
        volume_format=_required(pairs, 'FORMAT'),
        allocation=_required(pairs, 'TYPE'),
        role=_required(pairs, 'VOLTYPE'),
        disk_type=_required(pairs, 'DISKTYPE'),
        parent=_required(pairs, 'PUUID'),
        description=_required(pairs, 'DESCRIPTION'),
        legality=_required(pairs, 'LEGALITY'),
        ctime=_integer(pairs, 'CTIME'),
        # GEN and SEQ were added later; VDSM reads a missing one as 0.
        generation=_integer(pairs, 'GEN', 0),
        sequence=_integer(pairs, 'SEQ', 0),
    )


def domain_root(path):
    """The domain directory of a volume file or ``.meta`` path (``<dom>/images/<img>/<file>``), else None.

    Nothing below it is followed if it is a link, so a volume path cannot leave its domain.
    """
    image_dir = os.path.dirname(path)
    images = os.path.dirname(image_dir)
    if os.path.basename(images) == IMAGES_DIR and os.path.basename(image_dir) not in ('', '.', '..'):
        return os.path.dirname(images)
    return None


def read_volume_metadata(path, timeout=None, root=None):
    """Return the VolumeMetadata stored in the ``.meta`` file at ``path``.

    The file is read without following links below its domain directory
    (``root``, by default found from the path), bounded in size and time.
    """
    text = fileio.read_text(path, timeout, READ_LIMIT, root or domain_root(path))
    try:
        return parse(text)
    except VirtnodeError as err:
        raise VirtnodeError('%s: %s' % (path, err.message), dict(err.details, path=path)) from err


def write_volume_metadata(path, metadata, domain_version=5, root=None):
    """Replace the ``.meta`` file at ``path`` with ``metadata`` (no link below the domain followed)."""
    fileio.write_atomic(path, serialize(metadata, domain_version), root=root or domain_root(path),
                        owner=fileio.STORAGE_OWNER)


def legal_chain(dom_dir, image_id, volume_id, root=None, writable=False):
    """``[(volume UUID, FORMAT)]`` of a file domain's volume and every volume below it, top first.

    Reads ``<dom_dir>/images/<image>/<vol>.meta`` up the PUUID chain, without following links below ``root``
    (default ``dom_dir``). A volume without metadata, with unreadable metadata or marked ILLEGAL, and a chain
    that loops or is longer than MAX_CHAIN_LENGTH, are refused; with ``writable`` (a guest's disk) a template
    on top too (VDSM's SharedVolumeNonWritable: its thin clones read it).
    """
    image_dir = os.path.join(dom_dir, 'images', validate.uuid_str(image_id, 'image UUID'))
    current = validate.uuid_str(volume_id, 'volume UUID')
    chain = []
    while current != BLANK_UUID:
        if current in [vol for vol, _fmt in chain] or len(chain) >= MAX_CHAIN_LENGTH:
            raise VirtnodeError('refusing volume %s: its chain loops or is longer than %d volumes (%s)'
                                % (volume_id, MAX_CHAIN_LENGTH, ' <- '.join([vol for vol, _fmt in chain] + [current])),
                                {'field': 'disks', 'volume_id': volume_id})
        meta = os.path.join(image_dir, current + '.meta')
        try:
            md = read_volume_metadata(meta, timeout=METADATA_TIMEOUT, root=root or dom_dir)
        except VirtnodeError as err:
            raise VirtnodeError('refusing storage volume %s of image %s: the metadata of %s cannot be used: %s'
                                % (volume_id, image_id, current, err.message),
                                dict(err.details, field='disks', volume_id=current)) from err
        chain.append((current, md.volume_format))
        if writable and current == volume_id and md.role == 'SHARED':
            raise VirtnodeError('refusing storage volume %s of image %s: it is a template (VOLTYPE SHARED), which the '
                                'thin clones based on it read; give the VM a thin clone of it (a volume with '
                                'parent_image_uuid)' % (volume_id, image_id), {'field': 'disks', 'volume_id': current})
        if md.legality == 'ILLEGAL':
            what = 'it is' if current == volume_id else 'volume %s of its chain is' % current
            raise VirtnodeError('refusing storage volume %s of image %s: %s ILLEGAL (an interrupted create or '
                                'a half-removed snapshot); repair or remove it first' % (volume_id, image_id, what),
                                {'field': 'disks', 'volume_id': current, 'legality': md.legality})
        try:
            current = validate.uuid_str(md.parent, 'PUUID of volume %s' % current)
        except VirtnodeError as err:
            raise VirtnodeError('refusing storage volume %s of image %s: %s' % (volume_id, image_id, err.message),
                                {'field': 'disks', 'volume_id': chain[-1][0]}) from err
    return chain
