# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block volume backends: the LVM commands (fake runner) and the loop backend's file side."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

MIB = 1024 ** 2
SD = '11111111-2222-4333-8444-555555555555'
IMG = '21111111-2222-4333-8444-555555555555'
VOL = '31111111-2222-4333-8444-555555555555'


class FakeRunner:
    def __init__(self, answers=None):
        self.answers = answers or {}
        self.calls = []

    def __call__(self, argv, timeout=None, label=None, install_hint=None):  # pylint: disable=unused-argument
        if argv[1:2] == ['--config']:
            # Every LVM command carries the same device filter; the calls are compared without it.
            assert 'use_devicesfile=0' in argv[2] and '"r|.*|"' in argv[2], argv
            argv = argv[:1] + argv[3:]
        self.calls.append(argv)
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return answer(argv) if callable(answer) else answer
        return ''


def test_round_up_and_cow_maximum():
    assert thin_block.round_up_mib(1) == MIB
    assert thin_block.round_up_mib(MIB) == MIB
    assert thin_block.max_physical(1024 * MIB) == 1127 * MIB


def test_volume_of_path_knows_both_stable_paths():
    assert thin_block.volume_of_path('/run/virtnode/block/%s/%s/%s' % (SD, IMG, VOL)) == (SD, IMG, VOL)
    assert thin_block.volume_of_path('/rhev/data-center/mnt/blockSD/%s/images/%s/%s' % (SD, IMG, VOL)) == (SD, IMG, VOL)
    assert thin_block.volume_of_path('/rhev/data-center/mnt/server:_x/%s/images/%s/%s' % (SD, IMG, VOL)) is None
    assert thin_block.volume_of_path('/run/virtnode/block/%s/../%s/%s' % (SD, IMG, VOL)) is None
    assert thin_block.volume_of_path(None) is None


# ------------------------------------------------------------------ LVM (production path)

def lvm(size_mib=128, tags='IU_%s,MD_4,PU_00000000-0000-0000-0000-000000000000' % IMG, dev_root='/nonexistent'):
    """An LvmBackend whose commands are faked: ``state['size']`` is the LV's size in the VG metadata.

    With a ``dev_root`` directory, a file ``<dev_root>/<sd>/<vol>`` stands for the LV's device on this
    host: ``lvchange --activate y``/``--refresh`` size it as the metadata says, ``--activate n`` removes it.
    """
    state = {'size': size_mib * MIB}
    device = os.path.join(str(dev_root), SD, VOL)

    def lvs(argv):
        assert argv[-2] == 'lv_tags,lv_size,vg_tags,vg_extent_size', argv
        return '  %s|%s||%d\n' % (tags, state['size'], MIB)  # a bare VG: no domain metadata; 1 MiB extents

    def lvextend(argv):
        state['size'] = int(argv[argv.index('--size') + 1][:-1]) * MIB
        return ''

    def lvchange(argv):
        if argv[1:3] == ['--activate', 'n']:
            os.unlink(device)
        else:
            os.makedirs(os.path.dirname(device), exist_ok=True)
            with open(device, 'wb') as f:
                f.truncate(state['size'])
        return ''

    runner = FakeRunner({('lvs',): lvs, ('lvextend',): lvextend, ('lvchange',): lvchange})
    return thin_block.LvmBackend(runner=runner, link_root='/nonexistent', dev_root=str(dev_root)), runner, state


def test_lvm_extend_runs_lvextend_in_mib_and_never_shrinks():
    backend, runner, _state = lvm()
    assert backend.extend(SD, IMG, VOL, 256 * MIB + 1) == 257 * MIB
    assert ['lvextend', '--autobackup', 'n', '--size', '257m', '%s/%s' % (SD, VOL)] in runner.calls
    runner.calls.clear()
    assert backend.extend(SD, IMG, VOL, 200 * MIB) == 257 * MIB
    assert not [c for c in runner.calls if c[0] == 'lvextend']


