# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures: a fake ``libvirt`` module, so unit tests never need the real bindings."""

from __future__ import annotations

import os
import sys
import types

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), 'plugins', 'module_utils', 'fixtures')

VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_NO_CONNECT = 5
VIR_FROM_RPC = 7
# The storage domain of the nfs_domain fixture.
NFS_SD = '275766cb-c7d8-43d6-a663-4e52160de620'


def fixture_text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class FakeLibvirtError(Exception):
    """Mimics libvirt.libvirtError's accessors."""

    def __init__(self, message, code=VIR_ERR_SYSTEM_ERROR, domain=VIR_FROM_RPC):
        super().__init__(message)
        self.message = message
        self.code = code
        self.domain = domain

    def get_error_message(self):
        return self.message

    def get_error_code(self):
        return self.code

    def get_error_domain(self):
        return self.domain


class FakeConnection:
    def __init__(self, backend, uri, readonly):
        self.backend = backend
        self.uri = uri
        self.readonly = readonly
        self.closed = False

    def _check(self, name):
        if self.closed:
            raise FakeLibvirtError('connection is closed')
        failure = self.backend.call_failures.get(name)
        if failure is not None:
            raise failure

    def getCapabilities(self):
        self._check('getCapabilities')
        return self.backend.capabilities

    def getURI(self):
        self._check('getURI')
        return self.uri

    def getType(self):
        self._check('getType')
        return 'QEMU'

    def getLibVersion(self):
        self._check('getLibVersion')
        return self.backend.daemon_version

    def getVersion(self):
        self._check('getVersion')
        return self.backend.hypervisor_version

    def close(self):
        self.closed = True
        return 0


class FakeLibvirt:
    """State behind the fake module; tests tweak its attributes."""

    def __init__(self):
        self.capabilities = fixture_text('capabilities_x86_64.xml')
        self.library_version = 9000000
        self.daemon_version = 9000000
        self.hypervisor_version = 7002022
        self.open_error = None
        self.call_failures = {}
        self.connections = []
        self.module = self._make_module()

    def _open(self, uri, readonly):
        if self.open_error is not None:
            raise self.open_error
        conn = FakeConnection(self, uri, readonly)
        self.connections.append(conn)
        return conn

    def _make_module(self):
        module = types.ModuleType('libvirt')
        module.libvirtError = FakeLibvirtError
        module.VIR_ERR_SYSTEM_ERROR = VIR_ERR_SYSTEM_ERROR
        module.VIR_ERR_NO_CONNECT = VIR_ERR_NO_CONNECT
        module.VIR_ERR_RPC = 39
        module.open = lambda uri=None: self._open(uri, False)
        module.openReadOnly = lambda uri=None: self._open(uri, True)
        module.getVersion = lambda *args: self.library_version
        return module


def _libvirt_conn():
    # Imported on use, so tests outside the collection (tests/unit/lab) need no collection path.
    from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn  # pylint: disable=import-outside-toplevel
    return libvirt_conn


@pytest.fixture
def fake_libvirt(monkeypatch):
    """Install a fake ``libvirt`` module for the duration of one test."""
    libvirt_conn = _libvirt_conn()
    fake = FakeLibvirt()
    monkeypatch.setitem(sys.modules, 'libvirt', fake.module)
    monkeypatch.setattr(libvirt_conn, 'libvirt', fake.module)
    monkeypatch.setattr(libvirt_conn, 'HAS_LIBVIRT', True)
    monkeypatch.setattr(libvirt_conn, 'LIBVIRT_IMPORT_ERROR', None)
    monkeypatch.setattr(libvirt_conn, 'LibvirtError', FakeLibvirtError)
    return fake


@pytest.fixture
def no_libvirt(monkeypatch):
    """Behave as if the libvirt bindings were not installed."""
    libvirt_conn = _libvirt_conn()
    monkeypatch.setitem(sys.modules, 'libvirt', None)
    monkeypatch.setattr(libvirt_conn, 'libvirt', None)
    monkeypatch.setattr(libvirt_conn, 'HAS_LIBVIRT', False)
    monkeypatch.setattr(libvirt_conn, 'LIBVIRT_IMPORT_ERROR', "ModuleNotFoundError: No module named 'libvirt'")


POOL_SP = '0b4f2a62-4a44-4d71-8f0d-0ad5b0e3c6a2'


@pytest.fixture
def nfs_domain(tmp_path, monkeypatch):
    """An NFS-type storage domain under a private mount root and lock dir, sanlock's lease writes faked.

    Returns its directory; the mount root is ``tmp_path / 'mnt'`` and the domain UUID ``NFS_SD``.
    """
    # pylint: disable=import-outside-toplevel  # as _libvirt_conn: the collection loads after this file
    from ansible_collections.virtnode.kvm.plugins.module_utils.sanlock import leases as sanlock_lock
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
    root = tmp_path / 'mnt'
    (root / 'server:_export').mkdir(parents=True)
    monkeypatch.setattr(sd_layout, 'MOUNT_ROOT', str(root))
    monkeypatch.setattr(domain_lock, 'LOCK_DIR', str(tmp_path / 'locks'))
    for name in ('write_lockspace', 'write_resource'):
        monkeypatch.setattr(sanlock_lock, name, lambda *args, **kwargs: None)
    return storage.create_domain(str(root / 'server:_export'), NFS_SD, 'NFS', 'Data', 'data', 'server:/export', 5, 1)


@pytest.fixture(autouse=True)
def network_log_in_tmp(monkeypatch, tmp_path):
    """The network code logs to /var/log/virtnode/network.log; unit tests never write the machine's."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.network import store
    monkeypatch.setattr(store, 'LOG_FILE', str(tmp_path / 'network.log'))


@pytest.fixture
def pooled_nfs_domain(nfs_domain, tmp_path, monkeypatch):
    """The NFS-type domain of ``nfs_domain``, found by the domain scan and in pool ``POOL_SP``; its directory."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
    root = str(tmp_path / 'mnt')
    monkeypatch.setattr(storage, 'scan_domains', lambda mount_root=root, mount=None, unreachable=None, block=True, _orig=storage.scan_domains:
                        _orig(mount_root=root, mount=mount, unreachable=unreachable, block=block))
    storage.update_md(nfs_domain, {'POOL_UUID': POOL_SP})
    return nfs_domain
