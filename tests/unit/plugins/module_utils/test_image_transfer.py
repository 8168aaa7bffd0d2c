# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images imported into volumes, volumes exported to files, templates and their thin clones, with the real
qemu-img (no SPM: faked)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import types

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes

pytestmark = pytest.mark.skipif(shutil.which('qemu-img') is None, reason='qemu-img not installed')

SD = '275766cb-c7d8-43d6-a663-4e52160de620'
SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'
IMG = '3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4'
VOL = '1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10'
PATTERN = b'virtnode-import-pattern'


@pytest.fixture
def domain(pooled_nfs_domain, monkeypatch):
    """The pooled domain, this host its SPM without sanlock."""

    @contextlib.contextmanager
    def fake_task(sp_uuid, what):
        yield types.SimpleNamespace(check=lambda: None)

    monkeypatch.setattr(spm, 'require_spm', lambda sp_uuid: {'spm_status': spm.SPM})
    monkeypatch.setattr(spm, 'task', fake_task, raising=False)
    return pooled_nfs_domain


def image(tmp_path, fmt, name=None, size='4M', options=()):
    """An image of ``fmt`` whose first MiB holds PATTERN (written raw, then converted)."""
    raw = tmp_path / 'pattern.raw'
    with open(raw, 'wb') as stream:
        stream.write(PATTERN)
        stream.truncate(4 * 1024 * 1024)
    path = tmp_path / (name or 'disk.%s' % fmt)
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', fmt, *options, str(raw), str(path)], check=True)
    return path


def params(**changes):
    base = dict(sd_uuid=SD, image_uuid=IMG, volume_uuid=VOL, parent_volume_uuid=None, size=None, clone_from=None,
                format='COW', allocation='SPARSE', description='', disk_type='DATA', state='present',
                import_from=None, export_to=None, template=False, parent_image_uuid=None)
    base.update(changes)
    return base


def run(check_mode=False, **changes):
    return volume_state.run_module(types.SimpleNamespace(params=params(**changes), check_mode=check_mode, _diff=True))


def pattern_of(path, fmt):
    """The first bytes the guest would read (the image opened by an explicit node: domain paths hold a ':')."""
    out = str(path) + '.read'
    name = 'json:' + json.dumps({'driver': fmt, 'file': {'driver': 'file', 'filename': str(path)}})
    subprocess.run(['qemu-img', 'convert', '-O', 'raw', name, out], check=True)
    try:
        with open(out, 'rb') as stream:
            return stream.read(len(PATTERN))
    finally:
        os.unlink(out)


@pytest.mark.parametrize('fmt', ['raw', 'qcow2', 'vmdk', 'vdi', 'vhdx'])
def test_an_image_is_imported_in_its_detected_format_once(domain, tmp_path, fmt):
    # The name says nothing true about the content: the format is read from the image.
    source = image(tmp_path, fmt, name='appliance.img')
    checked = run(check_mode=True, import_from={'path': str(source)})
    assert checked['changed'] and checked['actions'] == ['import'] and volumes.read_volume(domain, IMG, VOL) is None
    result = run(import_from={'path': str(source)})
    assert result['changed'] and result['actions'] == ['import']
    assert result['imported']['format'] == fmt and result['imported']['virtual_size'] == 4 * 1024 * 1024
    assert result['imported']['progress'] == 100.0 and result['imported']['capacity'] == 4 * 1024 * 1024
    assert result['volume']['legality'] == 'LEGAL' and result['volume']['format'] == 'COW'
    data = volumes.paths(domain, IMG, VOL)[0]
    assert qemu_img.info(data)['format'] == 'qcow2' and pattern_of(data, 'qcow2') == PATTERN
    again = run(import_from={'path': str(source)})
    assert not again['changed'] and again['imported'] is None


def test_import_into_a_larger_raw_volume(domain, tmp_path):
    source = image(tmp_path, 'qcow2')
    result = run(import_from={'path': str(source)}, format='RAW', size='8M')
    assert result['volume']['capacity'] == 8 * 1024 * 1024
    data = volumes.paths(domain, IMG, VOL)[0]
    assert os.path.getsize(data) == 8 * 1024 * 1024 and pattern_of(data, 'raw') == PATTERN
    with pytest.raises(VirtnodeError, match='smaller than the image'):
        run(import_from={'path': str(source)}, volume_uuid=SP, size='2M')


