# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

SD_UUID = '275766cb-c7d8-43d6-a663-4e52160de620'
POOL = '5d928855-b09b-47a7-b920-bd2d2eb5808c'
OTHER_SD = '0f4b4d8c-4e1b-4c6b-9d1b-3a8a4b0f2e11'

# The worked example from the reference (a version 5 LOCALFS domain as VDSM writes it).
EXAMPLE = """\
ALIGNMENT=1048576
BLOCK_SIZE=512
CLASS=Data
DESCRIPTION=storage domain
IOOPTIMEOUTSEC=10
LEASERETRIES=3
LEASETIMESEC=60
LOCKPOLICY=
LOCKRENEWALINTERVALSEC=5
POOL_UUID=
REMOTE_PATH=server:/path
ROLE=Regular
SDUUID=275766cb-c7d8-43d6-a663-4e52160de620
TYPE=LOCALFS
VERSION=5
_SHA_CKSUM=9336f77705ff9e3d5faf65c4d0dc818a29de458d
"""
EXAMPLE_CHECKSUM = '9336f77705ff9e3d5faf65c4d0dc818a29de458d'

V4_NFS = {
    'CLASS': 'Data',
    'DESCRIPTION': 'old nfs domain',
    'IOOPTIMEOUTSEC': '10',
    'LEASERETRIES': '3',
    'LEASETIMESEC': '60',
    'LOCKPOLICY': '',
    'LOCKRENEWALINTERVALSEC': '5',
    'MASTER_VERSION': '7',
    'POOL_DESCRIPTION': 'Default',
    'POOL_DOMAINS': '%s:Active,%s:Attached' % (SD_UUID, OTHER_SD),
    'POOL_SPM_ID': '-1',
    'POOL_SPM_LVER': '-1',
    'POOL_UUID': POOL,
    'REMOTE_PATH': 'nfs.example:/export/data',
    'ROLE': 'Master',
    'SDUUID': SD_UUID,
    'TYPE': 'NFS',
    'VERSION': '4',
}


def example_pairs():
    lines = EXAMPLE.splitlines()[:-1]
    return dict(line.split('=', 1) for line in lines)


def test_checksum_of_worked_example():
    assert sd_metadata.checksum(example_pairs()) == EXAMPLE_CHECKSUM


def test_checksum_uses_xml_character_references():
    # A non-ASCII character is sealed as its XML reference, not as UTF-8.
    assert sd_metadata.checksum({'DESCRIPTION': 'caf\u00e9'}) == sd_metadata.checksum({'DESCRIPTION': 'caf&#233;'})


def test_parse_worked_example():
    assert sd_metadata.parse(EXAMPLE) == example_pairs()


def test_serialize_reproduces_vdsm_file_exactly():
    assert sd_metadata.serialize(example_pairs()) == EXAMPLE.encode('ascii')


def test_new_domain_metadata_matches_vdsm():
    pairs = sd_metadata.new_domain_metadata(SD_UUID, 'LOCALFS', 'Data', 'storage domain', 'server:/path')
    assert sd_metadata.serialize(pairs) == EXAMPLE.encode('ascii')


@pytest.mark.parametrize('block_size, alignment, seal', [
    (4096, 1024 ** 2, '7910a564cc0a340f93aea5680e0e9c2d6ff4903a'),
    (4096, 2 * 1024 ** 2, '769baef6c65aeef08cf6d177c2c44046b2aac877'),
])
def test_new_domain_metadata_4k(block_size, alignment, seal):
    pairs = sd_metadata.new_domain_metadata(SD_UUID, 'LOCALFS', 'Data', 'storage domain', 'server:/path',
                                            block_size=block_size, alignment=alignment)
    assert pairs['BLOCK_SIZE'] == str(block_size)
    assert sd_metadata.checksum(pairs) == seal


