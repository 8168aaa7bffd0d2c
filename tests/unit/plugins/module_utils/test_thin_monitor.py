# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Watermark math and the per-drive state machine of thin provisioning, against fakes."""

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import thin as tm
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

from conftest import FakeLibvirtError

MIB = 1024 ** 2
GIB = 1024 ** 3
SD = '11111111-2222-4333-8444-555555555555'
IMG = '21111111-2222-4333-8444-555555555555'
VOL = '31111111-2222-4333-8444-555555555555'
VM = '41111111-2222-4333-8444-555555555555'
DEVICE = '/run/virtnode/block/%s/%s/%s' % (SD, IMG, VOL)

XML = """<domain type='qemu'><name>guest</name><uuid>%s</uuid><devices>
  <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='%s' index='1'/>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='%s'/>
    <target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/x.qcow2'/>
    <target dev='vdc' bus='virtio'/></disk>
  <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='/dev/sdz'/>
    <target dev='vdd' bus='virtio'/></disk>
</devices></domain>""" % (VM, DEVICE, DEVICE)


# ------------------------------------------------------------------ math

def test_vdsm_defaults_give_a_two_gib_limit():
    assert tm.watermark_limit(2560 * MIB, 20) == 2 * GIB
    assert tm.threshold_for(3 * GIB, 2560 * MIB, 20) == GIB


def test_threshold_is_at_least_one_byte():
    assert tm.threshold_for(GIB, 2560 * MIB, 20) == 1
    assert tm.threshold_for(128 * MIB, 128 * MIB, 50) == 64 * MIB


def test_next_size_adds_a_chunk_rounded_up_to_mib_and_capped_at_capacity_plus_ten_percent():
    assert tm.next_size(128 * MIB, 10 * GIB, 128 * MIB) == 256 * MIB
    assert tm.next_size(128 * MIB + 1, 10 * GIB, 128 * MIB) == 257 * MIB
    # 1 GiB x 1.1 = 1126.4 MiB, rounded up to 1127 MiB.
    assert tm.next_size(1000 * MIB, GIB, 512 * MIB) == 1127 * MIB
    assert tm.next_size(1127 * MIB, GIB, 512 * MIB) == 1127 * MIB


def test_improbable_allocation_is_past_the_next_size():
    assert tm.improbable(300 * MIB, 256 * MIB)
    assert not tm.improbable(256 * MIB, 256 * MIB)


@pytest.mark.parametrize('args', [(100, 1, 2), (-1, 1, 2), (True, 1, 2), (20, 0, 2), (20, 1.5, 2), (20, 1, 0),
                                  (20, 1, 'x')])
def test_bad_settings_are_refused(args):
    with pytest.raises(VirtnodeError, match='thin_'):
        tm.check_settings(*args)


def test_drives_of_xml_keeps_qcow2_block_volumes_only():
    drives = tm.drives_of_xml(XML, VM, 'guest')
    assert [(d.target, d.index, d.sd_uuid, d.img_uuid, d.vol_uuid) for d in drives] == [('vda', 1, SD, IMG, VOL)]
    assert drives[0].threshold_dev == 'vda[1]'


# ------------------------------------------------------------------ state machine

class FakeDomain:
    def __init__(self, capacity=GIB, allocation=0, state=(1, 1), disk_errors=None):
        self.capacity, self.allocation = capacity, allocation
        self._state = state
        self.disk_errors = disk_errors or {}
        self.thresholds = []
        self.calls = []
        self.backend = None

    def UUIDString(self):
        return VM

    def name(self):
        return 'guest'

    def XMLDesc(self, flags):  # pylint: disable=unused-argument
        return XML

    def blockInfo(self, target):
        assert target == 'vda'
        return [self.capacity, self.allocation, self.backend.physical if self.backend else 0]

    def setBlockThreshold(self, dev, threshold):
        self.thresholds.append((dev, threshold))

    def state(self):
        return list(self._state)

    def diskErrors(self):
        return dict(self.disk_errors)

    def resume(self):
        self.calls.append('resume')
        self._state = (1, 1)
        self.disk_errors = {}

    def suspend(self):
        self.calls.append('suspend')
        self._state = (3, 1)


class FakeConn:
    def __init__(self, dom):
        self.dom = dom

    def listAllDomains(self, flags):  # pylint: disable=unused-argument
        return [self.dom]

    def lookupByUUIDString(self, uuid):
        if uuid != VM:
            raise FakeLibvirtError('no domain')
        return self.dom


