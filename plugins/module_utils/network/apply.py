# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running a plan, and undoing it.

:func:`apply_steps` runs the steps of a plan in order and stops at the first
failure with :class:`ApplyError`; :func:`rollback` undoes what was done and
then makes sure the snapshot taken before holds again.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.network.plan import differences, plan_changes
from ansible_collections.virtnode.kvm.plugins.module_utils.network.state import read_state


def run_command(ip, dhcp, args):
    if args and args[0] == '@dhcp':
        action, dev, family = args[1], args[2], int(args[3])
        if dhcp is None:
            raise VirtnodeError('DHCP clients are not available')
        (dhcp.start if action == 'start' else dhcp.stop)(dev, family)
        return
    ip.run(args)


class ApplyError(VirtnodeError):
    """A step of a plan failed; ``details`` name its index (``failed_step``) and the steps done before it (``steps_done``)."""

    def __init__(self, message, index, done):
        super().__init__(message, {'failed_step': index, 'steps_done': done})

    @property
    def index(self):
        return self.details['failed_step']

    @property
    def done(self):
        return self.details['steps_done']


def apply_steps(ip, dhcp, steps, fail_at_step=None):
    """Run ``steps`` in order; on the first failure raise ApplyError with the steps done so far."""
    done = []
    for index, step in enumerate(steps):
        if fail_at_step is not None and index == fail_at_step:
            raise ApplyError('injected failure at step %d (%s) for testing rollback' % (index, step['description']), index, done)
        try:
            run_command(ip, dhcp, step['do'])
        except VirtnodeError as err:
            raise ApplyError('step %d (%s) failed: %s' % (index, step['description'], err), index, done)
        done.append(step)
        crash_point('network_apply.step')
    return done


def undo_steps(ip, dhcp, done):
    """Undo ``done`` steps in reverse order; return the errors (best effort, never raises)."""
    errors = []
    for step in reversed(done):
        for args in step['undo']:
            try:
                run_command(ip, dhcp, args)
            except VirtnodeError as err:
                errors.append('undo of %s: %s' % (step['description'], err))
    return errors


def restore_snapshot(ip, dhcp, snapshot, attempts=2):
    """Bring the snapshotted devices and default routes back; return (ok, remaining differences, errors)."""
    errors = []
    diffs = []
    for _attempt in range(attempts):
        state = read_state(ip, dhcp)
        diffs = differences(state, snapshot['devices'], snapshot['routes'])
        if not diffs:
            return True, [], errors
        try:
            steps = plan_changes(state, snapshot['devices'], snapshot['routes'])
        except VirtnodeError as err:
            errors.append(str(err))
            break
        for step in steps:
            try:
                run_command(ip, dhcp, step['do'])
            except VirtnodeError as err:
                errors.append(str(err))
    state = read_state(ip, dhcp)
    diffs = differences(state, snapshot['devices'], snapshot['routes'])
    return not diffs, diffs, errors


def rollback(ip, dhcp, done, snapshot):
    """Undo ``done``, then make sure the snapshot holds; return a report dict."""
    undo_errors = undo_steps(ip, dhcp, done)
    ok, diffs, errors = restore_snapshot(ip, dhcp, snapshot)
    return {'restored': ok, 'differences': diffs, 'errors': undo_errors + errors}


def check_kernel_support(ip, state, steps):
    """Fail early, before touching anything, if a step needs a link kind the kernel lacks."""
    for step in steps:
        args = step['do']
        if args[:2] == ['link', 'add'] and 'type' in args:
            kind = args[args.index('type') + 1]
            if kind not in ('bond', 'vlan'):
                continue
            parent = args[3] if kind == 'vlan' and args[2] == 'link' else None
            if kind == 'vlan' and parent not in state['links']:
                parent = next((n for n, l in state['links'].items() if l['kind'] == 'nic' and n != 'lo'), None)
            supported, message = ip.supports_kind(kind, parent)
            if not supported:
                what = {'bond': 'bonding', 'vlan': '802.1q VLAN'}[kind]
                raise VirtnodeError('the kernel cannot create %s devices (%s: %s); nothing was changed' % (
                    what, 'bonding module' if kind == 'bond' else '8021q module', message.strip() or 'not available'),
                    {'kind': kind, 'kernel_message': message})
