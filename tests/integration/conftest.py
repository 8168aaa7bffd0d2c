"""Integration tests run against the lab (`make lab-up`), as root."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_ID = int(os.environ.get("VIRTNODE_LAB_ID", "0"))
LAB = Path(os.environ.get("VIRTNODE_LAB_DIR", REPO / (".lab" if LAB_ID == 0 else f".lab{LAB_ID}")))
INVENTORY = LAB / "inventory.yml"


@pytest.fixture(scope="session")
def inventory() -> dict:
    if not INVENTORY.exists():
        pytest.fail(f"no lab inventory at {INVENTORY}: run `make lab-up` first")
    return json.loads(INVENTORY.read_text())


@pytest.fixture(scope="session")
def lab_hosts(inventory) -> dict:
    return inventory["all"]["children"]["lab"]["hosts"]


def lab_vars(inventory: dict) -> dict:
    """What every lab host sees (the guest's kernel, initrd, cmdline), with the namespace hosts' own."""
    return {**inventory["all"].get("vars", {}), **inventory["all"]["children"]["lab"].get("vars", {})}


@pytest.fixture(scope="session")
def kernel_hosts(inventory) -> dict:
    """The lab's kernel hosts (User-mode Linux, tests/lab/kernel_host.py); the first serves storage."""
    hosts = inventory["all"]["children"].get("kernel", {}).get("hosts")
    if not hosts:
        pytest.fail(f"the lab at {LAB} has no kernel hosts: run `make lab-up` (KERNEL_HOSTS=2)")
    return hosts


@pytest.fixture(scope="session")
def kernel_vars(inventory) -> dict:
    """What the storage server serves: NFS exports, iSCSI target and portals, the DHCP subnet."""
    return inventory["all"]["children"]["kernel"]["vars"]


def ansible_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build"))
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "tests" / "ansible.cfg"))
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return env


def run_playbook(playbook: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = ["ansible-playbook", "-i", str(INVENTORY), str(playbook), *extra]
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)


def lab_exec(host: str, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command (an argv, no shell) on a lab host: in its namespaces, or over SSH on a kernel host."""
    proc = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "exec", host, "--", *cmd],
                          text=True, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wait_for(what: str, probe, timeout: float = 60, step: float = 0.5):
    """Poll ``probe`` until it returns something true; fail with its last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


# Modules run with VIRTNODE_CRASH_HOW=stop stop themselves (SIGSTOP) at their crash point, so a test can
# crash the whole host there, or let another host act before the module goes on.
_STOPPED_AT_CRASH_POINT = ("for f in $(grep -l VIRTNODE_CRASH_HOW=stop /proc/[0-9]*/environ 2>/dev/null); do "
                           "d=${f%/environ}; grep -q '^State:.*T' $d/status && echo ${d#/proc/}; done; true")


def stopped_at_crash_point(host: str) -> list[str]:
    """Pids of the modules on ``host`` stopped at their crash point."""
    return lab_exec(host, "sh", "-c", _STOPPED_AT_CRASH_POINT, check=False).stdout.split()


def wait_until_stopped_at_crash_point(host: str, timeout: float = 120) -> list[str]:
    return wait_for(f"a module on {host} to stop at its crash point", lambda: stopped_at_crash_point(host), timeout=timeout)


def play_in_background(playbook: Path) -> subprocess.Popen:
    """``ansible-playbook`` on the lab inventory, not waited for (``communicate()`` gives its output)."""
    return subprocess.Popen(["ansible-playbook", "-i", str(INVENTORY), str(playbook)], cwd=REPO, env=ansible_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


# Migration tests: tasks (YAML, indented for a play's task list; %(guest)s and %(log)s filled in by
# the test) that start the tiny heartbeat guest and wait for its third beat, and that read its last beat.
START_HEARTBEAT_GUEST = """    - name: Start
      virtnode.kvm.vm:
        name: %(guest)s
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=heartbeat"
    - name: Wait for the third heartbeat
      ansible.builtin.wait_for:
        path: %(log)s
        search_regex: heartbeat 3
        timeout: 90
"""
LAST_HEARTBEAT = """    - name: Last heartbeat before the migration
      ansible.builtin.shell: grep -ao 'heartbeat [0-9]*' %(log)s | tail -n 1
      register: before
      changed_when: false
"""


def answers_ssh(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=2):
            return True
    except OSError:
        return False


def bring_back_namespace_hosts(lab_hosts: dict) -> None:
    """`lab.py up` after a test crashed a namespace host, then wait until every one answers on SSH.

    No --kernel-hosts: the kernel hosts, which the other stream's tests are using, stay as they are.
    """
    up = subprocess.run([sys.executable, str(REPO / "tests/lab/lab.py"), "up", "--hosts", str(len(lab_hosts))],
                        capture_output=True, text=True, timeout=600, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    for address in [host["ansible_host"] for host in lab_hosts.values()]:
        wait_for(f"{address} to answer on ssh", lambda address=address: answers_ssh(address), timeout=90, step=1)


def heartbeats(text: str) -> list[int]:
    """The tiny guest's heartbeat counters found in ``text`` (a console log)."""
    return [int(n) for n in re.findall(r"heartbeat (\d+)", text)]


def remove_guest_everywhere(tmp_path, name: str) -> None:
    """``state: absent`` for the VM ``name`` on every lab host (its exit records go too)."""
    playbook = tmp_path / "cleanup.yml"
    playbook.write_text(json.dumps([{"name": "Remove the guest everywhere", "hosts": "lab", "gather_facts": False,
                                     "tasks": [{"virtnode.kvm.vm": {"name": name, "state": "absent"}}]}]))
    run_playbook(playbook)


# Pool tests: the play's `export` (a folder of the lab's shared storage) as a bind-mounted posixfs server.
POOL_SERVER = {"virtnode.kvm.storage_server": {"type": "posixfs", "path": "{{ export }}", "vfstype": "none",
                                               "options": "bind"}}


def pool_cleanup_tasks() -> list:
    """Tasks that undo a pool test (SPM, pool `sp`, server, export), whatever state it was left in."""
    return [
        {"name": "Stop SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "stopped"}, "failed_when": False},
        {"name": "Disconnect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "state": "disconnected"},
         "failed_when": False},
        {"name": "Disconnect server", **{k: dict(v, state="disconnected") for k, v in POOL_SERVER.items()}},
        {"name": "Remove export", "ansible.builtin.file": {"path": "{{ export }}", "state": "absent"}, "run_once": True},
    ]
