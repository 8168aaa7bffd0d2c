# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys

import pycdlib
import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import cloud_init

VM_UUID = '6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f'
CLOUD_CONFIG = {'users': [{'name': 'ops', 'ssh_authorized_keys': ['ssh-ed25519 AAAAC3Nza ops@example']}],
                'package_update': True}
NETWORK = {'version': 2, 'ethernets': {'eth0': {'dhcp4': True}}}


def files_of(option=None, name='vm1'):
    return cloud_init.normalize({'user_data': CLOUD_CONFIG} if option is None else option, VM_UUID, name)


def read_iso(path):
    """What the image holds, read with pycdlib directly: label, Rock Ridge and Joliet names, and file bytes."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode('ascii').rstrip(' ')
        rr_names = sorted(child.rock_ridge.name().decode() for child in iso.list_children(rr_path='/')
                          if not (child.is_dot() or child.is_dotdot()))
        joliet_names = sorted(child.file_identifier().decode('utf-16-be') for child in iso.list_children(joliet_path='/')
                              if not (child.is_dot() or child.is_dotdot()))
        content = {}
        for name in rr_names:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path='/' + name)
            content[name] = out.getvalue()
        return label, rr_names, joliet_names, content
    finally:
        iso.close()


@pytest.fixture
def seed(tmp_path):
    return cloud_init.seed_path(VM_UUID, str(tmp_path / 'seeds'))


# --------------------------------------------------------------------------
# normalize: canonical files

def test_no_option_no_seed():
    assert cloud_init.normalize(None, VM_UUID, 'vm1') is None


def test_cloud_config_mapping_is_rendered_as_sorted_json_after_the_header():
    files = files_of()
    text = files['user-data'].decode('utf-8')
    assert text.startswith('#cloud-config\n')
    assert json.loads(text[len('#cloud-config\n'):]) == CLOUD_CONFIG
    assert text.index('"package_update"') < text.index('"users"')
    assert 'network-config' not in files


def test_same_option_gives_the_same_bytes_whatever_the_key_order():
    shuffled = dict(reversed(list(CLOUD_CONFIG.items())))
    assert files_of({'user_data': shuffled}) == files_of({'user_data': CLOUD_CONFIG})


def test_user_data_string_is_written_as_given():
    script = '#!/bin/sh\necho hello > /tmp/hello\n'
    assert files_of({'user_data': script})['user-data'] == script.encode('utf-8')


def test_defaults_empty_user_data_and_meta_data_from_the_vm():
    files = cloud_init.normalize({}, VM_UUID, 'web-01.example.org')
    assert files['user-data'] == b''
    assert json.loads(files['meta-data']) == {'instance-id': VM_UUID, 'local-hostname': 'web-01.example.org'}


def test_keys_set_to_none_count_as_not_given():
    # What Ansible passes for suboptions the playbook leaves out.
    assert cloud_init.normalize({'user_data': None, 'meta_data': None, 'network_config': None}, VM_UUID, 'vm1') == \
        cloud_init.normalize({}, VM_UUID, 'vm1')


@pytest.mark.parametrize('name', ['my_vm', 'vm name', '-vm', 'a' * 64, None])
def test_vm_name_that_is_no_host_name_gives_no_local_hostname(name):
    meta = json.loads(cloud_init.normalize({}, VM_UUID, name)['meta-data'])
    assert meta == {'instance-id': VM_UUID}


def test_meta_data_mapping_overrides_the_defaults():
    meta = json.loads(files_of({'meta_data': {'instance-id': 'iid-2', 'local-hostname': 'db', 'extra': 1}})['meta-data'])
    assert meta == {'instance-id': 'iid-2', 'local-hostname': 'db', 'extra': 1}


def test_meta_data_string_is_written_as_given():
    assert files_of({'meta_data': 'instance-id: x\n'})['meta-data'] == b'instance-id: x\n'


@pytest.mark.parametrize('config', [NETWORK, {'network': NETWORK}, {'version': 1, 'config': []}])
def test_network_config_mapping(config):
    files = files_of({'network_config': config})
    assert json.loads(files['network-config']) == config


def test_network_config_string_is_written_as_given():
    text = 'version: 2\nethernets:\n  eth0:\n    dhcp4: true\n'
    assert files_of({'network_config': text})['network-config'] == text.encode('utf-8')


def test_rendered_mappings_read_back_the_same_with_yaml():
    # cloud-init reads the files with PyYAML (YAML 1.1): what JSON leaves raw but YAML reads otherwise is escaped.
    yaml = pytest.importorskip('yaml')
    tricky = {
        'strings': ['tab\there', 'nel\x85', 'sep\u2028\u2029', 'bom\ufeff', 'c1\x9f\x7f', 'quote " and \\',
                    'emoji \U0001F600', 'accents é ü', 'yes', 'no', 'on', '~', 'null', '1e3', '0777', ''],
        'numbers': [0, -5, 2 ** 70, 1.5, 1e20, 1e-05, -2.5e-300],
        'flags': [True, False, None],
        'nested': {'empty_map': {}, 'empty_list': [], 'deep': {'a': {'b': {'c': [1, [2, [3]]]}}}},
        'unicode key é': 1,
    }
    files = files_of({'user_data': tricky, 'meta_data': {'tags': tricky}, 'network_config': dict(NETWORK, extra=tricky)})
    assert yaml.safe_load(files['user-data'].decode('utf-8')) == tricky
    assert yaml.safe_load(files['meta-data'].decode('utf-8'))['tags'] == tricky
    assert yaml.safe_load(files['network-config'].decode('utf-8'))['extra'] == tricky


# --------------------------------------------------------------------------
# normalize: refusals, each naming the field

@pytest.mark.parametrize('option, field, words', [
    ('#cloud-config', 'cloud_init', 'must be a mapping'),
    ({'userdata': 'x'}, 'cloud_init', 'unknown keys userdata'),
    ({'user_data': 5}, 'cloud_init.user_data', 'must be a string'),
    ({'user_data': b'#cloud-config\n'}, 'cloud_init.user_data', 'got bytes'),
    ({'user_data': 'a\0b'}, 'cloud_init.user_data', 'NUL'),
    ({'user_data': 'bad \udc80'}, 'cloud_init.user_data', 'not valid text'),
    ({'user_data': {1: 'x'}}, 'cloud_init.user_data', 'key that is not a string'),
    ({'user_data': {'runcmd': [{'x': float('nan')}]}}, 'cloud_init.user_data.runcmd[0].x', 'finite'),
    ({'user_data': {'packages': {'vim'}}}, 'cloud_init.user_data.packages', 'type set'),
    ({'user_data': {'bad \udc80': 1}}, 'cloud_init.user_data', 'not valid text'),
    ({'meta_data': ['instance-id']}, 'cloud_init.meta_data', 'must be a mapping or a string'),
    ({'meta_data': {'instance-id': '../x'}}, 'cloud_init.meta_data.instance-id', '"/"'),
    ({'meta_data': {'instance-id': ''}}, 'cloud_init.meta_data.instance-id', 'empty'),
    ({'meta_data': {'local-hostname': 'a\nb'}}, 'cloud_init.meta_data.local-hostname', 'control character'),
    ({'network_config': {'ethernets': {}}}, 'cloud_init.network_config', 'version: 2'),
    ({'network_config': {'version': True}}, 'cloud_init.network_config', 'version: 2'),
    ({'network_config': {'version': 3}}, 'cloud_init.network_config', 'version: 2'),
    ({'network_config': 2}, 'cloud_init.network_config', 'must be a mapping'),
])
def test_invalid_option_is_refused_naming_the_field(option, field, words):
    with pytest.raises(VirtnodeError) as err:
        cloud_init.normalize(option, VM_UUID, 'vm1')
    assert field in str(err.value) and words in str(err.value)
    assert err.value.details['field'] == field


def test_nesting_is_bounded():
    deep = []
    for _level in range(cloud_init.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(VirtnodeError, match='nested deeper'):
        files_of({'user_data': {'deep': deep}})


def test_one_field_over_the_limit_is_refused():
    with pytest.raises(VirtnodeError, match=r'cloud_init\.user_data is \d+ bytes') as err:
        files_of({'user_data': 'x' * (cloud_init.MAX_SEED_BYTES + 1)})
    assert err.value.details['field'] == 'cloud_init.user_data'


def test_fields_over_the_limit_together_are_refused():
    half = 'x' * (cloud_init.MAX_SEED_BYTES // 2 + 1)
    with pytest.raises(VirtnodeError, match='in all') as err:
        files_of({'user_data': half, 'network_config': half})
    assert 'user-data' in str(err.value) and 'network-config' in str(err.value)


@pytest.mark.parametrize('vm_uuid', ['6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F', 'not-a-uuid', '../' + VM_UUID, '', None])
def test_malformed_uuid_is_refused(vm_uuid):
    with pytest.raises(VirtnodeError, match='not a valid UUID'):
        cloud_init.normalize({}, vm_uuid, 'vm1')
    with pytest.raises(VirtnodeError, match='not a valid UUID'):
        cloud_init.seed_path(vm_uuid)


# --------------------------------------------------------------------------
# seed_path

def test_seed_path_is_per_vm_under_var_lib_virtnode():
    assert cloud_init.seed_path(VM_UUID) == '/var/lib/virtnode/cloud-init/%s/%s-cidata.iso' % (VM_UUID, VM_UUID)
    assert cloud_init.seed_path(VM_UUID, '/srv/seeds') == '/srv/seeds/%s/%s-cidata.iso' % (VM_UUID, VM_UUID)


# --------------------------------------------------------------------------
# ensure_seed

def test_seed_is_built_and_reads_back(seed):
    files = files_of({'user_data': CLOUD_CONFIG, 'network_config': NETWORK})
    old_umask = os.umask(0o077)
    try:
        changed, info = cloud_init.ensure_seed(seed, files)
    finally:
        os.umask(old_umask)
    assert changed and info['action'] == 'created'
    assert info['files'] == ['meta-data', 'network-config', 'user-data']
    label, rr_names, joliet_names, content = read_iso(seed)
    assert label == 'cidata'
    assert rr_names == joliet_names == ['meta-data', 'network-config', 'user-data']
    assert content == files
    # Exact modes whatever the umask: QEMU runs as its own user.
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.dirname(seed)).st_mode) == 0o755
    assert os.listdir(os.path.dirname(seed)) == [os.path.basename(seed)]


@pytest.mark.skipif(shutil.which('file') is None, reason='file is not installed')
def test_file_sees_an_iso9660_image_labelled_cidata(seed):
    cloud_init.ensure_seed(seed, files_of())
    out = subprocess.run(['file', '-b', seed], check=True, capture_output=True, text=True).stdout
    assert 'ISO 9660' in out and "'cidata'" in out


def test_second_run_is_unchanged(seed):
    files = files_of()
    cloud_init.ensure_seed(seed, files)
    before = os.stat(seed)
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert not changed and info['action'] == 'unchanged'
    after = os.stat(seed)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_content_replaces_the_seed(seed):
    cloud_init.ensure_seed(seed, files_of())
    new = files_of({'user_data': dict(CLOUD_CONFIG, package_update=False)})
    changed, info = cloud_init.ensure_seed(seed, new)
    assert changed and info['action'] == 'replaced' and info['differs'] == ['user-data']
    assert read_iso(seed)[3] == new
    assert not cloud_init.ensure_seed(seed, new)[0]


def test_added_and_dropped_network_config_replace_the_seed(seed):
    cloud_init.ensure_seed(seed, files_of())
    with_network = files_of({'user_data': CLOUD_CONFIG, 'network_config': NETWORK})
    changed, info = cloud_init.ensure_seed(seed, with_network)
    assert changed and info['differs'] == ['network-config']
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert changed and info['differs'] == ['network-config']
    assert read_iso(seed)[1] == ['meta-data', 'user-data']


def test_check_mode_writes_nothing(seed):
    changed, info = cloud_init.ensure_seed(seed, files_of(), check_mode=True)
    assert changed and info['action'] == 'created'
    assert not os.path.exists(os.path.dirname(seed))
    cloud_init.ensure_seed(seed, files_of())
    with open(seed, 'rb') as handle:
        before = handle.read()
    changed, info = cloud_init.ensure_seed(seed, files_of({'user_data': '#cloud-config\n{}\n'}), check_mode=True)
    assert changed and info['action'] == 'replaced'
    with open(seed, 'rb') as handle:
        assert handle.read() == before
    assert not cloud_init.ensure_seed(seed, files_of(), check_mode=True)[0]


def _built(seed):
    cloud_init.ensure_seed(seed, files_of())
    with open(seed, 'rb') as handle:
        return handle.read()


@pytest.mark.parametrize('damage', [
    lambda image: image[:len(image) // 2],
    lambda image: image[:40000],
    lambda image: b'',
    lambda image: os.urandom(len(image)),
    lambda image: image[:32768 + 156] + os.urandom(len(image) - 32768 - 156),
], ids=['half', 'descriptors-only', 'empty', 'garbage', 'garbage-after-label'])
def test_damaged_seed_is_replaced(seed, damage):
    image = _built(seed)
    with open(seed, 'wb') as handle:
        handle.write(damage(image))
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert changed and info['action'] == 'replaced' and info['reason']
    assert read_iso(seed)[3] == files_of()
    assert not cloud_init.ensure_seed(seed, files_of())[0]


def test_seed_truncated_inside_a_file_is_replaced(seed):
    files = files_of({'user_data': 'x' * 200000})
    cloud_init.ensure_seed(seed, files)
    with open(seed, 'rb') as handle:
        image = handle.read()
    with open(seed, 'wb') as handle:
        handle.write(image[:-100000])
    changed, info = cloud_init.ensure_seed(seed, files)
    # pycdlib 1.12 (Debian 12) keeps the length written, newer ones only what the image holds.
    assert changed and info['reason'] in ('user-data is truncated', 'content differs')
    assert read_iso(seed)[3] == files


def _write_iso(path, label, files, joliet=3, rock_ridge='1.09', extra_dir=False):
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=label, joliet=joliet, rock_ridge=rock_ridge)
    for index, (name, data) in enumerate(sorted(files.items())):
        kwargs = {'rr_name': name} if rock_ridge else {}
        if joliet:
            kwargs['joliet_path'] = '/' + name
        iso.add_fp(io.BytesIO(data), len(data), '/FILE%d.;1' % index, **kwargs)
    if extra_dir:
        iso.add_directory('/EXTRA', rr_name='extra', joliet_path='/extra')
    iso.write(path)
    iso.close()


@pytest.mark.parametrize('kwargs, reason', [
    ({'label': 'CDROM'}, 'volume label'),
    ({'label': 'cidata', 'joliet': None}, 'Rock Ridge or Joliet'),
    ({'label': 'cidata', 'rock_ridge': None}, 'Rock Ridge or Joliet'),
    ({'label': 'cidata', 'extra_dir': True}, 'unexpected entry'),
])
def test_image_not_made_like_a_seed_is_replaced(seed, kwargs, reason):
    os.makedirs(os.path.dirname(seed))
    _write_iso(seed, files=files_of(), **kwargs)
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert changed and reason in info['reason']
    assert read_iso(seed)[0] == 'cidata'


def test_oversized_file_is_replaced_without_being_read(seed):
    os.makedirs(os.path.dirname(seed))
    with open(seed, 'wb') as handle:
        handle.truncate(cloud_init.MAX_IMAGE_BYTES + 1)
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert changed and info['reason'] == 'larger than any seed'
    assert os.path.getsize(seed) < cloud_init.MAX_IMAGE_BYTES


def test_wrong_mode_is_set_right_without_rewriting(seed):
    cloud_init.ensure_seed(seed, files_of())
    os.chmod(seed, 0o600)
    inode = os.stat(seed).st_ino
    changed, info = cloud_init.ensure_seed(seed, files_of(), check_mode=True)
    assert changed and info['action'] == 'mode' and stat.S_IMODE(os.stat(seed).st_mode) == 0o600
    changed, info = cloud_init.ensure_seed(seed, files_of())
    assert changed and info['action'] == 'mode'
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o644 and os.stat(seed).st_ino == inode


def test_link_at_the_seed_path_is_refused(seed, tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_bytes(b'not yours')
    os.makedirs(os.path.dirname(seed))
    os.symlink(str(target), seed)
    with pytest.raises(VirtnodeError, match='symbolic link'):
        cloud_init.ensure_seed(seed, files_of())
    assert target.read_bytes() == b'not yours'


def test_failed_write_keeps_the_old_seed_and_no_temp_file(seed, monkeypatch):
    old = _built(seed)

    def fail(*_args, **_kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', fail)
    with pytest.raises(VirtnodeError, match='No space left'):
        cloud_init.ensure_seed(seed, files_of({'user_data': 'new'}))
    with open(seed, 'rb') as handle:
        assert handle.read() == old
    assert os.listdir(os.path.dirname(seed)) == [os.path.basename(seed)]


@pytest.mark.parametrize('files, words', [
    ('user-data', 'must be a mapping'),
    ({'user-data': b''}, "missing ['meta-data']"),
    ({'user-data': b'', 'meta-data': b'', 'vendor-data': b''}, "unknown ['vendor-data']"),
    ({'user-data': '', 'meta-data': b''}, 'must be bytes'),
    ({'user-data': b'x' * cloud_init.MAX_SEED_BYTES, 'meta-data': b'x'}, 'at most'),
])
def test_files_that_no_seed_holds_are_refused(seed, files, words):
    with pytest.raises(VirtnodeError) as err:
        cloud_init.ensure_seed(seed, files)
    assert words in str(err.value)
    assert not os.path.exists(seed)


def test_relative_path_is_refused():
    with pytest.raises(VirtnodeError, match='absolute path'):
        cloud_init.ensure_seed('seed.iso', files_of())


def test_missing_pycdlib_names_the_package(seed, monkeypatch):
    monkeypatch.setitem(sys.modules, 'pycdlib', None)
    with pytest.raises(VirtnodeError, match='python3-pycdlib'):
        cloud_init.ensure_seed(seed, files_of(), check_mode=True)
    # Validating the option needs no pycdlib.
    assert cloud_init.normalize({}, VM_UUID, 'vm1')


# --------------------------------------------------------------------------
# remove_seed

def test_remove_seed_removes_the_file_and_the_vm_directory(seed, tmp_path):
    cloud_init.ensure_seed(seed, files_of())
    changed, info = cloud_init.remove_seed(seed)
    assert changed and info['action'] == 'removed'
    assert not os.path.exists(os.path.dirname(seed))
    assert os.path.isdir(str(tmp_path / 'seeds'))
    assert cloud_init.remove_seed(seed) == (False, {'path': seed, 'action': 'absent'})


def test_remove_seed_check_mode_keeps_it(seed):
    cloud_init.ensure_seed(seed, files_of())
    changed, info = cloud_init.remove_seed(seed, check_mode=True)
    assert changed and info['action'] == 'removed'
    assert os.path.exists(seed)


def test_remove_seed_takes_crash_leftovers_and_keeps_other_files(seed):
    cloud_init.ensure_seed(seed, files_of())
    directory = os.path.dirname(seed)
    leftover = os.path.join(directory, '%s%s.0123456789abcdef%s' % (fileio.TEMP_PREFIX, os.path.basename(seed),
                                                                    fileio.OWN_TEMP_SUFFIX))
    other = os.path.join(directory, 'notes.txt')
    for path in (leftover, other):
        with open(path, 'wb') as handle:
            handle.write(b'x')
    assert cloud_init.remove_seed(seed)[0]
    assert os.listdir(directory) == ['notes.txt']


def test_remove_seed_only_takes_leftovers_when_the_seed_is_gone(seed):
    directory = os.path.dirname(seed)
    os.makedirs(directory)
    leftover = os.path.join(directory, '%s%s.00ff%s' % (fileio.TEMP_PREFIX, os.path.basename(seed), fileio.OWN_TEMP_SUFFIX))
    with open(leftover, 'wb') as handle:
        handle.write(b'half')
    changed, info = cloud_init.remove_seed(seed)
    assert changed and info['action'] == 'cleaned'
    assert not os.path.exists(directory)


def test_remove_seed_leaves_a_directory_it_does_not_name(tmp_path):
    path = str(tmp_path / 'custom.iso')
    cloud_init.ensure_seed(path, files_of())
    assert cloud_init.remove_seed(path)[0]
    assert os.path.isdir(str(tmp_path))


def test_remove_seed_refuses_what_is_not_a_file(seed):
    os.makedirs(seed)
    with pytest.raises(VirtnodeError, match='not a regular file'):
        cloud_init.remove_seed(seed)
    assert os.path.isdir(seed)
