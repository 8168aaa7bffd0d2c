#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_server
short_description: Connect a virtualization node to a file or block storage server the way VDSM does
version_added: 0.1.0
description:
  - Connects or disconnects a storage server, as VDSM's connectStorageServer does.
  - The connection appears under the VDSM mount root
    C(/rhev/data-center/mnt/<name>) where the name is the path with C(_) doubled and C(/) replaced by C(_).
  - V(localfs) links a local directory there; V(posixfs) mounts O(path) with O(vfstype) and O(options);
    V(nfs) mounts with C(soft,nosharecache), O(timeo), O(retrans) and O(nfs_version).
  - V(iscsi) logs in to O(target) on each of O(portals) (each portal is one path to the target's LUNs; dm-multipath
    joins the paths of a LUN into one device). The portal is asked first which targets it offers (a sendtargets
    discovery that saves nothing, so no record of the portal's other targets is left). The node record made for the
    target and portal has C(node.startup=automatic), so open-iscsi logs in again at boot, and CHAP when
    O(chap_username) and O(chap_password) are given. V(disconnected) logs out and deletes the records.
  - V(fcp) rescans the SCSI hosts of the Fibre Channel HBAs (as VDSM's C(fc-scan)) and reports the SCSI disks that
    appeared; it changes nothing else, and V(disconnected) does nothing (FC has no session).
  - Every V(posixfs) and V(nfs) mount, bind mounts included, is made C(nosuid,nodev), because the storage is written by
    other hosts and clients, so a set-uid program or a device node found there must not work on this host.
    There is no override; O(options) cannot turn them off (C(suid) and C(dev) are refused). A connection
    already mounted without them is remounted with them (the task reports a change and RV(remounted)).
options:
  type:
    description: Kind of storage server.
    type: str
    choices: [localfs, posixfs, nfs, iscsi, fcp]
    required: true
  path:
    description:
      - Local absolute directory (V(localfs)), mount source (V(posixfs)) or C(server:/export) (V(nfs)).
      - Required for those types; not used by V(iscsi) and V(fcp).
    type: str
  target:
    description:
      - The iSCSI target's name (C(iqn.YYYY-MM.domain:id), C(eui.) or C(naa.)); required for V(iscsi).
    type: str
  portals:
    description:
      - The target's portals to log in to, each C(address[:port]), C(name[:port]) or C([IPv6][:port]); port 3260 by
        default. A name is resolved once, and the session is kept by address. Required for V(iscsi).
    type: list
    elements: str
  chap_username:
    description:
      - CHAP user name for V(iscsi) sessions; with O(chap_password). Without both, the record has no authentication.
      - A changed CHAP setting on a live session is written to the record and used at its next login (a warning says
        so); the live path is not logged out for it.
    type: str
  chap_password:
    description:
      - CHAP secret for V(iscsi) sessions; never logged or returned. It is passed to C(iscsiadm) as an argument,
        as open-iscsi offers no other way, so root on the host can see it while the command runs.
    type: str
  vfstype:
    description: File system type for V(posixfs), for example V(xfs), V(ext4), V(none) for a bind mount.
    type: str
  options:
    description:
      - Extra mount options, comma separated (for example V(bind)).
      - C(nosuid,nodev) are always added after them; V(suid) and V(dev) are refused.
    type: str
  nfs_version:
    description: NFS protocol version; V(auto) lets the client negotiate.
    type: str
    choices: ['3', '4', '4.0', '4.1', '4.2', auto]
    default: auto
  timeo:
    description: NFS timeout in deciseconds.
    type: int
    default: 600
  retrans:
    description: NFS retransmissions before a soft mount fails.
    type: int
    default: 6
  state:
    description: Whether the server is connected.
    type: str
    choices: [connected, disconnected]
    default: connected
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
  - Mounts are made in the mount namespace the module runs in.
  - A V(localfs) connection is a symbolic link, not a mount; the flags of the file system holding the directory apply
    (mount it C(nosuid,nodev) yourself).
  - Disconnecting does not check whether domains on the server are still in use.
  - V(iscsi) needs open-iscsi (C(iscsiadm), C(iscsid); the module starts C(iscsid.service) when no iscsid runs).
  - V(fcp) has no lab test (the lab has no Fibre Channel); it is covered by unit tests.
seealso:
  - module: virtnode.kvm.storage_domain
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs a real NFS server, a real block device and /srv/virtnode/local on the host
- name: Connect an NFS export
  virtnode.kvm.storage_server:
    type: nfs
    path: nfs.example.com:/exports/data
    nfs_version: "4.2"

- name: Connect a POSIX file system (an XFS volume)
  virtnode.kvm.storage_server:
    type: posixfs
    path: /dev/vg0/vmstore
    vfstype: xfs

- name: Link a local directory as local storage
  virtnode.kvm.storage_server:
    type: localfs
    path: /srv/virtnode/local

- name: Disconnect the NFS export
  virtnode.kvm.storage_server:
    type: nfs
    path: nfs.example.com:/exports/data
    state: disconnected

- name: Log in to an iSCSI target on two portals, with CHAP
  virtnode.kvm.storage_server:
    type: iscsi
    target: iqn.2026-12.com.example:storage0
    portals: [192.0.2.10, "198.51.100.10:3260"]
    chap_username: node1
    chap_password: "{{ vault_iscsi_chap_password }}"

- name: Rescan the Fibre Channel HBAs for new LUNs
  virtnode.kvm.storage_server:
    type: fcp
"""

RETURN = r"""
mount_point:
  description: Where the server is (or would be) connected.
  type: str
  returned: when O(type) is a file storage type
  sample: /rhev/data-center/mnt/nfs.example.com:_exports_data
connected:
  description: Whether the server is connected after the task.
  type: bool
  returned: success
  sample: true
command:
  description: The mount command used (or that would be used) for a V(posixfs) or V(nfs) connection.
  type: list
  elements: str
  returned: when O(type) is not V(localfs)
  sample: [mount, -t, nfs, -o, "soft,nosharecache,timeo=600,retrans=6", -o, "nosuid,nodev", "nfs.example.com:/exports/data",
           "/rhev/data-center/mnt/nfs.example.com:_exports_data"]
remounted:
  description: The options (of C(nosuid), C(nodev)) that an existing mount lacked and were added by a remount.
  type: list
  elements: str
  returned: when a connected server's mount lacked them
  sample: [nosuid, nodev]
target:
  description: The iSCSI target.
  type: str
  returned: when O(type=iscsi)
  sample: iqn.2026-12.com.example:storage0
portals:
  description: The portals as addresses, C(address:port) (names resolved).
  type: list
  elements: str
  returned: when O(type=iscsi)
  sample: ["192.0.2.10:3260", "198.51.100.10:3260"]
actions:
  description: What was (or in check mode would be) done on each portal that needed anything.
  type: list
  elements: dict
  returned: when O(type=iscsi) and O(state=connected)
  contains:
    portal:
      description: The portal.
      type: str
    record_created:
      description: Whether the node record was created.
      type: bool
    settings:
      description: Node record settings that were written (names only, never values).
      type: list
      elements: str
    login:
      description: Whether the portal was logged in to.
      type: bool
  sample: [{portal: "192.0.2.10:3260", record_created: true, settings: [node.startup], login: true}]
sessions:
  description: The target's sessions on the given portals after the task, with the SCSI disks each brought.
  type: list
  elements: dict
  returned: when O(type=iscsi)
  sample: [{id: 3, target: "iqn.2026-12.com.example:storage0", address: 192.0.2.10, port: 3260, state: LOGGED_IN,
            disks: [{name: sdb, lun: 0}]}]
fc_hosts:
  description: The SCSI hosts of the Fibre Channel HBAs.
  type: list
  elements: str
  returned: when O(type=fcp)
  sample: [host3, host4]
new_disks:
  description: SCSI disks that appeared with the rescan.
  type: list
  elements: str
  returned: when O(type=fcp), O(state=connected) and not in check mode
  sample: [sdc]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection as storage_conn


def main():
    module = AnsibleModule(
        argument_spec=dict(
            type=dict(type='str', required=True, choices=list(storage_conn.TYPES + storage_conn.BLOCK_TYPES)),
            path=dict(type='str'),
            target=dict(type='str'),
            portals=dict(type='list', elements='str'),
            chap_username=dict(type='str'),
            chap_password=dict(type='str', no_log=True),
            vfstype=dict(type='str'),
            options=dict(type='str'),
            nfs_version=dict(type='str', default='auto', choices=list(storage_conn.NFS_VERSIONS)),
            timeo=dict(type='int', default=storage_conn.DEFAULT_NFS_TIMEO),
            retrans=dict(type='int', default=storage_conn.DEFAULT_NFS_RETRANS),
            state=dict(type='str', default='connected', choices=['connected', 'disconnected']),
        ),
        required_if=[('type', 'posixfs', ('vfstype', 'path')), ('type', 'nfs', ('path',)), ('type', 'localfs', ('path',)),
                     ('type', 'iscsi', ('target', 'portals'))],
        required_together=[('chap_username', 'chap_password')],
        supports_check_mode=True,
    )
    module_run.run(module, storage_conn.run_module)


if __name__ == '__main__':
    main()
