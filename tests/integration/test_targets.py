"""Runs every tests/integration/targets/<name>/tasks/main.yml against the lab.

A target is a role; it runs on every lab host unless its `aliases` file says
`hosts/first` (the first host only). Assertions live in the target's tasks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_playbook

TARGETS = REPO / "tests" / "integration" / "targets"


def targets() -> list[str]:
    return sorted(p.name for p in TARGETS.iterdir() if (p / "tasks" / "main.yml").exists())


def aliases(name: str) -> set[str]:
    path = TARGETS / name / "aliases"
    return set(path.read_text().split()) if path.exists() else set()


@pytest.mark.parametrize("target", targets())
def test_target(target: str, tmp_path: Path) -> None:
    hosts = "lab[0]" if "hosts/first" in aliases(target) else "lab"
    playbook = tmp_path / f"{target}.yml"
    playbook.write_text(
        f"- name: Integration target {target}\n"
        f"  hosts: \"{hosts}\"\n"
        "  gather_facts: false\n"
        "  roles:\n"
        f"    - role: {TARGETS / target}\n"
    )
    proc = run_playbook(playbook)
    print(proc.stdout)
    assert proc.returncode == 0, f"target {target} failed:\n{proc.stdout[-20000:]}"