class FakeBackend:
    def __init__(self, physical):
        self.physical = physical
        self.refreshes = 0

    def physical_size(self, *ids):
        assert ids == (SD, IMG, VOL)
        return self.physical

    def refresh(self, *ids):
        assert ids == (SD, IMG, VOL)
        self.refreshes += 1
        return self.physical


class FakeExtender:
    def __init__(self, backend, path='local', fail=None):
        self.backend, self.path, self.fail = backend, path, fail
        self.requests = []

    def extend(self, sd_uuid, vol_uuid, size_mib):
        self.requests.append((sd_uuid, vol_uuid, size_mib))
        if self.fail:
            raise VirtnodeError(self.fail)
        self.backend.physical = max(self.backend.physical, size_mib * MIB)
        return self.backend.physical // MIB, self.path


def monitor(dom, physical=128 * MIB, chunk_mib=128, utilization=20, path='local', fail=None):
    backend = FakeBackend(physical)
    dom.backend = backend
    extender = FakeExtender(backend, path, fail)
    events = []
    ticks = iter(range(1000))
    mon = tm.ThinMonitor(lambda: FakeConn(dom), lambda event, **fields: events.append(dict(fields, event=event)),
                         utilization=utilization, chunk_mib=chunk_mib, extender=extender,
                         backend_for=lambda sd: backend, libvirt_module=None, clock=lambda: float(next(ticks)))
    return mon, backend, extender, events


def drain(mon):
    while not mon._queue.empty():  # pylint: disable=protected-access
        mon.extend_drive(mon._queue.get())  # pylint: disable=protected-access


