# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks


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
