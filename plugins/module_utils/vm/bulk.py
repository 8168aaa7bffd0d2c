# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vm module's bulk form: many VMs of one host converged in one module run.

A fleet in a loop pays Ansible's fixed cost of a task (connection, payload,
Python start) once per VM; with ``vms`` it pays it once per host, and the VMs
converge ``parallel`` at a time. Each item is one VM's options, checked as the
single form checks them, and converged by the same code. Every item is checked
before any VM is touched: a bad item changes nothing. A VM that fails does not
stop the others; the run then fails naming it, with every VM's result.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge as vm_converge
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import options as vm_options
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes

MAX_PARALLEL = 32
# Per-VM options that make no sense as every item's default.
NOT_SHARED = ('name', 'uuid')


class ItemModule:
    """What the single form's code reads of an ``AnsibleModule``, for one item of ``vms``."""

    def __init__(self, params, check_mode, diff):
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []
        self._lock = threading.Lock()

    def warn(self, warning):
        with self._lock:
            self.warnings.append(warning)


def run(module):
    """The vm module's bulk form: every VM of ``vms``; exits the module run."""
    items = module_run.call(module, checked_items, module.params, module.check_mode)
    libvirt_conn.require_libvirt(module)
    results = module_run.call(module, converge_all, items, module.params, module.check_mode, module._diff)  # pylint: disable=protected-access
    for result in results:
        for warning in result.pop('warnings', []):
            module.warn('VM %s: %s' % (result['name'], warning))
    out, failure = summary(results, module._diff)  # pylint: disable=protected-access
    if failure:
        module.fail_json(msg=failure, **out)
    module.exit_json(**out)


def _shared_defaults(params):
    """The per-VM options given at the top level: every item's defaults."""
    spec = vm_options.argument_spec()
    shared = {}
    for name in vm_options.item_argument_spec():
        if name in NOT_SHARED:
            if params.get(name) is not None:
                raise VirtnodeError('%s names one VM: give it in each item of vms, not beside vms' % name,
                                    {'field': name})
            continue
        value = params.get(name)
        if value is not None and value != spec[name].get('default'):
            shared[name] = value
    return shared


def item_params(item, shared, run_params):
    """One item's options as the single form has them (validated, defaults applied), or a VirtnodeError."""
    if not isinstance(item, dict):
        raise VirtnodeError('each item of vms is a dict of one VM\'s options, got %s' % type(item).__name__,
                            {'field': 'vms'})
    not_here = sorted(set(item) & set(vm_options.NOT_IN_BULK + vm_options.RUN_OPTIONS))
    label = item.get('name') if isinstance(item.get('name'), str) else '?'
    if not_here:
        raise VirtnodeError('VM %s: %s cannot be given per VM in vms (a migration is one VM\'s; the connection is '
                            'the run\'s)' % (label, ', '.join(not_here)), {'field': 'vms', 'vm': label})
    validator = ArgumentSpecValidator(vm_options.item_argument_spec(), mutually_exclusive=vm_options.MUTUALLY_EXCLUSIVE,
                                      required_by=vm_options.REQUIRED_BY)
    result = validator.validate(dict(shared, **item))
    if result.error_messages:
        raise VirtnodeError('VM %s: %s' % (label, '; '.join(result.error_messages)), {'field': 'vms', 'vm': label})
    params = dict(result.validated_parameters)
    spec = vm_options.argument_spec()
    params.update((name, spec[name].get('default')) for name in vm_options.NOT_IN_BULK)
    params.update((name, run_params[name]) for name in vm_options.RUN_OPTIONS if name in run_params)
    return params


def checked_items(params, check_mode):
    """Every item of ``vms`` checked, before any VM is touched: ``[params]``, or a VirtnodeError naming the item."""
    parallel = params['parallel']
    if not 1 <= parallel <= MAX_PARALLEL:
        raise VirtnodeError('parallel must be 1 to %d, got %d' % (MAX_PARALLEL, parallel), {'field': 'parallel'})
    shared = _shared_defaults(params)
    items = [item_params(item, shared, params) for item in params['vms']]
    for key in ('name', 'uuid'):
        values = [item[key] for item in items if item[key] is not None]
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise VirtnodeError('vms names a VM twice (%s %s)' % (key, ', '.join(twice)), {'field': 'vms'})
    for item in items:
        try:
            # As check mode sees the host: files read, nothing activated.
            spec = vm_volumes.normalize_on_host(item, check_mode=True)
            hooks_utils.check_env(spec['custom_properties'])
        except VirtnodeError as err:
            raise VirtnodeError('VM %s: %s' % (item['name'], err.message), dict(err.details, vm=item['name'])) from err
    return items


def converge_one(conn, params, check_mode, diff):
    """One VM, as the single form converges it; its result, or its failure (never raises VirtnodeError)."""
    item = ItemModule(params, check_mode, diff)
    try:
        try:
            result = vm_converge.converge_on(item, conn)
        except libvirt_conn.LibvirtError as exc:
            raise libvirt_conn.as_error(exc, params['uri']) from exc
    except VirtnodeError as err:
        result = dict(module_run.failure(err), failed=True, changed=False)
    result['name'] = params['name']
    if item.warnings:
        result['warnings'] = item.warnings
    return result


def converge_all(items, params, check_mode, diff):
    """Every item, ``parallel`` at a time, on one connection; the results in the items' order.

    One connection serves every VM (libvirt's connections serve many threads): opening one per VM
    would cost more than converging a VM that is already as asked.
    """
    with libvirt_conn.connect(params['uri']) as conn:
        with ThreadPoolExecutor(max_workers=min(params['parallel'], len(items)), thread_name_prefix='vm') as pool:
            return list(pool.map(lambda item: converge_one(conn, item, check_mode, diff), items))


def summary(results, diff):
    """``(module result, failure message or None)`` of the bulk form: a VM that failed fails the run."""
    failed = [result for result in results if result.get('failed')]
    out = {'changed': any(result.get('changed') for result in results), 'vms': results}
    diffs = [(result['name'], result.pop('diff')) for result in results if 'diff' in result]
    if diff and diffs:
        out['diff'] = {'before': {name: d['before'] for name, d in diffs}, 'after': {name: d['after'] for name, d in diffs}}
    if not failed:
        return out, None
    return out, '%d of %d VMs failed: %s' % (len(failed), len(results), '; '.join(
        '%s: %s' % (result['name'], result['msg']) for result in failed))
