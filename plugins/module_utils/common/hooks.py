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
point directory, or the hooks directory, with such permissions. Symbolic
links are never followed: a hooks directory, hook point or script that is a
link (to a system directory, to a shell, ...) is refused the same way.

Extra variables come from users (VM custom properties): their names must
be environment variable names, and names the dynamic loader, shells and
interpreters read (``PATH``, ``LD_PRELOAD``, ``PYTHONPATH``, ``BASH_ENV``,
...) are refused, as they would run other code inside root's hooks.
Secrets given to :func:`run_hook_point` (a console password, ...) never
appear in the output it returns: hooks see them in their data, and may
print them.
"""

from __future__ import annotations

import os
import re
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
REDACTED = '********'

# VDSM's custom property names: what a POSIX shell accepts as a variable name.
ENV_NAME_RE = re.compile(r'\A[A-Za-z_][A-Za-z0-9_]*\Z')
# Names (compared in upper case) that make the loader, a shell or an interpreter load or run other
# code, change where commands are found, or how a shell script parses; and the hooks' own data path.
DENIED_ENV_NAMES = frozenset((
    'PATH', 'IFS', 'ENV', 'BASH_ENV', 'SHELLOPTS', 'BASHOPTS', 'PS1', 'PS2', 'PS3', 'PS4', 'PROMPT_COMMAND',
    'HOME', 'SHELL', 'CDPATH', 'GLOBIGNORE', 'FPATH', 'POSIXLY_CORRECT', 'BASH_XTRACEFD', 'EXECIGNORE', 'HISTFILE',
    'TMPDIR', 'GCONV_PATH', 'LOCPATH', 'NLSPATH', 'HOSTALIASES', 'RESOLV_HOST_CONF', 'LOCALDOMAIN', 'RES_OPTIONS',
    'TZ', 'TZDIR', 'LANGUAGE', 'LANG', 'TERMINFO', 'TERMINFO_DIRS', 'TERMCAP', 'CLASSPATH', 'JAVA_TOOL_OPTIONS',
    '_JAVA_OPTIONS', 'JDK_JAVA_OPTIONS', 'OPENSSL_CONF', 'OPENSSL_MODULES', 'OPENSSL_ENGINES', 'SSL_CERT_FILE',
    'SSL_CERT_DIR', 'PAGER', 'EDITOR', 'VISUAL', 'BROWSER', 'SUDO_ASKPASS', 'SSH_ASKPASS', 'GIT_SSH', 'GIT_SSH_COMMAND',
    'GIT_EXEC_PATH', 'GIT_CONFIG', 'XDG_CONFIG_HOME', 'XDG_CONFIG_DIRS', 'XDG_DATA_HOME', 'XDG_DATA_DIRS',
    'LIBVIRT_DEFAULT_URI', 'LIBVIRT_LOG_OUTPUTS', 'LIBVIRT_DEBUG', 'TCL_LIBRARY', 'TCLLIBPATH', 'LUA_PATH', 'LUA_CPATH',
    'LUA_INIT',
))
DENIED_ENV_PREFIXES = ('LD_', 'DYLD_', 'PYTHON', 'BASH_FUNC_', 'PERL', 'RUBY', 'GEM_', 'BUNDLE_', 'NODE_', 'NPM_',
                       'PHP', 'LC_', 'MALLOC_', 'GLIBC_', 'GCONV_', 'ANSIBLE_', '_HOOK_', 'GIT_', 'LUA_INIT')


def env_name_problem(name):
    """Why ``name`` cannot be a hook's extra environment variable, or None."""
    if not isinstance(name, str) or not ENV_NAME_RE.match(name):
        return 'not a variable name ([A-Za-z_][A-Za-z0-9_]*)'
    upper = name.upper()
    if upper in DENIED_ENV_NAMES or upper.startswith(DENIED_ENV_PREFIXES):
        return 'read by the loader, a shell or an interpreter'
    return None


def check_env(env, what='custom property'):
    """Raise VirtnodeError naming every variable of ``env`` a hook must not get (see :func:`env_name_problem`)."""
    problems = []
    for name in sorted(env or {}, key=str):
        why = env_name_problem(name)
        if why is None and '\x00' in str(env[name]):
            why = 'its value holds a NUL character'
        if why:
            problems.append('%r: %s' % (name, why))
    if problems:
        raise VirtnodeError('%s names refused (hooks get them as environment variables): %s' % (what, '; '.join(problems)),
                            {'refused': sorted((str(n) for n in env if env_name_problem(n) or '\x00' in str(env[n])))})


