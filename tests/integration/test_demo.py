"""The main playbook stays working: `make demo` runs exactly this."""

from __future__ import annotations

from conftest import REPO, run_playbook


def test_demo_playbook(lab_hosts):
    proc = run_playbook(REPO / "playbooks" / "demo.yml")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-20000:]
    assert "heartbeat 3" in proc.stdout
    for name in lab_hosts:
        assert f"{name} uuid=" in proc.stdout