def test_broken_seal_is_refused():
    tampered = EXAMPLE.replace('DESCRIPTION=storage domain', 'DESCRIPTION=storage domaiN')
    with pytest.raises(VirtnodeError, match='metadata seal is broken') as info:
        sd_metadata.parse(tampered)
    assert info.value.details['declared'] == EXAMPLE_CHECKSUM


def test_missing_seal_is_trusted():
    without_seal = ''.join(line + '\n' for line in EXAMPLE.splitlines()[:-1])
    assert sd_metadata.parse(without_seal) == example_pairs()


def test_parse_skips_junk_lines_and_keeps_values_as_written():
    assert sd_metadata.parse('garbage\n A = x \n\n') == {'A': ' x '}
    assert sd_metadata.parse('') == {}


def _vdsm_sealed(lines):
    # What VDSM's persistent dict writes: the lines as given, sealed over exactly those strings.
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.encode('ascii', 'xmlcharrefreplace'))
    return ''.join(line + '\n' for line in lines) + '_SHA_CKSUM=%s\n' % digest.hexdigest()


@pytest.mark.parametrize('description', ['  leading', 'trailing  ', ' both ', '\tTab', 'inner  spaces'])
def test_a_vdsm_file_with_spaces_around_a_value_keeps_its_seal_and_survives_a_rewrite(description):
    lines = sorted(line for line in EXAMPLE.splitlines()[:-1] if not line.startswith('DESCRIPTION='))
    lines = sorted(lines + ['DESCRIPTION=' + description])
    text = _vdsm_sealed(lines)
    pairs = sd_metadata.parse(text)
    assert pairs['DESCRIPTION'] == description
    assert sd_metadata.serialize(pairs).decode() == text
    assert sd_metadata.DomainMetadata.from_dict(pairs).description == description


def test_a_seal_over_stripped_values_is_broken_as_vdsm_finds_it():
    lines = sorted(line for line in EXAMPLE.splitlines()[:-1] if not line.startswith('DESCRIPTION='))
    stripped = _vdsm_sealed(sorted(lines + ['DESCRIPTION=x']))
    with pytest.raises(VirtnodeError, match='seal is broken'):
        sd_metadata.parse(stripped.replace('DESCRIPTION=x', 'DESCRIPTION= x '))


@pytest.mark.parametrize('sd_type', ['NFS', 'POSIXFS', 'CIFS'])
def test_4k_blocks_are_refused_where_vdsm_creates_only_512(sd_type):
    with pytest.raises(VirtnodeError, match='block size 4096 is not supported on %s' % sd_type) as err:
        sd_metadata.new_domain_metadata(SD_UUID, sd_type, 'Data', 'd', 'server:/path', block_size=4096)
    assert err.value.details['field'] == 'block_size'
    assert sd_metadata.new_domain_metadata(SD_UUID, sd_type, 'Data', 'd', 'server:/path')['BLOCK_SIZE'] == '512'


@pytest.mark.parametrize('sd_type', ['LOCALFS', 'GLUSTERFS'])
@pytest.mark.parametrize('alignment', [1024 ** 2, 2 * 1024 ** 2, 4 * 1024 ** 2, 8 * 1024 ** 2])
def test_4k_blocks_are_allowed_where_vdsm_allows_them(sd_type, alignment):
    pairs = sd_metadata.new_domain_metadata(SD_UUID, sd_type, 'Data', 'd', 'server:/path', block_size=4096,
                                            alignment=alignment)
    assert (pairs['BLOCK_SIZE'], pairs['ALIGNMENT']) == ('4096', str(alignment))


@pytest.mark.parametrize('alignment', [2 * 1024 ** 2, 4 * 1024 ** 2, 8 * 1024 ** 2])
def test_512_byte_blocks_take_only_1_mib_alignment(alignment):
    with pytest.raises(VirtnodeError, match='needs block size 4096') as err:
        sd_metadata.new_domain_metadata(SD_UUID, 'LOCALFS', 'Data', 'd', 'server:/path', alignment=alignment)
    assert err.value.details['field'] == 'alignment'


