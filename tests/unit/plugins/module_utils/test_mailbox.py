# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import uuid

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import mailbox
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '00112233-4455-6677-8899-aabbccddeeff'
VOL = '275766cb-c7d8-43d6-a663-4e52160de620'

# Built by hand from VDSM's layout: version "1", "xtnd", each UUID's 128-bit
# value little endian (so the canonical bytes reversed), the size in MiB as
# 16 lowercase hex digits (2560 = 0xa00), then ASCII "0" up to 64 bytes.
EXTEND_2560 = (
    b'1xtnd'
    + bytes.fromhex('ffeeddccbbaa99887766554433221100')
    + bytes.fromhex('20e60d16524e63a6d643d8c7cb665727')
    + b'0000000000000a00'
    + b'00000000000'
)


def test_extend_message_known_vector():
    assert len(EXTEND_2560) == 64
    assert mailbox.encode_extend(SD, VOL, 2560) == EXTEND_2560


def test_uuid_packing_is_not_bytes_le():
    message = mailbox.encode_extend(SD, VOL, 1)
    assert message[5:21] == uuid.UUID(SD).bytes[::-1]
    assert message[5:21] != uuid.UUID(SD).bytes_le


def test_decode_extend():
    message = mailbox.decode_message(EXTEND_2560, slot=7)
    assert message.kind == mailbox.EXTEND
    assert (message.slot, message.sd_uuid, message.vol_uuid, message.size_mib) == (7, SD, VOL, 2560)
    assert message.raw == EXTEND_2560


@pytest.mark.parametrize('size', [0, 1, 0xFFFFFFFF])
def test_extend_round_trip(size):
    decoded = mailbox.decode_message(mailbox.encode_extend(VOL, SD, size))
    assert (decoded.kind, decoded.sd_uuid, decoded.vol_uuid, decoded.size_mib) == (mailbox.EXTEND, VOL, SD, size)


@pytest.mark.parametrize('args, message', [
    ((SD, VOL, -1), 'from 0 to'),
    ((SD, VOL, 0x100000000), 'from 0 to'),
    ((SD, VOL, 1.0), 'from 0 to'),
    ((SD.upper(), VOL, 1), 'domain UUID is not a valid UUID'),
    ((SD, 'x', 1), 'volume UUID is not a valid UUID'),
])
def test_encode_rejects(args, message):
    with pytest.raises(VirtnodeError, match=message):
        mailbox.encode_extend(*args)


@pytest.mark.parametrize('raw, kind', [
    (b'\0' * 64, mailbox.EMPTY),
    (b'0' * 64, mailbox.EMPTY),
    (b'\x01' * 64, mailbox.CLEAN),
    (b'2xtnd' + EXTEND_2560[5:], mailbox.INVALID),
    (b'1shrk' + EXTEND_2560[5:], mailbox.INVALID),
    (EXTEND_2560[:37] + b'00000000000zzz00' + EXTEND_2560[53:], mailbox.INVALID),
])
def test_decode_kinds(raw, kind):
    decoded = mailbox.decode_message(raw)
    assert decoded.kind == kind
    assert (decoded.error is not None) == (kind == mailbox.INVALID)


def test_decode_wrong_length():
    with pytest.raises(VirtnodeError, match='64 bytes'):
        mailbox.decode_message(b'1xtnd')


def test_build_block_layout_and_checksum():
    block = mailbox.build_block([None, EXTEND_2560, mailbox.CLEAN_MESSAGE])
    assert len(block) == 4096
    assert block[:64] == b'\0' * 64
    assert block[64:128] == EXTEND_2560
    assert block[128:192] == b'\x01' * 64
    assert block[192:4092] == b'\0' * 3900
    assert block[4092:] == (sum(EXTEND_2560) + 64).to_bytes(4, 'little')


def test_empty_and_clean_checksums():
    assert mailbox.build_block([]) == b'\0' * 4096
    assert mailbox.build_block([mailbox.CLEAN_MESSAGE])[4092:] == b'\x40\x00\x00\x00'


def test_parse_block_round_trip():
    messages = [None] * 63
    messages[0] = EXTEND_2560
    messages[62] = mailbox.encode_extend(VOL, SD, 0)
    parsed = mailbox.parse_block(mailbox.build_block(messages))
    assert len(parsed) == 63
    assert [m.slot for m in parsed] == list(range(63))
    assert parsed[0].size_mib == 2560 and parsed[62].size_mib == 0
    assert {m.kind for m in parsed[1:62]} == {mailbox.EMPTY}


def test_parse_block_bad_checksum_raises():
    block = bytearray(mailbox.build_block([EXTEND_2560]))
    block[100] ^= 0xFF
    with pytest.raises(VirtnodeError, match='checksum mismatch'):
        mailbox.parse_block(bytes(block))


def test_parse_outbox_block_without_checksum():
    # The SPM writes replies without refreshing the checksum.
    reply = EXTEND_2560 + b'\0' * (4096 - 64)
    parsed = mailbox.parse_block(reply, verify_checksum=False)
    assert parsed[0].kind == mailbox.EXTEND


def test_parse_block_reports_malformed_slot_without_raising():
    block = mailbox.build_block([b'1junk' + b'0' * 59, EXTEND_2560])
    parsed = mailbox.parse_block(block)
    assert parsed[0].kind == mailbox.INVALID and 'unknown' in parsed[0].error
    assert parsed[1].kind == mailbox.EXTEND


def test_build_block_rejects():
    with pytest.raises(VirtnodeError, match='holds 63'):
        mailbox.build_block([None] * 64)
    with pytest.raises(VirtnodeError, match='slot 0'):
        mailbox.build_block([b'short'])
    with pytest.raises(VirtnodeError, match='4096 bytes'):
        mailbox.parse_block(b'\0' * 512)


def test_mailbox_offset():
    assert mailbox.mailbox_offset(1) == 4096
    assert mailbox.mailbox_offset(250) == 250 * 4096
    for bad in (0, -1, 2001, '1', True):
        with pytest.raises(VirtnodeError, match='host id'):
            mailbox.mailbox_offset(bad)


def test_mailbox_serves_vdsm_s_250_host_ids():
    # One 4 KiB mailbox per host id, as many as the pool module accepts.
    assert mailbox.MAX_HOST_ID == 250
    assert mailbox.mailbox_offset(250) == 250 * 4096
    for host_id in (0, 251, 2000):
        with pytest.raises(VirtnodeError, match='250'):
            mailbox.mailbox_offset(host_id)
