#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: Status and statistics of the VMs of a node, as VDSM reports them
version_added: 0.1.0
description:
  - Reports every VM of the node, or one, with its status in VDSM's names,
    the reason of a pause, CPU, memory and balloon, per-disk and per-NIC
    counters and rates, disk allocation, migration progress, and the exit
    reason of VMs that went down.
  - Statistics come from libvirt's bulk call (C(virConnectGetAllDomainStats)),
    two samples O(sample_interval) apart for rates; not one call per VM per counter.
  - Never changes anything.
options:
  name:
    description: Only this VM. All VMs when left out.
    type: str
  sample_interval:
    description:
      - Seconds between the two samples rates are computed from, 0 to 60; V(1) when left out.
      - V(0) takes one sample; rates and percentages are then V(null).
      - Giving it asks for a sample now, so the node agent's cache is not used.
    type: float
  source:
    description:
      - Where the figures come from. V(auto) takes them from the node agent's cache
        when the agent runs on the host and O(sample_interval) is not given (no sampling
        wait; rates are over the agent's interval), and from libvirt otherwise;
        V(libvirt) always samples directly.
      - The agent serves only O(uri=qemu:///system).
    type: str
    choices: [auto, libvirt]
    default: auto
  guest_info:
    description:
      - Add RV(vms[].guest), what the QEMU guest agent inside each running VM reports (OS, host name, time zone,
        logged-in users, file systems with their use, interfaces with their addresses), as VDSM's guest agent data.
      - One agent round trip per running VM whose agent is connected, each bounded by libvirt's agent timeout; a
        guest whose agent does not answer gets an C(error) in RV(vms[].guest), never a failed task.
    type: bool
    default: false
extends_documentation_fragment:
  - virtnode.kvm.libvirt
  - virtnode.kvm.failure
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
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
  - A transient VM that went down is no longer known to libvirt; it is still
    reported (status V(Down), with its exit reason) while the record the
    M(virtnode.kvm.vm) module wrote in C(/var/lib/virtnode/vms/<uuid>/exit.json) exists.
seealso:
  - module: virtnode.kvm.vm
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Every VM of the node, with rates over one second
  virtnode.kvm.vm_info:
  register: node_vms

- name: Show status and CPU use
  ansible.builtin.debug:
    msg: "{{ node_vms.vms | map(attribute='status') | list }}"

- name: Counters of one VM only, no waiting
  virtnode.kvm.vm_info:
    name: example-vm
    sample_interval: 0
"""

RETURN = r"""
vms:
  description: The VMs, sorted by name. Empty when O(name) is given and no such VM is known.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name.
      type: str
      returned: always
      sample: web1
    uuid:
      description: UUID.
      type: str
      returned: always
      sample: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
    status:
      description: Status in VDSM's names.
      type: str
      returned: always
      sample: Up
    pause_reason:
      description: libvirt's pause reason; V(null) unless paused.
      type: str
      returned: always
      sample: user
    pause_code:
      description: VDSM's pause code (V(NOERR), V(EIO), V(ENOSPC), V(POSTCOPY)); V(null) unless paused.
      type: str
      returned: always
      sample: NOERR
    persistent:
      description: Whether libvirt keeps a definition.
      type: bool
      returned: always
      sample: false
    cpu:
      description: vCPUs, CPU time (ns) and use in percent of the VM's vCPUs; V(null) when down.
      type: dict
      returned: always
      sample: {"vcpus": 1, "time_ns": 5120000000, "user_ns": 10000000, "system_ns": 20000000,
               "usage_percent": 12.5, "user_percent": 0.5, "system_percent": 1.0}
    memory:
      description: Memory and balloon (KiB); V(null) when down.
      type: dict
      returned: always
      sample: {"max_kib": 131072, "balloon_current_kib": 131072, "rss_kib": 90000, "usable_kib": null, "unused_kib": null}
    disks:
      description: Per disk counters, rates and sizes (allocation, capacity, physical in bytes).
      type: list
      elements: dict
      returned: always
      sample: [{"name": "vda", "path": "/var/lib/images/d.qcow2", "read_bytes": 1024, "write_bytes": 0,
                "read_ops": 2, "write_ops": 0, "flush_ops": 0, "read_time_ns": 1000, "write_time_ns": 0,
                "read_bytes_per_sec": 0.0, "write_bytes_per_sec": 0.0, "read_ops_per_sec": 0.0, "write_ops_per_sec": 0.0,
                "allocation": 196608, "capacity": 16777216, "physical": 200704}]
    nics:
      description: Per NIC counters and byte rates.
      type: list
      elements: dict
      returned: always
      sample: [{"name": "vnet0", "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0, "rx_errors": 0,
                "tx_errors": 0, "rx_dropped": 0, "tx_dropped": 0, "rx_bytes_per_sec": 0.0, "tx_bytes_per_sec": 0.0}]
    migration:
      description: Progress of an outgoing migration; V(null) when none runs.
      type: dict
      returned: always
      sample: {"progress_percent": 40, "elapsed_ms": 800, "data_total": 142606336, "data_processed": 57000000,
               "data_remaining": 85606336, "memory_dirty_rate": 0, "downtime_ms": null,
               "auto_converge_throttle": null}
    exit:
      description: Why a VM that is down went down (VDSM's exit code, reason and message); V(null) when up or unknown.
      type: dict
      returned: always
      sample: {"exit_code": 0, "exit_reason": 6, "exit_message": "Admin shut down", "time": 1767225600.0}
    guest:
      description:
        - What the guest agent reports, with O(guest_info=true); V(null) when the VM is down.
        - C(agent) is V(connected), V(disconnected) (the port exists but no agent answers) or V(none) (no port); C(error)
          says why nothing else came; C(answered_at) is when the agent answered (seconds since the epoch).
        - The time zone offset is in seconds east of UTC; C(login_time_ms) is milliseconds since the epoch.
      type: dict
      returned: when O(guest_info=true)
      sample: {"agent": "connected", "error": null, "answered_at": 1767225600.5, "hostname": "web1",
               "os": {"id": "debian", "name": "Debian GNU/Linux", "pretty_name": "Debian GNU/Linux 12 (bookworm)",
                      "version": "12 (bookworm)", "version_id": "12", "kernel_release": "6.1.0-28-cloud-amd64",
                      "kernel_version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1", "machine": "x86_64",
                      "variant": null, "variant_id": null},
               "timezone": {"name": "UTC", "offset_seconds": 0},
               "users": [{"name": "root", "domain": null, "login_time_ms": 1767225600000}],
               "filesystems": [{"mountpoint": "/", "name": "vda1", "type": "ext4", "used_bytes": 1048576,
                                "total_bytes": 4194304, "disks": ["vda"]}],
               "interfaces": [{"name": "eth0", "hwaddr": "52:54:00:12:34:56",
                               "addresses": [{"type": "ipv4", "address": "192.0.2.10", "prefix": 24}]}]}
sample_interval:
  description: Seconds between the two samples (V(0) for one sample); the agent's interval when RV(source=agent).
  returned: always
  type: float
  sample: 1.0
source:
  description: V(agent) when the node agent's cache answered, V(libvirt) when sampled directly.
  returned: always
  type: str
  sample: libvirt
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import info as vm_info


def main():
    module = AnsibleModule(
        argument_spec=libvirt_conn.libvirt_argument_spec(
            name=dict(type='str'),
            sample_interval=dict(type='float'),
            source=dict(type='str', default='auto', choices=['auto', 'libvirt']),
            guest_info=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, vm_info.report, agent_client.query)


if __name__ == '__main__':
    main()
