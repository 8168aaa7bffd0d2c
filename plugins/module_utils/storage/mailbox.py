# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VDSM's SPM mailbox format: how a host asks the SPM to extend a volume.

The master domain's ``dom_md/inbox`` holds one 4 KiB mailbox per host at
``host_id * 4096``; hosts write requests there and the SPM answers in the
same slot of ``dom_md/outbox``. A mailbox is 64 slots of 64 bytes; the last
slot is reserved and ends with a 4-byte checksum: the sum of bytes
0..4091, little endian. Replies written by the SPM do not update that
checksum, so outbox blocks are parsed with ``verify_checksum=False``.

An extend message (request, or reply with the size granted, 0 = failed):

    offset  size  content
    0       1     b"1"      message version
    1       4     b"xtnd"   operation
    5       16    domain UUID, its 128-bit value little endian
    21      16    volume UUID, same packing
    37      16    new size in MiB, 16 lowercase hex digits
    53      11    padding, ASCII b"0"

Slots whose first byte is NUL or ``b"0"`` are empty; a slot of 64 ``0x01``
bytes is a "clean" marker (a host acknowledging a reply, or the SPM
echoing that back).

Only encoding and decoding live here, no I/O.
"""

from __future__ import annotations

import collections
import struct
import uuid

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

MAILBOX_SIZE = 4096
MESSAGE_SIZE = 64
SLOTS_PER_MAILBOX = MAILBOX_SIZE // MESSAGE_SIZE
# The last slot is reserved for the checksum.
MESSAGES_PER_MAILBOX = SLOTS_PER_MAILBOX - 1
CHECKSUM_SIZE = 4
CHECKSUM_OFFSET = MAILBOX_SIZE - CHECKSUM_SIZE
# The highest host id a pool accepts (VDSM's MAX_HOST_ID): the SPM serves
# and the pool module admits exactly these, one mailbox each.
MAX_HOST_ID = 250

MESSAGE_VERSION = b'1'
EXTEND_CODE = b'xtnd'
SIZE_DIGITS = 16
PADDING = b'0'
EMPTY_MARKERS = (0x00, ord('0'))
CLEAN_MESSAGE = b'\x01' * MESSAGE_SIZE
EMPTY_MESSAGE = b'\x00' * MESSAGE_SIZE
# VDSM refuses sizes above 0xFFFFFFFF MiB.
MAX_EXTEND_SIZE_MIB = 0xFFFFFFFF

_SD_OFFSET = len(MESSAGE_VERSION) + len(EXTEND_CODE)
_VOL_OFFSET = _SD_OFFSET + 16
_SIZE_OFFSET = _VOL_OFFSET + 16
_HEX_DIGITS = frozenset(b'0123456789abcdefABCDEF')

EMPTY = 'empty'
CLEAN = 'clean'
EXTEND = 'extend'
INVALID = 'invalid'

# kind is one of EMPTY, CLEAN, EXTEND, INVALID; the other fields are set for EXTEND
# (error for INVALID); raw is the slot's 64 bytes.
Message = collections.namedtuple('Message', 'slot kind sd_uuid vol_uuid size_mib error raw')


def mailbox_offset(host_id):
    """Return the byte offset of host ``host_id``'s mailbox in inbox and outbox."""
    if isinstance(host_id, bool) or not isinstance(host_id, int) or not 1 <= host_id <= MAX_HOST_ID:
        raise VirtnodeError('host id must be an integer from 1 to %d, got %r' % (MAX_HOST_ID, host_id), {'field': 'host_id'})
    return host_id * MAILBOX_SIZE


def _pack_uuid(value, what):
    # VDSM packs the UUID's 128-bit integer little endian (struct '<QQ' of
    # low, high), which is the canonical bytes reversed, not uuid.bytes_le.
    return uuid.UUID(validate.uuid_str(value, what)).int.to_bytes(16, 'little')


def _unpack_uuid(raw):
    return str(uuid.UUID(int=int.from_bytes(raw, 'little')))