def test_round_trip_keeps_unknown_keys():
    pairs = dict(example_pairs(), FUTURE_KEY='something new', LOGBLKSIZE='512')
    assert sd_metadata.parse(sd_metadata.serialize(pairs).decode()) == pairs
    md = sd_metadata.DomainMetadata.from_dict(pairs)
    assert md.extra == {'FUTURE_KEY': 'something new', 'LOGBLKSIZE': '512'}
    assert md.to_dict() == pairs


def test_serialize_refuses_multiline_values_and_bad_keys():
    with pytest.raises(VirtnodeError, match='single line'):
        sd_metadata.serialize({'DESCRIPTION': 'a\nVERSION=9'})
    for key in ('A=B', '', '_SHA_CKSUM', ' A'):
        with pytest.raises(VirtnodeError):
            sd_metadata.serialize({key: 'x'})


def test_typed_view_of_v5_example():
    md = sd_metadata.DomainMetadata.from_dict(example_pairs())
    assert (md.sd_uuid, md.version, md.sd_type, md.domain_class, md.role) == (SD_UUID, 5, 'LOCALFS', 'Data', 'Regular')
    assert (md.alignment, md.block_size, md.pool_uuids, md.remote_path) == (1048576, 512, [], 'server:/path')
    assert (md.io_op_timeout_sec, md.lease_retries, md.lease_time_sec, md.lock_renewal_interval_sec) == (10, 3, 60, 5)
    assert md.pool_domains is None and md.pool_spm_id is None


def test_v4_master_domain_is_readable_and_round_trips():
    md = sd_metadata.DomainMetadata.from_dict(V4_NFS)
    assert md.version == 4
    assert (md.alignment, md.block_size) == (1024 ** 2, 512)
    assert md.pool_uuids == [POOL]
    assert md.pool_domains == {SD_UUID: 'Active', OTHER_SD: 'Attached'}
    assert (md.pool_spm_id, md.pool_spm_lver, md.master_version) == (-1, -1, 7)
    assert md.pool_description == 'Default'
    out = md.to_dict()
    assert out == V4_NFS
    assert 'ALIGNMENT' not in out and 'BLOCK_SIZE' not in out


def test_spm_update_on_master_domain():
    md = sd_metadata.DomainMetadata.from_dict(V4_NFS)
    md.pool_spm_id, md.pool_spm_lver = 2, 0
    md.pool_domains[OTHER_SD] = 'Active'
    out = md.to_dict()
    assert (out['POOL_SPM_ID'], out['POOL_SPM_LVER']) == ('2', '0')
    assert out['POOL_DOMAINS'] == '%s:Active,%s:Active' % (SD_UUID, OTHER_SD)


def test_pool_domains_decoding_is_lenient_like_vdsm():
    pairs = dict(V4_NFS, POOL_DOMAINS="'%s':'active'" % SD_UUID, POOL_UUID='%s,%s' % (POOL, OTHER_SD))
    md = sd_metadata.DomainMetadata.from_dict(pairs)
    assert md.pool_domains == {SD_UUID: 'Active'}
    assert md.pool_uuids == [POOL, OTHER_SD]


def test_unparsable_lease_parameter_falls_back_to_default():
    md = sd_metadata.DomainMetadata.from_dict(dict(example_pairs(), LEASETIMESEC='', IOOPTIMEOUTSEC='x'))
    assert (md.lease_time_sec, md.io_op_timeout_sec) == (60, 10)


