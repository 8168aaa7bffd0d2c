# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/bench/bench_table.py: the one table `make bench` prints from every benchmark's summary rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_table  # noqa: E402


def test_rows_say_whether_the_goal_is_met():
    assert bench_table.row("f", "1 ms", "limit 2 ms", 0.5, 1.0)["goal"] == "met (<= 1)"
    assert bench_table.row("f", "3 ms", "limit 2 ms", 1.5, 1.0)["goal"] == "NOT met (<= 1)"
    assert bench_table.row("f", "3 ms", "peer 2 ms", 1.5)["goal"] == ""
    assert bench_table.row("f", "-", "limit 2 ms", None, 1.0)["goal"] == ""


def test_the_table_gathers_every_benchmark_and_names_the_missing_ones(tmp_path, capsys):
    bench_table.write(str(tmp_path / "agent.json"), [bench_table.row("agent: sample", "12.2 ms", "bulk 5.9 ms", 2.07, 2.0)])
    bench_table.write(str(tmp_path / "vm.json"), [bench_table.row("vm: no-op", "9.4 s", "peer 15.8 s", 0.6)])
    assert bench_table.main(["bench_table.py", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split(" | ")[0].strip() == "figure" and set(lines[1]) <= {"-", "+"}
    assert "agent: sample" in lines[2] and "2.07" in lines[2] and "NOT met (<= 2)" in lines[2]
    assert "vm: no-op" in lines[3] and "0.60" in lines[3]
    assert "no figures from: thin" in out
    assert json.loads((tmp_path / "vm.json").read_text())[0]["ours"] == "9.4 s"
