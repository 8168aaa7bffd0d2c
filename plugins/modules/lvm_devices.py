#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lvm_devices
short_description: Confine the host's LVM to its own disks with the LVM devices file, as oVirt's host deploy does
version_added: 0.1.0
description:
  - A hypervisor sees every LUN of the data centre, the block storage domains' volume groups on them and, inside the
    volumes, whatever LVM the guests made. This module makes the host's own LVM look at the host's own disks only, as
    C(vdsm-tool config-lvm-filter) does with its devices method, so that the host never scans or activates a guest's
    logical volumes or a storage domain's.
  - The volume groups backing the host's mounted logical volumes (swap included) are imported into the LVM devices
    file (C(vgimportdevices)). While the file has no entry yet, every other volume group LVM sees is imported too, so a
    local volume group not mounted now is kept. Storage domain volume groups (tag C(RHAT_storage_domain)) never are.
    Then C(devices/use_devicesfile = 1) is set in C(/etc/lvm/lvm.conf), the rest of the file kept.
  - The local disks under those mounts are kept out of dm-multipath by WWID in
    C(/etc/multipath/conf.d/vdsm_blacklist.conf), VDSM's file, since VDSM's C(multipath.conf) takes every disk.
    Reload multipathd afterwards (the bootstrap role does).
  - Nothing is ever removed from the devices file. The collection's own LVM commands on shared storage carry their own
    configuration (multipath devices only, no devices file) and are not affected.
  - Run it before the host logs in to any SAN; the bootstrap role runs it first of its block storage tasks.
options:
  vgs:
    description:
      - Local volume groups to keep visible to the host's LVM besides those of its mounts.
      - A storage domain's volume group is refused.
    type: list
    elements: str
    default: []
  multipath_blacklist:
    description: Keep the local disks under the mounts out of dm-multipath by WWID.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
notes:
  - Needs LVM 2.03.12 or later (C(vgimportdevices), C(lvmdevices)); Debian 12 has 2.03.16.
  - If another file (such as C(/etc/lvm/lvmlocal.conf)) sets C(use_devicesfile = 0), the module fails after writing
    C(lvm.conf) and says so, rather than report a configuration LVM does not use.
seealso:
  - module: virtnode.kvm.lun_info
  - module: virtnode.kvm.storage_domain
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: it rewrites the host's LVM configuration, which namespace hosts share with the machine
# (tests/integration/test_kernel_bootstrap_block.py runs it on a kernel host, whose /etc is its own)
- name: The host's LVM sees the host's own disks only
  virtnode.kvm.lvm_devices:

- name: Also keep a local VG for a local storage domain's file system that is not mounted yet
  virtnode.kvm.lvm_devices:
    vgs: [localstore]
"""

RETURN = r"""
actions:
  description: What was done (in check mode, would be done).
  type: list
  elements: str
  returned: always
  sample: [import_vgs, enable_devices_file]
lvm:
  description: What the module found and decided.
  type: dict
  returned: always
  contains:
    mounts:
      description: Mounted logical volumes (storage domains' left out), with the volume group and its physical volumes.
      type: list
      elements: dict
      sample: [{lv: /dev/mapper/vg0-root, mountpoint: /, vg: vg0, devices: [/dev/sda2]}]
    vgs:
      description: The volume groups the devices file is to hold.
      type: list
      elements: str
    imported:
      description: Volume groups imported into the devices file by this run (some of their devices were missing).
      type: list
      elements: str
    devices_file:
      description: The devices file LVM uses.
      type: str
      sample: /etc/lvm/devices/system.devices
    use_devicesfile:
      description: Whether LVM used the devices file before this run.
      type: bool
    wwids:
      description: WWIDs of the local disks kept out of dm-multipath.
      type: list
      elements: str
    warnings:
      description: What C(lvmdevices --check) reported.
      type: list
      elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm_devices


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vgs=dict(type='list', elements='str', default=[]),
            multipath_blacklist=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, lvm_devices.run_module)


if __name__ == '__main__':
    main()
