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
    assert all(figures[key] > 0 for key in ("bulk_ms", "sample_ms", "sample_probe_all_ms", "sample_typical_ms", "shape_ms",
                                            "sample_once_ms", "query_ms", "max_rss_mib")), figures


def test_the_summary_takes_the_rss_goal_from_the_run_through_libvirtd(tmp_path):
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.spec_from_file_location("agent_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    local = {"domains": 1000, "bulk_ms": 3.0, "sample_ms": 4.0, "sample_probe_all_ms": 8.0, "sample_typical_ms": 4.3,
             "query_ms": 11.0, "max_rss_mib": 87.0}
    daemon = {"domains": 1000, "bulk_ms": 9.0, "sample_ms": 11.0, "sample_probe_all_ms": 120.0, "sample_typical_ms": 18.0,
              "query_ms": 15.0, "max_rss_mib": 56.0}
    summary = tmp_path / "agent.json"
    bench.write_summary(str(summary), local, [local], daemon)
    rows = {row["figure"]: row for row in json.loads(summary.read_text())}
    assert rows["agent: process max RSS, 1000 VMs (test driver in it)"]["goal"] == ""
    assert rows["agent: process max RSS, 1000 VMs (test driver in libvirtd)"]["goal"].startswith("met")
    assert rows["agent: one full sample, 1000 VMs"]["goal"].startswith("met")
    assert rows["agent: one full sample, 1000 VMs through libvirtd"]["ratio"] == 18.0 / 9.0
    bench.write_summary(str(summary), local, [local])
    rows = {row["figure"]: row for row in json.loads(summary.read_text())}
    assert rows["agent: process max RSS, 1000 VMs (test driver in it)"]["goal"].startswith("NOT met")
