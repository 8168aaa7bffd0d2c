# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's qemu hook: before_vm_migrate_destination rewrites the incoming XML or refuses the migration."""

from __future__ import annotations

import io
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.vm import libvirt_hook

XML = ("<domain type='qemu'><name>g1</name><uuid>6f1d8a52-6b63-4b7e-9d7e-2f0d2c7a1e01</uuid>"
       "<memory unit='KiB'>131072</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
       "<devices/></domain>")


def hooks_dir_with(tmp_path, body):
    directory = tmp_path / 'hooks' / libvirt_hook.MIGRATE_DESTINATION
    directory.mkdir(parents=True, mode=0o755)
    for path in (tmp_path / 'hooks', directory):
        os.chmod(str(path), 0o755)
    script = directory / '50_test'
    script.write_text(body)
    os.chmod(str(script), 0o755)
    return str(tmp_path / 'hooks')


def call(argv, hooks_dir, stdin=XML):
    out, err = io.StringIO(), io.StringIO()
    rc = libvirt_hook.run(argv, io.StringIO(stdin), out, err, hooks_dir=hooks_dir)
    return rc, out.getvalue(), err.getvalue()


def test_migrate_begin_gives_libvirt_the_xml_the_hooks_rewrote(tmp_path):
    hooks_dir = hooks_dir_with(tmp_path, '#!/bin/sh\n[ "$vmName" = g1 ] && [ -n "$vmId" ] || exit 1\n'
                                         'sed -i "s|<devices/>|<devices/><description>moved</description>|" '
                                         '"$_hook_domxml"\n')
    rc, out, err = call(['g1', 'migrate', 'begin', '-'], hooks_dir)
    assert rc == 0 and '<description>moved</description>' in out and err == '', (rc, out, err)


def test_a_failing_hook_refuses_the_migration_with_its_message(tmp_path):
    hooks_dir = hooks_dir_with(tmp_path, '#!/bin/sh\necho not on this host >&2\nexit 1\n')
    rc, out, err = call(['g1', 'migrate', 'begin', '-'], hooks_dir)
    assert rc == 1 and out == '' and 'not on this host' in err, (rc, out, err)


def test_every_other_operation_is_left_alone_without_reading_the_xml(tmp_path):
    hooks_dir = hooks_dir_with(tmp_path, '#!/bin/sh\nexit 1\n')
    for argv in (['g1', 'prepare', 'begin', '-'], ['g1', 'started', 'begin', '-'], ['g1', 'migrate'], []):
        assert call(argv, hooks_dir, stdin='not xml') == (0, '', ''), argv


def test_without_hooks_the_xml_goes_back_as_it_came(tmp_path):
    assert call(['g1', 'migrate', 'begin', '-'], str(tmp_path / 'none')) == (0, XML, '')
