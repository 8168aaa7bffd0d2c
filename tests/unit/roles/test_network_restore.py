# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bootstrap's boot-time network restore: on the role's real path, ordered before libvirtd, enabled as systemd would."""

from __future__ import annotations

import configparser
import os

import yaml

ROLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                    'roles', 'bootstrap')


def load(*path):
    with open(os.path.join(ROLE, *path)) as handle:
        return yaml.safe_load(handle)


def test_the_role_installs_it_on_systemd_hosts():
    includes = [t for t in load('tasks', 'main.yml') if t.get('ansible.builtin.include_tasks') == 'network_restore.yml']
    assert len(includes) == 1 and includes[0]['when'] == "__bootstrap_service_manager == 'systemd'"


def test_unit_runs_before_libvirtd_and_its_link_is_the_one_enable_makes():
    tasks = load('tasks', 'network_restore.yml')
    unit_task = next(t for t in tasks if 'content' in (t.get('ansible.builtin.copy') or {}))
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(unit_task['ansible.builtin.copy']['content'].split('\n', 1)[1])
    assert {'libvirtd.service', 'network.target'} <= set(unit['Unit']['Before'].split())
    assert 'local-fs.target' in unit['Unit']['After'].split()
    assert unit['Service']['Type'] == 'oneshot' and unit['Service']['RemainAfterExit'] == 'yes'
    variables = load('vars', 'main.yml')
    assert variables['__bootstrap_network_restore_wants'].endswith('/%s.wants' % unit['Install']['WantedBy'])
    assert unit['Service']['ExecStart'].endswith('/virtnode-network-restore')