@pytest.mark.parametrize('key, value, message', [
    ('VERSION', '3', 'unsupported storage domain version 3'),
    ('VERSION', 'five', 'VERSION is not an integer'),
    ('SDUUID', 'not-a-uuid', 'SDUUID is not a valid UUID'),
    ('TYPE', 'RBD', 'TYPE must be one of'),
    ('CLASS', 'data', 'CLASS must be one of'),
    ('ROLE', 'Boss', 'ROLE must be one of'),
    ('ALIGNMENT', '4096', 'ALIGNMENT must be one of'),
    ('BLOCK_SIZE', '1024', 'BLOCK_SIZE must be one of'),
    ('POOL_UUID', 'x', 'POOL_UUID is not a valid UUID'),
    ('POOL_SPM_ID', 'none', 'POOL_SPM_ID is not an integer'),
    ('POOL_DOMAINS', 'nocolon', 'POOL_DOMAINS entry'),
])
def test_invalid_values_are_named(key, value, message):
    with pytest.raises(VirtnodeError, match=message):
        sd_metadata.DomainMetadata.from_dict(dict(example_pairs(), **{key: value}))


def test_missing_required_keys():
    pairs = example_pairs()
    del pairs['ALIGNMENT']
    with pytest.raises(VirtnodeError, match='lacks ALIGNMENT'):
        sd_metadata.DomainMetadata.from_dict(pairs)
    with pytest.raises(VirtnodeError, match='lacks SDUUID'):
        sd_metadata.DomainMetadata.from_dict({'VERSION': '5'})


def test_v4_cannot_carry_other_alignment():
    md = sd_metadata.DomainMetadata.from_dict(V4_NFS)
    md.block_size = 4096
    with pytest.raises(VirtnodeError, match='version 4 supports only'):
        md.to_dict()


def test_new_domain_metadata_validates():
    with pytest.raises(VirtnodeError, match='at most 50 characters'):
        sd_metadata.new_domain_metadata(SD_UUID, 'NFS', 'Data', 'x' * 51, 'server:/path')
    with pytest.raises(VirtnodeError, match='TYPE must be one of'):
        sd_metadata.new_domain_metadata(SD_UUID, 'nfs', 'Data', 'd', 'server:/path')
    with pytest.raises(VirtnodeError, match='not a valid UUID'):
        sd_metadata.new_domain_metadata('X', 'NFS', 'Data', 'd', 'server:/path')


def test_read_and_write_domain_metadata(tmp_path):
    path = tmp_path / 'metadata'
    sd_metadata.write_domain_metadata(str(path), example_pairs())
    assert path.read_text() == EXAMPLE
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert sd_metadata.read_domain_metadata(str(path)) == example_pairs()
    assert os.listdir(tmp_path) == ['metadata']


def test_write_refuses_invalid_metadata_and_keeps_old_file(tmp_path):
    path = tmp_path / 'metadata'
    path.write_text(EXAMPLE)
    with pytest.raises(VirtnodeError, match='CLASS must be one of'):
        sd_metadata.write_domain_metadata(str(path), dict(example_pairs(), CLASS='Nope'))
    assert path.read_text() == EXAMPLE


def test_read_names_the_file_on_broken_seal(tmp_path):
    path = tmp_path / 'metadata'
    path.write_text(EXAMPLE.replace('VERSION=5', 'VERSION=6'))
    with pytest.raises(VirtnodeError, match='metadata seal is broken') as info:
        sd_metadata.read_domain_metadata(str(path))
    assert str(path) in str(info.value)
    assert info.value.details['path'] == str(path)


def test_v4_with_foreign_alignment_is_refused():
    with pytest.raises(VirtnodeError, match='version 4 supports only'):
        sd_metadata.DomainMetadata.from_dict(dict(V4_NFS, ALIGNMENT='2097152'))
    assert sd_metadata.DomainMetadata.from_dict(dict(V4_NFS, BLOCK_SIZE='512')).block_size == 512


# ------------------------------------------------------------------ shared storage is written by other hosts

