# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every module of the collection runs its work and reports the outcome.

A module is its documentation, an argument spec and one call to :func:`run`:
the work function takes the ``AnsibleModule`` and returns the result
(``changed`` and the documented return values), or raises
:class:`VirtnodeError`.

Every failure has one shape, whichever module reports it: ``msg`` plus the
error's details as top-level keys (``field``, ``path``, ``uri``, ...; the
``virtnode.kvm.failure`` documentation fragment lists them), so a playbook
reads ``result.field`` the same way everywhere. A detail whose name Ansible
itself gives a meaning to is reported as ``detail_<name>`` instead.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

# Result keys Ansible interprets; a detail must never overwrite one.
RESERVED_KEYS = frozenset((
    'ansible_facts', 'changed', 'deprecations', 'diff', 'exception', 'failed', 'invocation', 'msg',
    'rc', 'skipped', 'stderr', 'stderr_lines', 'stdout', 'stdout_lines', 'warnings',
))


def failure(err):
    """The failure result of ``err``: ``msg`` and its details, top level."""
    result = {'msg': str(err)}
    for key, value in err.details.items():
        result['detail_' + key if key in RESERVED_KEYS or key.startswith('_ansible') else key] = value
    return result


def fail(module, err):
    """Fail the module run with the one failure shape (never returns)."""
    module.fail_json(**failure(err))


def call(module, work, *args, **kwargs):
    """``work(*args, **kwargs)``, failing the module run on VirtnodeError; returns what work returned."""
    try:
        return work(*args, **kwargs)
    except VirtnodeError as err:
        fail(module, err)
    raise AssertionError('fail_json returned')  # pragma: no cover - fail_json exits


def run(module, work, *args, **kwargs):
    """Run ``work(module, *args, **kwargs)`` and exit with its result, or fail with the one shape."""
    work_args = (module,) + args
    module.exit_json(**call(module, work, *work_args, **kwargs))
