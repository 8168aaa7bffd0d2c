"""Lease areas on real sanlock: formatted only where provably never written.

Two lab hosts share a posixfs domain. A domain whose leases a crash left blank is repaired by
``storage_domain state=present``; a live pool's lockspace that another host cannot read (a link
planted in place of ``ids``, or an ``ids`` whose reads fail with EIO on that host) is never
formatted by ``state=imported``: the SPM keeps its lease and the SDM lease bytes on storage do
not change. Two hosts repairing the same blank domain
at once format it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import (LAB, POOL_SERVER, REPO, lab_exec, play_in_background, pool_cleanup_tasks, run_playbook,
                      wait_until_stopped_at_crash_point)

SP = "8c9d0e1f-5a6b-4c7d-8e9f-4a5b6c7d8e94"
SD = "9d0e1f2a-6b7c-4d8e-9fa0-5b6c7d8e9fa5"
EXPORT = "lease-init"
DOM_MD = LAB / "shared" / EXPORT / SD / "dom_md"
ALIGNMENT = 1024 ** 2


def play(tmp_path: Path, name: str, hosts: str, tasks: list, ok: bool = True) -> str:
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": hosts, "gather_facts": False,
        "vars": {"export": "{{ virtnode_lab_shared_dir }}/" + EXPORT, "sp": SP, "sd": SD}, "tasks": tasks}]))
    proc = run_playbook(playbook)
    print(proc.stdout[-6000:])
    assert (proc.returncode == 0) == ok, f"{name} {'failed' if ok else 'succeeded'}:\n{proc.stdout[-20000:]}"
    return proc.stdout


def sdm_lease_digest() -> str:
    with open(DOM_MD / "leases", "rb") as stream:
        stream.seek(ALIGNMENT)
        return hashlib.sha256(stream.read(ALIGNMENT)).hexdigest()


DOMAIN = {"virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}", "io_timeout": 1}}


SETUP = [
    {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"},
     "run_once": True},
    {"name": "Connect server", **POOL_SERVER},
    {"name": "Create domain", **DOMAIN, "run_once": True},
]
POOL_AND_SPM = [
    {"name": "Create pool", "virtnode.kvm.storage_pool": {
        "pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}", "host_id": 1, "state": "present"}},
    {"name": "First host becomes SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started"},
     "register": "started"},
    {"name": "It is SPM", "ansible.builtin.assert": {"that": ["started.spm.spm_status == 'SPM'"]}},
]


def test_blank_leases_left_by_a_crash_are_repaired_by_present(lab_hosts, tmp_path):
    first = list(lab_hosts)[0]
    play(tmp_path, "cleanup-before", "lab", pool_cleanup_tasks())
    play(tmp_path, "setup", "lab", SETUP)
    try:
        # A crash between the directory rename and the lease formatting leaves the areas empty.
        for name in ("ids", "leases", "xleases"):
            os.truncate(DOM_MD / name, 0)
        play(tmp_path, "repair", first, [
            {"name": "Present repairs the never-written leases", **DOMAIN, "register": "repaired"},
            {"name": "Repaired", "ansible.builtin.assert": {"that": ["repaired is changed",
                                                                     "repaired.actions == ['init_leases']"]}},
            {"name": "Present again changes nothing", **DOMAIN, "register": "again"},
            {"name": "Nothing", "ansible.builtin.assert": {"that": ["again is not changed"]}},
        ] + POOL_AND_SPM)
    finally:
        play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())


def plant_link(host: str) -> callable:
    """A link to a blank file stands where ids was (sanlock on the first host keeps renewing
    through the file it opened)."""
    blank = DOM_MD.parent.parent / "blank-ids"
    blank.write_bytes(b"")
    os.rename(DOM_MD / "ids", DOM_MD / "ids.live")
    os.symlink(blank, DOM_MD / "ids")

    def undo():
        os.unlink(DOM_MD / "ids")
        os.rename(DOM_MD / "ids.live", DOM_MD / "ids")
    return undo


def fail_reads_on(host: str) -> callable:
    """On ``host`` only, every read of ids fails with EIO, as from a failing path to the storage."""
    ids = lab_exec(host, "sh", "-c", f"ls -d /rhev/data-center/mnt/*{EXPORT}/{SD}/dom_md/ids").stdout.strip()
    server = lab_exec(host, "/usr/bin/python3", str(REPO / "tests/lab/faulty_file.py"), "eio", ids).stdout.strip()
    # The first host (and this machine) still read the real lockspace.
    assert (DOM_MD / "ids").read_bytes()[:4] != b"\0\0\0\0"

    def undo():
        lab_exec(host, "sh", "-c", f"kill {server}; for i in $(seq 50); do umount {ids} 2>/dev/null && exit 0; "
                 "sleep 0.2; done; umount -l {ids}")
    return undo


@pytest.mark.parametrize("fault, refusal", [(plant_link, "symbolic link"), (fail_reads_on, "left alone")],
                         ids=["link", "eio"])
def test_live_leases_another_host_cannot_read_are_never_formatted(lab_hosts, tmp_path, fault, refusal):
    first, second = list(lab_hosts)[:2]
    play(tmp_path, "cleanup-before", "lab", pool_cleanup_tasks())
    play(tmp_path, "setup", "lab", SETUP)
    try:
        play(tmp_path, "pool", first, POOL_AND_SPM)
        before = sdm_lease_digest()
        undo = fault(second)
        try:
            out = play(tmp_path, "import-unreadable", second, [
                {"name": "Import a domain whose lockspace cannot be read",
                 "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}", "state": "imported"}},
            ], ok=False)
            assert refusal in out
        finally:
            undo()
        assert sdm_lease_digest() == before, "the live SDM lease was formatted"
        status = lab_exec(first, "sanlock", "client", "status").stdout
        assert f"r {SD}:SDM" in status, status
        play(tmp_path, "still-spm", first, [
            {"name": "Status", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}"}, "register": "status"},
            {"name": "Still the only SPM", "ansible.builtin.assert": {"that": ["status.spm.spm_status == 'SPM'",
                                                                               "status.spm.spm_id == 1"]}},
        ])
        # The readable live domain imports without any formatting.
        play(tmp_path, "import-live", second, [
            {"name": "Import the live domain", "virtnode.kvm.storage_domain": {
                "sd_uuid": "{{ sd }}", "server": "{{ export }}", "state": "imported"}, "register": "imported"},
            {"name": "Nothing formatted", "ansible.builtin.assert": {"that": ["'init_leases' not in imported.actions"]}},
        ])
        assert sdm_lease_digest() == before
    finally:
        play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())


def test_two_hosts_repairing_the_same_blank_domain_format_it_once(lab_hosts, tmp_path):
    """Both hosts find the areas blank; the first is held between its reading and its formatting.

    Without a lock between hosts the second would format the areas too, after the first had (here
    the first is stopped just before it writes; in a real race it may already be using the lockspace,
    which the second host's format would wipe). With it, the second waits for the first and then
    finds nothing to format.
    """
    first, second = list(lab_hosts)[:2]
    play(tmp_path, "cleanup-before", "lab", pool_cleanup_tasks())
    play(tmp_path, "setup", "lab", SETUP)
    runs = []
    try:
        for name in ("ids", "leases", "xleases"):
            os.truncate(DOM_MD / name, 0)
        for host, env in ((first, {"VIRTNODE_CRASH_AT": "domain_leases.proven_blank", "VIRTNODE_CRASH_HOW": "stop"}),
                          (second, {})):
            playbook = tmp_path / f"repair-{host}.yml"
            playbook.write_text(json.dumps([{
                "name": f"repair on {host}", "hosts": host, "gather_facts": False,
                "vars": {"export": "{{ virtnode_lab_shared_dir }}/" + EXPORT, "sd": SD},
                "tasks": [{"name": "Present", **DOMAIN, "environment": env, "register": "repair"},
                          {"name": "Result", "ansible.builtin.debug": {"msg": "REPAIR {{ repair.actions | to_json }}"}}]}]))
            runs.append(play_in_background(playbook))
            if not env:
                break
            stopped = wait_until_stopped_at_crash_point(first)
        # The second host's repair has time to finish (it would, unlocked) before the first goes on.
        time.sleep(8)
        lab_exec(first, "kill", "-CONT", *stopped)
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        for run, out in zip(runs, outputs):
            assert run.returncode == 0, out[-20000:]
        actions = [re.search(r"REPAIR (\[.*?\])", out).group(1) for out in outputs]
        assert sorted(actions) == ['["init_leases"]', "[]"], f"both hosts formatted the areas: {actions}"
        play(tmp_path, "use", first, POOL_AND_SPM)
    finally:
        play(tmp_path, "cleanup-after", "lab", pool_cleanup_tasks())
