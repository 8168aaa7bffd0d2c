# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What virtnode.kvm.network does on the host: a change of networks and bonds, or its confirmation.

A change (:func:`setup`, VDSM's setupNetworks) is validated and planned
before anything is touched, then applied; a failure undoes every step in
process. With a connectivity check the change is left as a pending
transaction (transaction.py) whose detached watcher rolls it back unless
the controller confirms it (:func:`confirm`) over a new connection in time.
Hooks in ``before_network_setup`` may rewrite the request; those in
``after_network_setup`` run once the change holds.
"""

from __future__ import annotations

import json
import uuid

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point
from ansible_collections.virtnode.kvm.plugins.module_utils.network import apply
from ansible_collections.virtnode.kvm.plugins.module_utils.network import model
from ansible_collections.virtnode.kvm.plugins.module_utils.network import plan
from ansible_collections.virtnode.kvm.plugins.module_utils.network import state as kernel_state
from ansible_collections.virtnode.kvm.plugins.module_utils.network import store
from ansible_collections.virtnode.kvm.plugins.module_utils.network import transaction
from ansible_collections.virtnode.kvm.plugins.module_utils.network.dhcp import DhcpClients
from ansible_collections.virtnode.kvm.plugins.module_utils.network.iproute import IpRoute

HOOK_DATA_ENV = '_hook_json'
CONNECTIVITY_TIMEOUT_RANGE = (1, 600)


def run_module(module):
    """The work of the network module: its result, or VirtnodeError."""
    p = module.params
    transactions = transaction.Transactions()
    if p['_confirm']:
        result = confirm(transactions, p['_confirm'])
    else:
        low, high = CONNECTIVITY_TIMEOUT_RANGE
        if not low <= p['connectivity_timeout'] <= high:
            raise VirtnodeError('connectivity_timeout must be between %d and %d seconds, not %d' % (low, high, p['connectivity_timeout']),
                                {'field': 'connectivity_timeout'})
        with store.HostLock():
            result = setup(p, module.check_mode, IpRoute(), DhcpClients(), transactions)
    for warning in result.pop('warnings', None) or []:
        module.warn(warning)
    if module._diff and 'after' in result:
        result['diff'] = {'before': json.dumps(result['before'], indent=2, sort_keys=True) + '\n',
                          'after': json.dumps(result['after'], indent=2, sort_keys=True) + '\n'}
    return result


def clean(item):
    """Drop options left unset, recursively, so hooks and records see only what was given."""
    if isinstance(item, dict):
        return dict((k, clean(v)) for k, v in item.items() if v is not None)
    if isinstance(item, list):
        return [clean(v) for v in item]
    return item


def run_before_hooks(hooks_dir, request):
    """The request as the before_network_setup hooks left it; they may rewrite it."""
    hook = hooks.run_hook_point(hooks_dir, 'before_network_setup', json.dumps({'request': request}, indent=2), HOOK_DATA_ENV)
    if hook.failed:
        raise VirtnodeError(hook.message() + '; nothing was changed')
    try:
        rewritten = json.loads(hook.data)
        request = rewritten['request']
        if not isinstance(request, dict):
            raise TypeError('request is not a mapping')
    except (ValueError, KeyError, TypeError) as err:
        raise VirtnodeError('before_network_setup hooks left invalid JSON in %s: %s; nothing was changed' % (HOOK_DATA_ENV, err))
    return request


def run_after_hooks(hooks_dir, request, warnings):
    result = hooks.run_hook_point(hooks_dir, 'after_network_setup', json.dumps({'request': request}, indent=2), HOOK_DATA_ENV)
    if result.failed:
        warnings.append(result.message())


def view(config, state, names):
    result = {'networks': config['networks'], 'bonds': config['bonds']}
    result.update(kernel_state.device_view(state, names))
    return result


def make_restore(ip, dhcp):
    """How a transaction's record is rolled back: its snapshot and running config come back."""
    def restore(record):
        ok, diffs, errors = apply.restore_snapshot(ip, dhcp, record['snapshot'])
        try:
            store.write_running(record['running_before'])
        except VirtnodeError as err:
            errors.append(str(err))
        return {'restored': ok, 'differences': diffs, 'errors': errors}
    return restore


def handle_stale(transactions, ip, dhcp, warnings):
    """Finish what a crash left unfinished, before anything else is planned.

    A transaction still pending with its watcher gone, or one whose rollback
    was cut short (state ``rolling_back``, its roller dead), is rolled back
    now (transaction.resume); after a reboot it is only closed, the change
    being gone with the reboot. A transaction still waiting for its
    confirmation stops this run, unless the module that applied it died
    before handing it over: then no confirmation can ever come.
    """
    for record in transactions.unfinished():
        if record.get('state') == 'pending' and transaction.watcher_alive(record) and not transaction.orphaned(record):
            raise VirtnodeError('network transaction %s is still waiting for its confirmation (until %s); '
                                'try again once it is confirmed or rolled back' % (record['id'], record.get('deadline_at')))
        interrupted = record.get('state') == 'rolling_back'
        record = transaction.resume(transactions, record['id'], make_restore(ip, dhcp), store.log)
        if record is None or record.get('state') in transaction.PENDING_STATES:
            continue
        if (record.get('result') or {}).get('reason'):
            warnings.append('network transaction %s was left unfinished before a reboot: closed (%s)' % (record['id'], record['state']))
        elif interrupted:
            warnings.append('network transaction %s: its rollback was interrupted (crash?) and is rolled back now (%s)' % (
                record['id'], record['state']))
        else:
            warnings.append('network transaction %s was never confirmed and its watcher is gone: rolled back now (%s)' % (
                record['id'], record['state']))


def build_request(params, warnings):
    """The request (as given to hooks) from the module's options; state=restored asks for the saved config."""
    if params['state'] == 'restored':
        given = [name for name in ('networks', 'bonds', 'purge') if params[name]]
        if given:
            raise VirtnodeError('state=restored applies the saved configuration: do not give networks, bonds or purge',
                                {'field': given[0]})
        persistent = store.read_persistent()
        if persistent is None:
            warnings.append('no saved network configuration in %s: every managed network and bond is removed' % store.PERSISTENT_FILE)
            persistent = model.empty_config()
        request = {'networks': persistent['networks'], 'bonds': persistent['bonds'], 'options': {'purge': True}}
    else:
        request = model.request_from_params(clean(params['networks']), clean(params['bonds']), purge=params['purge'])
    request['options'].update({'save': params['save'], 'connectivity_check': params['connectivity_check'],
                               'connectivity_timeout': params['connectivity_timeout'], 'state': params['state']})
    return request


class Change(object):
    """A validated, planned change: the configs before and after, the kernel state and the plan between them."""

    def __init__(self, running, request, config, state, targets, route_targets, steps, predicted):
        self.running = running
        self.request = request
        self.config = config
        self.state = state
        self.targets = targets
        self.route_targets = route_targets
        self.steps = steps
        self.predicted = predicted
        # The devices shown before and after, and snapshotted for a rollback.
        self.names = set(targets) | set(r['dev'] for family in (4, 6) for r in state['routes'][family])
        # Set when it is applied: its transaction id, whether a watcher guards it, the state to restore.
        self.txid = None
        self.watched = False
        self.snapshot = None


def plan_change(ip, dhcp, running, request):
    """Validate ``request`` against the running config and the kernel, and plan it; nothing is touched."""
    state = kernel_state.read_state(ip, dhcp)
    config, problems = model.desired_config(running, request)
    if problems:
        raise VirtnodeError('invalid network configuration, nothing was changed: ' + '; '.join(problems), {'problems': problems})
    unchanged = [n for n, spec in running['networks'].items()
                 if n not in (request.get('networks') or {}) and config['networks'].get(n) == spec]
    model.check_config(config, state['links'], dhcp.client, unchanged)
    targets, route_targets = plan.compute_targets(config, running, state['links'])
    steps, predicted = plan.plan_changes(state, targets, route_targets, with_state=True)
    return Change(running, request, config, state, targets, route_targets, steps, predicted)


def setup(p, check_mode, ip, dhcp, transactions):
    """Plan the change the module's options ``p`` ask for and, unless in check mode, apply it."""
    warnings = []
    running = store.read_running()
    if not check_mode:
        handle_stale(transactions, ip, dhcp, warnings)
        running = store.read_running()
    request = build_request(p, warnings)
    if not check_mode:
        request = run_before_hooks(p['hooks_dir'], request)
    change = plan_change(ip, dhcp, running, request)
    persistent_config = store.saved_config(store.read_persistent())
    save_needed = bool(p['save']) and persistent_config != change.config
    result = {
        'changed': bool(change.steps) or change.config != running or save_needed,
        'plan': plan.public_steps(change.steps),
        'before': view(running, change.state, change.names),
        'saved': False,
        'warnings': warnings,
    }
    if check_mode:
        result['after'] = view(change.config, change.predicted, change.names)
        result['saved'] = save_needed
        return result
    return apply_change(p, ip, dhcp, transactions, change, result, save_needed)


def restore_at_boot(hooks_dir=hooks.DEFAULT_HOOKS_DIR):
    """The boot-time restore: the network module's ``state: restored`` without a controller; returns its result.

    bootstrap installs this code with an entry script and a oneshot unit that
    runs it at boot, before libvirtd starts VMs (roles/bootstrap/tasks/network_restore.yml).
    """
    params = {'networks': [], 'bonds': [], 'purge': False, 'state': 'restored', 'save': False,
              'connectivity_check': False, 'connectivity_timeout': 30, 'hooks_dir': hooks_dir,
              '_transaction_id': None, '_confirm': None, '_fail_at_step': None}
    with store.HostLock():
        result = setup(params, False, IpRoute(), DhcpClients(), transaction.Transactions())
    store.log('boot-time restore: %d steps, networks %s, bonds %s' % (
        len(result['plan']), ', '.join(sorted(result['after']['networks'])) or 'none',
        ', '.join(sorted(result['after']['bonds'])) or 'none'))
    return result


def configured_bond_options(change):
    """The bond options the configurations before and after set, per bond: those a rollback brings back."""
    options = {}
    for config in (change.running, change.config):
        for name, bond in config['bonds'].items():
            options.setdefault(name, set()).update(bond.get('options') or {})
    return options


def apply_change(params, ip, dhcp, transactions, change, result, save_needed):
    """Apply a planned change, under a watched transaction when it needs a connectivity check.

    The change is verified against the kernel afterwards; any failure rolls
    it back in process and raises.
    """
    change.watched = bool(change.steps) and params['connectivity_check']
    change.txid = params['_transaction_id'] or str(uuid.uuid4())
    change.snapshot = kernel_state.snapshot_state(change.state, change.names, configured_bond_options(change))
    if change.steps:
        apply.check_kernel_support(ip, change.state, change.steps)
    if change.watched:
        record = transaction.new_record(change.txid, params['connectivity_timeout'], {
            'snapshot': change.snapshot, 'running_before': change.running, 'running_after': change.config, 'save': bool(params['save']),
            'hooks_dir': params['hooks_dir'], 'request': change.request, 'plan': result['plan']})
        transaction.start_watcher(transactions, record, make_restore(ip, dhcp), store.log)
        store.log('transaction %s: applying %d steps, confirmation needed within %ss' % (change.txid, len(change.steps), params['connectivity_timeout']))
    done = []
    try:
        done = apply.apply_steps(ip, dhcp, change.steps, params['_fail_at_step'])
        after_state = kernel_state.read_state(ip, dhcp)
        diffs = plan.differences(after_state, change.targets, change.route_targets)
        if diffs:
            raise VirtnodeError('the kernel does not show the wanted state after applying the plan: ' + '; '.join(diffs))
    except VirtnodeError as err:
        if isinstance(err, apply.ApplyError):
            done = err.done
        raise roll_back(ip, dhcp, transactions, change, done, err, result['plan'])
    crash_point('network_apply.applied')
    store.write_running(change.config)
    result['after'] = view(change.config, after_state, change.names)
    if change.watched:
        transaction.hand_over(transactions, change.txid)
        result['transaction'] = {'id': change.txid, 'state': 'pending', 'timeout': params['connectivity_timeout']}
        return result
    if params['save'] and save_needed:
        store.write_persistent(change.config)
        result['saved'] = True
    run_after_hooks(params['hooks_dir'], change.request, result['warnings'])
    return result


def roll_back(ip, dhcp, transactions, change, done, err, public_plan):
    """Undo the ``done`` steps of a failed change in process; return the error to raise, with the plan and the rollback report."""
    if change.watched and not transaction.take_over(transactions, change.txid):
        return VirtnodeError('%s; the connectivity deadline passed meanwhile and the host rolled itself back' % err,
                             {'plan': public_plan})
    report = apply.rollback(ip, dhcp, done, change.snapshot)
    store.write_running(change.running)
    if change.watched:
        transaction.finish(transactions, change.txid, 'rolled_back' if report['restored'] else 'rollback_failed', report)
    store.log('transaction %s failed: %s; rollback %s' % (change.txid, err, 'complete' if report['restored'] else 'INCOMPLETE'))
    if report['restored']:
        msg = '%s; every step was undone and the host is back to its previous network configuration' % err
    else:
        msg = '%s; ROLLBACK INCOMPLETE, differences from the previous state: %s' % (err, '; '.join(report['differences']))
    return VirtnodeError(msg, {'plan': public_plan, 'rollback': report})


def confirm(transactions, txid):
    """Second call of a connectivity-checked change, over a new connection."""
    warnings = []

    def on_confirm(record):
        saved = False
        if record.get('save') and store.saved_config(store.read_persistent()) != record['running_after']:
            store.write_persistent(record['running_after'])
            saved = True
        return {'saved': saved}

    record = transaction.confirm(transactions, txid, on_confirm)
    result = {'changed': False, 'warnings': warnings, 'saved': False,
              'transaction': {'id': txid, 'state': record['state'], 'timeout': record.get('timeout')}}
    if record['state'] == 'confirmed':
        result['saved'] = bool((record.get('confirm_result') or {}).get('saved'))
        store.log('transaction %s confirmed' % txid)
        if record.get('hooks_dir') and record.get('confirm_result') is not None:
            run_after_hooks(record['hooks_dir'], record.get('request') or {}, warnings)
        transactions.prune()
    else:
        result['transaction'].update({
            'rollback': record.get('result'),
            'deadline_at': record.get('deadline_at'),
            'finished_at': record.get('finished_at'),
            'rollback_seconds': round(record['finished'] - record['rollback_started'], 3)
            if record.get('finished') and record.get('rollback_started') else None,
            'rolled_back_after': round(record['finished'] - record['created'], 3) if record.get('finished') else None,
        })
    return result
