#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm
short_description: Run a virtual machine from a typed spec, with VDSM's lifecycle
version_added: 0.1.0
description:
  - Creates, starts, pauses, shuts down, saves, restores, migrates and removes
    a libvirt/QEMU virtual machine described by a typed spec (memory, vCPUs,
    disks, NICs, CD-ROM, graphics, serial console), not by raw XML.
  - Idempotent against the running domain. Only the fields given are compared
    with the live domain, so what libvirt adds by itself (generated MAC
    addresses, PCI addresses, aliases, default controllers, the expanded
    machine type) never counts as a change.
  - Changes a running VM can take are applied live; CD change, disk and NIC
    hotplug and unplug, balloon target within O(max_memory), console ticket
    and custom properties. Others are listed in RV(pending_restart) and take
    effect at the next start (the persistent definition is updated at once).
  - Transient by default, like VDSM; O(persistent=true) defines the domain
    and updates an existing definition.
  - Every state change returns only when the state is reached, or fails when
    O(timeout) expires.
  - Runs VDSM-style hooks from O(hooks_dir) (C(before_vm_start) may rewrite
    the domain XML through C(_hook_domxml); custom properties arrive as
    environment variables).
options:
  name:
    description:
      - Name of the VM (the libvirt domain). Must be usable as a file name.
      - Required, unless O(vms) is given.
    type: str
  vms:
    description:
      - The bulk form. Each item is one VM's options (O(name) required; every option of this module
        but the connection's, O(vms), O(parallel) and the migration ones), converged as the single form
        converges a VM, O(parallel) at a time, in one module run for the whole list.
      - Options given beside O(vms) are the default of every item (for example O(state=destroyed) for
        all); O(name) and O(uuid) are not allowed there.
      - Every item is checked before any VM is touched, so a bad item fails the run and changes nothing.
        A VM that fails while converging does not stop the others; the run then fails, naming it,
        and RV(vms) has every VM's result.
    type: list
    elements: dict
  parallel:
    description:
      - With O(vms), how many VMs converge at the same time (1 to 32).
      - A VM start mostly waits for QEMU and libvirtd, so starts overlap well; lower it on a host
        whose guests are slow to boot and short of CPU.
    type: int
    default: 8
  uuid:
    description:
      - UUID of the VM, lower case. libvirt generates one when it is left out.
      - When given it must match the existing domain called O(name).
    type: str
  state:
    description:
      - V(running) starts the VM (restoring it from a saved image when one
        exists) or resumes it when paused.
      - V(paused) starts it paused or pauses it.
      - V(shutdown) asks the guest to power off (see O(shutdown_mode)) and waits O(timeout)
        seconds; with O(force=true) a VM still running then is destroyed.
      - V(destroyed) stops it at once. A persistent VM stays defined.
      - V(absent) destroys and undefines it and drops its records.
      - When the VM is gone afterwards (V(absent), or a transient VM stopped), the volumes it had as
        block devices (disks with C(type=block)) are deactivated, unless another VM on the host uses them.
      - V(saved) saves (hibernates) its memory to O(save_path) (or O(saved_volume)) and stops it.
    type: str
    choices: [running, paused, shutdown, destroyed, absent, saved]
    default: running
  persistent:
    description:
      - V(true) keeps a libvirt definition of the VM (and updates it when the
        spec changes). V(false) makes it transient; an existing definition
        is removed while the VM runs on. Left out, new VMs are transient and
        existing ones keep what they have.
    type: bool
  domain_type:
    description: V(kvm) or V(qemu) (software emulation). Default is what the host recommends.
    type: str
    choices: [kvm, qemu]
  machine:
    description: Machine type, for example V(q35) or V(pc-q35-7.2). Left out, libvirt's default.
    type: str
  memory:
    description:
      - Memory of the VM, an integer number of bytes or a string like V(512MiB).
      - With a balloon this is the balloon target and can change live up to O(max_memory).
    type: str
  max_memory:
    description: Boot-time memory (the balloon's maximum). Defaults to O(memory). Changing it needs a restart.
    type: str
  vcpus:
    description:
      - Number of virtual CPUs running (default 1).
      - With O(max_vcpus), a running VM gets vCPUs hotplugged or unplugged up to that maximum, live (VDSM's
        setNumberOfCpus); unplugging needs the guest to release the vCPU. Otherwise a change needs a restart.
    type: int
  max_vcpus:
    description:
      - Most vCPUs the VM can have, hotplugged up to it while it runs; O(vcpus) above it is refused. A change needs a
        restart.
    type: int
  cpu_pinning:
    description:
      - Host CPUs each vCPU may run on, as a dict of vCPU number to a libvirt cpuset (V("0-3,^2")); set live on a
        running VM. vCPUs left out are not compared. A CPU this host does not have is refused.
    type: dict
  emulator_pinning:
    description: Host CPUs (a cpuset) QEMU's own threads may run on; set live on a running VM.
    type: str
  cpu_topology:
    description: Sockets, cores and threads; their product must equal O(max_vcpus), else O(vcpus).
    type: dict
    suboptions:
      sockets:
        description: Sockets.
        type: int
        default: 1
      cores:
        description: Cores per socket.
        type: int
        default: 1
      threads:
        description: Threads per core.
        type: int
        default: 1
  cpu_model:
    description: V(host-passthrough), V(host-model) or a named CPU model such as V(qemu64).
    type: str
  boot_order:
    description:
      - Boot devices in order. Mutually exclusive with O(kernel).
      - There is no V(fd). VMs get no floppy drive (q35 machines have no floppy controller, and oVirt dropped floppies);
        boot an image from O(cdrom) instead.
    type: list
    elements: str
    choices: [hd, cdrom, network]
  kernel:
    description: Direct kernel boot, path of the kernel on the host.
    type: path
  initrd:
    description: Initial ramdisk for O(kernel).
    type: path
  cmdline:
    description: Kernel command line for O(kernel).
    type: str
  disks:
    description:
      - Disks, matched with the running domain by path. A disk added to the
        list is hotplugged, a disk removed from it is unplugged.
      - A disk is a O(disks[].path) today; a storage-domain volume given as
        O(disks[].domain_id), O(disks[].image_id) and O(disks[].volume_id) is
        resolved to C(/rhev/data-center/mnt/<mount>/<sd>/images/<img>/<vol>)
        when the volume is prepared on the host.
    type: list
    elements: dict
    suboptions:
      path:
        description: File or block device holding the disk.
        type: path
      domain_id:
        description: Storage domain UUID of a volume disk.
        type: str
      image_id:
        description: Image UUID of a volume disk.
        type: str
      volume_id:
        description: Volume UUID of a volume disk.
        type: str
      type:
        description:
          - V(file) or V(block); found from the path when left out.
          - For a storage-domain volume, V(block) presents it as a block device through the
            host's block backend. On a block domain (required there) the logical volumes of the
            volume and of its parents are checked LEGAL in their metadata, activated on this host
            and linked under C(/rhev/data-center/mnt/blockSD/<domain>/images/<image>), as VDSM
            prepares an image; removing the VM deactivates them again. On a file domain a loop
            device over the volume file is made, under C(/run/virtnode/block). A thin COW volume
            presented this way is extended by the node agent as the guest writes.
          - In check mode nothing is activated.
        type: str
        choices: [file, block]
      format:
        description: Image format.
        type: str
        choices: [raw, qcow2]
        default: raw
      bus:
        description:
          - Disk bus. V(scsi) disks sit on a virtio-scsi controller (VDSM's), added with the first of them, also when
            one is hotplugged.
        type: str
        choices: [virtio, sata, scsi, ide]
        default: virtio
      lun:
        description:
          - A direct LUN, as VDSM's. The block device, a multipath device of a LUN, is passed through as a SCSI LUN,
            so the guest's SCSI commands reach it (C(device=lun), C(sgio=filtered)). Needs O(disks[].bus=scsi) and
            format V(raw); anything else is refused. A change takes effect at the next start.
        type: bool
        default: false
      target:
        description: Device name in the guest (V(vda), V(sdb)...). The first free name of the bus when left out.
        type: str
      cache:
        description: Cache mode.
        type: str
        choices: [none, writeback, writethrough, directsync, unsafe, default]
        default: none
      io:
        description: I/O mode.
        type: str
        choices: [threads, native, io_uring]
      error_policy:
        description: What QEMU does on a write error; V(stop) pauses the VM (VDSM's policy, needed for thin provisioning).
        type: str
        choices: [stop, report, ignore, enospace]
        default: stop
      readonly:
        description: Attach read-only.
        type: bool
        default: false
      serial:
        description: Serial number shown to the guest (at most 20 letters, digits or C(_ . + -)); compared when given.
        type: str
      discard:
        description: Whether the guest's discards (TRIM) reach the storage (V(unmap)) or not; compared when given.
        type: str
        choices: [unmap, ignore]
      detect_zeroes:
        description: Whether QEMU turns writes of zeroes into zero writes (V(on)) or discards (V(unmap), needs O(disks[].discard=unmap)).
        type: str
        choices: ['off', 'on', unmap]
      iotune:
        description:
          - I/O limits (VDSM's C(ioTune)), applied live to a running VM. A limit left out or 0 is no limit.
          - C(total_*) cannot be combined with C(read_*) or C(write_*) of the same kind.
        type: dict
        suboptions:
          total_bytes_sec:
            description: Bytes per second, reads and writes together.
            type: int
          read_bytes_sec:
            description: Bytes read per second.
            type: int
          write_bytes_sec:
            description: Bytes written per second.
            type: int
          total_iops_sec:
            description: Operations per second, reads and writes together.
            type: int
          read_iops_sec:
            description: Reads per second.
            type: int
          write_iops_sec:
            description: Writes per second.
            type: int
  nics:
    description:
      - Network interfaces, matched with the running domain by MAC address
        (or, without one, by source in order). Added ones are hotplugged,
        removed ones unplugged; a NIC given with its MAC and another bridge or network is moved there live.
      - A VM's VLAN is its bridge's, as in oVirt, where the bridge sits on a VLAN device of the host (M(virtnode.kvm.network)).
    type: list
    elements: dict
    suboptions:
      bridge:
        description: Linux bridge to plug into.
        type: str
      network:
        description: libvirt network to plug into.
        type: str
      mac:
        description: MAC address; libvirt generates one when left out.
        type: str
      model:
        description: NIC model.
        type: str
        choices: [virtio, e1000, e1000e, rtl8139]
        default: virtio
      link_state:
        description: The link the guest sees, V(up) or V(down) (cable unplugged); set live on a running VM.
        type: str
        choices: [up, down]
      mtu:
        description: MTU of the host side of the NIC (68 to 65535); a change takes effect at the next start.
        type: int
      queues:
        description: Number of virtio-net queue pairs (multiqueue, 1 to 256); a change takes effect at the next start.
        type: int
      filter:
        description:
          - A libvirt network filter on the NIC (C(virsh nwfilter-list)), such as V(clean-traffic), which keeps the
            guest from spoofing MAC, IP and ARP (oVirt's C(vdsm-no-mac-spoofing) does the MAC part). V("") removes it.
          - Left out, the NIC's filter is not managed. A change is applied live. A filter the host does not know is
            refused before anything changes.
        type: str
      filter_parameters:
        description:
          - The filter's variables, such as C(IP) for V(clean-traffic); a list gives a variable several values.
            Left out with O(nics[].filter), the filter has none (libvirt learns C(IP) from the guest's traffic).
        type: dict
  cdrom:
    description:
      - CD-ROM drive with this ISO image, or V("") for an empty drive. Left
        out, no drive is created (and an existing one is left alone).
      - Changing the image of a running VM is applied live.
    type: str
  graphics:
    description: A VNC or SPICE display and its ticket (password and expiry), settable live.
    type: dict
    suboptions:
      type:
        description: Display protocol.
        type: str
        choices: [vnc, spice]
        default: vnc
      listen:
        description: Address the display listens on.
        type: str
        default: 127.0.0.1
      password:
        description: Ticket (password) of the display; no password when left out.
        type: str
      password_valid_to:
        description: Expiry of the ticket, UTC, V(YYYY-MM-DDTHH:MM:SS). A time in the past expires the ticket at once.
        type: str
  console_log:
    description:
      - Serial console on a pty, logged to C(/var/log/libvirt/qemu/<name>-console.log).
      - Created by default for new VMs; when left out an existing VM's console is not compared.
    type: bool
  custom_properties:
    description: Free-form key/value pairs stored with the VM and given to every hook as environment variables.
    type: dict
  lease:
    description:
      - A sanlock VM lease (on a storage domain's C(xleases) volume), written into the domain XML as a C(lease) device.
      - libvirt's sanlock lock manager (set up by the C(bootstrap) role, C(bootstrap_libvirt_lock_manager)) acquires it
        when the guest's CPUs first run and holds it while QEMU lives. While another host holds it the start is
        refused with RV(lease_busy); after that host died the lease is free once sanlock declares it dead (8 I/O
        timeouts plus 60 s after its last renewal), which the C(ha_restart) role waits for.
      - The lease itself is made with M(virtnode.kvm.vm_lease), whose RV(virtnode.kvm.vm_lease#module:lease) result
        this option takes as it is.
    type: dict
    suboptions:
      sd_id:
        description: Storage domain UUID (the lockspace).
        type: str
      lease_id:
        description: Lease UUID (the resource).
        type: str
      path:
        description: Path of the lease volume.
        type: path
      offset:
        description: Offset of the lease in the volume.
        type: int
        default: 0
  watchdog:
    description:
      - A watchdog device, and what libvirt does when the guest stops feeding it (VDSM's watchdog device).
      - Left out, the domain's watchdog is not managed; O(watchdog.state=absent) removes it. A change takes effect at the
        next start (RV(pending_restart)).
    type: dict
    suboptions:
      model:
        description: V(i6300esb) (PCI) or V(ib700) (ISA).
        type: str
        choices: [i6300esb, ib700]
        default: i6300esb
      action:
        description: What happens when it fires.
        type: str
        choices: [reset, shutdown, poweroff, pause, none, dump, inject-nmi]
        default: reset
      state:
        description: Whether the VM has it.
        type: str
        choices: [present, absent]
        default: present
  rng:
    description:
      - A virtio RNG device feeding the guest's entropy from the host (VDSM's C(rng) device), e.g. O(rng={}).
      - Left out, not managed; O(rng.state=absent) removes it. A change takes effect at the next start.
    type: dict
    suboptions:
      backend:
        description: Host source of the entropy.
        type: str
        choices: [/dev/urandom, /dev/random, /dev/hwrng]
        default: /dev/urandom
      rate_bytes:
        description: At most this many bytes per O(rng.rate_period_ms) (no limit when left out).
        type: int
      rate_period_ms:
        description: The period of O(rng.rate_bytes), in milliseconds (1000 when left out).
        type: int
      state:
        description: Whether the VM has it.
        type: str
        choices: [present, absent]
        default: present
  video:
    description:
      - Video card model; V(none) for a headless VM. Left out, libvirt's default with O(graphics). A change takes effect
        at the next start.
    type: str
    choices: [virtio, qxl, vga, bochs, none]
  tablet:
    description:
      - A USB tablet (absolute pointer, so the VNC or SPICE pointer follows the client's); V(false) removes it. Left out,
        not managed. A change takes effect at the next start.
    type: bool
  numa_cells:
    description:
      - The guest's NUMA topology (VDSM's guest NUMA nodes), each cell with its vCPUs and memory. Every vCPU (up to
        O(max_vcpus), else O(vcpus)) must be in exactly one cell, and the cells' memory must add up to O(max_memory)
        (with O(memory_hotplug), to the boot memory, at most O(max_memory)); a layout that does not is refused.
      - Left out, not managed. A change takes effect at the next start.
    type: list
    elements: dict
    suboptions:
      cpus:
        description: The cell's vCPUs, as a cpuset such as V(0-1).
        type: str
        required: true
      memory:
        description: The cell's memory, whole MiB (V(512MiB)).
        type: str
        required: true
  numa_tune:
    description:
      - Where on the host the guest's memory comes from (libvirt's C(numatune)); host NUMA nodes the host does not
        have are refused. A change takes effect at the next start.
    type: dict
    suboptions:
      mode:
        description: V(strict) fails an allocation the nodes cannot give; V(preferred), V(interleave) and V(restrictive) as libvirt.
        type: str
        choices: [strict, preferred, interleave, restrictive]
        default: strict
      nodeset:
        description: Host NUMA nodes, such as V(0) or V(0-1).
        type: str
        required: true
  memory_hotplug:
    description:
      - Memory that can be added to the running VM (VDSM's memory hotplug), up to O(memory_hotplug.max) in at most
        O(memory_hotplug.slots) DIMMs. A bigger O(max_memory) is then plugged live as one DIMM of the difference, in
        whole 128 MiB steps (what a Linux guest can bring online); past the maximum or out of slots it waits for a
        restart. Less memory always waits for a restart.
      - Needs a NUMA cell; without O(numa_cells) the VM gets one with all its vCPUs.
      - A change of the maximum or the slots takes effect at the next start.
    type: dict
    suboptions:
      max:
        description: The most memory the VM can have while it runs (V(4GiB)).
        type: str
        required: true
      slots:
        description: DIMM slots, 1 to 255.
        type: int
        default: 16
  hugepages:
    description:
      - Back guest memory with huge pages of this size, V(2MiB) or V(1GiB); V(0) for normal pages. The host must
        reserve pages of that size (C(vm.nr_hugepages)) or it is refused. Left out, not managed. A change takes effect
        at the next start.
    type: str
  firmware:
    description:
      - V(bios) (SeaBIOS) or V(uefi) (OVMF, chosen by libvirt's firmware autoselection from the descriptors the
        ovmf package installs, which the bootstrap role installs).
      - A UEFI VM keeps its variables (boot entries, Secure Boot keys) in its own store,
        C(/var/lib/libvirt/qemu/nvram/<uuid>_VARS.fd), created from OVMF's template at its first start and kept across
        restarts, also of a transient VM; O(state=absent) removes it. A new UEFI VM is given its UUID first.
      - Left out, not managed. A change takes effect at the next start.
    type: str
    choices: [bios, uefi]
  secure_boot:
    description:
      - With O(firmware=uefi), OVMF with Secure Boot on and Microsoft's and the distribution's keys enrolled (what
        Windows 11 and signed Linux boot loaders need), and SMM on. Needs a q35 O(machine).
      - A change takes effect at the next start.
    type: bool
  tpm:
    description:
      - A TPM 2.0 emulated by swtpm (the bootstrap role installs it), as oVirt's TPM device; its state is kept by libvirt
        under C(/var/lib/libvirt/swtpm/<uuid>) across restarts (a transient VM's too), carried by a live migration, and
        removed with O(state=absent).
      - Left out, not managed; O(tpm.state=absent) removes it. A change takes effect at the next start.
    type: dict
    suboptions:
      model:
        description: V(crb) (TPM 2.0's command response buffer interface, Windows 11's) or V(tis).
        type: str
        choices: [crb, tis]
        default: crb
      state:
        description: Whether the VM has it.
        type: str
        choices: [present, absent]
        default: present
  guest_agent:
    description:
      - The virtio-serial port of the QEMU guest agent (C(org.qemu.guest_agent.0)), which VDSM's guest agent support and
        M(virtnode.kvm.vm_info)'s O(virtnode.kvm.vm_info#module:guest_info) data, O(shutdown_mode=agent) and
        M(virtnode.kvm.vm_snapshot)'s O(virtnode.kvm.vm_snapshot#module:freeze) use. The guest needs qemu-guest-agent
        installed.
      - A new VM gets it unless this is V(false). Left out, an existing VM's port is not managed. A change takes effect at
        the next start.
    type: bool
  cloud_init:
    description:
      - A cloud-init NoCloud seed for the guest, as VDSM's cloud-init payload; an ISO9660 image labelled C(cidata)
        made on the host (with python3-pycdlib, which the bootstrap role installs) in
        C(/var/lib/virtnode/cloud-init/<uuid>/) and attached as a second, read-only CD-ROM drive.
      - The same input gives no change. Changed input rewrites the seed, which the guest reads at its next boot
        (RV(pending_restart) lists V(cloud_init)); cloud-init runs its once-per-instance steps again only when
        C(instance-id) changes.
      - A new VM gets its UUID before the seed is written, so the seed's default C(instance-id) is the VM's UUID.
      - The seed exists only on this host; O(state=absent) removes it. The image is readable by QEMU and so by local
        users of the host; keep secrets out of O(cloud_init.user_data) (give password hashes, not passwords).
    type: dict
    suboptions:
      user_data:
        description:
          - A string written as it is (a C(#cloud-config), a script, MIME multipart), or a mapping written as a
            C(#cloud-config) document. Left out, an empty file.
        type: raw
      meta_data:
        description:
          - A mapping; C(instance-id) defaults to the VM's UUID and C(local-hostname) to O(name) when it is a host
            name. A string is written as it is.
        type: raw
      network_config:
        description:
          - A network configuration (version 2) mapping, or a string. Left out, the seed has none and the guest
            configures its network itself.
        type: raw
  shutdown_mode:
    description:
      - How O(state=shutdown) asks the guest to power off.
      - V(auto) lets libvirt choose, as VDSM does; the guest agent when it is connected, ACPI otherwise.
      - V(acpi) presses the ACPI power button; V(agent) asks the guest agent only and fails at once when it does not
        answer.
    type: str
    choices: [auto, acpi, agent]
    default: auto
  force:
    description: With O(state=shutdown), destroy a VM that is still running after O(timeout).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for the VM to reach the state asked for.
    type: int
    default: 120
  save_path:
    description:
      - File the memory image goes to with O(state=saved). Defaults to
        C(/var/lib/virtnode/vms/<uuid>/saved.img).
      - O(state=running) restores from the saved image of the VM (found by
        O(name) or O(uuid)) and removes the image afterwards.
    type: path
  saved_volume:
    description:
      - With O(state=saved), hibernate into this RAW storage-domain volume instead of a file
        (VDSM's memory-dump volume). It must hold the VM's memory plus 32 MiB; a missing or
        too small volume fails before anything changes.
      - The volume is recorded with the VM; O(state=running) restores from it and leaves the
        volume in place (deleting it is the SPM's job, M(virtnode.kvm.volume)).
    type: dict
    suboptions:
      domain_id:
        description: Storage domain UUID.
        type: str
        required: true
      image_id:
        description: Image UUID.
        type: str
        required: true
      volume_id:
        description: Volume UUID.
        type: str
        required: true
  migrate_to:
    description:
      - With O(state=running), live-migrate the VM to this host (its libvirt
        at C(qemu+<migrate_transport>://<host>/system)). Other spec fields are not applied
        during a migration.
      - Nothing changes when the VM already runs on that host.
      - Disks on block storage domains must first be prepared on the destination (M(virtnode.kvm.volume) with
        V(state=prepared)); once the VM runs there, this host deactivates the logical volumes it no longer uses.
    type: str
  migrate_transport:
    description:
      - How libvirt reaches the destination named by O(migrate_to), and how the source's libvirtd
        talks to it during the migration.
      - V(tls) is libvirtd's TLS listener (port 16514) with certificate verification both ways, with
        the CA in C(/etc/pki/CA/cacert.pem) and the client certificate in C(/etc/pki/libvirt/), as the
        C(virtnode.kvm.bootstrap) role sets up by default. V(tcp) is the plain listener (port 16509),
        for labs (C(bootstrap_libvirt_listen=tcp)).
      - With V(tls), the guest's memory is encrypted too (C(VIR_MIGRATE_TLS), also with O(migrate_uri)), with the
        credentials C(virtnode.kvm.bootstrap) gives QEMU; with V(tcp) it crosses the network in clear.
    type: str
    choices: [tcp, tls]
    default: tls
  migrate_uri:
    description: libvirt URI of the destination, instead of the one derived from O(migrate_to) and O(migrate_transport).
    type: str
  migrate_unsafe:
    description:
      - Migrate even when libvirt cannot prove the disks are on shared storage
        with safe caching (C(VIR_MIGRATE_UNSAFE)). Needed for a plain
        directory shared between hosts.
    type: bool
    default: false
  migrate_options:
    description: Tuning of a migration.
    type: dict
    suboptions:
      max_downtime_ms:
        description: Maximum downtime of the final switch-over, milliseconds.
        type: int
      bandwidth:
        description: Maximum bandwidth, MiB/s.
        type: int
      timeout:
        description: Seconds after which the migration is aborted (the VM stays on the source).
        type: int
        default: 300
      auto_converge:
        description: Throttle the guest's vCPUs when the migration does not converge.
        type: bool
        default: false
      compressed:
        description: Compress memory pages.
        type: bool
        default: false
      data_uri:
        description: URI of the migration data stream, for example V(tcp://10.0.0.2) to use another network.
        type: str
  hooks_dir:
    description: Directory of the hook points (C(before_vm_start/), C(after_vm_start/), ...).
    type: path
    default: /etc/virtnode/hooks
extends_documentation_fragment:
  - virtnode.kvm.libvirt
  - virtnode.kvm.failure
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the spec fields given, before and after; never raw XML.
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
notes:
  - Graceful shutdown needs a guest that handles ACPI power button events or
    runs qemu-guest-agent (O(shutdown_mode)). A guest with neither times out;
    use O(force=true) to destroy it after O(timeout).
  - Hook points used are C(before_vm_start), C(after_vm_start),
    C(before_vm_pause), C(after_vm_pause), C(before_vm_cont), C(after_vm_cont),
    C(before_vm_destroy), C(after_vm_destroy), C(before_vm_hibernate),
    C(after_vm_hibernate), C(before_vm_dehibernate), C(after_vm_dehibernate),
    C(before_vm_migrate_source), C(after_vm_migrate_source), C(before_disk_hotplug),
    C(after_disk_hotplug), C(before_disk_hotunplug), C(after_disk_hotunplug),
    C(before_nic_hotplug), C(after_nic_hotplug), C(before_nic_hotunplug) and
    C(after_nic_hotunplug). A failing C(before_*) hook fails the operation;
    C(after_*) failures are warnings. Hooks not owned by root or writable by
    group or others are refused.
  - Exit records (why a VM went down) are kept in C(/var/lib/virtnode/vms/<uuid>/exit.json)
    until the VM is started again or made absent; M(virtnode.kvm.vm_info) reports them.
seealso:
  - module: virtnode.kvm.vm_info
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Run a small guest with direct kernel boot (transient, like VDSM)
  virtnode.kvm.vm:
    name: example-vm
    memory: 128MiB
    vcpus: 1
    kernel: "{{ virtnode_lab_guest_kernel }}"
    initrd: "{{ virtnode_lab_guest_initrd }}"
    cmdline: "{{ virtnode_lab_guest_cmdline }} workload=idle"
    state: running

- name: Pause it
  virtnode.kvm.vm:
    name: example-vm
    state: paused

- name: Resume it and give it a custom property (applied live)
  virtnode.kvm.vm:
    name: example-vm
    state: running
    custom_properties:
      owner: examples

- name: Stop it through its guest agent when connected, else ACPI; destroy it if still up after 3 seconds
  virtnode.kvm.vm:
    name: example-vm
    state: shutdown
    timeout: 3
    force: true

- name: Remove it
  virtnode.kvm.vm:
    name: example-vm
    state: absent

- name: Three guests in one task, two at a time; memory and kernel shared by all
  virtnode.kvm.vm:
    vms:
      - name: example-web1
      - name: example-web2
      - name: example-db
        memory: 192MiB
    memory: 128MiB
    kernel: "{{ virtnode_lab_guest_kernel }}"
    initrd: "{{ virtnode_lab_guest_initrd }}"
    cmdline: "{{ virtnode_lab_guest_cmdline }} workload=idle"
    parallel: 2

- name: All three destroyed and removed, in one task
  virtnode.kvm.vm:
    vms: [{name: example-web1}, {name: example-web2}, {name: example-db}]
    state: absent
"""

RETURN = r"""
vm:
  description: The VM after the operation (before it, in check mode).
  returned: without O(vms)
  type: dict
  contains:
    name:
      description: Name of the VM.
      type: str
      returned: always
      sample: web1
    uuid:
      description: UUID of the VM; V(null) when it does not exist.
      type: str
      returned: always
      sample: 0c6cf1f5-6b5b-4a4c-9d4f-2a6d8c0b8d5e
    status:
      description: Status in VDSM's names.
      type: str
      returned: always
      sample: Up
      choices: [WaitForLaunch, Powering up, Up, Paused, Powering down, Migration Source, Migration Destination,
                Saving State, Restoring state, Down]
    pause_reason:
      description: libvirt's reason of a pause (V(user), V(ioerror), V(migration)...); V(null) unless paused.
      type: str
      returned: always
      sample: user
    pause_code:
      description: VDSM's pause code (V(NOERR), V(EIO), V(ENOSPC), V(POSTCOPY)); V(null) unless paused.
      type: str
      returned: always
      sample: NOERR
    persistent:
      description: Whether libvirt keeps a definition of the VM.
      type: bool
      returned: always
      sample: false
    host:
      description: libvirt URI the VM runs on (the destination after a migration).
      type: str
      returned: always
      sample: qemu:///system
    exit:
      description: Why a VM that is down went down (VDSM's exitCode, exitReason, exitMessage); V(null) when unknown.
      type: dict
      returned: always
      sample: {"exit_code": 0, "exit_reason": 6, "exit_message": "Admin shut down", "time": 1767225600.0}
pending_restart:
  description: Spec fields that differ from the running VM and take effect at its next start.
  returned: without O(vms)
  type: list
  elements: str
  sample: [vcpus, max_memory]
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: without O(vms)
  type: list
  elements: str
  sample: [start, hotplug disk /var/lib/images/d1.qcow2 as vdb]
hooks:
  description: Hook points that ran, with each script's exit status and output.
  returned: without O(vms)
  type: list
  elements: dict
  sample: [{"point": "before_vm_start", "failed": false, "stopped": false,
            "scripts": [{"script": "/etc/virtnode/hooks/before_vm_start/10_desc", "rc": 0, "stdout": "", "stderr": ""}]}]
vms:
  description:
    - With O(vms), each VM's result in the order of O(vms) - RV(vm), RV(pending_restart), RV(actions),
      RV(hooks) and C(changed) as the single form returns them, and C(name) - or, for a VM that failed,
      C(name), C(failed), C(msg) and the error's details.
  returned: with O(vms)
  type: list
  elements: dict
  sample: [{"name": "web1", "changed": true, "actions": ["start"], "pending_restart": [], "hooks": [],
            "vm": {"name": "web1", "status": "Up"}}]
lease_busy:
  description:
    - V(true) when the start failed only because another host holds the VM's lease (O(lease)); a caller may try again
      once that host is dead, as the C(ha_restart) role does. Absent otherwise.
  returned: on failure
  type: bool
  sample: true
migration:
  description: Outcome of a migration.
  returned: when O(migrate_to) is given
  type: dict
  contains:
    destination_uri:
      description: libvirt URI of the destination.
      type: str
      returned: always
      sample: qemu+tcp://vnhost2/system
    duration_s:
      description: Seconds the migration took; V(0) when the VM already ran on the destination; V(null) in check mode.
      type: float
      returned: always
      sample: 2.61
    migrate_uri:
      description: URI of the data stream when one was given.
      type: str
      returned: always
      sample: null
    progress:
      description:
        - Last migration job statistics seen while it ran; C(memory_dirty_rate) is in pages per second.
        - C(auto_converge_throttle) is the share of the guest's vCPU time QEMU takes with
          O(migrate_options.auto_converge), in percent; V(null) until QEMU throttles.
      type: dict
      returned: when a migration ran
      sample: {"progress_percent": 97, "elapsed_ms": 6200, "data_total": 142606336, "data_processed": 412000000,
               "data_remaining": 4096, "memory_dirty_rate": 16000, "downtime_ms": null, "auto_converge_throttle": 30}
    stats:
      description:
        - What the finished migration took, from the destination's completed job statistics; the guest's actual
          downtime (to compare with O(migrate_options.max_downtime_ms)), the total time, the bytes sent, the memory
          transfer rate (bytes per second, capped by O(migrate_options.bandwidth)) and the auto-converge throttle
          (percent; V(null) when QEMU never had to slow the guest).
        - On a failed or aborted migration the error's C(migration.progress) has the figures seen so far.
      type: dict
      returned: when a migration finished
      sample: {"downtime_ms": 41, "total_ms": 2380, "data_transferred": 141557760, "memory_bps": 104857600,
               "auto_converge_throttle": null}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge as vm_converge
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import options as vm_options


def main():
    module = AnsibleModule(
        argument_spec=vm_options.module_argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=vm_options.MUTUALLY_EXCLUSIVE + [('name', 'vms')],
        required_one_of=[('name', 'vms')],
        required_by=vm_options.REQUIRED_BY,
    )
    if module.params['vms']:
        # Only the bulk form compiles it: every module run compiles what it imports.
        from ansible_collections.virtnode.kvm.plugins.module_utils.vm import bulk as vm_bulk  # pylint: disable=import-outside-toplevel
        vm_bulk.run(module)
    else:
        module_run.run(module, vm_converge.converge)


if __name__ == '__main__':
    main()
