# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A removed VM's block-presented volumes are deactivated unless another VM on the host uses them."""

from __future__ import annotations

import os

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle

SD = '11111111-2222-4333-8444-555555555555'
IMG = '22222222-3333-4444-8555-666666666666'
VOL_A = '33333333-4444-4555-8666-777777777777'
VOL_B = '44444444-5555-4666-8777-888888888888'


def link(vol):
    return os.path.join(thin_block.LOOP_LINK_ROOT, SD, IMG, vol)


def domxml(name, *paths):
    disks = ''.join("<disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='%s'/>"
                    "<target dev='vd%s' bus='virtio'/></disk>" % (p, chr(ord('a') + i)) for i, p in enumerate(paths))
    return "<domain type='qemu'><name>%s</name><devices>%s" \
           "<disk type='file' device='disk'><source file='/var/lib/x.img'/><target dev='sda' bus='sata'/></disk>" \
           "</devices></domain>" % (name, disks)


class FakeDomain(object):
    def __init__(self, uuid, xml):
        self.uuid, self.xml = uuid, xml

    def UUIDString(self):  # pylint: disable=invalid-name
        return self.uuid

    def XMLDesc(self, flags):  # pylint: disable=invalid-name,unused-argument
        return self.xml


class FakeConn(object):
    def __init__(self, domains):
        self.domains = domains

    def listAllDomains(self, flags):  # pylint: disable=invalid-name,unused-argument
        return list(self.domains)


@pytest.fixture
def released(monkeypatch):
    calls = []
    monkeypatch.setattr(thin_block, 'release_path', calls.append)
    monkeypatch.setattr(vm_lifecycle.os.path, 'lexists', lambda path: path.startswith(thin_block.LOOP_LINK_ROOT))
    return calls


def test_volumes_no_other_vm_uses_are_released(released):
    removed = domxml('gone', link(VOL_A), link(VOL_B))
    other = FakeDomain('u-other', domxml('other', link(VOL_B)))
    lc = vm_lifecycle.Lifecycle(FakeConn([FakeDomain('u-gone', removed), other]), 'gone')
    assert lc.release_block_volumes('u-gone', removed) == [link(VOL_A)]
    assert released == [link(VOL_A)]
    assert lc.actions == ['deactivate block volume %s' % link(VOL_A)]


def test_check_mode_only_reports(released):
    removed = domxml('gone', link(VOL_A))
    lc = vm_lifecycle.Lifecycle(FakeConn([FakeDomain('u-gone', removed)]), 'gone', check_mode=True)
    assert lc.release_block_volumes('u-gone', removed) == [link(VOL_A)]
    assert released == [] and lc.actions == ['deactivate block volume %s' % link(VOL_A)]


def test_file_disks_are_left_alone(released):
    removed = domxml('plain')
    lc = vm_lifecycle.Lifecycle(FakeConn([]), 'plain')
    assert lc.release_block_volumes('u', removed) == [] and released == [] and lc.actions == []


def test_release_path_refuses_other_paths():
    with pytest.raises(vm_lifecycle.VirtnodeError, match='not the path of a block-presented volume'):
        thin_block.release_path('/dev/sda')
