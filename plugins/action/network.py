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
        check = args.get('connectivity_check', True)
        if isinstance(check, str):
            check = check.lower() in ('1', 'true', 'yes', 'on')
        if self._task.check_mode or not check or args.get('_confirm'):
            result.update(self._call(args, task_vars))
            return result

        try:
            timeout = int(args.get('connectivity_timeout', 30))
        except (TypeError, ValueError):
            timeout = 30
        txid = args.get('_transaction_id') or str(uuid.uuid4())
        args['_transaction_id'] = txid
        original_timeout = self._connection.get_option('timeout') if self._connection.has_option('timeout') else None
        original_extra = None
        if self._connection.has_option('ssh_extra_args'):
            original_extra = self._connection.get_option('ssh_extra_args') or ''
            self._connection.set_option('ssh_extra_args', '%s -o ServerAliveInterval=%d -o ServerAliveCountMax=%d' % (
                original_extra, KEEPALIVE_INTERVAL, max(2, timeout // 4)))
            self._reset()
        started = time.monotonic()
        deadline = started + timeout
        applied = None
        lost = None
        try:
            try:
                applied = self._call(args, task_vars)
                if applied.get('unreachable'):
                    lost = applied.get('msg')
                    applied = None
            except AnsibleConnectionFailure as err:
                lost = str(err)
            answered = time.monotonic() - started
            if applied is not None and answered >= timeout:
                lost = 'the answer of the change itself arrived only after %.1fs' % answered
            if applied is not None and (applied.get('failed') or 'transaction' not in applied):
                # Nothing to confirm: validation error, in-process rollback, or an empty plan.
                result.update(applied)
                return result

            answer = None
            if applied is not None:
                # A fresh connection proves the path still works, not the old control socket.
                answer, lost = self._ask(txid, task_vars, deadline, connect_timeout=max(2, timeout // 3))
            if answer is not None and answer.get('transaction', {}).get('state') == 'confirmed':
                result.update(applied)
                result['transaction'] = dict(answer['transaction'], confirmed_after=round(time.monotonic() - started, 3))
                result['saved'] = bool(answer.get('saved'))
                warnings = list(applied.get('warnings') or []) + list(answer.get('warnings') or [])
                if warnings:
                    result['warnings'] = warnings
                return result
            if answer is not None and answer.get('failed'):
                result.update(answer)
                return result

            # Not confirmed: the host rolls back by itself at the deadline. Wait for that,
            # then make sure it is reachable again and ask what happened.
            wait = deadline + ROLLBACK_GRACE - time.monotonic()
            if wait > 0 and (answer is None):
                time.sleep(wait)
            final, error = (answer, None) if answer is not None else \
                self._ask(txid, task_vars, time.monotonic() + REACH_AGAIN_WAIT, connect_timeout=5)
            reachable_after = round(time.monotonic() - started, 3)
            result['failed'] = True
            result['changed'] = True
            result['plan'] = (applied or {}).get('plan', [])
            result['before'] = (applied or {}).get('before', {})
            result['after'] = (applied or {}).get('before', {})
            result['saved'] = False
            why = 'the controller could not confirm the change over a new connection within %ss (%s)' % (
                timeout, lost or 'no answer') if applied is not None else \
                'the connection was lost while the change was applied (%s)' % (lost or 'no answer')
            if final is None:
                result['msg'] = ('network change not confirmed: %s. The host should have rolled back by itself at the deadline, '
                                 'but it is still unreachable %ss later (%s); see /var/log/virtnode/network.log on the host'
                                 % (why, REACH_AGAIN_WAIT, error))
                result['transaction'] = {'id': txid, 'state': 'unknown', 'timeout': timeout}
                result['unreachable'] = True
                return result
            transaction = dict(final.get('transaction') or {}, reachable_again_after=reachable_after,
                               lost_after=round(answered, 3) if applied is None else None)
            result['transaction'] = transaction
            if transaction.get('state') == 'rolled_back':
                result['msg'] = ('network change rolled back: %s, so the host rolled back to its previous network '
                                 'configuration by itself (transaction %s, reachable again %.1fs after the change started)'
                                 % (why, txid, reachable_after))
            elif transaction.get('state') == 'confirmed':
                # A late answer: the path came back before the deadline after all.
                result.update(applied or {})
                result['failed'] = False
                result['transaction'] = transaction
                result.pop('msg', None)
            else:
                result['msg'] = ('network change not confirmed: %s; the host reports transaction %s as %s: %s'
                                 % (why, txid, transaction.get('state'), transaction.get('rollback') or final.get('msg')))
            return result
        finally:
            if original_extra is not None:
                self._connection.set_option('ssh_extra_args', original_extra)
            if original_timeout is not None:
                try:
                    self._connection.set_option('timeout', original_timeout)
                except (AnsibleError, KeyError):
                    pass
