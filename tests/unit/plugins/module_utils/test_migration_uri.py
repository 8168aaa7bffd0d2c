# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The destination URI the vm module derives from migrate_to and migrate_transport."""

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import options as vm_options


def test_tls_is_the_default_as_bootstrap_listens_with_tls_by_default():
    assert vm_lifecycle.default_migration_uri('vnhost2') == 'qemu+tls://vnhost2/system'


def test_plain_tcp_uses_the_tcp_listener():
    assert vm_lifecycle.default_migration_uri('10.0.0.2', 'tcp') == 'qemu+tcp://10.0.0.2/system'


def test_unknown_transport_is_refused():
    with pytest.raises(VirtnodeError, match='unknown migration transport'):
        vm_lifecycle.default_migration_uri('vnhost2', 'ssh')


def test_module_option_matches_the_known_transports():
    spec = vm_options.argument_spec()['migrate_transport']
    assert spec['choices'] == list(vm_lifecycle.MIGRATION_TRANSPORTS) and spec['default'] == 'tls'


@pytest.mark.parametrize('persistent', [True, False])
def test_tls_transport_encrypts_the_migration_stream(persistent):
    # migrate_transport=tls must protect the memory QEMU sends, not only libvirtd's control connection.
    from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge
    params = {'migrate_options': None, 'migrate_unsafe': True, 'migrate_transport': 'tls', 'migrate_uri': None}
    flags = vm_lifecycle.migration_flags(persistent, converge.migration_options(params))
    assert flags & constants.value('VIR_MIGRATE_TLS')
    # The explicit URI does not switch encryption off: the transport says what the stream needs.
    flags = vm_lifecycle.migration_flags(persistent, converge.migration_options(dict(params, migrate_uri='qemu+tcp://h/system')))
    assert flags & constants.value('VIR_MIGRATE_TLS')
    flags = vm_lifecycle.migration_flags(persistent, converge.migration_options(dict(params, migrate_transport='tcp')))
    assert not flags & constants.value('VIR_MIGRATE_TLS')
