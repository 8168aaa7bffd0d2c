# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layering of module_utils, read from the code's own imports.

Every import statement counts, at any depth of a function: AnsiballZ ships
what any import names, so an import inside a function is no lighter than one
at the top. The test fails on an import that points up the layers and prints
what each module ships to a host (files and bytes). Run this file directly
(``python tests/unit/test_architecture.py``) for the table alone.
"""

from __future__ import annotations

import ast
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(REPO, 'plugins')
MODULE_UTILS = os.path.join(PLUGINS, 'module_utils')
MODULES = os.path.join(PLUGINS, 'modules')
AGENT_ENTRY = os.path.join(REPO, 'roles', 'node_agent', 'files', 'virtnode-agent')
AGENT_ROLE_VARS = os.path.join(REPO, 'roles', 'node_agent', 'vars', 'main.yml')
NETWORK_RESTORE_ENTRY = os.path.join(REPO, 'roles', 'bootstrap', 'files', 'virtnode-network-restore')
BOOTSTRAP_ROLE_VARS = os.path.join(REPO, 'roles', 'bootstrap', 'vars', 'main.yml')
PREFIX = 'ansible_collections.virtnode.kvm.plugins.module_utils'

# A package may import its own files and those of lower layers, never higher ones.
LAYERS = {
    'common': 0,
    'libvirt': 1, 'sanlock': 1,
    'host': 2, 'network': 2, 'storage': 2,
    'vm': 3,
    'agent': 4,
    # Controller side: what the virtnode.kvm.vms inventory plugin reads, over libvirt connections to the hosts.
    'inventory': 5,
}
# Imports between packages of one layer, each with its reason; no others.
SIDEWAYS = {
    ('host', 'network'): 'host facts read links and addresses with the one iproute reader',
}
# What modules may use of the agent package: the client of its socket and the event log reader.
AGENT_PUBLIC = {'agent/client.py', 'agent/events.py'}
# Modules that only read: they must not ship the storage or sanlock layers.
READ_ONLY_LIGHT = ('vm_info', 'host_info', 'event_info')


def _resolve(dotted):
    """The file under module_utils that a dotted name denotes, or None."""
    if dotted != PREFIX and not dotted.startswith(PREFIX + '.'):
        return None
    path = os.path.join(MODULE_UTILS, *dotted[len(PREFIX):].lstrip('.').split('.'))
    return os.path.relpath(path + '.py', MODULE_UTILS) if os.path.isfile(path + '.py') else None


def direct_imports(path):
    """The module_utils files (relative paths) that ``path`` imports anywhere in its code."""
    with open(path, 'rb') as handle:
        tree = ast.parse(handle.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from pkg import name": name is a file of pkg, or a symbol of pkg.py.
            names = [_resolve(node.module + '.' + alias.name) and node.module + '.' + alias.name or node.module
                     for alias in node.names]
        else:
            continue
        found.update(target for target in map(_resolve, names) if target)
    return found


def closure(path):
    """Every module_utils file that ``path`` ships with, directly or through others."""
    seen, todo = set(), [path]
    while todo:
        for target in direct_imports(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(os.path.join(MODULE_UTILS, target))
    return seen


def module_utils_files():
    for directory, _dirs, files in os.walk(MODULE_UTILS):
        for name in sorted(files):
            if name.endswith('.py'):
                yield os.path.relpath(os.path.join(directory, name), MODULE_UTILS)


def modules():
    return sorted(name[:-3] for name in os.listdir(MODULES) if name.endswith('.py'))


def payload(module):
    files = closure(os.path.join(MODULES, module + '.py'))
    return sorted(files), sum(os.path.getsize(os.path.join(MODULE_UTILS, f)) for f in files)


def payload_table():
    lines = ['%-16s %5s %8s  %s' % ('module', 'files', 'bytes', 'packages')]
    for module in modules():
        files, size = payload(module)
        packages = sorted({f.split('/')[0] for f in files})
        lines.append('%-16s %5d %8d  %s' % (module, len(files), size, ' '.join(packages)))
    return '\n'.join(lines)


def test_every_package_has_a_layer():
    top = [f for f in module_utils_files() if '/' not in f]
    assert not top, 'module_utils files live in a package, not at the top: %s' % top
    packages = {f.split('/')[0] for f in module_utils_files()}
    assert packages <= set(LAYERS), 'packages without a layer in LAYERS: %s' % sorted(packages - set(LAYERS))


def test_imports_point_down_the_layers():
    wrong = []
    for source in module_utils_files():
        package = source.split('/')[0]
        for target in sorted(direct_imports(os.path.join(MODULE_UTILS, source))):
            other = target.split('/')[0]
            if other == package or LAYERS[other] < LAYERS[package] or (package, other) in SIDEWAYS:
                continue
            wrong.append('%s -> %s (layer %d imports layer %d)' % (source, target, LAYERS[package], LAYERS[other]))
    assert not wrong, 'imports that point up or sideways:\n' + '\n'.join(wrong)


def test_no_package_init_files():
    # An __init__.py ships with every file of its package; namespace packages need none.
    inits = [f for f in module_utils_files() if os.path.basename(f) == '__init__.py']
    assert not inits, inits


def test_modules_use_only_the_agents_public_files():
    wrong = []
    for module in modules():
        for target in direct_imports(os.path.join(MODULES, module + '.py')):
            if target.startswith('agent/') and target not in AGENT_PUBLIC:
                wrong.append('%s -> %s' % (module, target))
    assert not wrong, wrong


def test_agent_public_files_are_light():
    # The client and event reader ship with read-only modules: only common may come with them.
    for public in sorted(AGENT_PUBLIC):
        heavy = sorted(f for f in closure(os.path.join(MODULE_UTILS, public)) if not f.startswith('common/'))
        assert not heavy, '%s ships %s' % (public, heavy)


@pytest.mark.parametrize('module', READ_ONLY_LIGHT)
def test_read_only_modules_ship_no_storage_or_sanlock(module):
    files, _size = payload(module)
    heavy = [f for f in files if f.split('/')[0] in ('storage', 'sanlock')]
    assert not heavy, '%s ships %s' % (module, heavy)


def test_modules_use_the_one_run_helper():
    # One failure shape: every module runs its work through common/module.py.
    missing = [m for m in modules() if 'common/module.py' not in direct_imports(os.path.join(MODULES, m + '.py'))]
    assert not missing, missing


@pytest.mark.parametrize('entry, role_vars, variable', [
    (AGENT_ENTRY, AGENT_ROLE_VARS, '__node_agent_module_utils_packages'),
    (NETWORK_RESTORE_ENTRY, BOOTSTRAP_ROLE_VARS, '__bootstrap_network_restore_module_utils_packages'),
], ids=['node_agent', 'bootstrap_network_restore'])
def test_roles_install_the_packages_their_entry_points_import(entry, role_vars, variable):
    needed = sorted({f.split('/')[0] for f in closure(entry)})
    with open(role_vars) as handle:
        match = re.search(r'^%s:\s*\[([^\]]*)\]' % variable, handle.read(), re.M)
    assert match, '%s lists no %s' % (os.path.relpath(role_vars, REPO), variable)
    listed = sorted(p.strip() for p in match.group(1).split(','))
    assert listed == needed, 'the role installs %s, %s imports %s' % (listed, os.path.basename(entry), needed)


def test_architecture_page_names_what_each_module_ships():
    with open(os.path.join(REPO, 'docs', 'architecture.md')) as handle:
        rows = dict(re.findall(r'^\| `(\w+)` \| ([a-z, ]+) \|$', handle.read(), re.M))
    for module in modules():
        packages = ', '.join(sorted({f.split('/')[0] for f in payload(module)[0]}))
        assert rows.get(module) == packages, 'docs/architecture.md: %s ships %s' % (module, packages)


def test_payload_table(capsys):
    table = payload_table()
    with capsys.disabled():
        sys.stdout.write('\nWhat each module ships (module_utils files and bytes):\n%s\n' % table)
    assert table.count('\n') == len(modules())


if __name__ == '__main__':
    print(payload_table())
