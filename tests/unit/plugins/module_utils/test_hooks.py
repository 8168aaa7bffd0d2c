# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError


def make_hook(directory, name, body, mode=0o755):
    path = directory / name
    path.write_text('#!/bin/sh\n' + body)
    os.chmod(str(path), mode)
    return path


def point(tmp_path, name='before_network_setup'):
    directory = tmp_path / name
    directory.mkdir(mode=0o755)
    os.chmod(str(directory), 0o755)
    return directory


def run(tmp_path, data='{}', **kw):
    return hooks.run_hook_point(str(tmp_path), 'before_network_setup', data, '_hook_json', owner_uid=os.getuid(), **kw)


def test_no_directory_is_a_no_op(tmp_path):
    result = run(tmp_path, 'x')
    assert not result.failed and result.data == 'x' and result.scripts == []


def test_sorted_order_rewrite_and_env(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '20-second', 'echo "$(cat "$_hook_json") second $VM_PROP" > "$_hook_json"\n')
    make_hook(directory, '10-first', 'echo first > "$_hook_json"\n')
    make_hook(directory, '.hidden', 'exit 2\n')
    make_hook(directory, '30-not-executable', 'exit 2\n', mode=0o644)
    result = run(tmp_path, 'original', env={'VM_PROP': 'prop'})
    assert not result.failed
    assert result.data.strip() == 'first second prop'
    assert [os.path.basename(s['script']) for s in result.scripts] == ['10-first', '20-second']


