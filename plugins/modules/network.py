#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: Set up host networks and bonds as one transaction that rolls back by itself
version_added: 0.1.0
description:
  - Makes the host's logical networks and bonds what is asked, the way VDSM's
    setupNetworks does, and rolls everything back when any part fails.
  - A bridged network is a Linux bridge named after the network; a bridgeless
    network lives on its NIC, bond or VLAN device itself. A VLAN device on top
    of NIC or bond C(base) is named C(base.VLAN).
  - The plan is computed from the kernel's current state (read with C(ip -j))
    as an ordered list of steps, each with its undo. The plan is applied and
    the result verified; on any failure every step is undone and the previous
    state of every device involved (links, masters, MTUs, addresses, default
    routes) is restored and checked.
  - With O(connectivity_check) (the default) the host protects itself against
    a change that cuts the controller off. Before applying, it records the
    previous state as a pending transaction under
    C(/var/lib/virtnode/network/transactions) and starts a detached watcher.
    After the change, the controller drops its SSH connection and confirms the
    transaction over a new one. If no confirmation arrives within
    O(connectivity_timeout) seconds, the watcher restores the previous state
    without any help from the controller, and the task fails saying so.
  - Networks and bonds not given are left alone unless O(purge=true).
    Only networks and bonds set up by this module are managed; their running
    configuration is kept under C(/run/virtnode/network), so like the kernel
    state it is lost on reboot unless saved with O(save=true).
  - Hooks run as in VDSM. Every executable in C(<hooks_dir>/before_network_setup)
    runs, in name order, before the plan is computed, with the path of a JSON
    file holding the request in the environment variable C(_hook_json); a hook
    may rewrite the file and the rewritten request is applied. Exit status 1
    is a failure after which the other hooks still run, 2 a failure that stops
    them; a failing C(before_network_setup) hook fails the task before anything
    changes. C(after_network_setup) hooks run once the change is confirmed;
    their failures are warnings. Hooks not owned by root or writable by group
    or others are refused. Hooks do not run in check mode.
