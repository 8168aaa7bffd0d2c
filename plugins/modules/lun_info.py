#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lun_info
short_description: List the LUNs this node sees through dm-multipath, as VDSM's getDeviceList
version_added: 0.1.0
description:
  - Reports every dm-multipath device (one per LUN, whatever the number of paths) with its GUID (the WWID multipath names
    it by), size, block sizes, vendor, product and serial, and each path with its state and, for iSCSI, its target and
    portal.
  - Says whether LVM or anything else uses the LUN, and which storage domain when the volume group is named after one
    (VDSM's block domain layout).
  - Reads sysfs and runs one read-only C(pvs); never changes anything.
options:
  guids:
    description:
      - Report only these LUNs. GUIDs not found are listed in RV(missing) (the task does not fail).
    type: list
    elements: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
notes:
  - Only multipath devices are listed, as in VDSM; bootstrap's host needs dm-multipath running for a LUN to appear.
seealso:
  - module: virtnode.kvm.storage_server
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Every LUN this host sees
  virtnode.kvm.lun_info:
  register: sans

- name: Two LUNs, to check they are free before a domain is made on them
  virtnode.kvm.lun_info:
    guids:
      - 36001405a1b2c3d4e5f60718293a4b5c6
      - 36001405f6e5d4c3b2a1908172635a4b3
  register: candidates
"""

RETURN = r"""
luns:
  description: The LUNs, sorted by GUID.
  type: list
  elements: dict
  returned: always
  contains:
    guid:
      description: The WWID multipath names the device by (VDSM's GUID).
      type: str
    device:
      description: The multipath device.
      type: str
      sample: /dev/mapper/36001405a1b2c3d4e5f60718293a4b5c6
    dm:
      description: The kernel's name of the map.
      type: str
      sample: dm-3
    capacity:
      description: Size in bytes.
      type: int
    logical_block_size:
      description: Logical block size in bytes.
      type: int
    physical_block_size:
      description: Physical block size in bytes.
      type: int
    vendor_id:
      description: SCSI vendor of the first path.
      type: str
    product_id:
      description: SCSI product of the first path.
      type: str
    serial:
      description: Unit serial number (VPD page 0x80), empty when the device has none.
      type: str
    paths:
      description: The paths (SCSI disks) of the map.
      type: list
      elements: dict
      contains:
        name:
          description: The SCSI disk.
          type: str
        lun:
          description: The LUN number on the target.
          type: int
        state:
          description: V(active) when the SCSI device is running, else V(failed).
          type: str
        device_state:
          description: The SCSI device's own state (C(running), C(offline), C(blocked)...).
          type: str
        type:
          description: Transport, V(iscsi), V(fcp) or V(other).
          type: str
        target:
          description: iSCSI target (iSCSI paths only).
          type: str
        address:
          description: iSCSI portal address (iSCSI paths only).
          type: str
        port:
          description: iSCSI portal port (iSCSI paths only).
          type: int
    paths_active:
      description: How many paths are active.
      type: int
    holders:
      description: Kernel devices built on the map (logical volumes, partitions).
      type: list
      elements: str
    status:
      description: V(used) when the LUN is an LVM physical volume or something is built on it, else V(free).
      type: str
    pv_uuid:
      description: The LVM physical volume UUID, empty when it is none.
      type: str
    vg_name:
      description: The volume group it belongs to, empty when none.
      type: str
    vg_uuid:
      description: The volume group's UUID, empty when none.
      type: str
    sd_uuid:
      description: The storage domain whose volume group it is (a VG named by a UUID), empty when none.
      type: str
  sample:
    - guid: 36001405a1b2c3d4e5f60718293a4b5c6
      device: /dev/mapper/36001405a1b2c3d4e5f60718293a4b5c6
      dm: dm-3
      capacity: 2147483648
      logical_block_size: 512
      physical_block_size: 512
      vendor_id: LIO-ORG
      product_id: lun0
      serial: a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90
      paths:
        - {name: sdb, lun: 0, state: active, device_state: running, type: iscsi,
           target: "iqn.2026-12.com.example:storage0", address: 192.0.2.10, port: 3260}
      paths_active: 1
      holders: []
      status: used
      pv_uuid: 3Zc0eS-0bYk-X0cB-2wfN-9vPo-uJ9E-1gQmDs
      vg_name: 8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41
      vg_uuid: kq0B3S-Nj6o-QW0x-B5Ls-qVpU-3x3u-ygb7a1
      sd_uuid: 8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41
missing:
  description: GUIDs asked for in O(guids) that this host does not see.
  type: list
  elements: str
  returned: always
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import devices


def main():
    module = AnsibleModule(
        argument_spec=dict(guids=dict(type='list', elements='str')),
        supports_check_mode=True,
    )
    module_run.run(module, devices.run_module)


if __name__ == '__main__':
    main()
