"""What ships is what is tested: build the collection tarball, install it into a
fresh venv, document every module from it, run a playbook with it on the lab,
and turn it into an execution-environment build context."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile

import pytest

from conftest import INVENTORY, REPO

COLLECTION_SRC = REPO / ".build" / "ansible_collections" / "virtnode" / "kvm"
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
ANSIBLE_CORE_PIN = next(line.strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines()
                        if line.startswith("ansible-core=="))
FORBIDDEN = re.compile(r"(^|/)(\.venv|\.lab|\.build|\.git|tests/output|__pycache__)(/|$)|\.(qcow2|img|iso)$")


def sh(cmd: list[str], **kw) -> str:
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("shipped")
    assert COLLECTION_SRC.is_dir(), "run `make collection` first"
    sh(["ansible-galaxy", "collection", "build", "--output-path", str(work), str(COLLECTION_SRC)])
    tarball = next(work.glob("virtnode-kvm-*.tar.gz"))
    venv = work / "venv"
    sh([sys.executable, "-m", "venv", str(venv)])
    sh([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", ANSIBLE_CORE_PIN])
    collections = work / "collections"
    # Nothing of the working tree may leak in: no ANSIBLE_* settings from the suite.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), PATH=f"{venv / 'bin'}:{env['PATH']}",
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_FORCE_COLOR="0")
    sh([str(venv / "bin" / "ansible-galaxy"), "collection", "install", "-p", str(collections), str(tarball)], env=env)
    assert (collections / "ansible_collections" / "virtnode" / "kvm" / "MANIFEST.json").exists()
    return {"work": work, "tarball": tarball, "venv": venv, "env": env}


def test_tarball_holds_no_state(shipped):
    with tarfile.open(shipped["tarball"]) as tar:
        names = tar.getnames()
    bad = [n for n in names if FORBIDDEN.search(n)]
    assert not bad, f"the tarball ships lab state or build output: {bad[:20]}"
    for module in MODULES:
        assert f"plugins/modules/{module}.py" in names


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders(shipped, module):
    out = sh(["ansible-doc", "-t", "module", f"virtnode.kvm.{module}"], env=shipped["env"])
    # ansible-doc exits 0 with a warning for a module it cannot find; a module
    # without options has no OPTIONS heading.
    assert f"virtnode.kvm.{module}" in out and "RETURN VALUES" in out and "EXAMPLES" in out, out


def test_playbook_runs_from_the_installed_tarball(shipped):
    playbook = shipped["work"] / "smoke.yml"
    playbook.write_text(
        "- name: Smoke test of the shipped collection\n"
        "  hosts: lab[0]\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Read the host\n"
        "      virtnode.kvm.host_info:\n"
        "        gather: [versions]\n"
        "        sample_interval: 0\n"
        "      register: smoke\n"
        "    - name: It answered\n"
        "      ansible.builtin.assert:\n"
        "        that: smoke.host.versions.libvirt is truthy\n"
    )
    proc = subprocess.run(["ansible-playbook", "-i", str(INVENTORY), str(playbook)], env=shipped["env"],
                          text=True, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_execution_environment_context(shipped):
    ee = shipped["work"] / "ee"
    ee.mkdir()
    (ee / "execution-environment.yml").write_text((REPO / "execution-environment.yml").read_text())
    (ee / "virtnode-kvm.tar.gz").write_bytes(shipped["tarball"].read_bytes())
    sh([str(REPO / ".venv" / "bin" / "ansible-builder"), "create", "-f", "execution-environment.yml",
        "-c", "context"], cwd=ee)
    build = ee / "context" / "_build"
    assert (build / "virtnode-kvm.tar.gz").stat().st_size == shipped["tarball"].stat().st_size
    assert "virtnode-kvm.tar.gz" in (build / "requirements.yml").read_text()
