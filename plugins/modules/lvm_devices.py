#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lvm_devices
short_description: Keep the host's LVM to the host's own disks with LVM's devices file
version_added: 0.1.0
description:
  - A virtualization host sees PVs that are not its own - LUNs holding block storage domains, and PVs inside guests'
    disks. Left visible, the host's LVM scans them, may activate a guest's logical volumes at boot, or change a
    domain's volume group that only the SPM may write. oVirt's host deploy therefore limits LVM before anything else;
    this module does it with LVM's devices file.
  - V(present) lists the host's own PVs in C(/etc/lvm/devices/system.devices) (PVs on local disks, partitions, RAID or
    encrypted devices, not in a storage domain's volume group), removes entries for LUNs and logical volumes, and only
    then sets C(use_devicesfile = 1) in C(/etc/lvm/lvm.conf). A host without local PVs gets an empty devices file, so
    its LVM sees nothing.
  - V(absent) sets C(use_devicesfile = 0) again and leaves the devices file.
  - The collection's own commands on block storage domains carry their own configuration and are not affected.
options:
  state:
    description: Whether LVM is limited to the devices file.
    type: str
    choices: [present, absent]
    default: present
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
  - PVs are found with the host's own LVM filter and no devices file; run it before LUNs are connected, or at any
    time - LUNs (multipath devices and their partitions) and logical volumes are never listed.
  - A local disk added later must be added with C(lvmdevices --adddev) (or by running this module again).
  - Role M(virtnode.kvm.bootstrap) runs it with C(bootstrap_lvm_devices_file) (on by default with block storage).
requirements:
  - lvm2 2.03.12 or later (C(lvm lvmdevices))
seealso:
  - module: virtnode.kvm.storage_domain
  - module: virtnode.kvm.lun_info
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Keep LVM on this host to the host's own disks
  virtnode.kvm.lvm_devices:

- name: Let LVM scan every device again
  virtnode.kvm.lvm_devices:
    state: absent
"""

RETURN = r"""
actions:
  description: What was done (or would be done in check mode).
  type: list
  elements: str
  returned: success
  sample: [add_devices, enable]
devices:
  description: The host's own PVs, which the devices file lists (V(present) only).
  type: list
  elements: str
  returned: success
  sample: [/dev/sda3]
added:
  description: Devices added to the devices file.
  type: list
  elements: str
  returned: success
  sample: [/dev/sda3]
removed:
  description: LUNs and logical volumes taken out of the devices file.
  type: list
  elements: str
  returned: success
  sample: []
devices_file:
  description: Path of the devices file.
  type: str
  returned: success
  sample: /etc/lvm/devices/system.devices
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import lvm_devices


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, lvm_devices.run_module)


if __name__ == '__main__':
    main()
