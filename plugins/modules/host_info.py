#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Report capabilities and statistics of a libvirt/KVM virtualization node
version_added: 0.1.0
description:
  - Gathers what a virtualization manager needs to know about a node, the
    facts VDSM reports as host capabilities and host statistics.
  - Host identity (a stable host UUID), CPU model and topology, hardware
    virtualization support and whether C(/dev/kvm) is usable, memory, NUMA
    cells, network interfaces with their addresses (bonds with their slaves,
    VLANs, bridges), storage facts (iSCSI initiator name and sessions,
    multipath devices with their paths), versions of
    libvirt, QEMU, qemu-img and sanlock, what libvirt offers (domain and
    machine types), and CPU, memory and NIC usage sampled over a short interval.
  - Never changes anything on the host.
  - The C(cpu), C(numa), C(versions) and C(libvirt) sections need a libvirt
    connection. The other sections can be gathered without libvirt or its
    Python bindings.
options:
  gather:
    description:
      - Sections of RV(host) to gather. V(all) gathers every section.
      - RV(host.host_uuid), RV(host.host_uuid_source), RV(host.hostname),
        RV(host.sections), RV(host.kernel) and RV(host.os) are always returned.
    type: list
    elements: str
    choices: [all, cpu, memory, numa, network, storage, versions, libvirt, stats]
    default: [all]
  sample_interval:
    description:
      - Seconds over which the C(stats) section samples CPU usage and network
        counters, between V(0) and V(60); V(1) when left out.
      - V(0) takes a single sample, so rates and percentages are V(null).
      - Giving it asks for a sample of this host now, so the node agent's cache is not used.
    type: float
  source:
    description:
      - Where the C(stats) section comes from. V(auto) takes the node agent's cached
        sample when the agent runs on the host and O(sample_interval) is not given (no
        sampling wait; rates are over the agent's interval), and samples directly
        otherwise; V(direct) always samples.
    type: str
    choices: [auto, direct]
    default: auto
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
  - The host UUID is read from C(/etc/virtnode/host_uuid) (written when the
    node is bootstrapped), else from the firmware (DMI) product UUID, else
    derived from C(/etc/machine-id).
  - Works inside a network namespace and on machines without C(/dev/kvm);
    facts that cannot be read are V(null) or empty.
seealso:
  - name: libvirt capabilities XML
    description: What libvirt reports about the host and the guests it can run.
    link: https://libvirt.org/formatcaps.html
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Gather everything about the node
  virtnode.kvm.host_info:
  register: node

- name: Use KVM when it works, plain QEMU emulation otherwise
  ansible.builtin.set_fact:
    vm_domain_type: "{{ node.host.cpu.virtualization.recommended_domain_type }}"

- name: Only memory and a quick usage sample, no libvirt needed
  virtnode.kvm.host_info:
    gather:
      - memory
      - stats
    sample_interval: 0.5
  register: usage

- name: Talk to a session libvirtd
  virtnode.kvm.host_info:
    uri: qemu:///session
    gather: [libvirt, versions]
"""

RETURN = r"""
source:
  description: V(agent) when the C(stats) section came from the node agent's cache, else V(direct).
  returned: always
  type: str
  sample: direct
host:
  description: Facts about the node. Sections not asked for with O(gather) are absent.
  returned: always
  type: dict
  contains:
    host_uuid:
      description: Stable identity of the node, lower case UUID; V(null) when no source is usable.
      returned: always
      type: str
      sample: 3d1219c7-c4c5-404a-aa1f-6d2a48adfda4
    host_uuid_source:
      description: Where RV(host.host_uuid) came from.
      returned: always
      type: str
      sample: virtnode
      choices: [virtnode, dmi, machine-id]
    hostname:
      description: Kernel host name of the node.
      returned: always
      type: str
      sample: vnhost1
    sections:
      description: The sections gathered, in a fixed order.
      returned: always
      type: list
      elements: str
      sample: [cpu, memory, numa, network, storage, versions, libvirt, stats]
    kernel:
      description: Running kernel.
      returned: always
      type: dict
      contains:
        release:
          description: Kernel release.
          type: str
          returned: always
          sample: 6.1.0-26-amd64
        version:
          description: Kernel build version string.
          type: str
          returned: always
          sample: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)"
        machine:
          description: Machine architecture.
          type: str
          returned: always
          sample: x86_64
    os:
      description: Operating system, from C(/etc/os-release). Unknown keys are V(null).
      returned: always
      type: dict
      contains:
        id:
          description: C(ID).
          type: str
          returned: always
          sample: debian
        version_id:
          description: C(VERSION_ID).
          type: str
          returned: always
          sample: "12"
        version_codename:
          description: C(VERSION_CODENAME).
          type: str
          returned: always
          sample: bookworm
        name:
          description: C(NAME).
          type: str
          returned: always
          sample: Debian GNU/Linux
        pretty_name:
          description: C(PRETTY_NAME).
          type: str
          returned: always
          sample: Debian GNU/Linux 12 (bookworm)
    cpu:
      description: Processor model, topology and virtualization support.
      returned: when O(gather) includes V(cpu) or V(all)
      type: dict
      contains:
        model:
          description: Model name from C(/proc/cpuinfo).
          type: str
          returned: always
          sample: AMD EPYC 7302 16-Core Processor
        vendor:
          description: Vendor id from C(/proc/cpuinfo).
          type: str
          returned: always
          sample: AuthenticAMD
        libvirt_model:
          description: Host CPU model as libvirt names it; V(null) when libvirt does not report one.
          type: str
          returned: always
          sample: EPYC-Rome
        sockets:
          description: Number of CPU sockets.
          type: int
          returned: always
          sample: 1
        cores:
          description: Number of physical cores on all sockets.
          type: int
          returned: always
          sample: 16
        threads:
          description: Number of online logical CPUs.
          type: int
          returned: always
          sample: 32
        threads_per_core:
          description: Logical CPUs per core.
          type: int
          returned: always
          sample: 2
        online_cpus:
          description: Ids of the online logical CPUs.
          type: list
          elements: int
          returned: always
          sample: [0, 1, 2, 3]
        flags:
          description: CPU flags from C(/proc/cpuinfo), sorted.
          type: list
          elements: str
          returned: always
          sample: [aes, avx2, svm]
        virtualization:
          description: Whether and how VMs can be run.
          type: dict
          returned: always
          contains:
            hardware:
              description: Hardware virtualization flag of the CPU, V(null) when it has none.
              type: str
              returned: always
              sample: svm
              choices: [vmx, svm]
            kvm_device_present:
              description: Whether C(/dev/kvm) exists.
              type: bool
              returned: always
              sample: true
            kvm_device_usable:
              description: Whether C(/dev/kvm) can be opened read-write.
              type: bool
              returned: always
              sample: true
            kvm_offered:
              description: Whether libvirt offers the C(kvm) domain type.
              type: bool
              returned: always
              sample: true
            software_emulation:
              description: Whether libvirt offers the C(qemu) domain type (TCG emulation).
              type: bool
              returned: always
              sample: true
            recommended_domain_type:
              description: V(kvm) when C(/dev/kvm) is usable and libvirt offers C(kvm), otherwise V(qemu).
              type: str
              returned: always
              sample: kvm
              choices: [kvm, qemu]
    memory:
      description: Memory of the host, from C(/proc/meminfo).
      returned: when O(gather) includes V(memory) or V(all)
      type: dict
      contains:
        total_mib:
          description: Total memory in MiB.
          type: int
          returned: always
          sample: 64000
        free_mib:
          description: Unused memory in MiB (C(MemFree)).
          type: int
          returned: always
          sample: 50000
        available_mib:
          description: Memory available for new workloads in MiB (C(MemAvailable)).
          type: int
          returned: always
          sample: 60000
        swap_total_mib:
          description: Total swap in MiB.
          type: int
          returned: always
          sample: 4096
        swap_free_mib:
          description: Free swap in MiB.
          type: int
          returned: always
          sample: 4096
        hugepages_total:
          description: Number of huge pages of the default size.
          type: int
          returned: always
          sample: 0
        hugepages_free:
          description: Number of free huge pages of the default size.
          type: int
          returned: always
          sample: 0
        hugepage_size_kib:
          description: Default huge page size in KiB.
          type: int
          returned: always
          sample: 2048
    numa:
      description: NUMA topology as libvirt reports it.
      returned: when O(gather) includes V(numa) or V(all)
      type: dict
      contains:
        cell_count:
          description: Number of NUMA cells.
          type: int
          returned: always
          sample: 1
        cells:
          description: One entry per NUMA cell.
          type: list
          elements: dict
          returned: always
          contains:
            id:
              description: Cell id.
              type: int
              returned: always
              sample: 0
            cpus:
              description: Logical CPU ids of the cell.
              type: list
              elements: int
              returned: always
              sample: [0, 1, 2, 3]
            memory_mib:
              description: Memory of the cell in MiB, V(null) when not reported.
              type: int
              returned: always
              sample: 64000
    network:
      description: Network interfaces from C(/sys/class/net), sorted by name.
      returned: when O(gather) includes V(network) or V(all)
      type: list
      elements: dict
      contains:
        name:
          description: Interface name.
          type: str
          returned: always
          sample: eth0
        kind:
          description: What the interface is.
          type: str
          returned: always
          sample: nic
          choices: [nic, bridge, bond, vlan, veth, loopback, tun, other]
        mac:
          description:
            - Hardware address.
            - For a bond slave its permanent address; the bond may have given it another one.
          type: str
          returned: always
          sample: "52:54:00:12:34:56"
        mtu:
          description: MTU.
          type: int
          returned: always
          sample: 1500
        operstate:
          description: Operational state from the kernel.
          type: str
          returned: always
          sample: up
        speed:
          description: Link speed in Mbit/s, V(null) when unknown.
          type: int
          returned: always
          sample: 10000
        master:
          description: Bridge or bond the interface is enslaved to, V(null) if none.
          type: str
          returned: always
          sample: ovirtmgmt
        ipv4:
          description: IPv4 addresses with prefix length; empty when the C(ip) command is missing.
          type: list
          elements: str
          returned: always
          sample: [192.0.2.10/24]
        ipv6:
          description: IPv6 addresses with prefix length, link-local included.
          type: list
          elements: str
          returned: always
          sample: [fe80::5054:ff:fe12:3456/64]
        ports:
          description: Interfaces attached to the bridge.
          type: list
          elements: str
          returned: when RV(host.network[].kind) is V(bridge)
          sample: [eth1, vnet0]
        stp:
          description: Whether spanning tree is enabled on the bridge.
          type: bool
          returned: when RV(host.network[].kind) is V(bridge)
          sample: false
        slaves:
          description: Interfaces enslaved to the bond.
          type: list
          elements: str
          returned: when RV(host.network[].kind) is V(bond)
          sample: [eth2, eth3]
        mode:
          description: Bonding mode.
          type: str
          returned: when RV(host.network[].kind) is V(bond)
          sample: 802.3ad
        active_slave:
          description:
            - The slave carrying the traffic in the active-backup mode.
            - V(null) in other modes, or when no slave is up.
          type: str
          returned: when RV(host.network[].kind) is V(bond)
          sample: eth2
        miimon:
          description: MII link monitoring interval in milliseconds (V(0) when off).
          type: int
          returned: when RV(host.network[].kind) is V(bond)
          sample: 100
        bond_slave_state:
          description: V(active) or V(backup), as the bond sees this slave.
          type: str
          returned: when the interface is enslaved to a bond
          sample: backup
        vlan_id:
          description: VLAN id.
          type: int
          returned: when RV(host.network[].kind) is V(vlan)
          sample: 100
        parent:
          description: Interface the VLAN sits on.
          type: str
          returned: when RV(host.network[].kind) is V(vlan)
          sample: eth1
    storage:
      description: Storage facts.
      returned: when O(gather) includes V(storage) or V(all)
      type: dict
      contains:
        vdsm_mount_root:
          description: Directory below which storage domains are mounted.
          type: str
          returned: always
          sample: /rhev/data-center/mnt
        mounts:
          description: Mounts below RV(host.storage.vdsm_mount_root), from C(/proc/self/mountinfo).
          type: list
          elements: dict
          returned: always
          contains:
            mountpoint:
              description: Mount point.
              type: str
              returned: always
              sample: /rhev/data-center/mnt/nfs.example.com:_export_data
            source:
              description: Mounted device or remote path.
              type: str
              returned: always
              sample: nfs.example.com:/export/data
            fstype:
              description: File system type.
              type: str
              returned: always
              sample: nfs4
            options:
              description: Per mount options.
              type: str
              returned: always
              sample: rw,relatime
        iscsi_initiator_name:
          description: iSCSI initiator name, V(null) when open-iscsi is not set up.
          type: str
          returned: always
          sample: iqn.1993-08.org.debian:01:1a2b3c4d5e6f
        iscsi_sessions:
          description: iSCSI sessions of this host (from C(/sys/class/iscsi_session)), one per target portal logged in to.
          type: list
          elements: dict
          returned: always
          contains:
            id:
              description: Session name in sysfs.
              type: str
              returned: always
              sample: session1
            target:
              description: Target IQN.
              type: str
              returned: always
              sample: iqn.2003-01.org.linux-iscsi.storage:sn.1234
            portal:
              description: Portal address and port the session was made to.
              type: str
              returned: always
              sample: 192.0.2.20:3260
            iface:
              description: open-iscsi interface of the session.
              type: str
              returned: always
              sample: default
            state:
              description: Session state.
              type: str
              returned: always
              sample: LOGGED_IN
            devices:
              description: SCSI disks that came through the session, sorted.
              type: list
              elements: str
              returned: always
              sample: [sda, sdb]
        images:
          description: Space of the file system holding C(/var/lib/libvirt/images).
          type: dict
          returned: always
          contains:
            path:
              description: The directory asked about.
              type: str
              returned: always
              sample: /var/lib/libvirt/images
            checked_path:
              description: The nearest existing directory, which was measured.
              type: str
              returned: always
              sample: /var/lib/libvirt/images
            total_bytes:
              description: Size of the file system in bytes.
              type: int
              returned: always
              sample: 270553174016
            free_bytes:
              description: Bytes available to unprivileged users.
              type: int
              returned: always
              sample: 84620500992
        device_mapper:
          description: Whether device-mapper is available (C(/dev/mapper/control) exists).
          type: bool
          returned: always
          sample: true
        multipath:
          description: Multipath tools state.
          type: dict
          returned: always
          contains:
            installed:
              description: Whether the C(multipath) command is installed.
              type: bool
              returned: always
              sample: true
            config_present:
              description: Whether C(/etc/multipath.conf) exists.
              type: bool
              returned: always
              sample: true
            daemon_running:
              description: Whether C(multipathd) runs (according to its pid file).
              type: bool
              returned: always
              sample: true
            devices:
              description: Multipath devices (device-mapper multipath maps), sorted by name.
              type: list
              elements: dict
              returned: always
              contains:
                name:
                  description: Map name, the name under C(/dev/mapper).
                  type: str
                  returned: always
                  sample: 36001405504f17fb978d45d38a080137e
                wwid:
                  description: WWID of the LUN.
                  type: str
                  returned: always
                  sample: 36001405504f17fb978d45d38a080137e
                dm_device:
                  description: Kernel name of the device-mapper device.
                  type: str
                  returned: always
                  sample: dm-0
                size_bytes:
                  description: Size in bytes.
                  type: int
                  returned: always
                  sample: 2147483648
                vendor:
                  description: SCSI vendor of the LUN, V(null) when unknown.
                  type: str
                  returned: always
                  sample: LIO-ORG
                model:
                  description: SCSI model of the LUN, V(null) when unknown.
                  type: str
                  returned: always
                  sample: FILEIO
                paths:
                  description: The SCSI disks the map runs over, sorted.
                  type: list
                  elements: dict
                  returned: always
                  contains:
                    device:
                      description: Disk name.
                      type: str
                      returned: always
                      sample: sda
                    hctl:
                      description: SCSI host, channel, target and LUN.
                      type: str
                      returned: always
                      sample: "0:0:0:1"
                    state:
                      description: SCSI device state (V(running), V(offline), V(transport-offline), ...).
                      type: str
                      returned: always
                      sample: running
    versions:
      description: Versions of the virtualization stack; V(null) for what is not installed.
      returned: when O(gather) includes V(versions) or V(all)
      type: dict
      contains:
        libvirt:
          description: libvirt versions.
          type: dict
          returned: always
          contains:
            library:
              description: Version of the client library the module uses.
              type: str
              returned: always
              sample: 9.0.0
            daemon:
              description: Version of the libvirt daemon connected to.
              type: str
              returned: always
              sample: 9.0.0
        qemu:
          description: Hypervisor version reported by the libvirt connection (the QEMU version for C(qemu://) URIs).
          type: str
          returned: always
          sample: 7.2.0
        qemu_img:
          description: Version printed by C(qemu-img --version).
          type: str
          returned: always
          sample: 7.2.22
        sanlock:
          description: Version printed by C(sanlock version).
          type: str
          returned: always
          sample: 3.8.5
        python:
          description: Version of the Python running the module.
          type: str
          returned: always
          sample: 3.11.2
    libvirt:
      description: What the libvirt connection offers.
      returned: when O(gather) includes V(libvirt) or V(all)
      type: dict
      contains:
        uri:
          description: URI of the connection, as libvirt reports it.
          type: str
          returned: always
          sample: qemu:///system
        hypervisor:
          description: Driver name of the connection.
          type: str
          returned: always
          sample: QEMU
        arch:
          description: Host architecture according to libvirt.
          type: str
          returned: always
          sample: x86_64
        host_uuid:
          description: Host UUID as libvirt reports it (C(<host><uuid>) of the capabilities).
          type: str
          returned: always
          sample: 4c4c4544-0042-3510-8051-b4c04f4e4d32
        domain_types:
          description: Domain types libvirt can start, sorted.
          type: list
          elements: str
          returned: always
          sample: [kvm, qemu]
        machine_types:
          description: Machine types (aliases included) offered for x86_64 guests, sorted.
          type: list
          elements: str
          returned: always
          sample: [pc, pc-i440fx-7.2, pc-q35-7.2, q35]
    stats:
      description: Usage statistics, as VDSM reports them in its host statistics.
      returned: when O(gather) includes V(stats) or V(all)
      type: dict
      contains:
        sample_interval:
          description: Seconds between the two samples; V(0) means a single sample.
          type: float
          returned: always
          sample: 1.0
        timestamp:
          description: Time of the last sample, seconds since the epoch.
          type: float
          returned: always
          sample: 1731600000.123
        cpu:
          description: CPU time percentages over the interval, all V(null) when RV(host.stats.sample_interval) is V(0).
          type: dict
          returned: always
          contains:
            user:
              description: User time including nice, percent.
              type: float
              returned: always
              sample: 12.5
            system:
              description: System time including interrupts, percent.
              type: float
              returned: always
              sample: 3.1
            idle:
              description: Idle time including I/O wait, percent.
              type: float
              returned: always
              sample: 84.4
            iowait:
              description: I/O wait, percent.
              type: float
              returned: always
              sample: 0.2
            steal:
              description: Time stolen by the hypervisor of this host, percent.
              type: float
              returned: always
              sample: 0.0
        cpu_load:
          description: Load averages.
          type: dict
          returned: always
          contains:
            avg1:
              description: One minute load average.
              type: float
              returned: always
              sample: 0.42
            avg5:
              description: Five minute load average.
              type: float
              returned: always
              sample: 0.3
            avg15:
              description: Fifteen minute load average.
              type: float
              returned: always
              sample: 0.2
        memory:
          description: Memory usage.
          type: dict
          returned: always
          contains:
            used_mib:
              description: Memory in use (total minus available), MiB.
              type: int
              returned: always
              sample: 4000
            free_mib:
              description: Memory available for new workloads, MiB.
              type: int
              returned: always
              sample: 60000
            used_percent:
              description: Memory in use, percent of total.
              type: float
              returned: always
              sample: 6.25
        swap:
          description: Swap usage.
          type: dict
          returned: always
          contains:
            total_mib:
              description: Total swap, MiB.
              type: int
              returned: always
              sample: 4096
            free_mib:
              description: Free swap, MiB.
              type: int
              returned: always
              sample: 4096
            used_mib:
              description: Used swap, MiB.
              type: int
              returned: always
              sample: 0
        network:
          description: Per interface counters and rates, sorted by name.
          type: list
          elements: dict
          returned: always
          contains:
            name:
              description: Interface name.
              type: str
              returned: always
              sample: eth0
            rx_bytes:
              description: Bytes received since the interface came up.
              type: int
              returned: always
              sample: 132160352
            tx_bytes:
              description: Bytes sent since the interface came up.
              type: int
              returned: always
              sample: 301478
            rx_errors:
              description: Receive errors since the interface came up.
              type: int
              returned: always
              sample: 0
            tx_errors:
              description: Transmit errors since the interface came up.
              type: int
              returned: always
              sample: 0
            rx_dropped:
              description: Received packets dropped since the interface came up.
              type: int
              returned: always
              sample: 0
            tx_dropped:
              description: Packets to send dropped since the interface came up.
              type: int
              returned: always
              sample: 0
            rx_bytes_per_sec:
              description: Receive rate over the interval in bytes per second, V(null) without an interval.
              type: float
              returned: always
              sample: 1250.5
            tx_bytes_per_sec:
              description: Transmit rate over the interval in bytes per second, V(null) without an interval.
              type: float
              returned: always
              sample: 980.0
            rx_errors_delta:
              description: Receive errors during the interval, V(null) without an interval.
              type: int
              returned: always
              sample: 0
            tx_errors_delta:
              description: Transmit errors during the interval, V(null) without an interval.
              type: int
              returned: always
              sample: 0
            rx_dropped_delta:
              description: Received packets dropped during the interval, V(null) without an interval.
              type: int
              returned: always
              sample: 0
            tx_dropped_delta:
              description: Packets to send dropped during the interval, V(null) without an interval.
              type: int
              returned: always
              sample: 0
        uptime_seconds:
          description: Seconds since boot.
          type: float
          returned: always
          sample: 86400.25
        boot_time:
          description: Boot time, seconds since the epoch.
          type: int
          returned: always
          sample: 1731513600
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.host import facts as host_facts
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn


def main():
    argument_spec = libvirt_conn.libvirt_argument_spec(
        gather=dict(type='list', elements='str', default=['all'],
                    choices=['all'] + list(host_facts.SECTIONS)),
        sample_interval=dict(type='float'),
        source=dict(type='str', default='auto', choices=['auto', 'direct']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    module_run.run(module, host_facts.host_info, agent_client.query)


if __name__ == '__main__':
    main()