def test_check_sets_the_threshold_on_the_indexed_target():
    dom = FakeDomain(allocation=10 * MIB)
    mon, _backend, extender, events = monitor(dom)
    mon.check_once()
    # 128 MiB - 80 % of 128 MiB.
    assert dom.thresholds == [('vda[1]', 128 * MIB - 128 * MIB * 80 // 100)]
    assert mon.drives[(VM, 'vda')].state == tm.SET
    drain(mon)
    assert not extender.requests and not events


def test_threshold_event_extends_by_one_chunk_and_sets_the_next_threshold():
    dom = FakeDomain(allocation=40 * MIB)
    mon, backend, extender, events = monitor(dom)
    mon.check_once()
    assert mon.drives[(VM, 'vda')].state == tm.EXCEEDED  # 40 MiB is past the 25.6 MiB threshold already
    mon.drives[(VM, 'vda')].state = tm.SET
    mon.drives[(VM, 'vda')].queued = False
    mon._queue.get()  # pylint: disable=protected-access
    mon.on_threshold(VM, 'vda[1]', 26 * MIB, 14 * MIB)
    mon.on_threshold(VM, 'vda[1]', 26 * MIB, 15 * MIB)  # queued once only
    assert mon._queue.qsize() == 1  # pylint: disable=protected-access
    drain(mon)
    assert extender.requests == [(SD, VOL, 256)]
    assert backend.refreshes == 1
    assert dom.thresholds[-1] == ('vda[1]', 256 * MIB - 128 * MIB * 80 // 100)
    assert mon.drives[(VM, 'vda')].state == tm.SET
    [event] = events
    assert event['event'] == 'volume_extended'
    assert (event['trigger'], event['path']) == ('threshold', 'local')
    assert (event['old_size'], event['new_size']) == (128 * MIB, 256 * MIB)
    assert event['latency'] > 0 and event['visible_size'] == 256 * MIB


def test_extends_again_while_the_allocation_stays_above_the_threshold():
    dom = FakeDomain(allocation=200 * MIB)
    mon, _backend, extender, events = monitor(dom, path='mailbox')
    mon.check_once()
    drain(mon)
    # 128 -> 256 (threshold 153.6 MiB < 200), -> 384 (threshold 281.6 MiB).
    assert extender.requests == [(SD, VOL, 256), (SD, VOL, 384)]
    assert [(e['trigger'], e['path']) for e in events] == [('periodic', 'mailbox'), ('again', 'mailbox')]
    # The metrics' view: two mailbox extensions, each timed from its trigger and its request.
    status = mon.status()
    assert status['extensions_by_path'] == {'local': 0, 'mailbox': 2}
    assert status['extension_seconds']['count'] == status['mailbox_request_seconds']['count'] == 2
    # The fake clock ticks one second per reading: each extension took more than the request.
    assert status['extension_seconds']['sum'] > status['mailbox_request_seconds']['sum'] > 0


def test_enospc_pause_extends_at_once_and_resumes():
    dom = FakeDomain(allocation=127 * MIB, state=(constants.value('VIR_DOMAIN_PAUSED', None), constants.value('VIR_DOMAIN_PAUSED_IOERROR', None)),
                     disk_errors={'vda': constants.value('VIR_DOMAIN_DISK_ERROR_NO_SPACE', None)})
    mon, _backend, extender, events = monitor(dom)
    mon.check_once()
    mon.on_io_error(VM, DEVICE, 'enospc')
    drain(mon)
    assert extender.requests == [(SD, VOL, 256)]
    assert dom.calls == ['resume']
    names = [e['event'] for e in events]
    assert names == ['volume_enospc', 'volume_extended', 'vm_resumed_after_extension']
    assert events[1]['trigger'] == 'enospc'


def test_other_io_errors_are_not_handled():
    dom = FakeDomain()
    mon, _backend, extender, events = monitor(dom)
    mon.check_once()
    mon.on_io_error(VM, DEVICE, 'eio')
    drain(mon)
    assert not extender.requests and not events


def test_improbable_allocation_pauses_the_vm_with_an_event():
    dom = FakeDomain(allocation=900 * MIB)
    mon, _backend, extender, events = monitor(dom)
    mon.check_once()
    drain(mon)
    assert not extender.requests
    assert dom.calls == ['suspend']
    [event] = events
    assert event['event'] == 'improbable_allocation' and 'improbable' in event['reason']


def test_a_volume_at_its_maximum_size_is_reported_once():
    dom = FakeDomain(capacity=100 * MIB, allocation=100 * MIB)
    mon, _backend, extender, events = monitor(dom, physical=110 * MIB)
    for _round in range(3):
        mon.check_once()
        drain(mon)
        mon.drives[(VM, 'vda')].state = tm.EXCEEDED
    assert not extender.requests
    assert [e['event'] for e in events] == ['volume_at_max_size']


def test_a_failed_extension_is_recorded_and_retried_by_the_check():
    dom = FakeDomain(allocation=60 * MIB)
    mon, _backend, extender, events = monitor(dom, fail='SPM did not answer')
    mon.check_once()
    drain(mon)
    assert events[0]['event'] == 'volume_extend_failed' and events[0]['reason'] == 'SPM did not answer'
    assert mon.drives[(VM, 'vda')].state == tm.EXCEEDED
    mon.check_once()
    drain(mon)
    assert len(extender.requests) == 2


def test_stopped_vm_is_forgotten():
    dom = FakeDomain()
    mon, _backend, _extender, _events = monitor(dom)
    mon.check_once()
    assert mon.drives
    mon.on_lifecycle(dom, constants.value('VIR_DOMAIN_EVENT_STOPPED', None), 1)
    assert not mon.drives
    assert mon.status()['drives'] == []


# ------------------------------------------------------------------ extender

class FakeRequester:
    def __init__(self):
        self.calls = []

    def request(self, sd_uuid, vol_uuid, size_mib, timeout):
        self.calls.append((sd_uuid, vol_uuid, size_mib, timeout))
        return size_mib


def test_extender_goes_direct_on_the_spm_and_through_the_mailbox_elsewhere():
    direct, requester = [], FakeRequester()
    spm_hosts = {'pool-a'}
    ext = tm.Extender(timeout=7, spm_extend=lambda sd, vol, size: direct.append(size) or size,
                      pool_of={'sd-a': 'pool-a', 'sd-b': 'pool-b'}.get, is_spm=lambda sp: sp in spm_hosts,
                      requester_for=lambda sp: requester)
    assert ext.extend('sd-a', VOL, 256) == (256, 'local')
    assert ext.extend('sd-b', VOL, 384) == (384, 'mailbox')
    assert direct == [256] and requester.calls == [('sd-b', VOL, 384, 7)]
    with pytest.raises(VirtnodeError, match='no storage pool'):
        ext.extend('sd-c', VOL, 1)


def test_check_catches_a_threshold_passed_without_an_event():
    dom = FakeDomain(allocation=10 * MIB)
    mon, _backend, extender, events = monitor(dom)
    mon.check_once()
    assert mon.drives[(VM, 'vda')].state == tm.SET
    dom.allocation = 30 * MIB  # past the 25.6 MiB threshold; the event was lost
    mon.check_once()
    drain(mon)
    assert extender.requests == [(SD, VOL, 256)]
    assert events[0]['trigger'] == 'periodic'
