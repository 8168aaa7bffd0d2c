#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: spm
short_description: Start, stop and query the storage pool manager (SPM) role on this node
version_added: 0.1.0
description:
  - Exactly one host of a pool, the SPM, may change storage metadata. The role is the sanlock lease C(SDM) of the
    pool's master domain; sanlock, not the metadata files, decides who holds it.
  - V(started) forks a small detached holder process that registers with sanlock, acquires C(SDM) with this host's
    id, bumps C(POOL_SPM_LVER), writes C(POOL_SPM_ID), and then checks every O(check_interval) seconds that it still
    holds the lease (if not, it stops being SPM at once). It keeps its state in C(/run/virtnode/spm/<pool>.json).
    If another host holds the lease, the task fails naming that host.
  - When the master is a block domain, the holder also mounts the master file system (its C(master) LV, after
    C(e2fsck -p)) before it writes C(POOL_SPM_ID), and unmounts it before it releases the lease; only the SPM
    mounts it.
  - V(stopped) asks the holder to clear C(POOL_SPM_ID), release the lease and exit.
  - V(status) only reports.
options:
  pool_uuid:
    description: UUID of the pool; this host must be connected to it (M(virtnode.kvm.storage_pool)).
    type: str
    required: true
  state:
    description: Desired SPM role of this host, or V(status) to only report it.
    type: str
    choices: [started, stopped, status]
    default: status
  check_interval:
    description: Seconds between the holder's checks that it still holds the lease (VDSM checks every 20 s).
    type: float
    default: 20.0
  timeout:
    description: Seconds to wait for the holder to start or stop.
    type: float
    default: 120.0
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
  - When the SPM host dies, another host can take the role only after sanlock declares it dead,
    8 x io_timeout + 60 seconds after its last lease renewal.
requirements:
  - python3-sanlock on the managed host
seealso:
  - module: virtnode.kvm.storage_pool
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs a storage pool this host is connected to
- name: Become the SPM
  virtnode.kvm.spm:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    state: started

- name: Who is the SPM?
  virtnode.kvm.spm:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
  register: spm_status

- name: Give up the role
  virtnode.kvm.spm:
    pool_uuid: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    state: stopped
"""

RETURN = r"""
spm:
  description: SPM status of the pool as seen from this host, after the task.
  type: dict
  returned: success
  contains:
    sp_uuid:
      description: Pool UUID.
      type: str
      returned: always
      sample: 0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2
    master_sd_uuid:
      description: Master domain holding the SPM lease.
      type: str
      returned: always
      sample: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    spm_status:
      description: This host's role - V(SPM), V(Contend) (starting) or V(Free).
      type: str
      returned: always
      sample: SPM
    spm_id:
      description: Host id owning the SPM lease on storage (V(-1) if none).
      type: int
      returned: always
      sample: 1
    spm_host:
      description: Host name recorded for RV(spm.spm_id), if known.
      type: str
      returned: always
      sample: vnhost1
    lver:
      description: C(POOL_SPM_LVER), bumped each time a host becomes SPM.
      type: int
      returned: always
      sample: 4
    host_id:
      description: This host's id in the pool.
      type: int
      returned: always
      sample: 1
    holder_pid:
      description: Pid of this host's holder process, if running.
      type: int
      returned: always
      sample: 12345
    last_state:
      description: Last state the holder recorded (V(SPM), V(Contend), V(lost)) or V(null).
      type: str
      returned: always
      sample: SPM
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pool_uuid=dict(type='str', required=True),
            state=dict(type='str', default='status', choices=['started', 'stopped', 'status']),
            check_interval=dict(type='float', default=spm.DEFAULT_CHECK_INTERVAL),
            timeout=dict(type='float', default=spm.DEFAULT_START_TIMEOUT),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, spm.run_module)


if __name__ == '__main__':
    main()
