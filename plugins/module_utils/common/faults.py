# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Crash points: a test hook that kills the process at a named step, as a crash there would.

Every multi-step change of shared storage or of the host's network calls
:func:`crash_point` between two steps. When the environment variable
:data:`CRASH_ENV` names that point the process SIGKILLs itself on the spot:
no ``finally``, no ``atexit``, no flush, exactly what a power cut or the OOM
killer leaves. Otherwise the call costs one dictionary lookup.

This is a test hook only (tests/integration/test_crash_consistency.py): it
shows that re-running the interrupted task converges and leaves nothing
half-written. :data:`CRASH_POINTS` lists every point so the test iterates over
all of them and a unit test checks each one is still called in the code: a
renamed step cannot silently drop out of the test.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = 'VIRTNODE_CRASH_AT'
# With VIRTNODE_CRASH_HOW=stop the process stops (SIGSTOP) instead, so a test can kill the whole host there.
HOW_ENV = 'VIRTNODE_CRASH_HOW'

# name -> (file under plugins/module_utils that calls it, what has happened when it fires)
CRASH_POINTS = {
    'domain_create.staging': ('storage/layout.py', 'the hidden staging directory exists, still empty'),
    'domain_create.populated': ('storage/layout.py', 'the staging tree and its metadata are written, not renamed'),
    'domain_create.renamed': ('storage/domain.py', 'the domain is in place, its lockspace and leases are not'),
    'domain_create.lockspace': ('storage/domain.py', 'the lockspace is written, the SDM lease is not'),
    'domain_leases.proven_blank': ('storage/domain.py', 'the blank lease areas are found and locked, none formatted'),
    'domain_create.leases': ('storage/domain.py', 'lockspace and leases are written, the call has not returned'),
    'volume_create.data': ('storage/volumes.py', 'the data file exists, no .meta yet'),
    'volume_create.meta_illegal': ('storage/volumes.py', 'the .meta says ILLEGAL, no .lease yet'),
    'volume_create.lease': ('storage/volumes.py', 'the .lease is written, the volume is still ILLEGAL'),
    'volume_create.parent_internal': ('storage/volumes.py', 'a snapshot\'s parent is INTERNAL, the new volume still ILLEGAL'),
    'volume_create.legal': ('storage/volumes.py', 'the .meta says LEGAL, the image directory is not synced'),
    'pool_create.spm_lease': ('storage/domain.py', 'the SDM lease is held, nothing written'),
    'pool_create.master_tree': ('storage/domain.py', 'the master tree exists, the domain metadata names no pool'),
    'pool_create.metadata': ('storage/domain.py', 'the metadata names the pool, the lease is not released'),
    'spm_start.lease': ('storage/spm.py', 'the holder holds the SDM lease, the pool metadata names no SPM'),
    'spm_start.metadata': ('storage/spm.py', 'the pool metadata names this host, its local state still says contend'),
    'block_domain_create.vg': ('storage/block_domain.py', 'the VG exists with the unready tag, no LV yet'),
    'block_domain_create.lvs': ('storage/block_domain.py', 'the special LVs exist, nothing zeroed, no file system on master'),
    'block_domain_create.metadata': ('storage/block_domain.py', 'the metadata tags are written, the VG is still unready'),
    'block_domain_create.ready': ('storage/block_domain.py', 'the VG is a storage domain, its lockspace and SPM lease are not'),
    'block_domain_extend.vg': ('storage/block_domain.py', 'the VG spans the new LUN, the metadata does not map it yet'),
    'block_volume_create.lv': ('storage/block_volumes.py', 'the LV exists tagged initializing, no qcow2 header'),
    'block_volume_create.tags': ('storage/block_volumes.py', 'the LV has its image, parent and slot tags, the slot is blank'),
    'block_volume_create.meta_illegal': ('storage/block_volumes.py', 'the slot says ILLEGAL, no lease yet'),
    'block_volume_create.lease': ('storage/block_volumes.py', 'the lease is written, the volume is still ILLEGAL'),
    'block_volume_create.parent_internal': ('storage/block_volumes.py', 'a snapshot\'s parent is INTERNAL, the new volume still ILLEGAL'),
    'network_apply.step': ('network/apply.py', 'a network change is applied partly (fires after its first step)'),
    'network_apply.applied': ('network/setup_networks.py', 'every step is applied, the running config is not written'),
}


def crash_point(name):
    """SIGKILL this process if :data:`CRASH_ENV` names ``name`` (a test hook; otherwise nothing happens)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP if os.environ.get(HOW_ENV) == 'stop' else signal.SIGKILL)
