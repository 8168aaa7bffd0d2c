# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SPM's part of a thin volume extend, as a fenced SPM task in a process of its own.

An SPM task (``spm.task``) registers its process with sanlock and holds a
lease in the master domain's lockspace: when the host loses the lockspace,
sanlock kills the process before another host can become SPM, and every
write first checks that this host still holds the SPM lease. The agent is
long-lived and serves every pool of the host, so it never registers itself:
each extend it does as SPM (for its own VMs, or asked through the mailbox)
runs in a short child process that is such a task, and writes only while
this host is the SPM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

DEFAULT_TIMEOUT = 60.0
_MODULE = 'ansible_collections.virtnode.kvm.plugins.module_utils.agent.spm_extend'


def _collections_root():
    """The directory holding ``ansible_collections`` that this code was loaded from."""
    parts = os.path.abspath(__file__).split(os.sep)
    return os.sep.join(parts[:len(parts) - 1 - parts[::-1].index('ansible_collections')]) or os.sep


def extend(sd_uuid, vol_uuid, size_mib, timeout=DEFAULT_TIMEOUT):
    """Grow the volume to ``size_mib`` MiB as this host's SPM, in a fenced child; its size in MiB after.

    Raises VirtnodeError (details ``fenced``: True when this host is not, or
    no longer, the SPM).
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (_collections_root(), env.get('PYTHONPATH')) if p)
    argv = [sys.executable, '-m', _MODULE, sd_uuid, vol_uuid, str(int(size_mib))]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise VirtnodeError('the SPM extend of volume %s took more than %ss and was stopped' % (vol_uuid, timeout),
                            {'sd_uuid': sd_uuid, 'volume_uuid': vol_uuid}) from err
    lines = proc.stdout.strip().splitlines()
    try:
        outcome = json.loads(lines[-1])
    except (IndexError, ValueError):
        outcome = {'ok': False, 'msg': 'the SPM extend process exited %s: %s'
                   % (proc.returncode, (proc.stderr.strip().splitlines() or ['killed'])[-1])}
    if not outcome.get('ok'):
        raise VirtnodeError(outcome.get('msg') or 'the SPM extend failed',
                            {'sd_uuid': sd_uuid, 'volume_uuid': vol_uuid, 'fenced': bool(outcome.get('fenced'))})
    return outcome['size_mib']


def _run_task(sd_uuid, vol_uuid, size_mib):
    # Imported here: the agent's parent process needs none of this to start a child.
    # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import thin as thin_monitor
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block as thin_block
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
    sp_uuid = thin_monitor.pool_of_domain(sd_uuid)
    if sp_uuid is None:
        raise VirtnodeError('storage domain %s is in no storage pool this host is connected to' % sd_uuid)
    with spm.task(sp_uuid, 'volume extend') as task:
        return thin_block.extend_volume_on_spm(sd_uuid, vol_uuid, size_mib, check=task.check)


def main(argv):
    try:
        if len(argv) != 3:
            raise VirtnodeError('usage: spm_extend SD_UUID VOLUME_UUID SIZE_MIB')
        outcome = {'ok': True, 'size_mib': _run_task(argv[0], argv[1], int(argv[2]))}
    except (VirtnodeError, ValueError) as err:
        outcome = {'ok': False, 'msg': getattr(err, 'message', str(err)),
                   'fenced': bool(getattr(err, 'details', {}).get('fenced'))}
    sys.stdout.write(json.dumps(outcome) + '\n')
    return 0 if outcome['ok'] else 1


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