# Every character str.splitlines() ends a line at, and NUL; '\r' is also a line end for bytes.splitlines().
SPLITTERS = ['\n', '\r', '\r\n', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\x85', '\u2028', '\u2029', '\0']


@pytest.mark.parametrize('char', SPLITTERS)
@pytest.mark.parametrize('key', ['DESCRIPTION', 'POOL_DESCRIPTION', 'REMOTE_PATH', 'FUTURE_KEY'])
def test_no_value_can_start_a_line_of_its_own(tmp_path, key, char):
    evil = 'x%sROLE=Master%sMASTER_VERSION=99' % (char, char)
    with pytest.raises(VirtnodeError, match='single line') as info:
        sd_metadata.serialize(dict(example_pairs(), **{key: evil}))
    assert info.value.details == {'field': key}
    path = tmp_path / 'metadata'
    path.write_text(EXAMPLE)
    with pytest.raises(VirtnodeError):
        sd_metadata.write_domain_metadata(str(path), dict(example_pairs(), **{key: evil}))
    assert path.read_text() == EXAMPLE


@pytest.mark.parametrize('char', SPLITTERS)
def test_typed_pool_and_domain_descriptions_are_single_lines(char):
    md = sd_metadata.DomainMetadata.from_dict(example_pairs())
    for field, key in (('description', 'DESCRIPTION'), ('pool_description', 'POOL_DESCRIPTION')):
        bad = sd_metadata.DomainMetadata.from_dict(example_pairs())
        setattr(bad, field, 'pool%sPOOL_SPM_ID=7' % char)
        with pytest.raises(VirtnodeError, match='single line') as info:
            bad.to_dict()
        assert info.value.details == {'field': key}
    assert md.to_dict() == example_pairs()
    with pytest.raises(VirtnodeError, match='single line'):
        sd_metadata.new_domain_metadata(SD_UUID, 'NFS', 'Data', 'd%sROLE=Master' % char, 'server:/path')


@pytest.mark.parametrize('char', SPLITTERS[1:-1])
def test_a_file_with_ambiguous_line_breaks_is_refused(char):
    # Without a seal the file is trusted as it is: its lines must be the same for every parser.
    unsealed = ''.join(line + '\n' for line in EXAMPLE.splitlines()[:-1])
    text = unsealed.replace('DESCRIPTION=storage domain', 'DESCRIPTION=x%sROLE=Master' % char)
    with pytest.raises(VirtnodeError, match='line break'):
        sd_metadata.parse(text)


@pytest.mark.parametrize('key', ['ROLE', '_SHA_CKSUM'])
def test_a_key_given_twice_is_refused(key):
    with pytest.raises(VirtnodeError, match='twice'):
        sd_metadata.parse(EXAMPLE + '%s=Master\n' % key)


@pytest.mark.parametrize('variant', ['metadata-link', 'dom-md-link', 'dev-zero', 'fifo', 'too-large'])
def test_domain_metadata_is_read_and_written_only_inside_its_domain(tmp_path, variant):
    dom = tmp_path / SD_UUID
    md_dir = dom / 'dom_md'
    md_dir.mkdir(parents=True)
    path = md_dir / 'metadata'
    path.write_text(EXAMPLE)
    outside = tmp_path / 'etc'
    outside.mkdir()
    (outside / 'metadata').write_text(EXAMPLE)
    if variant == 'metadata-link':
        path.unlink()
        path.symlink_to(outside / 'metadata')
    elif variant == 'dom-md-link':
        path.unlink()
        md_dir.rmdir()
        md_dir.symlink_to(outside)
    elif variant == 'dev-zero':
        path.unlink()
        path.symlink_to('/dev/zero')
    elif variant == 'fifo':
        path.unlink()
        os.mkfifo(str(path))
    elif variant == 'too-large':
        path.write_text(EXAMPLE + 'PAD=%s\n' % ('x' * sd_metadata.READ_LIMIT))
    with pytest.raises(VirtnodeError, match='refusing|larger'):
        sd_metadata.read_domain_metadata(str(path), timeout=5)
    if variant in ('fifo', 'too-large'):
        return
    with pytest.raises(VirtnodeError, match='refusing'):
        sd_metadata.write_domain_metadata(str(path), dict(example_pairs(), DESCRIPTION='overwritten'))
    assert (outside / 'metadata').read_text() == EXAMPLE
