#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_info
short_description: Report the storage domains, images, volume chains, pools and SPM status seen by this node
version_added: 0.1.0
description:
  - Scans the connected storage servers under C(/rhev/data-center/mnt) for VDSM file storage domains (format 4 and 5)
    and reports their metadata, free space, images and volume chains (sizes, legality, parents).
  - Also reports the block storage domains (volume groups tagged C(RHAT_storage_domain)) on the LUNs this host sees
    through dm-multipath, read with read-only LVM commands; none are looked for on a host without multipath devices.
  - With O(pool_uuid), also reports the pool and its SPM status (from sanlock and this host's SPM holder).
  - When the node agent (role C(virtnode.kvm.node_agent)) runs, also reports its storage monitor state for each domain,
    as VDSM's C(repoStats) does (RV(repo_stats)); reading it costs no storage I/O.
  - Never changes anything.
options:
  sd_uuid:
    description: Report only this domain.
    type: str
  pool_uuid:
    description: Pool whose metadata and SPM status to report; also limits RV(domains) to that pool's domains.
    type: str
  images:
    description: Whether to list images and volumes.
    type: bool
    default: true
  repo_stats:
    description:
      - Whether to ask the node agent for its storage monitor state (RV(repo_stats)).
      - An answer older than three monitoring intervals is not used.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
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
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: List every storage domain this host sees
  virtnode.kvm.storage_info:
  register: storage

- name: Only the domains, without images
  virtnode.kvm.storage_info:
    images: false
"""

RETURN = r"""
domains:
  description: Storage domains found, sorted by UUID.
  type: list
  elements: dict
  returned: always
  contains:
    sd_uuid:
      description: Domain UUID.
      type: str
      returned: always
      sample: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    path:
      description: Domain directory; for block domains (volume groups) this host's C(/rhev/data-center/mnt/blockSD/<sd_uuid>).
      type: str
      returned: always
      sample: /rhev/data-center/mnt/nfs.example.com:_exports_data/5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    luns:
      description: For block domains, the GUIDs of their LUNs, the metadata LUN first.
      type: list
      elements: str
      returned: for block domains
      sample: [36001405a1b2c3d4e5f60718293a4b5c6]
    version:
      description: Format version.
      type: int
      returned: always
      sample: 5
    type:
      description: Domain type (C(TYPE)).
      type: str
      returned: always
      sample: NFS
    role:
      description: V(Regular) or V(Master).
      type: str
      returned: always
      sample: Master
    free_bytes:
      description: Free space of the file system holding the domain.
      type: int
      returned: always
      sample: 107374182400
    total_bytes:
      description: Size of that file system.
      type: int
      returned: always
      sample: 214748364800
    metadata:
      description: Raw metadata keys.
      type: dict
      returned: always
      sample: {CLASS: Data}
    images:
      description: Images, each with C(image_uuid) and C(volumes) (base first; capacity, apparent and true size, legality, parent).
      type: list
      elements: dict
      returned: when O(images=true)
      sample: []
pool:
  description: The pool's metadata (V(null) without O(pool_uuid)).
  type: dict
  returned: always
  sample: {pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2, domains: {}}
spm:
  description: SPM status of the pool (see M(virtnode.kvm.spm)); V(null) without O(pool_uuid).
  type: dict
  returned: always
  sample: {spm_status: SPM, spm_id: 1, lver: 2}
repo_stats:
  description:
    - The node agent's storage monitor state, keyed by domain UUID (VDSM's C(repoStats)), limited as RV(domains) is.
    - Empty when the agent does not run or O(repo_stats=false). It also lists domains on mounts that stopped answering.
  type: dict
  returned: always
  sample:
    5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11:
      valid: true
      code: 0
      delay: 0.000412
      last_check: 3.1
      error: null
      acquired: true
      host_id: 1
      version: 5
      role: Master
      free_bytes: 107374182400
      total_bytes: 214748364800
  contains:
    valid:
      description: Whether the domain's metadata was read, within the agent's timeout, and is intact.
      type: bool
      returned: always
    code:
      description: 0 when valid, else the errno of the failure (C(110) for a read that did not answer in time).
      type: int
      returned: always
    delay:
      description: Seconds the last metadata read took, or has been waiting.
      type: float
      returned: always
    last_check:
      description: Age in seconds of the last completed check (VDSM's C(lastCheck)).
      type: float
      returned: always
    error:
      description: Why the domain is not valid (V(null) when it is).
      type: str
      returned: always
    acquired:
      description:
        - Whether this host holds its host id in the domain's sanlock lockspace; V(false) while joining.
        - V(null) when the sanlock daemon could not be asked.
      type: bool
      returned: always
    host_id:
      description: This host's id in that lockspace (V(null) when not joined).
      type: int
      returned: always
    version:
      description: Format version read from the metadata.
      type: int
      returned: always
    role:
      description: V(Regular) or V(Master), from the metadata.
      type: str
      returned: always
    free_bytes:
      description:
        - Free space; a file domain's file system, a block domain's VG (refreshed with its tags, at most 5 minutes old).
        - The last known figure while the domain does not answer.
      type: int
      returned: always
    total_bytes:
      description: Size, as for RV(repo_stats.free_bytes).
      type: int
      returned: always
repo_stats_age:
  description: Age in seconds of the agent's monitoring round behind RV(repo_stats); V(null) without an answer.
  type: float
  returned: always
  sample: 4.2
unreachable:
  description:
    - Storage mounts that failed with an I/O error or did not answer within 10 seconds (a dead NFS server), each with
      C(mount_point) and C(error). Their domains are missing from RV(domains).
  type: list
  elements: dict
  returned: always
  sample: [{mount_point: "/rhev/data-center/mnt/nfs.example.com:_exports_data", error: "no answer from ... within 10s"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import info as storage_info


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str'),
            pool_uuid=dict(type='str'),
            images=dict(type='bool', default=True),
            repo_stats=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, storage_info.run_module, agent_client.query)


if __name__ == '__main__':
    main()
