#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network_info
short_description: Report the host's networks, bonds, bridges, NICs, VLANs, addresses and routes
version_added: 0.1.0
description:
  - Reports the logical networks managed by M(virtnode.kvm.network) (from its
    running configuration) with the live state of their devices, whether each
    is saved for the next boot, and the kernel's bonds, bridges, NICs, VLAN
    devices, addresses, MTUs and routes, read with C(ip -j).
  - Never changes anything on the host.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: virtnode.kvm.network
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Read the host's networking
  virtnode.kvm.network_info:
  register: host_net

- name: Show the managed networks that would not survive a reboot
  ansible.builtin.debug:
    msg: "{{ host_net.networks | dict2items | rejectattr('value.persisted') | map(attribute='key') | list }}"
"""

RETURN = r"""
networks:
  description: Networks managed by this collection, by name.
  returned: always
  type: dict
  contains:
    config:
      description: The network's settings as set up (bridged, nic, bond, vlan, mtu, ipv4, ipv6, default_route).
      type: dict
      returned: always
    device:
      description: The device carrying the network's addresses (its bridge when bridged).
      type: str
      returned: always
      sample: vmnet
    present:
      description: Whether that device exists.
      type: bool
      returned: always
    mtu:
      description: MTU of that device.
      type: int
      returned: always
      sample: 1500
    up:
      description: Whether that device is administratively up.
      type: bool
      returned: always
    addresses:
      description: Static addresses on that device.
      type: list
      elements: str
      returned: always
      sample: [192.0.2.10/24]
    persisted:
      description: Whether the saved configuration has this network with the same settings.
      type: bool
      returned: always
bonds:
  description: Bond devices, by name.
  returned: always
  type: dict
  contains:
    mode:
      description: Bonding mode.
      type: str
      returned: always
      sample: active-backup
    nics:
      description: Member NICs.
      type: list
      elements: str
      returned: always
    mtu:
      description: MTU.
      type: int
      returned: always
    managed:
      description: Whether M(virtnode.kvm.network) manages the bond.
      type: bool
      returned: always
    persisted:
      description: Whether the saved configuration has this bond with the same settings.
      type: bool
      returned: always
bridges:
  description: Linux bridges, by name.
  returned: always
  type: dict
  contains:
    ports:
      description: Devices attached to the bridge.
      type: list
      elements: str
      returned: always
    mtu:
      description: MTU.
      type: int
      returned: always
    addresses:
      description: Static addresses.
      type: list
      elements: str
      returned: always
    network:
      description: Whether the bridge is a managed network.
      type: bool
      returned: always
nics:
  description: Other devices (physical NICs, veth, ...), by name.
  returned: always
  type: dict
  contains:
    type:
      description: Kernel link type (C(veth), C(ether), ...).
      type: str
      returned: always
    mac:
      description: MAC address.
      type: str
      returned: always
    mtu:
      description: MTU.
      type: int
      returned: always
    master:
      description: Bridge or bond the NIC is attached to, or V(null).
      type: str
      returned: always
    up:
      description: Whether the NIC is administratively up.
      type: bool
      returned: always
    addresses:
      description: Static addresses.
      type: list
      elements: str
      returned: always
vlans:
  description: VLAN devices, by name.
  returned: always
  type: dict
  contains:
    parent:
      description: Device the VLAN is on.
      type: str
      returned: always
    id:
      description: VLAN id.
      type: int
      returned: always
    mtu:
      description: MTU.
      type: int
      returned: always
    master:
      description: Bridge the VLAN device is attached to, or V(null).
      type: str
      returned: always
    addresses:
      description: Static addresses.
      type: list
      elements: str
      returned: always
routes:
  description: Default routes of the main table.
  returned: always
  type: list
  elements: dict
  contains:
    family:
      description: 4 or 6.
      type: int
      returned: always
    gateway:
      description: Gateway address.
      type: str
      returned: always
    dev:
      description: Outgoing device.
      type: str
      returned: always
persistent:
  description: The saved configuration restored at boot.
  returned: always
  type: dict
  contains:
    saved_at:
      description: When it was saved (UTC), or V(null) if nothing was ever saved.
      type: str
      returned: always
    networks:
      description: Names of the saved networks.
      type: list
      elements: str
      returned: always
    bonds:
      description: Names of the saved bonds.
      type: list
      elements: str
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.network import info


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module_run.run(module, info.run_module)


if __name__ == '__main__':
    main()