def split_env(env):
    """(usable, refused) of ``env``: for names read back from where anyone may have written them."""
    usable, refused = {}, []
    for name, value in (env or {}).items():
        if env_name_problem(name) or '\x00' in str(value):
            refused.append(name)
        else:
            usable[name] = value
    return usable, refused


def _xml_escaped(text, quotes=False):
    # What xml.sax.saxutils.escape does; that module imports urllib.request and http.client,
    # a sixth of a no-op vm task's import time.
    text = text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
    return text.replace('"', '&quot;').replace("'", '&apos;') if quotes else text


def redact(text, secrets):
    """``text`` with every secret (as is and as written in XML) replaced by REDACTED."""
    forms = set()
    for secret in secrets or ():
        if secret:
            forms.update((secret, _xml_escaped(secret), _xml_escaped(secret, quotes=True)))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def _unsafe(st, owner_uid):
    problems = []
    if st.st_uid != owner_uid:
        problems.append('owned by uid %d, not %d' % (st.st_uid, owner_uid))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append('writable by %s' % ('group and others' if st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IWOTH
                                            else 'group' if st.st_mode & stat.S_IWGRP else 'others'))
    return problems


def _directory_problems(path, owner_uid):
    """Why the directory ``path`` may not hold hooks (it is checked without following links), or []; None if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return ['cannot stat: %s' % (err.strerror or err)]
    if stat.S_ISLNK(st.st_mode):
        return ['a symbolic link']
    if not stat.S_ISDIR(st.st_mode):
        return ['not a directory']
    return _unsafe(st, owner_uid)


def list_hooks(directory):
    """Hooks of a hook point, sorted by name: executable regular files, and symbolic links (refused when run)."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise VirtnodeError('cannot list hook directory %s: %s' % (directory, err.strerror or err))
    hooks = []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith('.'):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_mode & 0o111):
            hooks.append(path)
    return hooks


def _script_problems(path, owner_uid):
    try:
        st = os.lstat(path)
    except OSError as err:
        return ['cannot stat: %s' % (err.strerror or err)]
    if stat.S_ISLNK(st.st_mode):
        return ['a symbolic link']
    if not stat.S_ISREG(st.st_mode):
        return ['not a regular file']
    return _unsafe(st, owner_uid)


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


def run_hook_point(hooks_dir, point, data='', data_env=None, env=None, timeout=DEFAULT_TIMEOUT, owner_uid=0, secrets=()):
    """Run every hook of ``point``; return a HookResult whose ``data`` is the (possibly rewritten) data.

    ``data`` is text. Nothing is written when the hook point has no hooks. ``env`` names are
    checked with :func:`check_env`; ``secrets`` are redacted from the output kept in the result.
    """
    check_env(env, 'hook environment variable')
    directory = os.path.join(hooks_dir, point)
    result = HookResult(point, data)
    point_problems = _directory_problems(directory, owner_uid)
    if point_problems is None:
        return result
    # The hooks directory is checked too: a link or a writable one would let anyone swap the hook points.
    unsafe = ['%s (refused: %s)' % (where, ', '.join(problems))
              for where, problems in ((hooks_dir, _directory_problems(hooks_dir, owner_uid)), (directory, point_problems))
              if problems]
    hooks = list_hooks(directory)
    if not hooks:
        return result
    if unsafe:
        result.failed = result.stopped = True
        result.scripts.append({'script': directory, 'rc': None, 'stdout': '', 'stderr': '',
                               'error': 'hook directory refused: ' + '; '.join(unsafe)})
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
            problems = _script_problems(path, owner_uid)
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
            # Redacted before the limit cuts the text: a cut could leave a secret's tail unrecognised.
            entry['stdout'] = redact(proc.stdout.decode('utf-8', 'replace'), secrets)[-OUTPUT_LIMIT:]
            entry['stderr'] = redact(proc.stderr.decode('utf-8', 'replace'), secrets)[-OUTPUT_LIMIT:]
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
