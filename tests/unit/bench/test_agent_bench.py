# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/bench/agent_bench.py still runs against the collection as it is now (a few domains, one round)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "agent_bench.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # the one with python3-libvirt, as `make bench-agent` runs it


def collections_root():
    """The directory holding ``ansible_collections`` this test was imported from."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.agent import sampling  # pylint: disable=import-outside-toplevel
    return str(Path(sampling.__file__).resolve().parents[6])


def test_the_agent_benchmark_runs_and_reports_every_figure():
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("python3-libvirt is not installed for %s" % SYSTEM_PYTHON)
    proc = subprocess.run([SYSTEM_PYTHON, str(BENCH), "--json", "--domains", "20", "--rounds", "1",
                           "--collections", collections_root()], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=""), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["domains"] == 20
    assert all(figures[key] > 0 for key in ("bulk_ms", "sample_ms", "shape_ms", "sample_once_ms", "query_ms",
                                            "max_rss_mib")), figures
