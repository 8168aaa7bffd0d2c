# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import faults

MODULE_UTILS = Path(faults.__file__).resolve().parents[1]
CALL = re.compile(r"^\s*crash_point\('([^']+)'\)\s*$", re.M)


def calls():
    found = {}
    for path in MODULE_UTILS.rglob('*.py'):
        for name in CALL.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(MODULE_UTILS)))
    return found


@pytest.mark.parametrize('name', sorted(faults.CRASH_POINTS))
def test_every_listed_crash_point_is_called_once_where_listed(name):
    # A renamed or dropped step must not silently leave the crash-consistency test.
    assert calls().get(name) == [faults.CRASH_POINTS[name][0]]


def test_every_call_is_listed():
    assert sorted(calls()) == sorted(faults.CRASH_POINTS)


def test_crash_point_kills_only_when_named():
    code = ('from ansible_collections.virtnode.kvm.plugins.module_utils.common.faults import crash_point\n'
            'crash_point("volume_create.data")\nprint("alive")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    other = subprocess.run([sys.executable, '-c', code], env=dict(env, VIRTNODE_CRASH_AT='volume_create.legal'),
                           capture_output=True, text=True, check=False)
    assert (other.returncode, other.stdout) == (0, 'alive\n')
    named = subprocess.run([sys.executable, '-c', code], env=dict(env, VIRTNODE_CRASH_AT='volume_create.data'),
                           capture_output=True, text=True, check=False)
    assert named.returncode == -9 and named.stdout == ''
