# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of virtnode.kvm.network: the controller's half of the connectivity check.

The module applies the change and leaves a watcher on the host that rolls it
back unless confirmed in time. This plugin then drops its SSH connection
(a persistent control connection could hide a cut path), opens a new one and
confirms. If the module's answer never arrives, or no new connection works
before the deadline, it waits for the deadline, reconnects (bounded) and
reports that the host rolled back by itself.
"""

from __future__ import annotations

import time
import uuid

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase

MODULE = 'virtnode.kvm.network'
# After the deadline: time the watcher gets to restore, then how long to keep
# trying to reach the host again.
ROLLBACK_GRACE = 0.5
REACH_AGAIN_WAIT = 60
RETRY_INTERVAL = 1
# While the change is applied, SSH keepalives detect a cut path within a few
# seconds, instead of TCP retransmissions delivering the answer late.
KEEPALIVE_INTERVAL = 1


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def _call(self, args, task_vars, connect_timeout=None):
        if connect_timeout is not None:
            try:
                self._connection.set_option('timeout', max(1, int(connect_timeout)))
            except (AnsibleError, KeyError, AttributeError):
                pass
        return self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)

    def _reset(self):
        try:
            self._connection.reset()
        except (AnsibleError, OSError):
            pass

    def _ask(self, txid, task_vars, until, connect_timeout):
        """Confirm (or ask about) ``txid`` over a new connection, retrying until ``until``."""
        last_error = None
        while True:
            self._reset()
            remaining = until - time.monotonic()
            try:
                answer = self._call({'_confirm': txid}, task_vars, connect_timeout=min(connect_timeout, max(1, remaining)))
                if not answer.get('unreachable'):
                    return answer, None
                last_error = answer.get('msg')
            except AnsibleConnectionFailure as err:
                last_error = str(err)
            if time.monotonic() + RETRY_INTERVAL >= until:
                return None, last_error
            time.sleep(RETRY_INTERVAL)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if self._task.check_mode or not _connectivity_check(args) or args.get('_confirm'):
            result.update(self._call(args, task_vars))
            return result
        change = _Change(args)
        saved_options = self._keep_alive(change.timeout)
        change.start()
        try:
            self._apply(change, task_vars)
            if change.applied is not None and (change.applied.get('failed') or 'transaction' not in change.applied):
                # Nothing to confirm: validation error, in-process rollback, or an empty plan.
                result.update(change.applied)
                return result
            answer = None
            if change.applied is not None:
                # A fresh connection proves the path still works, not the old control socket.
                answer, change.lost = self._ask(change.txid, task_vars, change.deadline, connect_timeout=max(2, change.timeout // 3))
            if answer is not None and answer.get('transaction', {}).get('state') == 'confirmed':
                return _confirmed(result, change, answer)
            if answer is not None and answer.get('failed'):
                result.update(answer)
                return result
            return self._not_confirmed(result, change, answer, task_vars)
        finally:
            self._restore_options(saved_options)

    def _keep_alive(self, timeout):
        """Make SSH detect a cut path within seconds; return the options to restore afterwards."""
        original_timeout = self._connection.get_option('timeout') if self._connection.has_option('timeout') else None
        original_extra = None
        if self._connection.has_option('ssh_extra_args'):
            original_extra = self._connection.get_option('ssh_extra_args') or ''
            self._connection.set_option('ssh_extra_args', '%s -o ServerAliveInterval=%d -o ServerAliveCountMax=%d' % (
                original_extra, KEEPALIVE_INTERVAL, max(2, timeout // 4)))
            self._reset()
        return original_timeout, original_extra

    def _restore_options(self, saved_options):
        original_timeout, original_extra = saved_options
        if original_extra is not None:
            self._connection.set_option('ssh_extra_args', original_extra)
        if original_timeout is not None:
            try:
                self._connection.set_option('timeout', original_timeout)
            except (AnsibleError, KeyError):
                pass

    def _apply(self, change, task_vars):
        """Run the module's change; ``change.applied`` is its answer, None with ``change.lost`` when none came."""
        try:
            change.applied = self._call(change.args, task_vars)
            if change.applied.get('unreachable'):
                change.lost = change.applied.get('msg')
                change.applied = None
        except AnsibleConnectionFailure as err:
            change.lost = str(err)
        change.answered = time.monotonic() - change.started
        if change.applied is not None and change.answered >= change.timeout:
            change.lost = 'the answer of the change itself arrived only after %.1fs' % change.answered

    def _not_confirmed(self, result, change, answer, task_vars):
        """The host rolls back by itself at the deadline: wait for that, reach it again and report what happened."""
        wait = change.deadline + ROLLBACK_GRACE - time.monotonic()
        if wait > 0 and (answer is None):
            time.sleep(wait)
        final, error = (answer, None) if answer is not None else \
            self._ask(change.txid, task_vars, time.monotonic() + REACH_AGAIN_WAIT, connect_timeout=5)
        reachable_after = round(time.monotonic() - change.started, 3)
        applied = change.applied
        result['failed'] = True
        result['changed'] = True
        result['plan'] = (applied or {}).get('plan', [])
        result['before'] = (applied or {}).get('before', {})
        result['after'] = (applied or {}).get('before', {})
        result['saved'] = False
        why = 'the controller could not confirm the change over a new connection within %ss (%s)' % (
            change.timeout, change.lost or 'no answer') if applied is not None else \
            'the connection was lost while the change was applied (%s)' % (change.lost or 'no answer')
        if final is None:
            result['msg'] = ('network change not confirmed: %s. The host should have rolled back by itself at the deadline, '
                             'but it is still unreachable %ss later (%s); see /var/log/virtnode/network.log on the host'
                             % (why, REACH_AGAIN_WAIT, error))
            result['transaction'] = {'id': change.txid, 'state': 'unknown', 'timeout': change.timeout}
            result['unreachable'] = True
            return result
        transaction = dict(final.get('transaction') or {}, reachable_again_after=reachable_after,
                           lost_after=round(change.answered, 3) if applied is None else None)
        result['transaction'] = transaction
        if transaction.get('state') == 'rolled_back':
            result['msg'] = ('network change rolled back: %s, so the host rolled back to its previous network '
                             'configuration by itself (transaction %s, reachable again %.1fs after the change started)'
                             % (why, change.txid, reachable_after))
        elif transaction.get('state') == 'confirmed':
            # A late answer: the path came back before the deadline after all.
            result.update(applied or {})
            result['failed'] = False
            result['transaction'] = transaction
            result.pop('msg', None)
        else:
            result['msg'] = ('network change not confirmed: %s; the host reports transaction %s as %s: %s'
                             % (why, change.txid, transaction.get('state'), transaction.get('rollback') or final.get('msg')))
        return result


def _connectivity_check(args):
    check = args.get('connectivity_check', True)
    if isinstance(check, str):
        check = check.lower() in ('1', 'true', 'yes', 'on')
    return check


class _Change(object):
    """One connectivity-checked change as the controller sees it: its transaction, deadline and the module's answer."""

    def __init__(self, args):
        try:
            self.timeout = int(args.get('connectivity_timeout', 30))
        except (TypeError, ValueError):
            self.timeout = 30
        self.txid = args.get('_transaction_id') or str(uuid.uuid4())
        self.args = dict(args, _transaction_id=self.txid)
        self.started = self.deadline = None
        self.applied = None  # the module's answer to the change
        self.lost = None  # why no (timely) answer came
        self.answered = None  # seconds until the answer (or the loss)

    def start(self):
        """The connectivity deadline counts from now."""
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout


def _confirmed(result, change, answer):
    result.update(change.applied)
    result['transaction'] = dict(answer['transaction'], confirmed_after=round(time.monotonic() - change.started, 3))
    result['saved'] = bool(answer.get('saved'))
    warnings = list(change.applied.get('warnings') or []) + list(answer.get('warnings') or [])
    if warnings:
        result['warnings'] = warnings
    return result
