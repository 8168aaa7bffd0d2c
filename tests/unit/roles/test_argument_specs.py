# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's defaults/main.yml and meta/argument_specs.yml list the same variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[3] / 'roles'
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / 'defaults' / 'main.yml').exists()) if ROLES.is_dir() else []


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


@pytest.mark.parametrize('role', ROLE_NAMES)
def test_defaults_and_argument_specs_agree(role):
    defaults = load(ROLES / role / 'defaults' / 'main.yml')
    specs = load(ROLES / role / 'meta' / 'argument_specs.yml')['argument_specs']['main']['options']
    assert sorted(defaults) == sorted(specs), (
        'only in defaults: %s; only in argument_specs: %s'
        % (sorted(set(defaults) - set(specs)), sorted(set(specs) - set(defaults))))


@pytest.mark.parametrize('role', ROLE_NAMES)
def test_public_variables_carry_the_role_prefix(role):
    defaults = load(ROLES / role / 'defaults' / 'main.yml')
    assert all(name.startswith(role + '_') for name in defaults), sorted(defaults)


@pytest.mark.parametrize('role', ROLE_NAMES)
def test_documented_defaults_match(role):
    defaults = load(ROLES / role / 'defaults' / 'main.yml')
    specs = load(ROLES / role / 'meta' / 'argument_specs.yml')['argument_specs']['main']['options']
    for name, spec in specs.items():
        if 'default' in spec:
            assert spec['default'] == defaults[name], name
        else:
            assert defaults[name] is None, '%s has a default but argument_specs documents none' % name
