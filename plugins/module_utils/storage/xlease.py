# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The index of a domain's ``dom_md/xleases`` volume (external VM leases), VDSM format 1.

The volume is made of slots of the domain's ALIGNMENT (always 1 MiB with
512-byte sectors; 1, 2, 4 or 8 MiB with 4 KiB): slot 0 unused (VDSM keeps
its lockspace on ``ids``), slot 1 the index, slot 2 reserved for sanlock,
lease records from slot 3 on.

Index = 62 blocks of 4 KiB (VDSM's size, whatever the sector size): a
512-byte metadata block then 3960 records of 64 bytes.

Metadata block (big endian)::

    int32 magic 0x12152016, NUL, 4 digits version, NUL, 48 bytes lockspace
    (NUL padded), NUL, 10 digits mtime, NUL, flag ('-' or 'u' = updating),
    440 NUL bytes, '\\n'

Record::

    48 bytes resource name (NUL padded), NUL, 11 digits offset, NUL,
    flag ('-' or 'u'), reserved '-', '\\n'

A free record has an empty name and offset 0.

VM leases (VDSM's ``Lease.create``/``Lease.delete``, the SPM's job) are
added in two steps, as VDSM does: the sanlock resource is written in the
record's slot first, then the record, so an interrupted add leaves the index
unchanged. A removal writes the empty record first, then clears the
resource (a failure there is harmless: the index no longer names it).
"""

from __future__ import annotations

import os
import struct
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

INDEX_MAGIC = 0x12152016
INDEX_VERSION = 1
RECORD_SIZE = 64
METADATA_SIZE = 512
INDEX_SIZE = 62 * 4096
MAX_RECORDS = (INDEX_SIZE - METADATA_SIZE) // RECORD_SIZE
# Slots before the first lease record: unused lockspace slot, index, sanlock's own.
RESERVED_SLOTS = 3
FLAG_NONE = b'-'
FLAG_UPDATING = b'u'

_META = struct.Struct('>i x 4s x 48s x 10s x c 440x c')
_RECORD = struct.Struct('48s x 11s x 3c')


def index_offset(alignment):
    """Offset of the index (slot 1) in the volume: one ALIGNMENT, as VDSM reads it."""
    return alignment


def lease_offset(record_number, alignment):
    """Offset of the lease that record ``record_number`` describes."""
    return (RESERVED_SLOTS + record_number) * alignment


def metadata_block(lockspace, mtime=None, updating=False):
    """Return the 512-byte index metadata block."""
    name = lockspace.encode('ascii')
    if len(name) > 48:
        raise VirtnodeError('lockspace name too long for the xleases index: %s' % lockspace)
    return _META.pack(INDEX_MAGIC, b'%04d' % INDEX_VERSION, name, b'%010d' % int(time.time() if mtime is None else mtime),
                      FLAG_UPDATING if updating else FLAG_NONE, b'\n')


def record(resource='', offset=0, updating=False):
    """Return one 64-byte record."""
    return _RECORD.pack(resource.encode('ascii'), b'%011d' % offset, FLAG_UPDATING if updating else FLAG_NONE, FLAG_NONE, b'\n')


def empty_index(lockspace, mtime=None):
    """Return the bytes of a freshly formatted index."""
    return metadata_block(lockspace, mtime) + record() * MAX_RECORDS


def parse_metadata(block):
    """Return ``{'version', 'lockspace', 'mtime', 'updating'}`` of an index metadata block."""
    try:
        magic, version, lockspace, mtime, updating, _term = _META.unpack(bytes(block[:METADATA_SIZE]))
    except struct.error as err:
        raise VirtnodeError('xleases index metadata cannot be unpacked: %s' % err) from err
    if magic != INDEX_MAGIC:
        raise VirtnodeError('xleases index has a wrong magic number: %#x' % magic)
    try:
        return {'version': int(version), 'lockspace': lockspace.rstrip(b'\0').decode('ascii'),
                'mtime': int(mtime), 'updating': updating == FLAG_UPDATING}
    except (ValueError, UnicodeDecodeError) as err:
        raise VirtnodeError('xleases index metadata is malformed: %s' % err) from err


def parse_records(data, alignment):
    """Return ``{resource: offset}`` of the used records in the index bytes ``data``."""
    leases = {}
    for number in range(MAX_RECORDS):
        start = METADATA_SIZE + number * RECORD_SIZE
        chunk = bytes(data[start:start + RECORD_SIZE])
        if len(chunk) < RECORD_SIZE:
            break
        name = _RECORD.unpack(chunk)[0].rstrip(b'\0')
        if name:
            leases[name.decode('ascii', 'replace')] = lease_offset(number, alignment)
    return leases


def _open_in_domain(path, flags):
    # ``<domain>/dom_md/xleases`` is on shared storage: no link below the domain is followed
    # (a block domain's ``/dev/<sd>/xleases`` must be that LV).
    return fileio.open_storage(path, flags, root=os.path.dirname(os.path.dirname(path)))


def format_index(path, lockspace, alignment):
    """Write a fresh index into the xleases file at ``path``.

    Written first with the updating flag, then the metadata block again without it,
    so an interrupted format is recognisable. A file domain's xleases file is not
    sized beyond the index (VDSM creates it empty; sanlock extends it as leases are added).
    """
    base = index_offset(alignment)
    fd = _open_in_domain(path, os.O_RDWR)
    try:
        try:
            os.pwrite(fd, metadata_block(lockspace, updating=True) + record() * MAX_RECORDS, base)
            os.fsync(fd)
            os.pwrite(fd, metadata_block(lockspace), base)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise VirtnodeError('cannot format xleases index %s: %s' % (path, err.strerror), {'path': path}) from err


def read_index(path, alignment):
    """Return ``(metadata dict, {resource: offset})`` of the xleases file at ``path``."""
    fd = _open_in_domain(path, os.O_RDONLY)
    try:
        data = os.pread(fd, INDEX_SIZE, index_offset(alignment))
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror), {'path': path}) from err
    finally:
        os.close(fd)
    if len(data) < INDEX_SIZE:
        raise VirtnodeError('xleases index in %s is truncated (%d of %d bytes)' % (path, len(data), INDEX_SIZE), {'path': path})
    return parse_metadata(data), parse_records(data, alignment)


# Records are rewritten a whole 4 KiB block of the index at a time, as VDSM does (the index's block size
# whatever the sector size).
INDEX_BLOCK = 4096


def _find(data, lease_id):
    """``(record number of lease_id or None, first free record number or None)`` in the index bytes."""
    found = free = None
    for number in range(MAX_RECORDS):
        start = METADATA_SIZE + number * RECORD_SIZE
        chunk = bytes(data[start:start + RECORD_SIZE])
        if len(chunk) < RECORD_SIZE:
            break
        name = _RECORD.unpack(chunk)[0].rstrip(b'\0').decode('ascii', 'replace')
        if name == lease_id:
            found = number
            break
        if not name and free is None:
            free = number
    return found, free


def _write_record(path, alignment, number, data):
    """Write record ``number`` by rewriting the index block that holds it, synced."""
    start = METADATA_SIZE + number * RECORD_SIZE
    block_start = (start // INDEX_BLOCK) * INDEX_BLOCK
    fd = _open_in_domain(path, os.O_RDWR)
    try:
        block = bytearray(os.pread(fd, INDEX_BLOCK, index_offset(alignment) + block_start))
        if len(block) < INDEX_BLOCK:
            raise VirtnodeError('xleases index in %s is truncated' % path, {'path': path})
        block[start - block_start:start - block_start + RECORD_SIZE] = data
        os.pwrite(fd, bytes(block), index_offset(alignment) + block_start)
        os.fsync(fd)
    except OSError as err:
        raise VirtnodeError('cannot write the xleases index of %s: %s' % (path, err.strerror), {'path': path}) from err
    finally:
        os.close(fd)


def _read_checked(path, alignment, lockspace):
    fd = _open_in_domain(path, os.O_RDONLY)
    try:
        data = os.pread(fd, INDEX_SIZE, index_offset(alignment))
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror), {'path': path}) from err
    finally:
        os.close(fd)
    if len(data) < INDEX_SIZE:
        raise VirtnodeError('xleases index in %s is truncated (%d of %d bytes)' % (path, len(data), INDEX_SIZE), {'path': path})
    meta = parse_metadata(data)
    if meta['lockspace'] != lockspace:
        raise VirtnodeError('the xleases index in %s belongs to %s, not %s' % (path, meta['lockspace'], lockspace),
                            {'path': path})
    if meta['updating']:
        raise VirtnodeError('the xleases index in %s was left updating by an interrupted format; format the domain\'s '
                            'leases again' % path, {'path': path})
    return data


def find_lease(path, lockspace, lease_id, alignment):
    """The offset of VM lease ``lease_id`` in the xleases volume at ``path``, or None."""
    found, _free = _find(_read_checked(path, alignment, lockspace), lease_id)
    return lease_offset(found, alignment) if found is not None else None


def add_lease(path, lockspace, lease_id, alignment, write_resource, check_mode=False):
    """Add VM lease ``lease_id``: ``(changed, offset)``. ``write_resource(offset)`` writes its sanlock resource
    in the slot (before the record names it, as VDSM does). An existing lease is left as it is."""
    found, free = _find(_read_checked(path, alignment, lockspace), lease_id)
    if found is not None:
        return False, lease_offset(found, alignment)
    if free is None:
        raise VirtnodeError('the xleases volume %s has no free slot of its %d' % (path, MAX_RECORDS), {'path': path})
    offset = lease_offset(free, alignment)
    if check_mode:
        return True, offset
    write_resource(offset)
    _write_record(path, alignment, free, record(lease_id, offset))
    return True, offset


def remove_lease(path, lockspace, lease_id, alignment, clear_resource, check_mode=False):
    """Remove VM lease ``lease_id``: ``(changed, offset or None)``. The empty record goes first;
    ``clear_resource(offset)`` then overwrites the slot's sanlock resource (its failure is left to it)."""
    found, _free = _find(_read_checked(path, alignment, lockspace), lease_id)
    if found is None:
        return False, None
    offset = lease_offset(found, alignment)
    if check_mode:
        return True, offset
    _write_record(path, alignment, found, record())
    clear_resource(offset)
    return True, offset
