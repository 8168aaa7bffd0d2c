# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import struct

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import xlease
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'


def test_metadata_block_layout():
    block = xlease.metadata_block(SD, mtime=1234567890)
    assert len(block) == 512
    assert struct.unpack('>i', block[:4])[0] == 0x12152016
    assert block[4:10] == b'\x000001\x00'
    assert block[10:46] == SD.encode()
    assert block[58:69] == b'\x001234567890'
    assert block[70:71] == b'-'
    assert block[-1:] == b'\n'


def test_record_layout():
    rec = xlease.record('lease-id', 3145728)
    assert len(rec) == 64
    assert rec[:8] == b'lease-id' and rec[48:49] == b'\0'
    assert rec[49:60] == b'00003145728'
    assert rec[61:] == b'--\n'


def test_format_and_read_back(tmp_path):
    path = tmp_path / 'xleases'
    path.write_bytes(b'')
    xlease.format_index(str(path), SD)
    assert path.stat().st_size == 1024 * 1024 ** 2
    meta, leases = xlease.read_index(str(path))
    assert meta['lockspace'] == SD and meta['version'] == 1 and not meta['updating']
    assert leases == {}


def test_parse_records_and_offsets():
    data = xlease.metadata_block(SD) + xlease.record() + xlease.record('vm-lease', xlease.lease_offset(1)) \
        + xlease.record() * (xlease.MAX_RECORDS - 2)
    assert xlease.parse_records(data) == {'vm-lease': 4 * 1024 ** 2}


def test_wrong_magic_is_refused():
    with pytest.raises(VirtnodeError, match='magic'):
        xlease.parse_metadata(b'\0' * 512)
