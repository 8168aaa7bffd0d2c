# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every variable a role documents in its argument_specs is read by the role.

A documented variable nothing reads tells an administrator a setting exists
that does nothing (the bootstrap role once wrote a host id file no module read).
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

ROLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'roles')
# Where a role reads its variables: tasks, handlers, templates, its own vars, and files it renders.
READERS = ('tasks', 'handlers', 'templates', 'vars', 'files')


def _documented(role):
    with open(os.path.join(ROLES, role, 'meta', 'argument_specs.yml'), encoding='utf-8') as stream:
        spec = yaml.safe_load(stream)['argument_specs']
    return sorted({name for entry in spec.values() for name in (entry.get('options') or {})})


def _role_text(role):
    parts = []
    for sub in READERS:
        for directory, _dirs, files in os.walk(os.path.join(ROLES, role, sub)):
            for name in files:
                with open(os.path.join(directory, name), encoding='utf-8', errors='replace') as stream:
                    parts.append(stream.read())
    return '\n'.join(parts)


@pytest.mark.parametrize('role', sorted(os.listdir(ROLES)))
def test_every_documented_role_variable_is_read_by_the_role(role):
    documented = _documented(role)
    assert documented, 'role %s documents no variables' % role
    text = _role_text(role)
    unread = [name for name in documented if not re.search(r'(?<![\w.])%s\b' % re.escape(name), text)]
    assert unread == [], 'role %s documents variables it never reads: %s' % (role, unread)