options:
  networks:
    description:
      - Logical networks to set up (O(networks[].state=present)) or remove.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Network name. A bridged network's bridge has this name, so it must
            be a valid Linux interface name (at most 15 characters, no C(/),
            C(:) or whitespace); the same rule applies to every network.
        type: str
        required: true
      state:
        description:
          - V(absent) removes the network (its bridge and VLAN device; its NIC
            loses the network's addresses).
        type: str
        choices: [present, absent]
        default: present
      bridged:
        description:
          - Whether the network is a Linux bridge (for VMs) or sits on the device itself.
          - Defaults to V(true), as in VDSM.
        type: bool
      nic:
        description:
          - The NIC the network is on. Mutually exclusive with O(networks[].bond).
          - A bridged network with neither O(networks[].nic) nor O(networks[].bond) is an isolated bridge.
        type: str
      bond:
        description:
          - The bond (defined in O(bonds)) the network is on.
        type: str
      vlan:
        description:
          - VLAN id, 1 to 4094. The network is then on the VLAN device C(<nic or bond>.<vlan>).
        type: int
      mtu:
        description:
          - MTU of the network's devices, 68 to 65535; defaults to 1500. A NIC or
            bond carrying several networks gets the largest MTU among them.
        type: int
      ipv4:
        description:
          - IPv4 configuration of the network's device.
        type: dict
        suboptions:
          method:
            description:
              - V(static) sets O(networks[].ipv4.addresses); V(dhcp) runs a DHCP client
                (dhclient or busybox udhcpc); V(none) leaves the device without IPv4 address.
              - Defaults to V(static) when addresses are given, else V(none).
            type: str
            choices: [none, static, dhcp]
          addresses:
            description:
              - Addresses with prefix length, such as C(192.0.2.10/24).
            type: list
            elements: str
          gateway:
            description:
              - Default gateway, used when O(networks[].default_route=true); must be in one of the subnets.
            type: str
      ipv6:
        description:
          - IPv6 configuration of the network's device. Link-local addresses are left to the kernel.
        type: dict
        suboptions:
          method:
            description:
              - As O(networks[].ipv4.method).
            type: str
            choices: [none, static, dhcp]
          addresses:
            description:
              - Addresses with prefix length, such as C(2001:db8::10/64).
            type: list
            elements: str
          gateway:
            description:
              - Default gateway, used when O(networks[].default_route=true).
            type: str
      default_route:
        description:
          - Whether the host's default route goes through this network's gateway.
            At most one network can have it; it then replaces any other default route.
        type: bool
        default: false
  bonds:
    description:
      - Bonds to set up or remove.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Bond device name.
        type: str
        required: true
      state:
        description:
          - V(absent) removes the bond; its NICs are released.
        type: str
        choices: [present, absent]
        default: present
      mode:
        description:
          - Bonding mode. Changing the mode of an existing bond re-creates it.
        type: str
        choices: [balance-rr, active-backup, balance-xor, broadcast, 802.3ad, balance-tlb, balance-alb]
        default: balance-rr
      options:
        description:
          - Other bonding options as the kernel names them, for example C(miimon) or C(xmit_hash_policy).
        type: dict
        default: {}
      nics:
        description:
          - Member NICs. A NIC can be in one bond only and cannot carry a network itself.
        type: list
        elements: str
        default: []
      mtu:
        description:
          - MTU of the bond; by default the largest MTU of its networks, or 1500.
        type: int
  purge:
    description:
      - Remove every managed network and bond not given in O(networks) and O(bonds).
    type: bool
    default: false
  state:
    description:
      - V(present) applies O(networks) and O(bonds).
      - V(restored) applies the configuration saved with O(save=true) as the whole
        desired state (managed networks and bonds not saved are removed). This is
        what runs at boot; an unsaved change is lost on reboot, as in VDSM.
    type: str
    choices: [present, restored]
    default: present
  save:
    description:
      - After the change is applied (and confirmed, with O(connectivity_check)),
        save the running configuration of all managed networks and bonds to
        C(/var/lib/virtnode/network/persistent/netconf.json), the configuration
        O(state=restored) applies (VDSM's setSafeNetworkConfig).
    type: bool
    default: false
  connectivity_check:
    description:
      - Keep the change only if the controller can still reach the host over a
        new SSH connection within O(connectivity_timeout); otherwise the host rolls
        itself back. Only applies when the plan changes the kernel.
      - Set it to V(false) where no controller is involved (boot-time restore).
    type: bool
    default: true
  connectivity_timeout:
    description:
      - Seconds the host waits for the confirmation before rolling back, 1 to 600.
      - VDSM waits 4 seconds for its manager, which keeps a connection open. Here
        the confirmation needs a new SSH connection (TCP and key exchange, and after
        a path change ARP/neighbour discovery), then a module run, which takes a few
        seconds on a loaded host; 30 seconds leaves room for that and for SSH's own
        retries, while a host that lost its network gets it back within half a minute.
    type: int
    default: 30
  hooks_dir:
    description:
      - Directory holding the hook point directories.
    type: path
    default: /etc/virtnode/hooks
  _transaction_id:
    description:
      - Internal, set by the action plugin. Id of the transaction to record.
    type: str
  _confirm:
    description:
      - Internal, used by the action plugin. Confirm the pending transaction with
        this id (or report what became of it) instead of applying anything.
    type: str
  _fail_at_step:
    description:
      - For tests only. Fail on purpose before running the plan step with this
        index (0 based), to exercise the rollback.
    type: int
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
    details: Shows the plan and the predicted state; nothing changes, no watcher starts, hooks do not run.
  diff_mode:
    support: full
    details: Shows the managed configuration and the state of the devices involved, before and after.
  platform:
    platforms: posix
notes:
  - Needs iproute2 with JSON output (C(ip -j)), which Debian 11 and later have.
  - Bonds need the kernel's bonding module and VLANs its 8021q module; without them
    the task fails before changing anything, naming the missing support.
  - Per-network source routing, which VDSM sets up for networks with a gateway that
    are not the default route, is not implemented; a gateway needs O(networks[].default_route=true).
seealso:
  - module: virtnode.kvm.network_info
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# Each example runs on a lab host: it first makes a veth pair to play the NIC.
- name: Make a test NIC (a veth pair whose both ends stay on the host)
  ansible.builtin.command: ip link add vnexample0 type veth peer name vnexample0p
  register: test_nic
  changed_when: test_nic.rc == 0
  failed_when: test_nic.rc != 0 and 'File exists' not in test_nic.stderr

- name: A bridged VM network on that NIC with a static address, saved for the next boot
  virtnode.kvm.network:
    networks:
      - name: vmnet
        nic: vnexample0
        mtu: 1500
        ipv4:
          addresses: [192.0.2.10/24]
    save: true
    connectivity_timeout: 30

- name: Show what removing it would do, without doing it
  virtnode.kvm.network:
    networks:
      - name: vmnet
        state: absent
  check_mode: true

- name: Remove the network and save the configuration without it
  virtnode.kvm.network:
    networks:
      - name: vmnet
        state: absent
    save: true

- name: Apply the saved configuration (what the boot-time restore does)
  virtnode.kvm.network:
    state: restored
    connectivity_check: false

- name: Remove the test NIC
  ansible.builtin.command: ip link del vnexample0
  changed_when: true
"""

RETURN = r"""
plan:
  description:
    - The steps of the change, in order. Empty when nothing had to change in the kernel.
  returned: always
  type: list
  elements: dict
  contains:
    description:
      description: What the step does.
      type: str
      returned: always
      sample: create bridge vmnet
    command:
      description: The command that does it.
      type: str
      returned: always
      sample: ip link add name vmnet type bridge stp_state 0 forward_delay 0
    undo:
      description: The commands that undo it, run in reverse step order on rollback.
      type: list
      elements: str
      returned: always
      sample: [ip link del dev vmnet]
before:
  description: Managed configuration and state of the devices involved, before the change.
  returned: always
  type: dict
  contains:
    networks:
      description: Managed networks by name, as set up.
      type: dict
      returned: always
    bonds:
      description: Managed bonds by name, as set up.
      type: dict
      returned: always
    devices:
      description: The devices the change involves, by name, with C(present), C(kind), C(master), C(mtu), C(up), C(addresses).
      type: dict
      returned: always
    default_routes:
      description: The host's default routes.
      type: list
      elements: str
      returned: always
      sample: [via 192.0.2.1 dev eth0]
after:
  description:
    - As RV(before), after the change. In check mode, the predicted state.
  returned: always
  type: dict
saved:
  description: Whether this task wrote the saved configuration (false when the saved one already matched).
  returned: always
  type: bool
  sample: false
transaction:
  description:
    - The connectivity-checked transaction, when the change needed one.
  returned: when the plan changed the kernel with O(connectivity_check=true)
  type: dict
  contains:
    id:
      description: Transaction id; its record is C(/var/lib/virtnode/network/transactions/<id>.json).
      type: str
      returned: always
      sample: 5b0c1a8e-8d5e-4f59-9a59-3f2d8d0e6c11
    state:
      description: C(confirmed), or C(rolled_back) when the host restored its previous state.
      type: str
      returned: always
      sample: confirmed
    timeout:
      description: Seconds the host waited for the confirmation.
      type: int
      returned: always
      sample: 30
    confirmed_after:
      description: Seconds from the start of the change to the confirmation.
      type: float
      returned: when confirmed
      sample: 1.9
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.network import setup_networks
from ansible_collections.virtnode.kvm.plugins.module_utils.network.model import BOND_MODES

IP_SPEC = dict(
    method=dict(type='str', choices=['none', 'static', 'dhcp']),
    addresses=dict(type='list', elements='str'),
    gateway=dict(type='str'),
)

ARGUMENT_SPEC = dict(
    networks=dict(type='list', elements='dict', default=[], options=dict(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        bridged=dict(type='bool'),
        nic=dict(type='str'),
        bond=dict(type='str'),
        vlan=dict(type='int'),
        mtu=dict(type='int'),
        ipv4=dict(type='dict', options=IP_SPEC),
        ipv6=dict(type='dict', options=IP_SPEC),
        default_route=dict(type='bool', default=False),
    ), mutually_exclusive=[('nic', 'bond')]),
    bonds=dict(type='list', elements='dict', default=[], options=dict(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        mode=dict(type='str', choices=list(BOND_MODES), default='balance-rr'),
        options=dict(type='dict', default={}),
        nics=dict(type='list', elements='str', default=[]),
        mtu=dict(type='int'),
    )),
    purge=dict(type='bool', default=False),
    state=dict(type='str', choices=['present', 'restored'], default='present'),
    save=dict(type='bool', default=False),
    connectivity_check=dict(type='bool', default=True),
    connectivity_timeout=dict(type='int', default=30),
    hooks_dir=dict(type='path', default=hooks.DEFAULT_HOOKS_DIR),
    _transaction_id=dict(type='str'),
    _confirm=dict(type='str'),
    _fail_at_step=dict(type='int'),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module_run.run(module, setup_networks.run_module)


if __name__ == '__main__':
    main()
