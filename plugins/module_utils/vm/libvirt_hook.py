# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's qemu hook: VDSM's ``before_vm_migrate_destination`` on the destination of a migration.

libvirtd runs each executable of ``/etc/libvirt/hooks/qemu.d/`` as ``<script> <domain> <operation>
<sub-operation> <extra>`` with the domain XML on standard input. For ``migrate begin``, on the
destination of an incoming migration before its domain is made, what the script prints replaces the
XML and a non-zero exit refuses the migration: what VDSM's destination does with its
``before_vm_migrate_destination`` hooks (the XML they get is the source's, as in VDSM). The node_agent
role installs the script; every other operation returns at once. libvirtd waits for the script, so it
never calls libvirt.
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle

MIGRATE_DESTINATION = 'before_vm_migrate_destination'


def run(argv, stdin, stdout, stderr, hooks_dir=hooks_utils.DEFAULT_HOOKS_DIR):
    """Handle one call of libvirt's qemu hook (``argv`` without the script name); return the exit status."""
    if len(argv) < 3 or (argv[1], argv[2]) != ('migrate', 'begin'):
        return 0
    xml = stdin.read()
    name, vm_uuid, env = argv[0], None, {}
    try:
        live = domxml.parse_live(xml)
        name, vm_uuid, env = live['name'] or name, live['uuid'], live['custom_properties']
    except Exception as err:  # pylint: disable=broad-except  # the hooks still run, with the name libvirt gave
        stderr.write('virtnode: cannot read the incoming domain XML of %s: %s\n' % (name, err))
    try:
        result = vm_lifecycle.run_vm_hook(hooks_dir, MIGRATE_DESTINATION, xml, name, vm_uuid, env)
    except Exception as err:  # pylint: disable=broad-except  # refuse the migration with the reason, never a traceback
        stderr.write('virtnode: %s could not run for %s: %s\n' % (MIGRATE_DESTINATION, name, err))
        return 1
    if result.failed:
        stderr.write('virtnode: %s\n' % result.message())
        return 1
    stdout.write(result.data)
    return 0