def test_lvm_physical_size_is_this_hosts_device_until_refreshed(tmp_path):
    # Another host (the SPM) grew the LV in the VG metadata; this host's device keeps its old size
    # until lvchange --refresh reloads the table, and only that size is what QEMU here can write.
    backend, runner, state = lvm(dev_root=tmp_path)
    with pytest.raises(VirtnodeError, match='not active on this host'):
        backend.physical_size(SD, IMG, VOL)
    backend.lvm.run('lvchange', '--activate', 'y', '%s/%s' % (SD, VOL))
    state['size'] = 384 * MIB
    assert backend.storage_size(SD, IMG, VOL) == 384 * MIB
    assert backend.physical_size(SD, IMG, VOL) == 128 * MIB
    runner.calls.clear()
    assert backend.refresh(SD, IMG, VOL) == 384 * MIB
    assert runner.calls == [['lvchange', '--refresh', '%s/%s' % (SD, VOL)]]
    assert backend.physical_size(SD, IMG, VOL) == 384 * MIB


def test_lvm_image_tag():
    backend, _runner, _state = lvm()
    assert backend.image_of(SD, VOL) == IMG
    backend, _runner, _state = lvm(tags='MD_4')
    with pytest.raises(VirtnodeError, match='IU_'):
        backend.image_of(SD, VOL)


def test_lvm_capacity_of_an_inactive_lv_activates_it_for_the_read_only(tmp_path, monkeypatch):
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
    device = str(tmp_path / SD / VOL)
    reads = []

    def virtual_size(path, volume_format=None):
        assert os.path.exists(path)
        reads.append((path, volume_format))
        return 1024 * MIB
    monkeypatch.setattr(qemu_img, 'virtual_size', virtual_size)
    backend, runner, _state = lvm(dev_root=tmp_path)
    assert backend.capacity(SD, IMG, VOL) == 1024 * MIB
    assert reads == [(device, 'COW')]
    lv = '%s/%s' % (SD, VOL)
    assert [c for c in runner.calls if c[0] != 'lvs'] == [['lvchange', '--activate', 'y', lv], ['lvchange', '--activate', 'n', lv]]
    assert not os.path.exists(device)
    # Active here (a VM of this host uses it): read as it is, left active.
    backend.lvm.run('lvchange', '--activate', 'y', lv)
    runner.calls.clear()
    assert backend.capacity(SD, IMG, VOL) == 1024 * MIB
    assert runner.calls == [] and os.path.exists(device)


def test_bad_uuid_never_reaches_a_command():
    backend, runner, _state = lvm()
    with pytest.raises(VirtnodeError):
        backend.extend('../etc', IMG, VOL, MIB)
    assert not runner.calls


# ------------------------------------------------------------------ loop over a file

@pytest.fixture
def domain(tmp_path):
    dom_dir = tmp_path / 'mnt' / SD
    img_dir = dom_dir / 'images' / IMG
    img_dir.mkdir(parents=True)
    (img_dir / VOL).write_bytes(b'qcow2 header')
    md = vmd.VolumeMetadata(domain=SD, image=IMG, capacity=1024 * MIB, volume_format='COW', allocation='SPARSE',
                            role='LEAF', disk_type='DATA', parent=vmd.BLANK_UUID, description='', legality='LEGAL')
    vmd.write_volume_metadata(str(img_dir / (VOL + '.meta')), md, 5)
    return dom_dir


def loop_backend(domain, tmp_path, runner=None):
    return thin_block.LoopBackend(runner=runner or FakeRunner(), link_root=str(tmp_path / 'block'),
                                  find_domain=lambda sd, required=True: str(domain) if sd == SD else None)


def test_loop_extend_grows_the_file_and_never_shrinks(domain, tmp_path):
    backend = loop_backend(domain, tmp_path)
    path = domain / 'images' / IMG / VOL
    assert backend.extend(SD, IMG, VOL, 128 * MIB) == 128 * MIB
    assert path.stat().st_size == 128 * MIB
    assert backend.extend(SD, IMG, VOL, 64 * MIB) == 128 * MIB
    assert path.stat().st_size == 128 * MIB
    assert backend.image_of(SD, VOL) == IMG
    assert backend.capacity(SD, IMG, VOL) == 1024 * MIB


