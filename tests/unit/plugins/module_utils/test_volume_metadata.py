# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import dataclasses
import os
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


# ------------------------------------------------------------------ shared storage is written by other hosts

# Every character str.splitlines() ends a line at, and NUL; '\r' is also a line end for bytes.splitlines().
SPLITTERS = ['\n', '\r', '\r\n', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\x85', '\u2028', '\u2029', '\0']


@pytest.mark.parametrize('char', SPLITTERS)
def test_a_description_can_never_rewrite_other_keys(tmp_path, char):
    # The description of an ILLEGAL RAW volume tries to make it a LEGAL COW child of another volume.
    evil = 'x%sLEGALITY=LEGAL%sFORMAT=COW%sPUUID=%s' % (char, char, char, PARENT)
    md = make(legality='ILLEGAL', volume_format='RAW', description=evil)
    with pytest.raises(VirtnodeError, match='single line') as info:
        vm.serialize(md)
    assert info.value.details == {'field': 'DESCRIPTION'}
    path = tmp_path / 'vol.meta'
    path.write_bytes(vm.serialize(make()))
    with pytest.raises(VirtnodeError):
        vm.write_volume_metadata(str(path), md)
    assert path.read_bytes() == V5_TEXT.encode('ascii')


@pytest.mark.parametrize('char', SPLITTERS[1:-1])
def test_a_file_written_elsewhere_with_ambiguous_line_breaks_is_refused(char):
    # Written by another host (or an older writer): this parser and VDSM's must never disagree on the lines.
    text = V5_TEXT.replace('DESCRIPTION={"DiskAlias":"vm1_Disk1","DiskDescription":""}',
                           'DESCRIPTION=x%sLEGALITY=ILLEGAL' % char)
    with pytest.raises(VirtnodeError, match='line break'):
        vm.parse(text.encode('utf-8'))
    with pytest.raises(VirtnodeError, match='line break'):
        vm.parse(text)


def test_a_key_given_twice_is_refused():
    text = V5_TEXT.replace('EOF\n', 'LEGALITY=ILLEGAL\nEOF\n')
    with pytest.raises(VirtnodeError, match='LEGALITY twice'):
        vm.parse(text)


def test_reader_and_writer_agree_on_every_writable_description():
    for description in ('plain', 'tab\there', 'caf\u00e9 \u2603', '{"DiskAlias":"a=b"}'):
        assert vm.parse(vm.serialize(make(description=description))).description == description.strip()


def _volume_tree(tmp_path):
    dom = tmp_path / 'mnt' / SD
    img_dir = dom / 'images' / IMG
    img_dir.mkdir(parents=True)
    meta = img_dir / (PARENT + '.meta')
    meta.write_bytes(V5_TEXT.encode('ascii'))
    outside = tmp_path / 'etc'
    outside.mkdir()
    (outside / 'motd').write_bytes(V5_TEXT.encode('ascii'))
    (outside / (PARENT + '.meta')).write_bytes(V5_TEXT.encode('ascii'))
    return dom, img_dir, meta, outside


@pytest.mark.parametrize('variant', ['meta-link', 'image-dir-link', 'images-link', 'dev-zero', 'fifo', 'too-large'])
def test_meta_files_are_read_and_written_only_inside_their_domain(tmp_path, variant):
    dom, img_dir, meta, outside = _volume_tree(tmp_path)
    if variant == 'meta-link':
        meta.unlink()
        meta.symlink_to(outside / 'motd')
    elif variant == 'image-dir-link':
        meta.unlink()
        img_dir.rmdir()
        img_dir.symlink_to(outside)
    elif variant == 'images-link':
        meta.unlink()
        img_dir.rmdir()
        (dom / 'images').rmdir()
        (dom / 'images').symlink_to(outside.parent)
        (outside.parent / IMG).mkdir()
        (outside.parent / IMG / (PARENT + '.meta')).write_bytes(V5_TEXT.encode('ascii'))
    elif variant == 'dev-zero':
        meta.unlink()
        meta.symlink_to('/dev/zero')
    elif variant == 'fifo':
        meta.unlink()
        os.mkfifo(str(meta))
    elif variant == 'too-large':
        meta.write_bytes(V5_TEXT.encode('ascii') + b'\0' * (vm.READ_LIMIT + 1))
    with pytest.raises(VirtnodeError, match='refusing|larger'):
        vm.read_volume_metadata(str(meta), timeout=5)
    if variant in ('fifo', 'too-large'):
        return
    with pytest.raises(VirtnodeError, match='refusing'):
        vm.write_volume_metadata(str(meta), make(description='overwritten'))
    assert (outside / 'motd').read_bytes() == V5_TEXT.encode('ascii')
    assert (outside / (PARENT + '.meta')).read_bytes() == V5_TEXT.encode('ascii')
