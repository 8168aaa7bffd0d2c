#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_domain
short_description: Create, extend, attach, activate, detach, import and remove VDSM storage domains
version_added: 0.1.0
description:
  - Manages a file storage domain (NFS, POSIX or local directory) or a block storage domain (iSCSI, FC) in VDSM's
    on-disk format, so oVirt can import domains made here and this module can import domains made by oVirt.
  - A block domain (O(type=iscsi) or O(type=fcp)) is a volume group named O(sd_uuid) on the LUNs O(luns), in VDSM's
    block format (metadata in C(MDT_) VG tags with their seal, 128 MiB extents, the special logical volumes
    C(metadata), C(ids), C(leases), C(inbox), C(outbox), C(xleases) and C(master)). Listing more LUNs for an existing
    block domain extends it; LUNs are never taken away.
  - Every state is available for block domains. A block domain can be the master of a pool; its C(master) LV holds
    the pool's master file system, which only the SPM mounts (see M(virtnode.kvm.spm)).
  - V(present) creates the domain on a connected storage server - the C(dom_md) files, metadata sealed with
    C(_SHA_CKSUM), the sanlock lockspace on C(dom_md/ids), the SPM lease C(SDM) at 1 x ALIGNMENT of
    C(dom_md/leases) and, for version 4 and later non-local domains, the C(xleases) index.
  - V(attached), V(active) and V(detached) change the domain's membership of pool O(pool_uuid). They change pool
    metadata, so they run only on the pool's SPM; elsewhere they fail naming the SPM host.
  - V(imported) finds an existing domain on server O(server) (oVirt's import of an existing data domain), initialises
    its lockspace and SPM lease if they are blank, and, with O(pool_uuid), attaches and activates it.
  - V(absent) removes a detached domain; refused while it has images unless O(force).
options:
  sd_uuid:
    description:
      - UUID of the domain. Required except for V(imported), where it defaults to the only domain found on O(server).
    type: str
  server:
    description:
      - The storage server path as given to M(virtnode.kvm.storage_server) O(virtnode.kvm.storage_server#module:path).
      - Required for V(present) and V(imported) of file domains; not used by block domains.
    type: str
  type:
    description:
      - Domain type written to the metadata (C(TYPE)).
      - V(iscsi) and V(fcp) are block domains on O(luns); the others are file domains on O(server).
    type: str
    choices: [nfs, posixfs, localfs, iscsi, fcp]
    default: posixfs
  luns:
    description:
      - GUIDs (WWIDs, the names of C(/dev/mapper) multipath devices) of the LUNs of a block domain, as
        M(virtnode.kvm.lun_info) lists them. The first holds the domain's metadata.
      - Required to create a block domain; GUIDs the domain does not span yet are added to it. At most 10.
      - A LUN used by another volume group, or with anything built on it, is refused unless O(force).
    type: list
    elements: str
  domain_class:
    description: Domain class.
    type: str
    choices: [Data, Iso, Backup]
    default: Data
  description:
    description: Domain description, at most 50 characters.
    type: str
    default: ''
  version:
    description: Storage format version of a new domain (4 and 5 are read).
    type: int
    choices: [4, 5]
    default: 5
  io_timeout:
    description:
      - sanlock I/O timeout of the domain's lockspace in seconds, written as C(IOOPTIMEOUTSEC).
      - A host that stops renewing loses its leases after 8 x io_timeout + 60 seconds; tests use V(1).
    type: int
    default: 10
  block_size:
    description:
      - Block size of a new version 5 domain.
      - V(4096) only on V(localfs) and GlusterFS domains; VDSM creates and reads NFS and POSIX domains with V(512) only.
    type: int
    choices: [512, 4096]
    default: 512
  alignment:
    description:
      - Lease alignment of a new version 5 domain, in bytes.
      - Above V(1048576) only with O(block_size=4096) (sanlock supports 512-byte sectors with 1 MiB only).
    type: int
    choices: [1048576, 2097152, 4194304, 8388608]
    default: 1048576
  pool_uuid:
    description: Pool for V(attached), V(active), V(detached) and V(imported).
    type: str
  force:
    description:
      - With V(absent), remove the domain even if it has images.
      - With V(imported), take over a domain that still names another pool.
      - With O(luns), overwrite LUNs that another volume group or anything else uses (what they hold is lost).
    type: bool
    default: false
  state:
    description: Desired state of the domain.
    type: str
    choices: [present, absent, attached, active, detached, imported]
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
  - Activating a domain joins its lockspace on this host; other hosts join when they reconnect the pool with
    M(virtnode.kvm.storage_pool).
  - The domain being the pool's master cannot be detached.
  - A block domain needs LUNs of at least 5 GiB (its special volumes take 4.5 GiB) with 512-byte logical blocks.
  - Every LVM command on a block domain carries its own configuration (the multipath devices only, no devices file),
    and reads use C(--readonly); the host's own LVM configuration (a filter or devices file) may hide the LUNs.
requirements:
  - python3-sanlock on the managed host (not needed for V(localfs) domains)
  - lvm2, e2fsprogs and dm-multipath for block domains
seealso:
  - module: virtnode.kvm.storage_server
  - module: virtnode.kvm.storage_pool
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs an NFS server, and a pool whose SPM is this host
- name: Create a data domain on an NFS export
  virtnode.kvm.storage_domain:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    server: nfs.example.com:/exports/data
    type: nfs
    description: data on nfs

- name: Attach it to a pool and activate it (on the SPM)
  virtnode.kvm.storage_domain:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    state: active

- name: Create a data domain on two iSCSI LUNs
  virtnode.kvm.storage_domain:
    sd_uuid: 7c0e4b1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b
    type: iscsi
    luns:
      - 36001405a1b2c3d4e5f60718293a4b5c6
      - 36001405b2c3d4e5f60718293a4b5c6d7
    description: data on the SAN

- name: Import the data domain an old oVirt setup left on another export
  virtnode.kvm.storage_domain:
    server: nfs.example.com:/exports/old
    type: nfs
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    force: true
    state: imported
"""

RETURN = r"""
domain:
  description: The domain after the task (V(null) when absent, or in check mode before creation).
  type: dict
  returned: success
  contains:
    sd_uuid:
      description: Domain UUID.
      type: str
      returned: always
      sample: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    path:
      description: Domain directory (V(null) for block domains).
      type: str
      returned: always
      sample: /rhev/data-center/mnt/nfs.example.com:_exports_data/5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    version:
      description: Format version.
      type: int
      returned: always
      sample: 5
    role:
      description: V(Regular) or V(Master).
      type: str
      returned: always
      sample: Regular
    pool_uuids:
      description: Pools the domain belongs to.
      type: list
      elements: str
      returned: always
      sample: []
    metadata:
      description: The raw metadata keys.
      type: dict
      returned: always
      sample: {CLASS: Data, VERSION: "5"}
    luns:
      description: GUIDs of the LUNs a block domain spans, the metadata LUN first.
      type: list
      elements: str
      returned: for block domains
      sample: [36001405a1b2c3d4e5f60718293a4b5c6]
    free_bytes:
      description: Free space (of the file system, or the volume group's free extents).
      type: int
      returned: always
      sample: 3221225472
    images:
      description: Images with their volume chains.
      type: list
      elements: dict
      returned: always
      sample: []
found:
  description: UUIDs of the domains found on O(server) (V(imported) only).
  type: list
  elements: str
  returned: when O(state=imported)
  sample: [5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11]
actions:
  description: What was done (or would be done in check mode).
  type: list
  elements: str
  returned: success
  sample: [create, init_leases]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str'),
            server=dict(type='str'),
            type=dict(type='str', default='posixfs', choices=list(domain_state.TYPE_NAMES)),
            domain_class=dict(type='str', default='Data', choices=['Data', 'Iso', 'Backup']),
            description=dict(type='str', default=''),
            version=dict(type='int', default=5, choices=[4, 5]),
            io_timeout=dict(type='int', default=10),
            block_size=dict(type='int', default=512, choices=[512, 4096]),
            alignment=dict(type='int', default=1048576, choices=[1048576, 2097152, 4194304, 8388608]),
            luns=dict(type='list', elements='str'),
            pool_uuid=dict(type='str'),
            force=dict(type='bool', default=False),
            state=dict(type='str', default='present', choices=list(domain_state.STATES)),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, domain_state.run_module)


if __name__ == '__main__':
    main()