@pytest.mark.parametrize('make, message', [
    (lambda tmp: image(tmp, 'qcow2', options=('-o', 'backing_file=/etc/hostname,backing_fmt=raw')), 'backing file'),
    (lambda tmp: image(tmp, 'qcow2', options=('-o', 'data_file=%s' % (tmp / 'data.raw'))), 'another file'),
    (lambda tmp: image(tmp, 'vmdk', options=('-o', 'subformat=monolithicFlat')), 'descriptor'),
    (lambda tmp: image(tmp, 'vpc'), "format 'vpc'"),
    (lambda tmp: os.mkfifo(tmp / 'fifo') or tmp / 'fifo', 'not a regular file'),
])
def test_images_naming_other_files_or_odd_ones_are_refused_with_nothing_created(domain, tmp_path, make, message):
    source = make(tmp_path)
    for check_mode in (True, False):
        with pytest.raises(VirtnodeError, match=message):
            run(check_mode=check_mode, import_from={'path': str(source)})
    assert not os.path.exists(volumes.image_path(domain, IMG))


@pytest.mark.parametrize('spec, field', [
    ({'path': 'relative.img'}, 'import_from.path'),
    ({'path': '/tmp/../etc/passwd'}, 'import_from.path'),
    ({'path': '/rhev/data-center/mnt/x/disk'}, 'import_from.path'),
    ({'url': 'file:///etc/passwd'}, 'import_from.url'),
    ({'url': 'http://'}, 'import_from.url'),
    ({'path': '/tmp/x.img', 'checksum': 'sha256:abc'}, 'import_from.checksum'),
    ({'path': '/tmp/x.img', 'checksum': 'crc32:0badcafe'}, 'import_from.checksum'),
    ({'path': '/tmp/x.img', 'format': 'vpc'}, 'import_from.format'),
    ({}, 'import_from'),
])
def test_bad_import_options_are_refused_before_anything_is_read(domain, spec, field):
    with pytest.raises(VirtnodeError) as err:
        run(import_from=spec)
    assert err.value.details['field'] == field


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``."""
    root = tmp_path / 'www'
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, 'http://127.0.0.1:%d' % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_url_is_downloaded_checked_and_removed(domain, tmp_path, web):
    root, base = web
    source = image(root, 'vmdk')
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    spec = {'url': base + '/disk.vmdk', 'checksum': 'sha256:' + 'f' * 64, 'download_dir': str(downloads)}
    with pytest.raises(VirtnodeError, match='checksum mismatch') as err:
        run(import_from=spec)
    assert err.value.details['found'] == digest
    assert not os.path.exists(volumes.image_path(domain, IMG)) and os.listdir(downloads) == []
    with pytest.raises(VirtnodeError, match='cannot download'):
        run(import_from=dict(spec, url=base + '/missing.vmdk'))
    assert run(check_mode=True, import_from=dict(spec, checksum='sha256:' + digest))['actions'] == ['import']
    result = run(import_from=dict(spec, checksum='sha256:' + digest))
    assert result['imported']['source'] == base + '/disk.vmdk' and result['imported']['format'] == 'vmdk'
    assert result['imported']['bytes'] == source.stat().st_size and os.listdir(downloads) == []
    assert pattern_of(volumes.paths(domain, IMG, VOL)[0], 'qcow2') == PATTERN


def test_export_writes_the_flattened_chain_once(domain, tmp_path):
    run(import_from={'path': str(image(tmp_path, 'raw'))})
    top = '9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21'
    run(volume_uuid=top, parent_volume_uuid=VOL)
    dest = tmp_path / 'out' / 'disk.qcow2'
    with pytest.raises(VirtnodeError, match='does not exist') as err:
        run(volume_uuid=top, export_to={'path': str(dest), 'format': 'qcow2', 'force': False})
    assert err.value.details['field'] == 'export_to.path'
    dest.parent.mkdir()
    spec = {'path': str(dest), 'format': 'qcow2', 'force': False}
    assert run(check_mode=True, volume_uuid=top, export_to=spec)['actions'] == ['export'] and not dest.exists()
    result = run(volume_uuid=top, export_to=spec)
    assert result['actions'] == ['export'] and result['exported']['destination'] == str(dest)
    assert result['exported']['progress'] == 100.0 and result['exported']['virtual_size'] == 4 * 1024 * 1024
    assert qemu_img.info(str(dest)).get('backing-filename') is None and pattern_of(str(dest), 'qcow2') == PATTERN
    assert sorted(os.listdir(dest.parent)) == ['disk.qcow2']
    assert not run(volume_uuid=top, export_to=spec)['changed']
    forced = run(volume_uuid=top, export_to=dict(spec, format='raw', force=True))
    assert forced['actions'] == ['export'] and qemu_img.info(str(dest))['format'] == 'raw'


def test_a_failed_export_leaves_the_old_file_and_no_partial_one(domain, tmp_path, monkeypatch):
    run(import_from={'path': str(image(tmp_path, 'raw'))})
    dest = tmp_path / 'disk.qcow2'
    dest.write_bytes(b'previous export')

    def failing(self, dst, dst_format, preallocation=None):
        with open(dst, 'wb') as stream:
            stream.write(b'half')
        raise VirtnodeError('qemu-img convert failed: No space left on device')

    monkeypatch.setattr(qemu_img.VolumeCopy, 'convert', failing)
    with pytest.raises(VirtnodeError, match='No space'):
        run(export_to={'path': str(dest), 'format': 'qcow2', 'force': True})
    assert dest.read_bytes() == b'previous export' and os.listdir(tmp_path).count('disk.qcow2') == 1
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.part')]


def test_export_and_import_only_with_present(domain, tmp_path):
    with pytest.raises(VirtnodeError, match='state=present'):
        run(state='absent', export_to={'path': str(tmp_path / 'x'), 'format': 'qcow2', 'force': False})
    with pytest.raises(VirtnodeError, match='clone_from or parent'):
        run(import_from={'path': str(tmp_path / 'x')}, parent_volume_uuid=SP)


# ---------------------------------------------------------------- templates

TEMPLATE_IMG = '7e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b'
TEMPLATE = '8f2e3d4c-5b6a-4f7e-9d8c-0b1a2f3e4d5c'
CLONE_IMG = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'
CLONE = '1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e'


def thin_clone(check_mode=False, **changes):
    return run(check_mode=check_mode, **dict(dict(image_uuid=CLONE_IMG, volume_uuid=CLONE, parent_image_uuid=TEMPLATE_IMG,
                                                  parent_volume_uuid=TEMPLATE), **changes))


@pytest.fixture
def template(domain, tmp_path):
    made = run(image_uuid=TEMPLATE_IMG, volume_uuid=TEMPLATE, template=True, import_from={'path': str(image(tmp_path, 'qcow2'))})
    assert made['actions'] == ['import', 'template'] and made['volume']['role'] == 'SHARED'
    return domain


def test_a_thin_clone_shares_the_templates_files_and_reads_its_data(template):
    assert thin_clone(check_mode=True)['actions'] == ['thin_clone']
    assert not os.path.exists(volumes.image_path(template, CLONE_IMG))
    made = thin_clone()
    assert made['actions'] == ['thin_clone'] and made['volume']['parent'] == TEMPLATE and made['volume']['role'] == 'LEAF'
    assert [v['volume_uuid'] for v in made['chain']] == [TEMPLATE, CLONE]
    assert made['chain'][0]['image_uuid'] == TEMPLATE_IMG and made['chain'][0]['role'] == 'SHARED'
    for shared, own in zip(volumes.paths(template, CLONE_IMG, TEMPLATE), volumes.paths(template, TEMPLATE_IMG, TEMPLATE)):
        assert os.path.samefile(shared, own)
    assert volumes.read_volume(template, TEMPLATE_IMG, TEMPLATE).role == 'SHARED'   # not INTERNAL: others may share it
    assert not thin_clone()['changed']
    flat = str(template) + '/flat.raw'
    qemu_img.convert(volumes.paths(template, CLONE_IMG, CLONE)[0], flat, 'COW', 'RAW')
    with open(flat, 'rb') as stream:
        assert stream.read(len(PATTERN)) == PATTERN
    # A second clone in a third image shares it too.
    third_img, third = '2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f', '3d4e5f6a-7b8c-4d9e-8f0a-2b3c4d5e6f7a'
    assert thin_clone(image_uuid=third_img, volume_uuid=third)['actions'] == ['thin_clone']
    assert volumes.sharing_images(template, TEMPLATE_IMG, TEMPLATE) == sorted([CLONE_IMG, third_img])


def test_a_template_in_use_is_never_deleted(template):
    thin_clone()
    for check_mode in (True, False):
        with pytest.raises(VirtnodeError, match='is the base of image'):
            run(check_mode=check_mode, image_uuid=TEMPLATE_IMG, volume_uuid=None, state='absent')
        with pytest.raises(VirtnodeError, match='is the base of image'):
            run(check_mode=check_mode, image_uuid=TEMPLATE_IMG, volume_uuid=TEMPLATE, state='absent')
    assert volumes.read_volume(template, TEMPLATE_IMG, TEMPLATE).legality == 'LEGAL'
    # The clone's image goes (its links with it); the template stays whole, then may go.
    assert run(image_uuid=CLONE_IMG, volume_uuid=None, state='absent')['actions'] == ['delete_image']
    data = volumes.paths(template, TEMPLATE_IMG, TEMPLATE)[0]
    assert os.stat(data).st_nlink == 1 and pattern_of(data, 'qcow2') == PATTERN
    assert run(image_uuid=TEMPLATE_IMG, volume_uuid=None, state='absent')['actions'] == ['delete_image']


def test_deleting_a_clones_only_volume_removes_its_image_and_keeps_the_template(template):
    thin_clone()
    gone = run(image_uuid=CLONE_IMG, volume_uuid=CLONE, state='absent')
    assert gone['actions'] == ['delete_volume'] and not os.path.exists(volumes.image_path(template, CLONE_IMG))
    assert volumes.read_volume(template, TEMPLATE_IMG, TEMPLATE).role == 'SHARED'
    assert os.stat(volumes.paths(template, TEMPLATE_IMG, TEMPLATE)[0]).st_nlink == 1


def test_what_templates_refuse(template, tmp_path):
    base_img, base = '4e5f6a7b-8c9d-4e0f-9a1b-3c4d5e6f7a8b', '5f6a7b8c-9d0e-4f1a-8b2c-4d5e6f7a8b9c'
    run(image_uuid=base_img, volume_uuid=base, size='4M')
    refusals = [
        (dict(parent_image_uuid=base_img, parent_volume_uuid=base), 'not a template'),
        (dict(format='RAW'), 'must be COW'),
        (dict(size='1M'), 'smaller than its template'),
        (dict(template=True), 'has no parent'),
        (dict(parent_volume_uuid=None), 'needs parent_volume_uuid'),
    ]
    for changes, message in refusals:
        for check_mode in (True, False):
            with pytest.raises(VirtnodeError, match=message):
                thin_clone(check_mode=check_mode, **changes)
    assert not os.path.exists(volumes.image_path(template, CLONE_IMG))
    with pytest.raises(VirtnodeError, match='never on top of it in its own image'):
        run(image_uuid=TEMPLATE_IMG, volume_uuid=CLONE, parent_volume_uuid=TEMPLATE)
    with pytest.raises(VirtnodeError, match='exists as a LEAF volume'):
        run(image_uuid=base_img, volume_uuid=base, template=True)
    # A guest never gets the template itself as its disk; its thin clone is fine.
    with pytest.raises(VirtnodeError, match='is a template'):
        vmd.legal_chain(template, TEMPLATE_IMG, TEMPLATE, writable=True)
    thin_clone()
    assert [vol for vol, _fmt in vmd.legal_chain(template, CLONE_IMG, CLONE, writable=True)] == [CLONE, TEMPLATE]
