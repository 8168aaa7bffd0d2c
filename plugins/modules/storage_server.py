#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_server
short_description: Connect a virtualization node to a file storage server the way VDSM does
version_added: 0.1.0
description:
  - Connects or disconnects a storage server, as VDSM's connectStorageServer does.
  - The connection appears under the VDSM mount root
    C(/rhev/data-center/mnt/<name>) where the name is the path with C(_) doubled and C(/) replaced by C(_).
  - V(localfs) links a local directory there; V(posixfs) mounts O(path) with O(vfstype) and O(options);
    V(nfs) mounts with C(soft,nosharecache), O(timeo), O(retrans) and O(nfs_version).
  - Every V(posixfs) and V(nfs) mount, bind mounts included, is made C(nosuid,nodev), because the storage is written by
    other hosts and clients, so a set-uid program or a device node found there must not work on this host.
    There is no override; O(options) cannot turn them off (C(suid) and C(dev) are refused). A connection
    already mounted without them is remounted with them (the task reports a change and RV(remounted)).
options:
  type:
    description: Kind of storage server.
    type: str
    choices: [localfs, posixfs, nfs]
    required: true
  path:
    description:
      - Local absolute directory (V(localfs)), mount source (V(posixfs)) or C(server:/export) (V(nfs)).
    type: str
    required: true
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
"""

RETURN = r"""
mount_point:
  description: Where the server is (or would be) connected.
  type: str
  returned: success
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
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection as storage_conn


def main():
    module = AnsibleModule(
        argument_spec=dict(
            type=dict(type='str', required=True, choices=list(storage_conn.TYPES)),
            path=dict(type='str', required=True),
            vfstype=dict(type='str'),
            options=dict(type='str'),
            nfs_version=dict(type='str', default='auto', choices=list(storage_conn.NFS_VERSIONS)),
            timeo=dict(type='int', default=storage_conn.DEFAULT_NFS_TIMEO),
            retrans=dict(type='int', default=storage_conn.DEFAULT_NFS_RETRANS),
            state=dict(type='str', default='connected', choices=['connected', 'disconnected']),
        ),
        required_if=[('type', 'posixfs', ('vfstype',))],
        supports_check_mode=True,
    )
    module_run.run(module, storage_conn.run_module)


if __name__ == '__main__':
    main()
