# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hook scripts, with VDSM's semantics; shared by networking and the VM lifecycle.

A hook point is a directory ``<hooks_dir>/<point>`` (``before_network_setup``,
``before_vm_start``, ...). Every executable regular file in it whose name
does not start with a dot runs in sorted order. The data of the operation
(a request as JSON, a domain XML, ...) is written to a temporary file whose
path is in the environment variable named by ``data_env`` (``_hook_json``,
``_hook_domxml``); a hook may rewrite that file and the next hook, and then
the operation, get the rewritten data. Extra variables (VM custom
properties, ...) are added to the environment.

Exit status 0 is success, 1 a failure after which the remaining hooks still
run, 2 a failure that stops the remaining hooks; any other status counts
as 1. Whether a failure fails the operation is the caller's choice
(``before_*`` points: yes; ``after_*``: a warning).

A script not owned by root, or writable by its group or by others, is
refused (counted as a failure that stops the hook point); so is a hook
point directory with such permissions.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

DEFAULT_HOOKS_DIR = '/etc/virtnode/hooks'
DEFAULT_TIMEOUT = 60
OUTPUT_LIMIT = 4096
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_STOP = 2


def _unsafe(st, owner_uid):
    problems = []
    if st.st_uid != owner_uid:
        problems.append('owned by uid %d, not %d' % (st.st_uid, owner_uid))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append('writable by %s' % ('group and others' if st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IWOTH
                                            else 'group' if st.st_mode & stat.S_IWGRP else 'others'))
    return problems


def list_hooks(directory):
    """Executable regular files of a hook point, sorted by name."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise VirtnodeError('cannot list hook directory %s: %s' % (directory, err.strerror or err))
    hooks = []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith('.') or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        hooks.append(path)
    return hooks


class HookResult(object):
    """Outcome of one hook point."""

    def __init__(self, point, data):
        self.point = point
        self.data = data
        self.scripts = []
        self.failed = False
        self.stopped = False

    def errors(self):
        return ['%s: %s' % (s['script'], s['error']) for s in self.scripts if s.get('error')]

    def message(self):
        return 'hook %s failed: %s' % (self.point, '; '.join(self.errors()))

    def to_dict(self):
        return {'point': self.point, 'failed': self.failed, 'stopped': self.stopped, 'scripts': list(self.scripts)}


def run_hook_point(hooks_dir, point, data='', data_env=None, env=None, timeout=DEFAULT_TIMEOUT, owner_uid=0):
    """Run every hook of ``point``; return a HookResult whose ``data`` is the (possibly rewritten) data.

    ``data`` is text. Nothing is written when the hook point has no hooks.
    """
    directory = os.path.join(hooks_dir, point)
    result = HookResult(point, data)
    if not os.path.isdir(directory):
        return result
    unsafe = _unsafe(os.stat(directory), owner_uid)
    hooks = list_hooks(directory)
    if not hooks:
        return result
    if unsafe:
        result.failed = result.stopped = True
        result.scripts.append({'script': directory, 'rc': None, 'stdout': '', 'stderr': '',
                               'error': 'hook directory refused: ' + ', '.join(unsafe)})
        return result
    fd, data_path = tempfile.mkstemp(prefix='virtnode-hook-', suffix='.' + point)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(data)
        hook_env = dict(os.environ)
        hook_env.update(dict((str(k), str(v)) for k, v in (env or {}).items()))
        if data_env:
            hook_env[data_env] = data_path
        for path in hooks:
            entry = {'script': path, 'rc': None, 'stdout': '', 'stderr': ''}
            result.scripts.append(entry)
            problems = _unsafe(os.stat(path), owner_uid)
            if problems:
                entry['error'] = 'refused: ' + ', '.join(problems)
                result.failed = result.stopped = True
                break
            try:
                proc = subprocess.run([path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=hook_env, cwd=directory, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                entry['error'] = 'timed out after %ss' % timeout
                result.failed = True
                continue
            except OSError as err:
                entry['error'] = 'cannot run: %s' % (err.strerror or err)
                result.failed = True
                continue
            entry['rc'] = proc.returncode
            entry['stdout'] = proc.stdout.decode('utf-8', 'replace')[-OUTPUT_LIMIT:]
            entry['stderr'] = proc.stderr.decode('utf-8', 'replace')[-OUTPUT_LIMIT:]
            if proc.returncode != EXIT_OK:
                result.failed = True
                text = entry['stderr'].strip() or entry['stdout'].strip() or 'no output'
                entry['error'] = 'exit %d: %s' % (proc.returncode, text)
                if proc.returncode == EXIT_STOP:
                    result.stopped = True
                    break
        with open(data_path) as handle:
            result.data = handle.read()
    finally:
        try:
            os.unlink(data_path)
        except OSError:
            pass
    return result
