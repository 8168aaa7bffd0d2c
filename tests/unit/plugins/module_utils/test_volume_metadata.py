# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import dataclasses
import stat

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vm
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
IMG = '6f2b8d8e-8f0b-4c52-a2b5-0d9d2d9f1a01'
PARENT = '9a3c1e55-2b7e-4d61-8f0e-5b1a7c3d2e4f'
GiB = 1024 ** 3

V5_TEXT = """\
CAP=10737418240
CTIME=1700000000
DESCRIPTION={"DiskAlias":"vm1_Disk1","DiskDescription":""}
DISKTYPE=DATA
DOMAIN=275766cb-c7d8-43d6-a663-4e52160de620
FORMAT=COW
GEN=3
IMAGE=6f2b8d8e-8f0b-4c52-a2b5-0d9d2d9f1a01
LEGALITY=LEGAL
PUUID=00000000-0000-0000-0000-000000000000
SEQ=2
TYPE=SPARSE
VOLTYPE=LEAF
EOF
"""

V4_TEXT = """\
CTIME=1500000000
DESCRIPTION=
DISKTYPE=2
DOMAIN=275766cb-c7d8-43d6-a663-4e52160de620
FORMAT=RAW
IMAGE=6f2b8d8e-8f0b-4c52-a2b5-0d9d2d9f1a01
LEGALITY=LEGAL
MTIME=0
POOL_UUID=
PUUID=9a3c1e55-2b7e-4d61-8f0e-5b1a7c3d2e4f
SIZE=41943040
TYPE=PREALLOCATED
VOLTYPE=INTERNAL
EOF
"""


def make(**changes):
    md = vm.VolumeMetadata(domain=SD, image=IMG, capacity=10 * GiB, volume_format='COW', allocation='SPARSE',
                           role='LEAF', disk_type='DATA', description='{"DiskAlias":"vm1_Disk1","DiskDescription":""}',
                           legality='LEGAL', ctime=1700000000, generation=3, sequence=2)
    return dataclasses.replace(md, **changes)


def test_v5_serialize_is_exact():
    assert vm.serialize(make()) == V5_TEXT.encode('ascii')


def test_v5_round_trip():
    assert vm.parse(V5_TEXT.encode('ascii')) == make()
    assert vm.parse(vm.serialize(make())) == make()


def test_v4_is_readable():
    md = vm.parse(V4_TEXT)
    assert md.capacity == 41943040 * 512 == 20 * GiB
    assert (md.volume_format, md.allocation, md.role, md.disk_type) == ('RAW', 'PREALLOCATED', 'INTERNAL', '2')
    assert md.parent == PARENT
    # GEN and SEQ were added later; absent means 0.
    assert (md.generation, md.sequence) == (0, 0)


def test_v4_write():
    md = vm.parse(V4_TEXT)
    text = vm.serialize(md, domain_version=4).decode()
    assert 'MTIME=0\n' in text and 'SIZE=41943040\n' in text and 'GEN=0\n' in text
    assert 'CAP=' not in text and 'SEQ=' not in text
    assert text.endswith('VOLTYPE=INTERNAL\nEOF\n')
    assert vm.parse(text) == md


def test_v4_needs_whole_sectors():
    with pytest.raises(VirtnodeError, match='multiple of 512'):
        vm.serialize(make(capacity=1000), domain_version=4)


def test_parse_stops_at_eof_and_ignores_nul_padding():
    padded = V5_TEXT.encode('ascii') + b'JUNK=1\n'
    padded = padded.ljust(512, b'\0')
    assert vm.parse(padded) == make()


def test_cleared_metadata_is_reported():
    with pytest.raises(VirtnodeError, match='cleared'):
        vm.parse('NONE=######\nEOF\n')


@pytest.mark.parametrize('drop', ['DOMAIN', 'IMAGE', 'PUUID', 'FORMAT', 'TYPE', 'VOLTYPE', 'DISKTYPE', 'LEGALITY', 'CTIME', 'CAP'])
def test_missing_key_is_named(drop):
    text = ''.join(line + '\n' for line in V5_TEXT.splitlines() if not line.startswith(drop + '='))
    with pytest.raises(VirtnodeError, match='lacks %s' % drop):
        vm.parse(text)


def test_non_integer_is_named():
    with pytest.raises(VirtnodeError, match='CTIME is not an integer'):
        vm.parse(V5_TEXT.replace('CTIME=1700000000', 'CTIME=yesterday'))


def test_description_is_truncated_to_210_characters():
    data = vm.serialize(make(description='x' * 300))
    assert vm.parse(data).description == 'x' * 210
    assert len(data) <= 512


def test_metadata_larger_than_512_bytes_is_refused():
    with pytest.raises(VirtnodeError, match='more than the 512'):
        vm.serialize(make(description='\u00e9' * 210))


@pytest.mark.parametrize('field, value, key', [
    ('volume_format', 'QCOW2', 'FORMAT'),
    ('allocation', 'THIN', 'TYPE'),
    ('role', 'ROOT', 'VOLTYPE'),
    ('legality', 'legal', 'LEGALITY'),
    ('disk_type', 'DISK', 'DISKTYPE'),
    ('domain', 'abc', 'DOMAIN'),
    ('image', IMG.upper(), 'IMAGE'),
    ('parent', '', 'PUUID'),
    ('capacity', -1, 'CAP'),
    ('capacity', '10G', 'CAP'),
    ('generation', 1000, 'GEN'),
    ('generation', -1, 'GEN'),
    ('ctime', None, 'CTIME'),
    ('sequence', True, 'SEQ'),
    ('description', 'two\nlines', 'DESCRIPTION'),
])
def test_invalid_field_is_named_on_write(field, value, key):
    with pytest.raises(VirtnodeError, match=key) as info:
        vm.serialize(make(**{field: value}))
    assert info.value.details['field'] == key


def test_unsupported_domain_version():
    with pytest.raises(VirtnodeError, match='domain version 3'):
        vm.serialize(make(), domain_version=3)


def test_generation_wraps():
    assert vm.next_generation(0) == 1
    assert vm.next_generation(998) == 999
    assert vm.next_generation(999) == 0


def test_defaults_for_a_new_volume():
    md = vm.VolumeMetadata(domain=SD, image=IMG, capacity=GiB, volume_format='RAW', allocation='SPARSE', role='LEAF',
                           disk_type='DATA')
    assert (md.parent, md.legality, md.generation, md.sequence) == (vm.BLANK_UUID, 'ILLEGAL', 0, 0)
    assert md.ctime > 1600000000


def test_read_and_write_volume_metadata(tmp_path):
    path = tmp_path / ('%s.meta' % PARENT)
    vm.write_volume_metadata(str(path), make())
    assert path.read_text() == V5_TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert vm.read_volume_metadata(str(path)) == make()
    vm.write_volume_metadata(str(path), make(legality='ILLEGAL'), domain_version=4)
    assert vm.read_volume_metadata(str(path)).legality == 'ILLEGAL'


def test_read_names_the_file(tmp_path):
    path = tmp_path / 'x.meta'
    path.write_text('EOF\n')
    with pytest.raises(VirtnodeError, match='x.meta: volume metadata lacks'):
        vm.read_volume_metadata(str(path))
