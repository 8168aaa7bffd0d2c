# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
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


MiB = 1024 ** 2


def _domain_xleases(tmp_path):
    dom_md = tmp_path / SD / 'dom_md'
    dom_md.mkdir(parents=True)
    path = dom_md / 'xleases'
    path.write_bytes(b'')
    return path


def test_the_index_is_vdsms_62_blocks_of_4_kib():
    assert xlease.INDEX_SIZE == 62 * 4096
    assert xlease.MAX_RECORDS == 3960
    assert len(xlease.empty_index(SD)) == xlease.INDEX_SIZE


@pytest.mark.parametrize('alignment', [MiB, 2 * MiB, 4 * MiB, 8 * MiB])
def test_format_places_the_index_at_one_alignment_and_reads_it_back(tmp_path, alignment):
    path = _domain_xleases(tmp_path)
    xlease.format_index(str(path), SD, alignment)
    # VDSM creates a file domain's xleases empty: the file ends with the index.
    assert path.stat().st_size == alignment + xlease.INDEX_SIZE
    with open(path, 'rb') as stream:
        stream.seek(alignment)
        assert struct.unpack('>i', stream.read(4))[0] == 0x12152016
    meta, leases = xlease.read_index(str(path), alignment)
    assert meta['lockspace'] == SD and meta['version'] == 1 and not meta['updating']
    assert leases == {}


@pytest.mark.parametrize('alignment', [2 * MiB, 8 * MiB])
def test_an_index_vdsm_wrote_on_a_4k_domain_is_read_where_vdsm_put_it(tmp_path, alignment):
    # A 4 KiB domain whose alignment is below 8 MiB: VDSM's index is at ALIGNMENT, not at 2048 blocks.
    path = _domain_xleases(tmp_path)
    index = bytearray(xlease.empty_index(SD, mtime=1700000000))
    record = xlease.METADATA_SIZE + 5 * xlease.RECORD_SIZE
    index[record:record + xlease.RECORD_SIZE] = xlease.record('vm-lease', (3 + 5) * alignment)
    with open(path, 'r+b') as stream:
        stream.seek(alignment)
        stream.write(bytes(index))
    meta, leases = xlease.read_index(str(path), alignment)
    assert meta['mtime'] == 1700000000
    assert leases == {'vm-lease': 8 * alignment}
    with pytest.raises(VirtnodeError):
        xlease.read_index(str(path), 2048 * 4096 if alignment != 2048 * 4096 else MiB)


def test_parse_records_and_offsets():
    data = xlease.metadata_block(SD) + xlease.record() + xlease.record('vm-lease', xlease.lease_offset(1, MiB)) \
        + xlease.record() * (xlease.MAX_RECORDS - 2)
    assert xlease.parse_records(data, MiB) == {'vm-lease': 4 * MiB}
    assert xlease.parse_records(data, 2 * MiB) == {'vm-lease': 8 * MiB}


@pytest.mark.parametrize('planted', ['link-to-host-file', 'dom-md-link', 'fifo'])
def test_the_index_is_never_read_or_written_through_a_link_or_special_file(tmp_path, planted):
    path = _domain_xleases(tmp_path)
    outside = tmp_path / 'host-file'
    outside.write_bytes(b'x' * (3 * MiB))
    before = outside.read_bytes()
    if planted == 'link-to-host-file':
        path.unlink()
        path.symlink_to(outside)
    elif planted == 'dom-md-link':
        path.unlink()
        (tmp_path / SD / 'dom_md').rmdir()
        real = tmp_path / 'elsewhere'
        real.mkdir()
        (real / 'xleases').symlink_to(outside)
        (tmp_path / SD / 'dom_md').symlink_to(real)
    else:
        path.unlink()
        os.mkfifo(path)
    with pytest.raises(VirtnodeError):
        xlease.format_index(str(path), SD, MiB)
    with pytest.raises(VirtnodeError):
        xlease.read_index(str(path), MiB)
    assert outside.read_bytes() == before


def test_wrong_magic_is_refused():
    with pytest.raises(VirtnodeError, match='magic'):
        xlease.parse_metadata(b'\0' * 512)


LEASE_A = '0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e'
LEASE_B = '5f1e0c8a-6a7e-4d3b-9a51-0f3a7c2d9e11'


def test_vm_leases_are_added_resource_first_and_removed_record_first(tmp_path):
    path = str(_domain_xleases(tmp_path))
    xlease.format_index(path, SD, MiB)
    events = []

    def write_resource(offset):
        # The index must not name the lease yet: an interrupted add leaves it unchanged.
        events.append(('resource', offset, xlease.find_lease(path, SD, LEASE_A, MiB)))

    assert xlease.add_lease(path, SD, LEASE_A, MiB, write_resource, check_mode=True) == (True, 3 * MiB)
    assert events == [] and xlease.find_lease(path, SD, LEASE_A, MiB) is None
    assert xlease.add_lease(path, SD, LEASE_A, MiB, write_resource) == (True, 3 * MiB)
    assert events == [('resource', 3 * MiB, None)]
    assert xlease.add_lease(path, SD, LEASE_A, MiB, write_resource) == (False, 3 * MiB)
    assert xlease.add_lease(path, SD, LEASE_B, MiB, lambda offset: None) == (True, 4 * MiB)
    meta, leases = xlease.read_index(path, MiB)
    assert leases == {LEASE_A: 3 * MiB, LEASE_B: 4 * MiB} and not meta['updating']

    def clear_resource(offset):
        events.append(('clear', offset, xlease.find_lease(path, SD, LEASE_A, MiB)))

    assert xlease.remove_lease(path, SD, LEASE_A, MiB, clear_resource) == (True, 3 * MiB)
    assert events[-1] == ('clear', 3 * MiB, None)
    assert xlease.remove_lease(path, SD, LEASE_A, MiB, clear_resource) == (False, None)
    # The freed slot is the next one given.
    assert xlease.add_lease(path, SD, LEASE_A, MiB, lambda offset: None) == (True, 3 * MiB)
    assert xlease.read_index(path, MiB)[1] == {LEASE_A: 3 * MiB, LEASE_B: 4 * MiB}


def test_a_lease_change_on_a_foreign_or_half_formatted_index_is_refused(tmp_path):
    path = str(_domain_xleases(tmp_path))
    xlease.format_index(path, 'another-domain', MiB)
    with pytest.raises(VirtnodeError, match='belongs to another-domain'):
        xlease.add_lease(path, SD, LEASE_A, MiB, lambda offset: None)
    with open(path, 'r+b') as stream:
        stream.seek(MiB)
        stream.write(xlease.metadata_block(SD, updating=True))
    with pytest.raises(VirtnodeError, match='left updating'):
        xlease.find_lease(path, SD, LEASE_A, MiB)
