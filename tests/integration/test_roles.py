"""The roles against the lab: converge, converge again with nothing changed, verify.

Each scenario in molecule/<role>/ (converge.yml, verify.yml) is run the way
molecule's delegated driver runs it (converge, idempotence, verify), with
ansible-playbook directly, so the test needs nothing but the lab.
"""

from __future__ import annotations

import re

import pytest

from conftest import REPO, lab_exec, run_playbook

SCENARIOS = ["bootstrap", "node_agent"]
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def recap(output: str) -> dict:
    return {m.group(1): {"changed": int(m.group(3)), "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in RECAP.finditer(output)}


@pytest.fixture(scope="session")
def lab_binds(lab_hosts):
    """The lab's per-host directories must be mounted, or the roles would write the machine's own /etc."""
    for host in lab_hosts:
        for path in ("/etc/virtnode", "/var/lib/virtnode", "/run"):
            if lab_exec(host, "findmnt", "-n", path, check=False).returncode != 0:
                pytest.fail(f"{host}: {path} is not the lab host's own directory (bind mount gone); "
                            "run `make lab-down lab-up`")
    return lab_hosts


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_role_converges_idempotently_and_verifies(scenario, lab_binds):
    directory = REPO / "molecule" / scenario
    first = run_playbook(directory / "converge.yml")
    print(first.stdout)
    assert first.returncode == 0, first.stdout[-20000:]

    second = run_playbook(directory / "converge.yml")
    print(second.stdout)
    assert second.returncode == 0, second.stdout[-20000:]
    results = recap(second.stdout)
    assert set(results) == set(lab_binds)
    changed = {host: r["changed"] for host, r in results.items() if r["changed"]}
    assert not changed, f"second converge changed something: {changed}\n{second.stdout[-20000:]}"

    verify = run_playbook(directory / "verify.yml")
    print(verify.stdout)
    assert verify.returncode == 0, verify.stdout[-20000:]
