"""The SPM mailbox between two lab hosts: host 2 asks, the node agent on the SPM (host 1) extends.

A posixfs domain on the lab's shared storage is the master of a pool whose SPM is the first
host; the node agent there serves the pool's mailbox. Requests are sent from the second host
with `mailbox_service.ExtendRequester` (what the agent's thin provisioning uses on a non-SPM
host), so they travel only through `dom_md/inbox` and `dom_md/outbox` on the shared storage.
The request-to-reply times are printed (`pytest -s tests/integration/test_mailbox.py`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from conftest import POOL_SERVER, REPO, ansible_env, lab_exec, pool_cleanup_tasks, run_playbook

SP = "8c9d0e1f-5a6b-4c7d-8e9f-4a5b6c7d8e94"
SD = "9d0e1f2a-6b7c-4d8e-9f0a-5b6c7d8e9fa5"
IMG = "0e1f2a3b-7c8d-4e9f-8a1b-6c7d8e9fa0b6"
VOL = "1f2a3b4c-8d9e-4f0a-9b2c-7d8e9fa0b1c7"
AGENT_PATH = "/usr/lib/virtnode-agent"
PY = "/usr/bin/python3"
MIB = 1024 * 1024

HOST_SIDE = (
    "import sys, json, time; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.storage import mailbox\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import mailbox_server as ms\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError\n"
    "master, host_id = ms.find_pool_mailbox(sys.argv[2])\n"
    "if sys.argv[1] == 'request':\n"
    "    requester = ms.ExtendRequester(master, host_id)\n"
    "    out = []\n"
    "    for size in sys.argv[5:]:\n"
    "        try:\n"
    "            out.append({'granted': requester.request(sys.argv[3], sys.argv[4], int(size), timeout=30),\n"
    "                        'elapsed': requester.last_elapsed})\n"
    "        except VirtnodeError as err:\n"
    "            out.append({'error': str(err)})\n"
    "    print(json.dumps({'host_id': host_id, 'results': out}))\n"
    "elif sys.argv[1] == 'corrupt':\n"
    "    inbox = ms.mailbox_paths(master)[0]\n"
    "    broken = bytearray(mailbox.build_block([mailbox.encode_extend(sys.argv[3], sys.argv[4], 1)]))\n"
    "    broken[4092:] = b'\\xde\\xad\\xbe\\xef'\n"
    "    ms.write_block(inbox, 7 * 4096, bytes(broken))\n"
    "    ms.write_block(inbox, 9 * 4096, mailbox.build_block([b'1junk' + b'x' * 59]))\n"
    "    ms.write_block(inbox, 0, ms._poke_block(host_id))\n"
    "elif sys.argv[1] == 'repair':\n"
    "    inbox = ms.mailbox_paths(master)[0]\n"
    "    for host in (7, 9):\n"
    "        ms.write_block(inbox, host * 4096, bytes(4096))\n"
) % AGENT_PATH

EVENTS = (
    "import sys, json; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events\n"
    "print(json.dumps(agent_events.read_events(since=int(sys.argv[1]), events=sys.argv[2:])))\n"
) % AGENT_PATH


def play(tmp_path: Path, name: str, hosts: str, tasks: list) -> str:
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": hosts, "gather_facts": False,
        "vars": {"export": "{{ virtnode_lab_shared_dir }}/mailbox", "sp": SP, "sd": SD},
        "tasks": tasks}]))
    started = time.monotonic()
    proc = run_playbook(playbook)
    print(proc.stdout[-4000:])
    print(f"{name}: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return proc.stdout


FIRST = "inventory_hostname == groups.lab[0]"


def events(host: str, cursor: int, *names: str) -> list:
    return json.loads(lab_exec(host, PY, "-c", EVENTS, str(cursor), *names).stdout)["events"]


def last_seq(host: str) -> int:
    found = events(host, 0)
    return found[-1]["seq"] if found else 0


def wait_events(host: str, cursor: int, names: tuple, predicate, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    found = []
    while time.monotonic() < deadline:
        found = [event for event in events(host, cursor, *names) if predicate(event)]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {names} event on {host} within {timeout}s; last: {events(host, cursor)[-10:]}")


def agent_is_current(host: str) -> bool:
    """The agent runs on ``host`` with this build's mailbox and agent code."""
    build = Path(ansible_env()["ANSIBLE_COLLECTIONS_PATH"].split(":")[0]) / "ansible_collections/virtnode/kvm"
    names = ("mailbox_service.py", "agent_daemon.py", "thin_block.py")
    installed = f"{AGENT_PATH}/ansible_collections/virtnode/kvm/plugins/module_utils"
    proc = lab_exec(host, "sh", "-c", "kill -0 $(cat /run/virtnode-agent.pid) && cd %s && sha256sum %s"
                    % (installed, " ".join(names)), check=False)
    if proc.returncode != 0:
        return False
    wanted = {name: hashlib.sha256((build / "plugins/module_utils" / name).read_bytes()).hexdigest() for name in names}
    found = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()}
    return found == wanted


