#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_pool
short_description: Create a VDSM storage pool and connect this node to it
version_added: 0.1.0
description:
  - A storage pool (oVirt data center storage) is described by its master domain's metadata
    (C(POOL_DOMAINS), C(POOL_SPM_ID), C(POOL_SPM_LVER), C(MASTER_VERSION), C(POOL_DESCRIPTION)).
  - V(present) makes domain O(master_sd_uuid) the master of a new pool (taking the SPM lease while it writes),
    then connects this host like V(connected).
  - V(connected) joins the sanlock lockspace of every active domain of the pool with O(host_id) (the sanlock
    daemon holds it, so it outlives the task), creates the links C(/rhev/data-center/<pool>/<domain>) and
    C(mastersd), and records this host's name under its host id in the master domain so that other hosts can
    name the SPM. On a block master (O(master_sd_uuid) an iSCSI or FC domain) the master file system is mounted
    by the SPM only, so there each host is named by itself while it is SPM, and by nobody else.
  - V(disconnected) leaves the lockspaces and removes the links; refused while this host is the SPM.
options:
  pool_uuid:
    description: UUID of the pool.
    type: str
    required: true
  master_sd_uuid:
    description: Master domain of a new pool (V(present)); the domain must exist and belong to no other pool.
    type: str
  description:
    description: Pool description (C(POOL_DESCRIPTION)).
    type: str
    default: ''
  host_id:
    description:
      - sanlock host id of this host, unique in the pool, 1 to 250 (one SPM mailbox each, as in VDSM).
      - Needed for V(present) and V(connected). When left out, the id in C(/etc/virtnode/host_id) is used,
        which the C(bootstrap) role writes from C(bootstrap_sanlock_host_id).
    type: int
  hostname:
    description: Name recorded for this host id; defaults to the host name.
    type: str
  state:
    description: Desired state.
    type: str
    choices: [present, connected, disconnected]
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
  - Joining a lockspace takes about 2 x the domain's I/O timeout; re-joining with the host id of a host that
    died waits until sanlock declares that host dead.
requirements:
  - python3-sanlock on the managed host
seealso:
  - module: virtnode.kvm.storage_domain
  - module: virtnode.kvm.spm
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs a connected storage server holding the master domain
- name: Create the pool with its master domain and connect this host as host 1
  virtnode.kvm.storage_pool:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    master_sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    description: Default
    host_id: 1
    state: present

- name: Connect another host as host 2
  virtnode.kvm.storage_pool:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    host_id: 2

- name: Disconnect
  virtnode.kvm.storage_pool:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    state: disconnected
"""

RETURN = r"""
pool:
  description: The pool as its master domain describes it (V(null) if not found, e.g. in check mode before creation).
  type: dict
  returned: success
  contains:
    pool_uuid:
      description: Pool UUID.
      type: str
      returned: always
      sample: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    master_sd_uuid:
      description: Master domain.
      type: str
      returned: always
      sample: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    description:
      description: C(POOL_DESCRIPTION).
      type: str
      returned: always
      sample: Default
    domains:
      description: C(POOL_DOMAINS), domain UUID to status (V(Active) or V(Attached)).
      type: dict
      returned: always
      sample: {5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11: Active}
    master_version:
      description: C(MASTER_VERSION).
      type: int
      returned: always
      sample: 1
    spm_id:
      description: C(POOL_SPM_ID), V(-1) when no host is SPM.
      type: int
      returned: always
      sample: -1
    lver:
      description: C(POOL_SPM_LVER).
      type: int
      returned: always
      sample: 3
connected:
  description: Whether this host is connected to the pool after the task.
  type: bool
  returned: success
  sample: true
host_id:
  description: This host's id in the pool (V(null) when disconnected).
  type: int
  returned: success
  sample: 1
actions:
  description: What was done (or would be done in check mode).
  type: list
  elements: str
  returned: success
  sample: [create, connect]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import pool


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pool_uuid=dict(type='str', required=True),
            master_sd_uuid=dict(type='str'),
            description=dict(type='str', default=''),
            host_id=dict(type='int'),
            hostname=dict(type='str'),
            state=dict(type='str', default='connected', choices=['present', 'connected', 'disconnected']),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, pool.run_module)


if __name__ == '__main__':
    main()
