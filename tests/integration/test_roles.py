"""The roles against the lab: molecule's converge, idempotence and verify steps.

Each scenario in molecule/<role>/ uses the delegated (default) driver with
unmanaged instances: the hosts are the lab's, so molecule creates and destroys
nothing. The scenario's inventory is the lab's (VIRTNODE_LAB_INVENTORY), the
collection is the working tree's copy (ANSIBLE_COLLECTIONS_PATH) and molecule
keeps its state in the lab's directory, not in ~/.ansible.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import INVENTORY, LAB, REPO, ansible_env, lab_exec

SCENARIOS = ["bootstrap", "node_agent"]
# Without colours molecule logs "INFO     [scenario > step] Executing"; with them "scenario ➜ step: Executing"
# and ansible-playbook's output inside a box ("  │ " before each line). Both are accepted.
RECAP = re.compile(r"^[\s│]*(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
STEP = re.compile(r"^INFO\s+\[?(\w+) (?:>|➜) (\w+)\]?:? Executing\s*$", re.M)


def recap(output: str) -> dict:
    return {m.group(1): {"changed": int(m.group(3)), "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in RECAP.finditer(output)}


def steps(output: str) -> dict:
    """Each step's part of molecule's output, by step name."""
    marks = list(STEP.finditer(output))
    return {m.group(2): output[m.start():marks[i + 1].start() if i + 1 < len(marks) else len(output)]
            for i, m in enumerate(marks)}


def run_molecule(scenario: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    # molecule's state for the scenario (its ansible.cfg, inventory, state.yml): fresh for every run.
    state = LAB / "molecule" / scenario
    shutil.rmtree(state, ignore_errors=True)
    env = ansible_env()
    env.update({
        "VIRTNODE_LAB_INVENTORY": str(INVENTORY),
        "MOLECULE_EPHEMERAL_DIRECTORY": str(state),
        # The scenarios are at the collection's root (molecule 25+ looks in extensions/molecule/ by default).
        "MOLECULE_GLOB": "molecule/*/molecule.yml",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    })
    cmd = [sys.executable, "-m", "molecule", "test", "--scenario-name", scenario]
    return subprocess.run(cmd, cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)


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
    proc = run_molecule(scenario)
    print(proc.stdout)
    tail = proc.stdout[-20000:]
    assert proc.returncode == 0, tail

    ran = steps(proc.stdout)
    assert list(ran) == ["converge", "idempotence", "verify"], f"steps run: {list(ran)}\n{tail}"

    # The idempotence step is a second converge; molecule fails it on any changed=N>0, checked here as well.
    second = recap(ran["idempotence"])
    assert set(second) == set(lab_binds), ran["idempotence"][-20000:]
    changed = {host: r["changed"] for host, r in second.items() if r["changed"]}
    assert not changed, f"second converge changed something: {changed}\n{ran['idempotence'][-20000:]}"

    verify = recap(ran["verify"])
    assert set(verify) == set(lab_binds), ran["verify"][-20000:]
    assert not any(r["failed"] or r["unreachable"] for r in verify.values()), ran["verify"][-20000:]
    assert re.search(rf"{scenario} (?:>|➜) verify\]?:? Executed: Successful", ran["verify"]), ran["verify"][-20000:]