def test_loop_activate_reuses_an_attached_device_and_links_it(domain, tmp_path):
    path = os.path.realpath(str(domain / 'images' / IMG / VOL))
    listing = json.dumps({'loopdevices': [{'name': '/dev/loop3', 'back-file': '/elsewhere'},
                                          {'name': '/dev/loop7', 'back-file': path}]})
    runner = FakeRunner({('losetup', '--list'): listing})
    backend = loop_backend(domain, tmp_path, runner)
    link = backend.activate(SD, IMG, VOL)
    assert link == str(tmp_path / 'block' / SD / IMG / VOL)
    assert os.readlink(link) == '/dev/loop7'
    assert not [c for c in runner.calls if '--find' in c]
    backend.refresh = lambda *ids: None
    backend.deactivate(SD, IMG, VOL)
    assert ['losetup', '--detach', '/dev/loop7'] in runner.calls
    assert not os.path.lexists(link) and not os.path.exists(str(tmp_path / 'block' / SD))


def attaching_runner(back_file):
    """losetup as the kernel sees it: --find attaches /dev/loop9 to ``back_file`` (the file it really opened)."""
    attached = []

    def listing(_argv):
        return json.dumps({'loopdevices': [{'name': '/dev/loop9', 'back-file': back_file}] if attached else []})

    def find(_argv):
        attached.append('/dev/loop9')
        return '/dev/loop9\n'

    def detach(_argv):
        attached.clear()
        return ''

    return FakeRunner({('losetup', '--list'): listing, ('losetup', '--find'): find, ('losetup', '--detach'): detach})


def test_loop_activate_attaches_a_new_device(domain, tmp_path):
    runner = attaching_runner(os.path.realpath(str(domain / 'images' / IMG / VOL)))
    backend = loop_backend(domain, tmp_path, runner)
    assert os.readlink(backend.activate(SD, IMG, VOL)) == '/dev/loop9'
    assert ['losetup', '--find', '--show', str(domain / 'images' / IMG / VOL)] in runner.calls


def test_extend_volume_on_spm_caps_at_capacity_plus_ten_percent(domain, tmp_path):
    backend = loop_backend(domain, tmp_path)
    assert thin_block.extend_volume_on_spm(SD, VOL, 256, backend=backend) == 256
    assert thin_block.extend_volume_on_spm(SD, VOL, 5000, backend=backend) == 1127
    assert thin_block.extend_volume_on_spm(SD, VOL, 128, backend=backend) == 1127
    with pytest.raises(VirtnodeError, match='positive'):
        thin_block.extend_volume_on_spm(SD, VOL, 0, backend=backend)
    with pytest.raises(VirtnodeError, match='not found'):
        thin_block.extend_volume_on_spm(SD, '41111111-2222-4333-8444-555555555555', 1, backend=backend)


def test_a_fenced_spm_extend_changes_nothing(domain, tmp_path):
    """The SPM task's check runs right before storage changes: a host that lost the lease extends nothing."""
    backend = loop_backend(domain, tmp_path)
    before = os.path.getsize(str(domain / 'images' / IMG / VOL))

    def lost():
        raise VirtnodeError('no longer allowed to change the storage of pool P', {'fenced': True})
    with pytest.raises(VirtnodeError, match='no longer allowed'):
        thin_block.extend_volume_on_spm(SD, VOL, 256, backend=backend, check=lost)
    assert os.path.getsize(str(domain / 'images' / IMG / VOL)) == before


# ------------------------------------------------------------------ shared storage is written by other hosts

@pytest.mark.parametrize('variant', ['volume-to-device', 'volume-to-host-file', 'image-dir-to-etc', 'images-to-elsewhere',
                                     'volume-fifo', 'volume-directory'])