def encode_extend(sd_uuid, vol_uuid, size_mib):
    """Return the 64-byte extend message for volume ``vol_uuid`` of domain ``sd_uuid``."""
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or not 0 <= size_mib <= MAX_EXTEND_SIZE_MIB:
        raise VirtnodeError('extend size must be an integer from 0 to %d MiB, got %r' % (MAX_EXTEND_SIZE_MIB, size_mib),
                            {'field': 'size_mib'})
    size = b'%0*x' % (SIZE_DIGITS, size_mib)
    message = MESSAGE_VERSION + EXTEND_CODE + _pack_uuid(sd_uuid, 'domain UUID') + _pack_uuid(vol_uuid, 'volume UUID') + size
    return message.ljust(MESSAGE_SIZE, PADDING)


def decode_message(raw, slot=0):
    """Return the Message held in one 64-byte slot; malformed slots come back as INVALID."""
    raw = bytes(raw)
    if len(raw) != MESSAGE_SIZE:
        raise VirtnodeError('a mailbox message is %d bytes, got %d' % (MESSAGE_SIZE, len(raw)))
    if raw[0] in EMPTY_MARKERS:
        return Message(slot, EMPTY, None, None, None, None, raw)
    if raw == CLEAN_MESSAGE:
        return Message(slot, CLEAN, None, None, None, None, raw)
    version, code = raw[:1], raw[1:_SD_OFFSET]
    size_field = raw[_SIZE_OFFSET:_SIZE_OFFSET + SIZE_DIGITS]
    if version != MESSAGE_VERSION or code != EXTEND_CODE:
        error = 'unknown message version %r or operation %r' % (version, code)
    elif not set(size_field) <= _HEX_DIGITS:
        error = 'size field is not hexadecimal: %r' % (size_field,)
    else:
        return Message(slot, EXTEND, _unpack_uuid(raw[_SD_OFFSET:_VOL_OFFSET]), _unpack_uuid(raw[_VOL_OFFSET:_SIZE_OFFSET]),
                       int(size_field, 16), None, raw)
    return Message(slot, INVALID, None, None, None, error, raw)


def block_checksum(block):
    """Return the 4 checksum bytes for a mailbox block (only its first 4092 bytes count)."""
    return struct.pack('<I', sum(block[:CHECKSUM_OFFSET]) & 0xFFFFFFFF)


def build_block(messages):
    """Return a 4096-byte mailbox; ``messages[i]`` (64 bytes or None for empty) goes to slot i."""
    if len(messages) > MESSAGES_PER_MAILBOX:
        raise VirtnodeError('a mailbox holds %d messages, got %d' % (MESSAGES_PER_MAILBOX, len(messages)))
    slots = []
    for index, message in enumerate(messages):
        message = EMPTY_MESSAGE if message is None else bytes(message)
        if len(message) != MESSAGE_SIZE:
            raise VirtnodeError('mailbox slot %d: a message is %d bytes, got %d' % (index, MESSAGE_SIZE, len(message)))
        slots.append(message)
    body = b''.join(slots).ljust(CHECKSUM_OFFSET, b'\x00')
    return body + block_checksum(body)


def parse_block(block, verify_checksum=True):
    """Return the Messages of the 63 slots of a 4096-byte mailbox.

    A wrong checksum means a torn or foreign write: the whole block is
    refused. A single unreadable slot is returned as INVALID instead, so
    one bad message does not hide the others.
    """
    block = bytes(block)
    if len(block) != MAILBOX_SIZE:
        raise VirtnodeError('a mailbox is %d bytes, got %d' % (MAILBOX_SIZE, len(block)))
    if verify_checksum and block[CHECKSUM_OFFSET:] != block_checksum(block):
        raise VirtnodeError('mailbox checksum mismatch: stored %s, computed %s'
                            % (block[CHECKSUM_OFFSET:].hex(), block_checksum(block).hex()))
    return [decode_message(block[slot * MESSAGE_SIZE:(slot + 1) * MESSAGE_SIZE], slot)
            for slot in range(MESSAGES_PER_MAILBOX)]