def host_side(host: str, *args: str) -> dict:
    proc = lab_exec(host, PY, "-c", HOST_SIDE, *args)
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


@pytest.fixture(scope="module")
def pool(lab_hosts, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mailbox")
    first = list(lab_hosts)[0]
    play(tmp_path, "cleanup-before", "lab", pool_cleanup_tasks())
    # The node agent (with the mailbox server) on every host, unless test_agent.py deployed this build already.
    if not all(agent_is_current(host) for host in lab_hosts):
        started = time.monotonic()
        proc = run_playbook(REPO / "molecule" / "node_agent" / "converge.yml")
        assert proc.returncode == 0, proc.stdout[-20000:]
        print(f"node_agent converge: {time.monotonic() - started:.1f} s")
    cursor = last_seq(first)
    play(tmp_path, "setup", "lab", [
        {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"},
         "run_once": True},
        {"name": "Connect server", **POOL_SERVER},
        {"name": "Create domain", "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}",
                                                                  "io_timeout": 1}, "run_once": True},
        {"name": "Create pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}",
                                                              "host_id": 1, "state": "present"}, "when": FIRST},
        {"name": "Connect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}",
                                                               "host_id": "{{ groups.lab.index(inventory_hostname) + 1 }}"}},
        {"name": "First host becomes SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started"},
         "when": FIRST},
        {"name": "A thin COW volume", "virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": IMG,
                                                              "volume_uuid": VOL, "size": "1GiB", "format": "COW"},
         "when": FIRST},
    ])
    wait_events(first, cursor, ("mailbox_serving_started",), lambda event: event.get("sp_uuid") == SP)
    yield tmp_path
    play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())


def volume_size(host: str) -> int:
    path = f"/rhev/data-center/{SP}/{SD}/images/{IMG}/{VOL}"
    return int(lab_exec(host, "stat", "-L", "-c", "%s", path).stdout)


def test_extend_request_from_another_host_is_served_by_the_spm(pool, lab_hosts):
    first, second = list(lab_hosts)[:2]
    cursor = last_seq(first)
    assert volume_size(second) < 64 * MIB
    answer = host_side(second, "request", SP, SD, VOL, "64", "96", "128", "160", "192")
    assert answer["host_id"] == 2
    assert [result.get("granted") for result in answer["results"]] == [64, 96, 128, 160, 192], answer
    # Extended on the shared storage by the SPM, seen from the requesting host.
    assert volume_size(second) == 192 * MIB
    served = wait_events(first, cursor, ("mailbox_request_served",), lambda e: e.get("granted_mib") == 192)
    assert served[0]["host_id"] == 2 and served[0]["vol_uuid"] == VOL and served[0]["kind"] == "mailbox"
    elapsed = sorted(result["elapsed"] for result in answer["results"])
    print(f"mailbox request->reply through shared storage: min {elapsed[0] * 1000:.0f} ms, "
          f"median {elapsed[len(elapsed) // 2] * 1000:.0f} ms, max {elapsed[-1] * 1000:.0f} ms (n={len(elapsed)})")
    # Beyond the volume's capacity x 1.1 the SPM grants what it can, never more.
    capped = host_side(second, "request", SP, SD, VOL, "4096")["results"][0]
    assert capped.get("granted") == 1127, capped  # ceil(1024 MiB x 1.1)


def test_refused_request_and_corrupted_mailbox_blocks_are_reported_and_serving_goes_on(pool, lab_hosts):
    first, second = list(lab_hosts)[:2]
    pid = lab_exec(first, "cat", "/run/virtnode-agent.pid").stdout.split()[0]
    cursor = last_seq(first)
    missing = "2a3b4c5d-9e0f-4a1b-8c3d-8e9fa0b1c2d8"
    refused = host_side(second, "request", SP, SD, missing, "64")["results"][0]
    assert "replied size 0" in refused.get("error", ""), refused
    host_side(second, "corrupt", SP, SD, VOL)
    try:
        bad = wait_events(first, cursor, ("mailbox_block_invalid",), lambda e: e.get("host_id") == 7)
        assert "checksum" in bad[0]["reason"] and bad[0]["sp_uuid"] == SP
        malformed = wait_events(first, cursor, ("mailbox_slot_malformed",), lambda e: e.get("host_id") == 9)
        assert malformed[0]["slot"] == 0
        reasons = [e["reason"] for e in events(first, cursor, "mailbox_request_refused")]
        assert any(missing in reason for reason in reasons), reasons
        # Still serving: a valid request from host 2 goes through while the broken blocks are there.
        again = host_side(second, "request", SP, SD, VOL, "256")["results"][0]
        assert again.get("granted") == 1127, again  # already at the cap: never shrinks
        assert len(events(first, cursor, "mailbox_block_invalid")) == 1   # reported once, not every round
    finally:
        host_side(second, "repair", SP)
    assert lab_exec(first, "cat", "/run/virtnode-agent.pid").stdout.split()[0] == pid