def test_a_volume_that_leaves_its_domain_never_reaches_a_loop_device(domain, tmp_path, variant):
    img_dir = domain / 'images' / IMG
    outside = tmp_path / 'etc'
    outside.mkdir()
    (outside / VOL).write_bytes(b'host file')
    (outside / (VOL + '.meta')).write_bytes((img_dir / (VOL + '.meta')).read_bytes())
    if variant == 'volume-to-device':
        (img_dir / VOL).unlink()
        (img_dir / VOL).symlink_to('/dev/null')
    elif variant == 'volume-to-host-file':
        (img_dir / VOL).unlink()
        (img_dir / VOL).symlink_to(outside / VOL)
    elif variant == 'image-dir-to-etc':
        os.rename(str(img_dir), str(tmp_path / 'moved'))
        img_dir.symlink_to(outside)
    elif variant == 'images-to-elsewhere':
        os.rename(str(domain / 'images'), str(tmp_path / 'images'))
        (domain / 'images').symlink_to(tmp_path / 'images')
    elif variant == 'volume-fifo':
        (img_dir / VOL).unlink()
        os.mkfifo(str(img_dir / VOL))
    elif variant == 'volume-directory':
        (img_dir / VOL).unlink()
        (img_dir / VOL).mkdir()
    runner = FakeRunner({('losetup', '--list'): '{"loopdevices": []}', ('losetup', '--find'): '/dev/loop9\n'})
    backend = loop_backend(domain, tmp_path, runner)
    for call in (lambda: backend.activate(SD, IMG, VOL), lambda: backend.extend(SD, IMG, VOL, 64 * MIB),
                 lambda: backend.storage_size(SD, IMG, VOL), lambda: backend.capacity(SD, IMG, VOL),
                 lambda: backend.volume_file(SD, IMG, VOL)):
        with pytest.raises(VirtnodeError, match='refusing'):
            call()
    if variant not in ('volume-directory',):
        with pytest.raises(VirtnodeError, match='refusing'):
            backend.image_of(SD, VOL)
    assert not [c for c in runner.calls if '--find' in c]
    assert (outside / VOL).read_bytes() == b'host file'


def test_a_volume_swapped_for_a_link_while_losetup_runs_is_detached_and_refused(domain, tmp_path):
    # The check passed, then losetup opened /etc/shadow: the device it made must never be linked.
    runner = attaching_runner('/etc/shadow')
    backend = loop_backend(domain, tmp_path, runner)
    with pytest.raises(VirtnodeError, match='not backed by the volume file'):
        backend.activate(SD, IMG, VOL)
    assert ['losetup', '--detach', '/dev/loop9'] in runner.calls
    assert not os.path.lexists(backend.link_path(SD, IMG, VOL))


def test_image_of_skips_temp_and_removed_names(domain):
    images = domain / 'images'
    (images / '.hidden.tmp').mkdir()
    (images / ('_remove_me_' + IMG)).mkdir()
    (images / 'junk').write_bytes(b'')
    backend = thin_block.LoopBackend(runner=FakeRunner(), link_root='/nonexistent',
                                     find_domain=lambda sd, required=True: str(domain))
    assert backend.image_of(SD, VOL) == IMG


def test_image_of_remembers_the_image_but_checks_the_volume_at_each_use(domain, tmp_path):
    backend = loop_backend(domain, tmp_path)
    assert backend.image_of(SD, VOL) == IMG
    vol = domain / 'images' / IMG / VOL
    # Swapped for a link to a host file after it was remembered: refused as on a first look.
    outside = tmp_path / 'host-file'
    outside.write_bytes(b'host file')
    vol.unlink()
    vol.symlink_to(outside)
    with pytest.raises(VirtnodeError, match='refusing'):
        backend.image_of(SD, VOL)
    vol.unlink()
    with pytest.raises(VirtnodeError, match='not found'):
        backend.image_of(SD, VOL)