def test_exit_1_goes_on_exit_2_stops(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-fail', 'echo soft >&2; exit 1\n')
    make_hook(directory, '20-stop', 'echo hard >&2; exit 2\n')
    make_hook(directory, '30-never', 'touch "%s"\n' % (tmp_path / 'ran'))
    result = run(tmp_path)
    assert result.failed and result.stopped
    assert [s['rc'] for s in result.scripts] == [1, 2]
    assert 'exit 1: soft' in result.message() and 'exit 2: hard' in result.message()
    assert not (tmp_path / 'ran').exists()


def test_group_or_world_writable_hook_is_refused(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-open', 'exit 0\n', mode=0o777)
    result = run(tmp_path)
    assert result.failed and result.stopped
    assert 'refused: writable by group and others' in result.message()
    assert result.scripts[0]['rc'] is None


def test_hook_not_owned_by_expected_user_is_refused(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-mine', 'exit 0\n')
    result = hooks.run_hook_point(str(tmp_path), 'before_network_setup', '', '_hook_json', owner_uid=os.getuid() + 1)
    assert result.failed and 'refused: owned by uid' in result.message()


def test_writable_directory_is_refused(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-ok', 'exit 0\n')
    os.chmod(str(directory), 0o777)
    result = run(tmp_path)
    assert result.failed and 'hook directory refused' in result.message()


def test_timeout(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-slow', 'sleep 5\n')
    result = run(tmp_path, timeout=0.2)
    assert result.failed and 'timed out' in result.message()


def test_json_round_trip(tmp_path):
    directory = point(tmp_path)
    make_hook(directory, '10-py', 'python3 -c "import json,os; p=os.environ[\'_hook_json\']; d=json.load(open(p)); '
                                  'd[\'request\'][\'mtu\']=1280; json.dump(d, open(p, \'w\'))"\n')
    result = run(tmp_path, json.dumps({'request': {'mtu': 1500}}))
    assert json.loads(result.data) == {'request': {'mtu': 1280}}


# Names a custom property may not give a hook: the loader, shells and interpreters read them
# (or they are the hook's own data path), whatever their case; and names no shell accepts.
DANGEROUS_NAMES = ['PATH', 'LD_PRELOAD', 'LD_LIBRARY_PATH', 'LD_AUDIT', 'ld_preload', 'PYTHONPATH', 'PYTHONSTARTUP',
                   'PYTHONHOME', 'PYTHONWARNINGS', 'BASH_ENV', 'ENV', 'IFS', 'SHELLOPTS', 'BASHOPTS', 'PS4', 'HOME',
                   'CDPATH', 'GLOBIGNORE', 'PERL5OPT', 'PERL5LIB', 'RUBYOPT', 'NODE_OPTIONS', 'GCONV_PATH', 'LOCPATH',
                   'LC_ALL', 'LANG', 'TMPDIR', 'OPENSSL_CONF', 'MALLOC_CHECK_', '_hook_json', '_hook_domxml']
MALFORMED_NAMES = ['A=B', '', '1ABC', 'A B', 'A-B', 'caf\u00e9', 'A\nB', 'A\x00B', 'BASH_FUNC_x%%']


@pytest.mark.parametrize('name', DANGEROUS_NAMES + MALFORMED_NAMES)
def test_dangerous_or_malformed_env_names_are_refused_and_nothing_runs(tmp_path, name):
    directory = point(tmp_path)
    make_hook(directory, '10-ran', 'touch "%s"\n' % (tmp_path / 'ran'))
    with pytest.raises(VirtnodeError, match='refused') as info:
        run(tmp_path, env={name: '/tmp/evil', 'sap_agent': 'true'})
    assert repr(name) in info.value.args[0] and "'sap_agent'" not in info.value.args[0]
    assert not (tmp_path / 'ran').exists()
    assert hooks.env_name_problem(name)


def test_value_with_nul_is_refused(tmp_path):
    with pytest.raises(VirtnodeError, match='NUL'):
        run(tmp_path, env={'sap_agent': 'a\x00b'})


@pytest.mark.parametrize('name', ['sap_agent', 'hugepages', 'VM_PROP', '_private', 'viodiskcache', 'Path2', 'MYPATH'])
def test_ordinary_property_names_are_kept(tmp_path, name):
    directory = point(tmp_path)
    make_hook(directory, '10-env', 'printf %%s "$%s" > "%s"\n' % (name, tmp_path / 'seen'))
    assert not run(tmp_path, env={name: 'v'}).failed
    assert (tmp_path / 'seen').read_text() == 'v'


def test_split_env_keeps_the_usable_names():
    usable, refused = hooks.split_env({'A=B': '1', 'LD_PRELOAD': '/x.so', 'good': '2', None: '3'})
    assert usable == {'good': '2'} and sorted(refused, key=str) == sorted(['A=B', 'LD_PRELOAD', None], key=str)


# A console password in the hook's data, as it appears in a domain XML (escaped) and as a hook
# decodes it: neither may come back in the result, its message or its output.
SECRET = 's3cr&t"<pw>'
SECRET_XML = "<domain><devices><graphics type='vnc' passwd='s3cr&amp;t&quot;&lt;pw&gt;'/></devices></domain>"


@pytest.mark.parametrize('rc', [0, 1, 2])
def test_secrets_never_come_back_in_hook_output(tmp_path, rc):
    directory = point(tmp_path)
    make_hook(directory, '10-leak', 'cat "$_hook_json"; cat "$_hook_json" >&2; printf "%%s\\n" "$SECRET_PLAIN"; '
                                    'printf "%%s\\n" "$SECRET_PLAIN" >&2; exit %d\n' % rc)
    os.environ['SECRET_PLAIN'] = SECRET
    try:
        result = run(tmp_path, SECRET_XML, secrets=[SECRET])
    finally:
        del os.environ['SECRET_PLAIN']
    text = json.dumps(result.to_dict()) + result.message()
    assert result.scripts[0]['stdout'].count(hooks.REDACTED) == 2
    for form in (SECRET, 's3cr&amp;t&quot;&lt;pw&gt;', 's3cr&amp;t'):
        assert form not in text
    assert result.data == SECRET_XML  # the data itself goes on unchanged


def test_hook_point_that_is_a_symlink_is_refused(tmp_path):
    # A hook point linked to a directory of root's own executables (here: a safe one made for the test).
    system = tmp_path / 'system-bin'
    system.mkdir(mode=0o755)
    make_hook(system, 'tool', 'touch "%s"\n' % (tmp_path / 'ran'))
    hooks_dir = tmp_path / 'hooks'
    hooks_dir.mkdir(mode=0o755)
    os.symlink(str(system), str(hooks_dir / 'before_network_setup'))
    result = hooks.run_hook_point(str(hooks_dir), 'before_network_setup', '', '_hook_json', owner_uid=os.getuid())
    assert result.failed and result.stopped and 'symbolic link' in result.message()
    assert not (tmp_path / 'ran').exists()


def test_hooks_dir_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / 'real'
    real.mkdir(mode=0o755)
    make_hook(point(real), '10-hook', 'touch "%s"\n' % (tmp_path / 'ran'))
    os.symlink(str(real), str(tmp_path / 'hooks'))
    result = hooks.run_hook_point(str(tmp_path / 'hooks'), 'before_network_setup', '', '_hook_json', owner_uid=os.getuid())
    assert result.failed and 'symbolic link' in result.message()
    assert not (tmp_path / 'ran').exists()


@pytest.mark.parametrize('mode', [0o777, 0o775, 0o757])
def test_writable_hooks_dir_is_refused(tmp_path, mode):
    hooks_dir = tmp_path / 'hooks'
    hooks_dir.mkdir()
    make_hook(point(hooks_dir), '10-hook', 'touch "%s"\n' % (tmp_path / 'ran'))
    os.chmod(str(hooks_dir), mode)
    result = hooks.run_hook_point(str(hooks_dir), 'before_network_setup', '', '_hook_json', owner_uid=os.getuid())
    assert result.failed and 'writable by' in result.message()
    assert not (tmp_path / 'ran').exists()


@pytest.mark.parametrize('target', ['/bin/true', 'own'])
def test_script_that_is_a_symlink_is_refused(tmp_path, target):
    directory = point(tmp_path)
    if target == 'own':
        elsewhere = tmp_path / 'elsewhere'
        elsewhere.mkdir(mode=0o755)
        target = str(make_hook(elsewhere, 'tool', 'touch "%s"\n' % (tmp_path / 'ran')))
    os.symlink(target, str(directory / '10-link'))
    result = run(tmp_path)
    assert result.failed and result.stopped and 'refused: a symbolic link' in result.message()
    assert result.scripts[0]['rc'] is None and not (tmp_path / 'ran').exists()


def test_hook_point_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'before_network_setup').write_text('#!/bin/sh\n')
    result = run(tmp_path)
    assert not result.failed and result.scripts == []  # nothing to run: as an absent hook point


def test_a_secret_is_redacted_as_written_and_as_escaped_in_xml_text_and_attributes():
    secret = 'p<a>&"q\'s'
    text = ('plain %s; text <p>p&lt;a&gt;&amp;"q\'s</p>; attribute passwd="p&lt;a&gt;&amp;&quot;q&apos;s"' % secret)
    assert hooks.redact(text, [secret, '']) == 'plain %s; text <p>%s</p>; attribute passwd="%s"' % ((hooks.REDACTED,) * 3)
