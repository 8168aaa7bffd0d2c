# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: vms
short_description: The VMs of libvirt hosts as inventory hosts, with their guest addresses
version_added: 0.1.0
description:
  - Reads the VMs of each host in O(hosts) over libvirt (C(qemu+tls://), C(qemu+ssh://), C(qemu+tcp://) or the local
    C(qemu:///system)) and makes each VM an inventory host.
  - Groups are made by host (C(<group_prefix>host_<hostname>), the host's own name as libvirt reports it), by status
    in VDSM's words (C(<group_prefix>status_up), C(<group_prefix>status_down), C(<group_prefix>status_paused),
    C(<group_prefix>status_migration_source), ...), by storage domain (C(<group_prefix>storage_domain_<sd uuid>)) and
    by storage pool (C(<group_prefix>pool_<sp uuid>)); every VM is also in C(<group_prefix>vms). Dashes in UUIDs
    become underscores, so the names need no sanitizing.
  - The storage domain, image and volume of a disk are read from its path as VDSM lays volumes out
    (C(.../<sd>/images/<img>/<vol>) or C(/run/virtnode/block/<sd>/<img>/<vol>)). Only a path through a pool's
    directory (C(/rhev/data-center/<sp>/<sd>/images/...)) names the pool; a disk under the mount root
    (C(/rhev/data-center/mnt/...)), which is where M(virtnode.kvm.vm) puts volumes, groups by storage domain only.
  - The guest addresses come from the first source in O(ip_sources) that reports any (the QEMU guest agent, then
    the leases of a libvirt network's DHCP server, then the host's neighbour (ARP/NDP) table); loopback addresses
    are left out. C(ansible_host) is set from them only when O(set_ansible_host) is true.
  - A host that cannot be reached is reported as a warning and its VMs are left out; the other hosts' VMs are
    listed (O(fail_on_unreachable) makes it an error). A remote host's port is probed first with
    O(connect_timeout), since libvirt itself has no connect timeout.
  - A VM found on two hosts (the two ends of a migration, or defined on one and running on another) is listed
    once, from the host where it runs, with a warning.
  - The node agent's cache is not a source. It lives on each host's local socket only, and it holds neither the
    guests' addresses nor their NICs, nor the disks of VMs that are down.
  - The configuration file's name must end in C(vms.yml) or C(vms.yaml) (for example C(lab.vms.yml)).
requirements:
  - libvirt-python on the controller (C(pip install libvirt-python), or Debian's C(python3-libvirt))
  - lxml on the controller
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; must be V(virtnode.kvm.vms) for the file to be read by it.
    type: str
    required: true
    choices: [virtnode.kvm.vms]
  hosts:
    description:
      - libvirt URIs of the hosts whose VMs are listed, for example V(qemu+tls://host1.example.com/system) or
        V(qemu+ssh://root@host2.example.com/system).
    type: list
    elements: str
    required: true
  ip_sources:
    description:
      - Where guest addresses are asked, in order; the first source that reports any address wins.
      - V(agent) needs the QEMU guest agent in the guest and a read-write connection; with V(agent) left out the
        connections are read-only.
      - An empty list asks no addresses.
    type: list
    elements: str
    choices: [agent, lease, arp]
    default: [agent, lease, arp]
  set_ansible_host:
    description:
      - Set C(ansible_host) of each VM to one of its guest addresses (the first global one of O(address_family),
        else of the other family; link-local addresses are never used). VMs without an address get none.
    type: bool
    default: false
  address_family:
    description: The address family C(ansible_host) is taken from first.
    type: str
    choices: [ipv4, ipv6]
    default: ipv4
  include_inactive:
    description: List VMs that are defined but not running (status C(Down)) too.
    type: bool
    default: true
  hostname:
    description: What names a VM in the inventory, its libvirt name or its UUID.
    type: str
    choices: [name, uuid]
    default: name
  vars_prefix:
    description: Prefix of the variables this plugin sets on each VM (C(ansible_host) excepted).
    type: str
    default: virtnode_
  group_prefix:
    description: Prefix of the groups this plugin makes.
    type: str
    default: virtnode_
  connect_timeout:
    description:
      - Seconds to wait for a remote host's libvirt port (or SSH port for C(qemu+ssh)) to answer before giving
        up on it. V(0) does not probe.
    type: float
    default: 5
  fail_on_unreachable:
    description:
      - Fail this inventory source (none of its VMs is listed) when a host cannot be read, instead of warning and
        listing the other hosts' VMs.
      - Ansible itself warns about a source that fails and goes on with the others; set Ansible's
        C(inventory_any_unparsed_is_failed) (C(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED)) to stop there.
    type: bool
    default: false
'''

EXAMPLES = r'''
# lab.vms.yml: the VMs of two hosts, reached over TLS with the bootstrap role's certificates
plugin: virtnode.kvm.vms
hosts:
  - qemu+tls://host1.example.com/system
  - qemu+tls://host2.example.com/system
set_ansible_host: true

---
# ssh.vms.yml: over SSH, guest addresses only from the host's neighbour table, cached for ten minutes
plugin: virtnode.kvm.vms
hosts:
  - qemu+ssh://root@host1.example.com/system?keyfile=/root/.ssh/id_ed25519
ip_sources: [arp]
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/virtnode-vms
cache_timeout: 600

---
# constructed.vms.yml: groups and variables of your own from the plugin's variables
plugin: virtnode.kvm.vms
hosts:
  - qemu:///system
include_inactive: false
keyed_groups:
  - key: virtnode_ips | map(attribute='source') | unique
    prefix: addresses_from
compose:
  vm_memory_gib: virtnode_memory_mib / 1024
groups:
  big_vms: virtnode_memory_mib >= 8192
'''

from ansible.errors import AnsibleError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.virtnode.kvm.plugins.module_utils.inventory import vms as inventory_vms
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """The VMs of libvirt hosts; the work is in module_utils/inventory/vms.py."""

    NAME = 'virtnode.kvm.vms'

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(('vms.yml', 'vms.yaml'))

    def _read_hosts(self):
        if not libvirt_conn.HAS_LIBVIRT:
            raise AnsibleError('the virtnode.kvm.vms inventory needs %s on the controller: %s'
                               % (libvirt_conn.LIBVIRT_REQUIREMENT, libvirt_conn.LIBVIRT_IMPORT_ERROR))
        if not domxml.HAS_LXML:
            raise AnsibleError('the virtnode.kvm.vms inventory needs python lxml on the controller')
        return inventory_vms.read_hosts(self.get_option('hosts'), ip_sources=self.get_option('ip_sources'),
                                        include_inactive=self.get_option('include_inactive'),
                                        connect_timeout=self.get_option('connect_timeout'))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        update_cache = self.get_option('cache') and not cache
        hosts = None
        if use_cache:
            try:
                hosts = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if hosts is None:
            hosts = self._read_hosts()
        if update_cache:
            self._cache[cache_key] = hosts
        self._populate(hosts)

    def _populate(self, hosts):
        for host in hosts:
            if 'error' in host:
                if self.get_option('fail_on_unreachable'):
                    raise AnsibleError('virtnode.kvm.vms: %s' % host['error'])
                self.display.warning('virtnode.kvm.vms: %s; its VMs are not listed' % host['error'])
            for warning in host.get('warnings', []):
                self.display.warning('virtnode.kvm.vms: %s' % warning)
        entries, warnings = inventory_vms.inventory_entries(
            hosts, hostname=self.get_option('hostname'), vars_prefix=self.get_option('vars_prefix'),
            group_prefix=self.get_option('group_prefix'), set_ansible_host=self.get_option('set_ansible_host'),
            address_family=self.get_option('address_family'))
        for warning in warnings:
            self.display.warning('virtnode.kvm.vms: %s' % warning)
        strict = self.get_option('strict')
        for entry in entries:
            name = self.inventory.add_host(entry['name'])
            for group in entry['groups']:
                self.inventory.add_group(group)
                self.inventory.add_child(group, name)
            for key, value in entry['vars'].items():
                self.inventory.set_variable(name, key, value)
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option('compose'), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, name, strict=strict)
