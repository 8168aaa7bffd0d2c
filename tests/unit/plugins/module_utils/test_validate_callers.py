# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every option that names something on the host or in storage goes through common/validate.

Each caller is tried with each class of unsafe character (see test_validate.py) and with
numbers in other scripts' digits; a bad value is a VirtnodeError naming the option, raised
before anything on the host is touched.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.network import model
from ansible_collections.virtnode.kvm.plugins.module_utils.network import state as kernel_state
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import connection as storage_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

sys.path.insert(0, os.path.dirname(__file__))
from fake_ip import FakeIp  # noqa: E402  pylint: disable=wrong-import-position
from test_validate import FOREIGN_DIGITS, UNSAFE_CHARS  # noqa: E402  pylint: disable=wrong-import-position


class _Stat(object):
    st_mode = stat.S_IFREG | 0o644


def _stat(path):  # pylint: disable=unused-argument
    return _Stat()


def _vm(**params):
    base = {'name': 'vm1', 'memory': '128MiB'}
    base.update(params)
    return vm_spec.normalize(base, stat_fn=_stat)


def _clean(err, field=None):
    message = str(err)
    message.encode('utf-8')
    if field is not None:
        assert err.details.get('field') == field, err.details
    return message


@pytest.mark.parametrize('char', UNSAFE_CHARS)
def test_vm_name_and_paths(char):
    with pytest.raises(VirtnodeError) as info:
        _vm(name='vm' + char + '1')
    _clean(info.value, 'name')
    for key in ('cdrom', 'kernel'):
        with pytest.raises(VirtnodeError) as info:
            _vm(**{key: '/srv/iso/a' + char + '.iso'})
        _clean(info.value, key)
    with pytest.raises(VirtnodeError) as info:
        _vm(disks=[{'path': '/srv/disks/a' + char + '.img'}])
    _clean(info.value)


@pytest.mark.parametrize('digits', FOREIGN_DIGITS)
def test_vm_sizes_in_foreign_digits(digits):
    with pytest.raises(VirtnodeError) as info:
        _vm(memory=digits + 'MiB')
    _clean(info.value, 'memory')


@pytest.fixture
def kernel():
    ip = FakeIp()
    ip.add_nic('nic1')
    return ip


def _network_problems(kernel, networks=(), bonds=()):
    config, problems = model.desired_config(model.empty_config(), model.request_from_params(list(networks), list(bonds)))
    return problems + model.validate_config(config, kernel_state.read_state(kernel)['links'])


@pytest.mark.parametrize('char', UNSAFE_CHARS)
def test_network_and_bond_names(kernel, char):
    problems = _network_problems(kernel, [{'name': 'n' + char, 'nic': 'nic1'}])
    assert any('not a valid Linux interface name' in p for p in problems), problems
    problems = _network_problems(kernel, [], [{'name': 'b' + char, 'nics': ['nic1']}])
    assert any('not a valid Linux interface name' in p for p in problems), problems
    with pytest.raises(VirtnodeError, match='nothing was changed'):
        config, dummy = model.desired_config(model.empty_config(), model.request_from_params([{'name': 'n' + char, 'nic': 'nic1'}], []))
        model.check_config(config, kernel_state.read_state(kernel)['links'])
    assert kernel.commands == []


@pytest.mark.parametrize('digits', FOREIGN_DIGITS)
@pytest.mark.parametrize('key', ['vlan', 'mtu'])
def test_network_numbers_in_foreign_digits(kernel, digits, key):
    problems = _network_problems(kernel, [{'name': 'n', 'nic': 'nic1', key: digits + '00'}])
    assert any('is not an integer' in p for p in problems), problems


@pytest.mark.parametrize('char', UNSAFE_CHARS)
@pytest.mark.parametrize('conn_type, spec', [('localfs', '/srv/a%sb'), ('posixfs', '/dev/sd%sb'), ('nfs', 'server:/exp%sort')])
def test_storage_server_paths(char, conn_type, spec):
    with pytest.raises(VirtnodeError) as info:
        storage_conn.validate_spec(conn_type, spec % char)
    _clean(info.value, 'path')


@pytest.mark.parametrize('char', UNSAFE_CHARS)
def test_storage_mount_point_name(char):
    with pytest.raises(VirtnodeError) as info:
        sd_layout.mount_point('server:/exp' + char)
    _clean(info.value)
