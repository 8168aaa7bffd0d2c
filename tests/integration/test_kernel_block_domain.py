"""Block storage domains (iSCSI) on the lab's kernel hosts, through the storage_domain module.

Both kernel hosts are logged in to the lab's iSCSI target with two paths per LUN (kernel_san.py).
A domain is created on vnkern1 and checked against VDSM's block format with plain LVM and
sanlock commands, not with the product's code: the VG and its tags, the metadata seal computed
here as VDSM computes it, the special LVs with their sizes, the lockspace and the SPM lease, the
xleases index, the file system on ``master``. vnkern2 then imports it and must write nothing.
The domain is extended with a second LUN, bad input is refused with the LVM state of both hosts
unchanged, and the module is killed at each of its crash points: the next run finishes the
work and the one after changes nothing. In a pool whose master is a file domain on NFS, the SPM
attaches, activates and detaches the domain: both hosts join its lockspace with their pool ids.
Meanwhile the SPM makes volumes there (a chain of three, a clone, RAW ones), and thin COW
volumes grow while writer guests fill them, extended by the node agent: on the SPM itself,
and on the other host, whose guest runs on the chain, through the pool's mailbox after an ENOSPC
pause with its agent stopped (the extension latencies are printed: ``pytest -s``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import pytest

import kernel_san
from conftest import (REPO, lab_exec, play_in_background, run_playbook, stopped_at_crash_point, wait_for,
                      wait_until_stopped_at_crash_point)

sys.path.insert(0, str(REPO))
from plugins.module_utils.common.faults import CRASH_POINTS  # noqa: E402  pylint: disable=wrong-import-position

SD_A = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c01"     # the domain every test shares (LUN 0, then 0 and 1)
SD_B = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c02"     # taken by force from another VG (LUN 2)
SD_C = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c03"     # crashed at each creation step (LUN 2)
FOREIGN_VG = "vnlab-foreign"
CODE = "/run/virtnode-kblockdomain"
MIB = 1024 ** 2
NO_DEVICES_FILE = "devices { use_devicesfile=0 hints=\"none\" }"
SPECIAL_MIB = {"metadata": 128, "ids": 128, "inbox": 128, "outbox": 128, "leases": 2048, "xleases": 1024, "master": 1024}
XLEASES_INDEX_MAGIC = 0x12152016


@pytest.fixture(scope="module")
def san(kernel_hosts, kernel_vars):
    with kernel_san.san_session(kernel_hosts, kernel_vars, [SD_A, SD_B, SD_C, FOREIGN_VG], CODE) as session:
        session["luns"] = [kernel_san.lun_guid(session, n) for n in range(session["cfg"]["luns"])]
        yield session


def recording_playbook(tmp_path: Path, name: str, hosts: list, tasks: list) -> Path:
    """A playbook of ``tasks`` on ``hosts`` (each may fail) that keeps their results for :func:`recorded`."""
    registered = []
    for index, task in enumerate(tasks):
        registered.append(dict(task, name=task.get("name", f"step {index}"), register=f"r{index}", ignore_errors=True))
    names = ", ".join(f"'r{i}': r{i}" for i in range(len(tasks)))
    registered.append({"name": "Keep the results", "delegate_to": "localhost", "ansible.builtin.copy": {
        "content": "{{ {%s} | to_json }}" % names, "dest": str(tmp_path / f"{name}-{{{{ inventory_hostname }}}}.json"),
        "mode": "0600"}})
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{"name": name, "hosts": ",".join(hosts), "gather_facts": False, "tasks": registered}]))
    return playbook


def recorded(tmp_path: Path, name: str, hosts: list, count: int) -> dict:
    found = {host: json.loads((tmp_path / f"{name}-{host}.json").read_text()) for host in hosts}
    return {host: [found[host][f"r{i}"] for i in range(count)] for host in hosts}


def play_on(tmp_path: Path, name: str, hosts: list, tasks: list) -> dict:
    """Run ``tasks`` on each of ``hosts`` at once (each task may fail); ``{host: [result, ...]}``."""
    playbook = recording_playbook(tmp_path, name, hosts, tasks)
    started = time.monotonic()
    proc = run_playbook(playbook, timeout=900)
    assert proc.returncode == 0, f"{name}: playbook failed:\n{proc.stdout[-20000:]}"
    print(f"{name} on {', '.join(hosts)}: {time.monotonic() - started:.1f}s")
    return recorded(tmp_path, name, hosts, len(tasks))


def play(tmp_path: Path, name: str, host: str, tasks: list) -> list:
    """Run ``tasks`` on ``host`` (each may fail); their registered results, in order."""
    return play_on(tmp_path, name, [host], tasks)[host]


def domain(sd_uuid: str, **options) -> dict:
    return {"virtnode.kvm.storage_domain": {"sd_uuid": sd_uuid, "type": "iscsi", "io_timeout": 1, **options}}


def lvm(host: str, *argv: str) -> str:
    """A plain LVM command on ``host``, seeing every device whatever the host's LVM configuration says."""
    return lab_exec(host, argv[0], "--config", NO_DEVICES_FILE, *argv[1:], timeout=120).stdout


def vg_report(host: str, vg: str) -> dict:
    out = lvm(host, "vgs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|",
              "-o", "vg_tags,vg_extent_size,vg_size,vg_seqno,vg_mda_size,pv_count", vg)
    tags, extent, size, seqno, mda, pvs = out.strip().split("|")
    return {"tags": tags.split(","), "extent": int(extent), "size": int(size), "seqno": int(seqno), "mda": int(mda),
            "pvs": int(pvs)}


def lvm_state(host: str) -> str:
    """Every PV, VG and LV this host sees: what a refused request must leave as it was."""
    return lvm(host, "pvs", "--noheadings", "-o", "pv_name,vg_name,pv_size,vg_tags,vg_seqno") + \
        lvm(host, "lvs", "--noheadings", "-o", "vg_name,lv_name,lv_size")


def vdsm_metadata(tags: list) -> dict:
    """The domain metadata in a VG's tags, read and sealed as VDSM reads it (persistent.py, blockSD.py)."""
    lines = [re.sub(r"&(\d+)&", lambda m: chr(int(m.group(1))), tag[4:]) for tag in tags if tag.startswith("MDT_")]
    pairs = dict(line.split("=", 1) for line in lines)
    declared = pairs.pop("_SHA_CKSUM")
    digest = hashlib.sha1()
    for key in sorted(pairs):
        digest.update(f"{key}={pairs[key]}".encode("ascii", "xmlcharrefreplace"))
    assert declared == digest.hexdigest(), f"seal broken: {declared} != {digest.hexdigest()} ({pairs})"
    return pairs


def check_vdsm_format(host: str, sd: str, luns: list, description: str = "") -> dict:
    """What VDSM's blockSD.py reads, checked with plain commands on ``host``; the metadata."""
    vg = vg_report(host, sd)
    assert "RHAT_storage_domain" in vg["tags"] and "RHAT_storage_domain_UNREADY" not in vg["tags"], vg["tags"]
    assert vg["extent"] == 128 * MIB and vg["mda"] >= 64 * MIB and vg["pvs"] == len(luns), vg
    md = vdsm_metadata(vg["tags"])
    assert {k: md[k] for k in ("SDUUID", "TYPE", "CLASS", "ROLE", "VERSION", "ALIGNMENT", "BLOCK_SIZE", "POOL_UUID")} == {
        "SDUUID": sd, "TYPE": "ISCSI", "CLASS": "Data", "ROLE": "Regular", "VERSION": "5", "ALIGNMENT": "1048576",
        "BLOCK_SIZE": "512", "POOL_UUID": ""}, md
    assert md["DESCRIPTION"] == description and "REMOTE_PATH" not in md and md["VGUUID"]
    mapped = [dict(item.split(":", 1) for item in md[f"PV{n}"].split(",")) for n in range(len(luns))]
    assert [pv["pv"] for pv in mapped] == luns and "PV%d" % len(luns) not in md, md
    assert mapped[0]["mapoffset"] == "0" and all(
        int(mapped[n]["mapoffset"]) == int(mapped[n - 1]["mapoffset"]) + int(mapped[n - 1]["pecount"]) for n in range(1, len(luns)))
    report = lvm(host, "lvs", "--noheadings", "--units", "m", "--nosuffix", "--separator", "|", "-o", "lv_name,lv_size", sd)
    lvs = dict(line.split("|") for line in report.split())
    assert {name: int(float(size)) for name, size in lvs.items()} == SPECIAL_MIB, lvs
    # The metadata LV starts at extent 0 of the first LUN, where VDSM maps slot 0.
    ranges = lvm(host, "lvs", "--noheadings", "-o", "seg_pe_ranges", f"{sd}/metadata").split()
    assert ranges[0] == f"/dev/mapper/{luns[0]}:0-0", ranges
    lvm(host, "lvchange", "--activate", "y", *(f"{sd}/{name}" for name in ("ids", "leases", "xleases", "metadata", "master")))
    try:
        ids = lab_exec(host, "sanlock", "direct", "read_leader", "-s", f"{sd}:1:/dev/{sd}/ids:0").stdout
        assert f"space_name {sd}" in ids, ids
        leader = lab_exec(host, "sanlock", "direct", "read_leader", "-r", f"{sd}:SDM:/dev/{sd}/leases:{MIB}").stdout
        assert f"space_name {sd}" in leader and "resource_name SDM" in leader, leader
        index = lab_exec(host, "sh", "-c", f"dd if=/dev/{sd}/xleases bs=512 skip=2048 count=1 status=none | od -An -tx1 -N4").stdout
        assert struct.unpack(">I", bytes.fromhex(index.replace(" ", "").strip()))[0] == XLEASES_INDEX_MAGIC, index
        fs = lab_exec(host, "dumpe2fs", "-h", f"/dev/{sd}/master", timeout=60).stdout
        assert "has_journal" in fs and "extent" not in fs.split("Filesystem features:")[1].split("\n")[0], fs[:800]
        zeros = lab_exec(host, "sh", "-c", f"dd if=/dev/{sd}/metadata bs=1M count=17 status=none | tr -d '\\000' | wc -c").stdout
        assert zeros.strip() == "0", "the metadata LV's first 17 MiB are not zeroed"
    finally:
        lvm(host, "lvchange", "--activate", "n", f"{sd}/master")
    return md


def test_a_block_domain_in_vdsm_format_that_the_other_host_imports_without_writing(san, tmp_path):
    first, second = san["hosts"]
    lun0 = san["luns"][0]
    create = domain(SD_A, luns=[lun0], description="lab san domain")
    check, made, again, diff = play(tmp_path, "create", first, [
        dict(create, check_mode=True), create, create, dict(create, diff=True, check_mode=True)])
    assert check["changed"] and check["actions"] == ["create"], check
    assert made["changed"] and made["actions"] == ["create"], made
    assert not again["changed"] and again["actions"] == [], again
    assert not diff["changed"] and diff["diff"]["before"] == diff["diff"]["after"], diff
    info = made["domain"]
    assert info["luns"] == [lun0] and info["type"] == "ISCSI" and info["special_lvs"]["leases"] == 2048 * MIB, info
    # Every special LV but ids, inbox and outbox (rounded up to an extent) as VDSM sizes it: 4.5 GiB.
    assert info["total_bytes"] == vg_report(first, SD_A)["size"] and info["free_bytes"] == info["total_bytes"] - 4608 * MIB
    md = check_vdsm_format(first, SD_A, [lun0], "lab san domain")
    assert md == info["metadata"]
    # vnkern2 finds the domain on its own paths to the LUN and writes nothing to the VG.
    seqno = vg_report(first, SD_A)["seqno"]
    imported, again, luns, listed = play(tmp_path, "import", second, [
        domain(SD_A, state="imported"), domain(SD_A, state="imported"), {"virtnode.kvm.lun_info": {"guids": [lun0]}},
        {"virtnode.kvm.storage_info": {"sd_uuid": SD_A}}])
    assert not imported.get("failed") and imported["found"] == [SD_A], imported
    assert imported["actions"] == ["activate"] and again["actions"] == [] and not again["changed"], (imported, again)
    assert imported["domain"]["metadata"] == info["metadata"]
    assert luns["luns"][0]["sd_uuid"] == SD_A and luns["luns"][0]["status"] == "used", luns
    (reported,) = listed["domains"]
    assert reported["sd_uuid"] == SD_A and reported["luns"] == [lun0] and reported["metadata"] == info["metadata"], listed
    assert vg_report(first, SD_A)["seqno"] == vg_report(second, SD_A)["seqno"] == seqno


def test_extending_with_a_second_lun_finishes_after_a_crash_between_vgextend_and_metadata(san, tmp_path):
    first, second = san["hosts"]
    lun0, lun1 = san["luns"][:2]
    extend = domain(SD_A, luns=[lun0, lun1])
    before = vg_report(first, SD_A)
    crashed, rerun, third = play(tmp_path, "extend", first, [
        dict(extend, environment={"VIRTNODE_CRASH_AT": "block_domain_extend.vg"}), extend, extend])
    assert crashed.get("failed") and not crashed.get("actions"), crashed
    assert rerun["changed"] and rerun["actions"] == ["update_pv_mapping"], rerun
    assert not third["changed"], third
    assert rerun["domain"]["luns"] == [lun0, lun1]
    assert rerun["domain"]["total_bytes"] == 2 * before["size"]
    check_vdsm_format(first, SD_A, [lun0, lun1], "lab san domain")
    # The other host reads the new size from the shared VG metadata.
    (seen,) = play(tmp_path, "extended-seen", second, [domain(SD_A, state="imported")])
    assert seen["domain"]["total_bytes"] == 2 * before["size"] and not seen["changed"], seen


def test_bad_input_is_refused_and_changes_nothing_on_either_host(san, tmp_path):
    first = san["hosts"][0]
    lun0, lun1, lun2 = san["luns"]
    lvm(first, "pvcreate", "-y", "-ff", f"/dev/mapper/{lun2}")
    lvm(first, "vgcreate", FOREIGN_VG, f"/dev/mapper/{lun2}")
    states = {host: lvm_state(host) for host in san["hosts"]}
    new = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c0f"
    cases = [
        (domain(new, luns=[lun2]), f"already used by volume group {FOREIGN_VG}"),
        (domain(new, luns=[lun0]), f"already used by volume group {SD_A}"),
        (domain(new, luns=["36001405ffffffffffffffffffffffff9"]), "not visible on this host: 36001405ffffffffffffffffffffffff9"),
        (domain(new, luns=["../dm-0"]), "WWID multipath names"),
        (domain(new, luns=[]), "at least one"),
        (domain(new, luns=[lun2, lun2], force=True), "names a LUN twice"),
        (domain("9a1b2c3d/../x", luns=[lun2]), "UUID"),
        (domain(new, luns=[lun2], description="d" * 51, force=True), "at most 50"),
        (domain(new, luns=[lun2], domain_class="Iso", force=True), "Data domains"),
        (domain(new, luns=[lun2], io_timeout=0, force=True), "io_timeout"),
        (domain(new, state="imported"), "not found on this host's LUNs"),
        (domain(FOREIGN_VG.replace("vnlab-", ""), luns=[lun2]), "UUID"),
        (domain(SD_A, luns=[lun0, lun1, lun2]), f"already used by volume group {FOREIGN_VG}"),
        (domain(SD_A, pool_uuid="9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c99", state="attached"), "no master domain of storage pool"),
        (domain(SD_A, state="active"), "pool_uuid is required"),
        (domain(SD_A, server="10.0.0.1:/x", type="nfs", luns=[lun2]), "luns is for iscsi and fcp"),
    ]
    for host, results in play_on(tmp_path, "bad", san["hosts"], [task for task, _message in cases]).items():
        for (task, message), result in zip(cases, results):
            assert result.get("failed") and message in result["msg"], (host, task, result)
            assert not result.get("changed"), (host, task, result)
    assert {host: lvm_state(host) for host in san["hosts"]} == states


def test_force_takes_a_lun_from_another_volume_group(san, tmp_path):
    first = san["hosts"][0]
    lun2 = san["luns"][2]
    assert FOREIGN_VG in lvm(first, "vgs", "--noheadings", "-o", "vg_name")
    forced, removed = play(tmp_path, "force", first, [
        domain(SD_B, luns=[lun2], force=True), domain(SD_B, state="absent")])
    assert forced["changed"] and forced["actions"] == ["create"], forced
    assert removed["changed"] and removed["actions"] == ["remove"], removed
    assert FOREIGN_VG not in lvm(first, "vgs", "--noheadings", "-o", "vg_name")


# The extension's point is the extension test's; test_crash_consistency.py leaves all of these to this file.
# A creation stopped at "lvs" is the lost-LUN test's: its run ends there (with an error) as a killed one would.
LOST_LUN_POINT = "block_domain_create.lvs"


@pytest.mark.parametrize("point", sorted(p for p in CRASH_POINTS if p.startswith("block_domain_create.") and p != LOST_LUN_POINT))
def test_a_creation_killed_at_each_step_is_finished_by_the_next_run(san, tmp_path, point):
    first = san["hosts"][0]
    lun2 = san["luns"][2]
    create = domain(SD_C, luns=[lun2], force=True)
    crashed, rerun, third = play(tmp_path, point, first, [
        dict(create, environment={"VIRTNODE_CRASH_AT": point}), create, create])
    assert crashed.get("failed"), crashed
    # Before the ready tag the half-made VG is discarded and the domain made again; after it only the
    # lease areas, proven blank, are left to write.
    wanted = ["init_leases"] if point == "block_domain_create.ready" else ["create"]
    assert rerun["changed"] and rerun["actions"] == wanted, rerun
    assert not third["changed"] and third["actions"] == [], third
    check_vdsm_format(first, SD_C, [lun2])
    (removed,) = play(tmp_path, point + "-remove", first, [domain(SD_C, state="absent")])
    assert removed["actions"] == ["remove"], removed


def test_a_lun_lost_in_the_middle_of_a_creation_stops_it_clearly_and_the_next_run_makes_the_domain(san, tmp_path):
    """Every path of the LUN is deleted while the module waits after making the VG and its LVs.

    The run fails naming the LUN; the VG left on it keeps its unready tag, so no host takes it for a
    domain; once the paths are back the next run discards it and makes the domain whole.
    """
    first, second = san["hosts"]
    lun2 = san["luns"][2]
    create = domain(SD_C, luns=[lun2], force=True)
    playbook = recording_playbook(tmp_path, "lost", [first], [
        dict(create, environment={"VIRTNODE_CRASH_AT": LOST_LUN_POINT, "VIRTNODE_CRASH_HOW": "stop"})])
    running = play_in_background(playbook)
    try:
        stopped = wait_until_stopped_at_crash_point(first, timeout=300)
        paths = kernel_san.lose_lun(first, lun2)
        print(f"LUN {lun2} lost its paths {paths} on {first}")
    finally:
        for pid in stopped_at_crash_point(first):
            lab_exec(first, "kill", "-CONT", pid, check=False)
    out = running.communicate(timeout=600)[0]
    assert running.returncode == 0, out[-20000:]
    (failed,) = recorded(tmp_path, "lost", [first], 1)[first]
    assert failed.get("failed") and f"LUN(s) {lun2} cannot be reached from this host" in failed["msg"], failed
    print(f"the run failed with: {failed['msg']}")
    kernel_san.lun_back(san, first)
    # What the run made is a VG with the unready tag: the other host sees no storage domain there.
    vgs = dict(line.split() if len(line.split()) == 2 else (line.strip(), "")
               for line in lvm(second, "vgs", "--noheadings", "-o", "vg_name,vg_tags").splitlines() if line.strip())
    tags = vgs.get(SD_C, "").split(",")
    assert "RHAT_storage_domain_UNREADY" in tags and "RHAT_storage_domain" not in tags, \
        (vgs, lvm(second, "pvs", "-a", "--noheadings", "-o", "pv_name,vg_name"))
    rerun, again = play(tmp_path, "lost-rerun", first, [create, create])
    assert rerun["changed"] and rerun["actions"] == ["create"], rerun
    assert not again["changed"] and again["actions"] == [], again
    check_vdsm_format(first, SD_C, [lun2])
    (removed,) = play(tmp_path, "lost-remove", first, [domain(SD_C, state="absent")])
    assert removed["actions"] == ["remove"], removed


# A pool whose master is a file domain on the lab's second NFS export (the NFS tests use the first).
SP = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c50"
SD_MASTER = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c51"
IMG, IMG_RAW = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c52", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c53"
CHAIN = ["9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c6%d" % n for n in range(3)]   # base, middle, top
RAW = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c70"
IMG_CLONE, CLONE = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c57", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c77"
CRASHED = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c71"   # the snapshot each crash point interrupts
IMG_IMPORT, IMPORTED = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c58", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c78"
TRANSFER_DIR = "/run/virtnode-kblock-transfer"
PATTERN = "virtnode-import-pattern"
POOL_VARS = {"server": "{{ virtnode_lab_nfs_server }}:{{ virtnode_lab_nfs_exports_v3[1] }}"}


def nfs_master_tasks(first: str) -> list:
    """Connect the export; on ``first`` make the master domain, the pool and its SPM; every host joins the pool."""
    on_first = {"when": f"inventory_hostname == '{first}'"}
    return [
        {"virtnode.kvm.storage_server": {"type": "nfs", "path": "{{ server }}", "nfs_version": "3"}},
        dict(on_first, **{"virtnode.kvm.storage_domain": {"sd_uuid": SD_MASTER, "server": "{{ server }}", "type": "nfs",
                                                          "io_timeout": 1}}),
        dict(on_first, **{"virtnode.kvm.storage_pool": {"pool_uuid": SP, "master_sd_uuid": SD_MASTER, "host_id": 1,
                                                        "state": "present"}}),
        {"virtnode.kvm.storage_pool": {"pool_uuid": SP, "host_id": f"{{{{ 1 if inventory_hostname == '{first}' else 2 }}}}"}},
        dict(on_first, **{"virtnode.kvm.spm": {"pool_uuid": SP, "state": "started", "check_interval": 0.5}})]


def pool_teardown(tmp_path: Path, san: dict):
    first, second = san["hosts"]
    leave = [{"virtnode.kvm.storage_pool": {"pool_uuid": SP, "state": "disconnected"}},
             {"virtnode.kvm.storage_server": {"type": "nfs", "path": "{{ server }}", "state": "disconnected"}}]
    play(tmp_path, "pool-leave-second", second, [dict(task, vars=POOL_VARS) for task in leave])
    play(tmp_path, "pool-leave-first", first, [dict(task, vars=POOL_VARS) for task in [
        {"virtnode.kvm.spm": {"pool_uuid": SP, "state": "stopped"}}, *leave,
        {"ansible.builtin.file": {"path": "{{ virtnode_lab_nfs_exports_v3[1] }}/%s" % SD_MASTER, "state": "absent"}}]])


def lockspaces(host: str) -> str:
    return lab_exec(host, "sanlock", "client", "status").stdout


def lv_tags(host: str) -> dict:
    """``{lv name: (size in MiB, [tags])}`` of SD_A, read with plain LVM."""
    out = lvm(host, "lvs", "--noheadings", "--units", "m", "--nosuffix", "--separator", "|", "-o", "lv_name,lv_size,lv_tags", SD_A)
    return {name: (int(float(size)), [t for t in tags.split(",") if t])
            for name, size, tags in (line.strip().split("|") for line in out.splitlines() if line.strip())}


def slot_record(host: str, slot: int) -> dict:
    """Volume metadata slot ``slot`` of SD_A's metadata LV (v5: 8 KiB slots from 1 MiB), read with dd."""
    text = lab_exec(host, "dd", f"if=/dev/{SD_A}/metadata", "bs=512", f"skip={2048 + 16 * slot}", "count=1",
                    "iflag=direct", "status=none").stdout.rstrip("\0")
    lines = text.split("\n")
    assert "EOF" in lines, text
    return dict(line.split("=", 1) for line in lines[:lines.index("EOF")])


def volume(img: str, vol: str | None = None, **options) -> dict:
    return {"virtnode.kvm.volume": {"sd_uuid": SD_A, "image_uuid": img, **({"volume_uuid": vol} if vol else {}), **options}}


def block_volumes_on_the_spm_read_by_the_other_host(san: dict, tmp_path: Path):
    """Volumes in VDSM's block format on the SPM: tagged LVs, metadata slots, leases; a chain of three
    that the other host reads through its own paths; a clone of its top, flattened; crash points; what
    cannot be done refused."""
    first, second = san["hosts"]
    base, middle, top = CHAIN
    free_mib = vg_report(first, SD_A)["size"] // MIB  # more than is free: every special LV takes some
    tasks = [volume(IMG, base, size="2GiB", format="COW", description="base"),
             volume(IMG, middle, parent_volume_uuid=base), volume(IMG, top, parent_volume_uuid=middle),
             volume(IMG, top, parent_volume_uuid=middle),
             dict(volume(IMG_RAW, RAW, size="100MiB", format="RAW", allocation="PREALLOCATED"), check_mode=True),
             volume(IMG_RAW, RAW, size="100MiB", format="RAW", allocation="PREALLOCATED"),
             volume(IMG_RAW, RAW, size="100MiB", format="RAW", allocation="PREALLOCATED"),
             volume(IMG_RAW, RAW, size="200MiB", format="RAW", allocation="PREALLOCATED"),
             # Refused, nothing made:
             volume(IMG_RAW, CRASHED, size=f"{free_mib}MiB", format="RAW", allocation="PREALLOCATED"),
             volume(IMG_RAW, CRASHED, size="1GiB", format="RAW"),
             volume(IMG, CRASHED, parent_volume_uuid=middle),
             volume(IMG_CLONE, CLONE, format="COW", clone_from={"image_uuid": IMG, "volume_uuid": top}),
             volume(IMG_CLONE, CLONE, format="COW", clone_from={"image_uuid": IMG, "volume_uuid": top})]
    # Each crash point of a snapshot's creation: the next run removes the leftover and makes it again,
    # the one after changes nothing; the snapshot is deleted for the next point.
    points = sorted(p for p in CRASH_POINTS if p.startswith("block_volume_create."))
    for point in points:
        snap = volume(IMG, CRASHED, parent_volume_uuid=top)
        tasks += [dict(snap, environment={"VIRTNODE_CRASH_AT": point}), snap, snap, volume(IMG, CRASHED, state="absent")]
    # A VirtualBox image imported into a COW volume of the domain and exported back to a raw file.
    lab_exec(first, "sh", "-c", f"set -e; rm -rf {TRANSFER_DIR}; mkdir -p {TRANSFER_DIR}; cd {TRANSFER_DIR}; "
             f"printf {PATTERN} > pattern.raw; truncate -s 96M pattern.raw; qemu-img convert -O vdi pattern.raw disk.img")
    imported = volume(IMG_IMPORT, IMPORTED, format="COW", import_from={"path": f"{TRANSFER_DIR}/disk.img"})
    exported = volume(IMG_IMPORT, IMPORTED, export_to={"path": f"{TRANSFER_DIR}/exported.raw", "format": "raw"})
    tasks += [imported, imported, exported, exported]
    results = play(tmp_path, "volumes", first, tasks)
    imported, import_again, exported, export_again = results[-4:]
    assert imported["actions"] == ["import"] and imported["imported"]["format"] == "vdi", imported
    assert imported["volume"]["capacity"] == 96 * MIB and imported["imported"]["progress"] == 100.0, imported
    assert not import_again["changed"] and exported["actions"] == ["export"] and not export_again["changed"], \
        (import_again, exported, export_again)
    assert lab_exec(first, "head", "-c", str(len(PATTERN)), f"{TRANSFER_DIR}/exported.raw").stdout == PATTERN
    assert IMPORTED not in active_lvs(first), "the export left the volume's LV active"
    lab_exec(first, "rm", "-rf", TRANSFER_DIR)
    made, snap1, snap2, again, raw_check, raw, raw_again, raw_grown, too_big, sparse_raw, forked, clone, clone_again = \
        results[:13]
    assert made["actions"] == ["create"] and snap1["actions"] == snap2["actions"] == ["snapshot"], (made, snap1, snap2)
    assert not again["changed"] and again["actions"] == [], again
    assert [v["volume_uuid"] for v in again["chain"]] == CHAIN and [v["role"] for v in again["chain"]] == \
        ["INTERNAL", "INTERNAL", "LEAF"], again["chain"]
    assert raw_check["changed"] and raw_check["volume"] is None, raw_check
    assert raw["volume"]["capacity"] == 128 * MIB and not raw_again["changed"], (raw, raw_again)
    assert raw_grown["actions"] == ["extend"] and raw_grown["volume"]["capacity"] == 256 * MIB, raw_grown
    assert too_big.get("failed") and "MiB free" in too_big["msg"], too_big
    assert sparse_raw.get("failed") and "no sparse RAW" in sparse_raw["msg"], sparse_raw
    assert clone["actions"] == ["clone"] and [v["volume_uuid"] for v in clone["chain"]] == [CLONE], clone
    assert clone["volume"]["capacity"] == 2 * 1024 * MIB and clone["volume"]["parent"] == \
        "00000000-0000-0000-0000-000000000000" and not clone_again["changed"], (clone, clone_again)
    assert forked.get("failed") and "only the leaf can be snapshotted" in forked["msg"], forked
    for index, point in enumerate(points):
        crashed, rerun, third, deleted = results[13 + 4 * index:17 + 4 * index]
        assert crashed.get("failed"), (point, crashed)
        assert rerun["actions"] == ["remove_leftover", "snapshot"], (point, rerun)
        assert not third["changed"] and third["volume"]["legality"] == "LEGAL", (point, third)
        assert deleted["actions"] == ["delete_volume"], (point, deleted)
    # What VDSM reads, with plain commands: the LVs and their tags, the slots, the leases.
    lvs = lv_tags(first)
    assert CRASHED not in lvs and set(lvs) == set(SPECIAL_MIB) | set(CHAIN) | {RAW, CLONE, IMPORTED}, lvs
    assert lvs[base][0] == 1024 and lvs[middle][0] == lvs[top][0] == 1024 and lvs[RAW][0] == 256, lvs
    slots = {}
    for vol, parent in zip(CHAIN, ["00000000-0000-0000-0000-000000000000"] + CHAIN[:2]):
        tags = lvs[vol][1]
        assert f"IU_{IMG}" in tags and f"PU_{parent}" in tags and "OVIRT_VOL_INITIALIZING" not in tags, tags
        slots[vol] = int(next(tag for tag in tags if tag.startswith("MD_"))[3:])
        record = slot_record(first, slots[vol])
        assert record["IMAGE"] == IMG and record["PUUID"] == parent and record["LEGALITY"] == "LEGAL" and \
            record["FORMAT"] == "COW" and record["CAP"] == str(2 * 1024 * MIB) and record["DOMAIN"] == SD_A, record
        lease = lab_exec(first, "sanlock", "direct", "read_leader", "-r",
                         f"{SD_A}:{vol}:/dev/{SD_A}/leases:{(100 + slots[vol]) * MIB}").stdout
        assert f"resource_name {vol}" in lease, lease
    assert sorted(slots.values()) == [1, 2, 3], slots
    # The other host activates the chain on its own paths and reads it as QEMU would, backing names included.
    names = [f"{SD_A}/{vol}" for vol in CHAIN]
    lvm(second, "lvchange", "--activate", "y", *names)
    try:
        chain = json.loads(lab_exec(second, "qemu-img", "info", "-U", "--backing-chain", "--output", "json",
                                    f"/dev/{SD_A}/{top}").stdout)
    finally:
        lvm(second, "lvchange", "--activate", "n", *names)
    assert [layer["filename"] for layer in chain] == [f"/dev/{SD_A}/{vol}" for vol in reversed(CHAIN)], chain
    assert [layer.get("backing-filename") for layer in chain] == [middle, base, None], chain
    assert all(layer["virtual-size"] == 2 * 1024 * MIB for layer in chain), chain
    # storage_info there reads the same chains from the slots.
    (listed,) = play(tmp_path, "volumes-seen", second, [{"virtnode.kvm.storage_info": {"sd_uuid": SD_A}}])
    images = {image["image_uuid"]: image["volumes"] for image in listed["domains"][0]["images"]}
    assert [v["volume_uuid"] for v in images[IMG]] == CHAIN and [v["volume_uuid"] for v in images[IMG_RAW]] == [RAW], images
    assert [v["volume_uuid"] for v in images[IMG_CLONE]] == [CLONE] and images[IMG_CLONE][0]["legality"] == "LEGAL", images
    assert {v["legality"] for v in images[IMG] + images[IMG_RAW]} == {"LEGAL"} and images[IMG_RAW][0]["capacity"] == 256 * MIB


def active_lvs(host: str) -> set:
    out = lvm(host, "lvs", "--noheadings", "--separator", "|", "-o", "lv_name,lv_active", SD_A)
    return {name.strip() for name, state in (line.split("|") for line in out.splitlines() if line.strip()) if state.strip()}


# Guests on the domain's volumes, and thin provisioning by the node agent, which runs on both hosts from the
# collection the controller uses (kernel hosts see the machine's files) with its own socket, pid file and events.
THIN_TOP = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c63"   # a thin snapshot on top of CHAIN
IMG_THIN, THIN_BASE = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c54", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c74"
GUESTS = {  # writer guest -> (host index, image, volume)
    "kthin-local": (0, IMG_THIN, THIN_BASE),    # on the SPM: extended there
    "kthin-chain": (1, IMG, THIN_TOP),           # on the other host: ENOSPC first, then through the mailbox
}
THIN_CHUNK_MIB = 128   # one extent: the LV grows by what the agent asks
THIN_WRITE_MIB = 384   # from one extent: three thresholds passed
AGENT_DIR = "/run/virtnode-kblockthin"
AGENT_CONFIG = {
    "interval": 2, "storage_interval": 5, "storage_timeout": 5, "metrics_enabled": False, "mailbox_check_interval": 1,
    "thin_chunk_mib": THIN_CHUNK_MIB, "socket_path": f"{AGENT_DIR}/agent.sock",
    "events_file": f"{AGENT_DIR}/events.jsonl", "log_file": f"{AGENT_DIR}/agent.log", "log_level": "DEBUG",
}
AGENT_PIDFILE = f"{AGENT_DIR}/agent.pid"
AGENT_START = ("import sys; sys.path.insert(0, sys.argv[1])\n"
               "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon\n"
               "sys.exit(daemon.main(sys.argv[2:]))\n")
AGENT_EVENTS = ("import json, sys; sys.path.insert(0, sys.argv[1])\n"
                "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events\n"
                "print(json.dumps(events.read_events(sys.argv[2])['events']))\n")


def collections_path() -> str:
    return os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build")).split(os.pathsep)[0]


def agent_start(host: str):
    lab_exec(host, "/usr/bin/python3", "-c", AGENT_START, collections_path(), "--config", f"{AGENT_DIR}/agent.conf",
             "--daemon", "--pidfile", AGENT_PIDFILE, timeout=60)
    wait_for(f"the agent's socket on {host}",
             lambda: lab_exec(host, "test", "-S", AGENT_CONFIG["socket_path"], check=False).returncode == 0, timeout=60)


def agent_stop(host: str):
    lab_exec(host, "sh", "-c", f"pid=$(cat {AGENT_PIDFILE} 2>/dev/null) || exit 0; kill $pid; "
             "for i in $(seq 100); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.2; done; exit 1", timeout=60)


@contextlib.contextmanager
def thin_agents(hosts: list):
    """The agent under test on ``hosts`` (each with its own configuration); stopped afterwards."""
    for host in hosts:
        lab_exec(host, "sh", "-c", f"rm -rf {AGENT_DIR} && mkdir -p {AGENT_DIR} && cat > {AGENT_DIR}/agent.conf"
                 f" <<'EOF'\n{json.dumps(AGENT_CONFIG)}\nEOF\n")
    try:
        yield
    finally:
        for host in hosts:
            agent_stop(host)


def agent_events(host: str, guest: str) -> list:
    out = lab_exec(host, "/usr/bin/python3", "-c", AGENT_EVENTS, collections_path(), AGENT_CONFIG["events_file"]).stdout
    return [event for event in json.loads(out) if event.get("vm") == guest]


def writer_guest(guest: str, **disk) -> dict:
    _host, img, vol = GUESTS[guest]
    return {"virtnode.kvm.vm": {
        "name": guest, "memory": "128MiB", "kernel": "{{ virtnode_lab_guest_kernel }}",
        "initrd": "{{ virtnode_lab_guest_initrd }}",
        "cmdline": "{{ virtnode_lab_guest_cmdline }} workload=writer writer_mb=%d" % THIN_WRITE_MIB,
        "disks": [dict({"domain_id": SD_A, "image_id": img, "volume_id": vol, "type": "block", "format": "qcow2",
                        "io": "native"}, **disk)]}}


def console(host: str, guest: str) -> str:
    return lab_exec(host, "cat", f"/var/log/libvirt/qemu/{guest}-console.log", check=False).stdout


def writer_finished(host: str, guest: str):
    return lambda: re.search(r"writer (done|error).*", console(host, guest))


def domstate(host: str, guest: str) -> str:
    return lab_exec(host, "virsh", "domstate", "--reason", guest, check=False).stdout.strip()


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def guests_write_into_thin_block_volumes(san: dict, tmp_path: Path):
    """Two writer guests fill thin COW volumes that start at one extent (``initial_size``), at once.

    On the SPM, a guest on a thin base volume is extended there. On the other host, a guest runs on a
    thin snapshot on top of the chain of three (``type: block``: the four LVs are activated there and
    linked in the image directory, so QEMU follows the qcow2 backing names to the parents' LVs) with
    that host's agent stopped: it pauses on ENOSPC once it fills its LV; the agent, started, has the
    volume extended through the pool's mailbox (the SPM's agent runs lvextend, this host refreshes its
    LV), resumes it, and extends it through the mailbox from then on. Removing the guests deactivates
    the chains and removes the links. The extension latencies are printed (``pytest -s``).
    """
    first, second = san["hosts"]
    image_dir = f"/rhev/data-center/mnt/blockSD/{SD_A}/images/{IMG}"
    on_chain = CHAIN + [THIN_TOP]
    thin = [volume(IMG_THIN, THIN_BASE, size="1GiB", format="COW", initial_size="100MiB"),
            volume(IMG, THIN_TOP, parent_volume_uuid=CHAIN[-1], initial_size="100MiB")]
    made = play(tmp_path, "thin-volumes", first, thin)
    assert [result["actions"] for result in made] == [["create"], ["snapshot"]], made
    sizes = lv_tags(first)
    assert sizes[THIN_BASE][0] == sizes[THIN_TOP][0] == THIN_CHUNK_MIB, sizes  # 110 MiB: one extent
    assert not active_lvs(second) & set(on_chain), active_lvs(second)
    results, latencies = {}, {"local": [], "mailbox": []}
    with thin_agents([first, second]):
        agent_start(first)
        started = time.monotonic()
        on_first = {"when": f"inventory_hostname == '{first}'"}
        on_second = {"when": f"inventory_hostname == '{second}'"}
        chain_guest = writer_guest("kthin-chain")
        started_vms = play_on(tmp_path, "thin-writers", [first, second], [
            dict(writer_guest("kthin-local"), **on_first),
            dict(writer_guest("kthin-chain", type="file"), **on_second),  # refused: a block domain's volume
            dict(chain_guest, check_mode=True, **on_second),
            dict(chain_guest, **on_second)])
        local, no_type, check, chain = started_vms[first][0], *started_vms[second][1:]
        assert local["changed"] and not local.get("failed"), local
        assert no_type.get("failed") and "give the disk type: block" in no_type["msg"], no_type
        assert check["changed"] and not check.get("failed"), check
        assert chain["changed"] and not chain.get("failed"), chain
        wait_for("the guest on the chain to pause on ENOSPC", lambda: domstate(second, "kthin-chain") == "paused (I/O error)",
                 timeout=300, step=1)
        paused = domstate(second, "kthin-chain")
        assert active_lvs(second) >= set(on_chain), active_lvs(second)
        links = {vol: lab_exec(second, "readlink", f"{image_dir}/{vol}").stdout.strip() for vol in on_chain}
        assert links == {vol: f"/dev/{SD_A}/{vol}" for vol in on_chain}, links
        assert f"{image_dir}/{THIN_TOP}" in lab_exec(second, "virsh", "dumpxml", "kthin-chain").stdout
        agent_start(second)
        for guest, (index, _img, _vol) in GUESTS.items():
            host = san["hosts"][index]
            wait_for(f"{guest} to finish writing", writer_finished(host, guest), timeout=600, step=2)
            results[guest] = (time.monotonic() - started, console(host, guest), agent_events(host, guest))
        removed = play_on(tmp_path, "thin-writers-gone", [first, second],
                          [{"virtnode.kvm.vm": {"name": guest, "state": "absent"}} for guest in GUESTS])
        assert not [r for rs in removed.values() for r in rs if r.get("failed")], removed
    assert paused == "paused (I/O error)", paused
    assert not active_lvs(second) & set(on_chain), active_lvs(second)
    assert lab_exec(second, "ls", "-A", image_dir, check=False).stdout.split() == []
    for guest, (elapsed, text, events) in results.items():
        extensions = [e for e in events if e["event"] == "volume_extended"]
        pauses = sum(1 for e in events if e["event"] == "paused" and e.get("reason") == "ioerror")
        print(f"{guest}: {elapsed:.1f}s, ENOSPC pauses {pauses}, extensions "
              + ", ".join("%s/%s %.0f ms (SPM %.0f ms, refresh %.0f ms)" % (
                  e["trigger"], e["path"], e["latency"] * 1000, e["extend_seconds"] * 1000, e["refresh_seconds"] * 1000)
                  for e in extensions))
        assert f"writer done {THIN_WRITE_MIB * MIB}" in text, (guest, text[-2000:])
        assert not [e for e in events if e["event"] == "volume_extend_failed"], (guest, events)
        path = "local" if guest == "kthin-local" else "mailbox"
        assert len(extensions) >= 3 and all(e["path"] == path for e in extensions), (guest, events)
        assert all(e["new_size"] - e["old_size"] == THIN_CHUNK_MIB * MIB for e in extensions), (guest, extensions)
        latencies[path] += [e["latency"] * 1000 for e in extensions]
    chain_events = results["kthin-chain"][2]
    assert [e["trigger"] for e in chain_events if e["event"] == "volume_extended"][0] == "enospc", chain_events
    assert any(e["event"] == "vm_resumed_after_extension" for e in chain_events), chain_events
    # What the SPM wrote to the VG: each LV grew by whole chunks, as the agents asked.
    sizes = lv_tags(first)
    assert sizes[THIN_BASE][0] >= 4 * THIN_CHUNK_MIB and sizes[THIN_TOP][0] >= 4 * THIN_CHUNK_MIB, sizes
    for path, values in latencies.items():
        print(f"thin extension latency on block, {path}: p50 {percentile(values, 0.5):.0f} ms, "
              f"p99 {percentile(values, 0.99):.0f} ms over {len(values)} extensions")


def test_a_block_domain_attached_activated_and_detached_in_a_pool_with_an_nfs_master(san, kernel_vars, tmp_path):
    """The SPM attaches the iSCSI domain to a pool, activates it (both hosts join its lockspace with their
    own ids, the pool links it), makes volumes on it, and detaches it: the VG's tags follow."""
    first, second = san["hosts"]
    member = {"pool_uuid": SP}
    if lab_exec(first, "test", "-e", f"{kernel_vars['virtnode_lab_nfs_exports_v3'][1]}/{SD_MASTER}", check=False).returncode == 0:
        pool_teardown(tmp_path, san)  # what an interrupted run left
    try:
        for host, results in play_on(tmp_path, "pool", san["hosts"], [dict(t, vars=POOL_VARS) for t in nfs_master_tasks(first)]).items():
            assert not [r for r in results if r.get("failed")], (host, results)
        check, attached, again, active, active_again = play(tmp_path, "attach", first, [
            dict(domain(SD_A, state="attached", **member), check_mode=True), domain(SD_A, state="attached", **member),
            domain(SD_A, state="attached", **member), domain(SD_A, state="active", **member),
            domain(SD_A, state="active", **member)])
        assert check["changed"] and check["actions"] == ["attach"], check
        assert vdsm_metadata(vg_report(first, SD_A)["tags"])["POOL_UUID"] == SP, "the attach did not reach the VG"
        assert attached["changed"] and attached["actions"] == ["attach"], attached
        assert not again["changed"] and again["actions"] == [], again
        assert active["changed"] and active["actions"] == ["activate"], active
        assert not active_again["changed"] and active_again["actions"] == [], active_again
        md = vdsm_metadata(vg_report(first, SD_A)["tags"])
        assert md["POOL_UUID"] == SP and md["ROLE"] == "Regular", md
        assert f"s {SD_A}:1:/dev/{SD_A}/ids:0" in lockspaces(first), lockspaces(first)
        assert lab_exec(first, "readlink", f"/rhev/data-center/{SP}/{SD_A}").stdout.strip() == \
            f"/rhev/data-center/mnt/blockSD/{SD_A}"
        assert lab_exec(first, "readlink", f"/rhev/data-center/mnt/blockSD/{SD_A}/dom_md/ids").stdout.strip() == \
            f"/dev/{SD_A}/ids"
        # The other host joins the newly active domain when it connects the pool again.
        rejoined, pool_seen = play(tmp_path, "rejoin", second, [
            {"virtnode.kvm.storage_pool": {"pool_uuid": SP, "host_id": 2}},
            {"virtnode.kvm.storage_info": {"sd_uuid": SD_A}}])
        assert rejoined["changed"] and rejoined["pool"]["domains"] == {SD_MASTER: "Active", SD_A: "Active"}, rejoined
        assert f"s {SD_A}:2:/dev/{SD_A}/ids:0" in lockspaces(second), lockspaces(second)
        (seen,) = pool_seen["domains"]
        assert seen["pool_uuids"] == [SP] and seen["path"] == f"/rhev/data-center/mnt/blockSD/{SD_A}", seen
        block_volumes_on_the_spm_read_by_the_other_host(san, tmp_path)
        guests_write_into_thin_block_volumes(san, tmp_path)
        # Detaching on the SPM: out of the pool's list and the VG's tags, the SPM's lockspace left.
        images_gone, raw_gone, clone_gone, thin_gone, import_gone, detached, detached_again = play(
            tmp_path, "detach", first, [
                volume(IMG, state="absent"), volume(IMG_RAW, state="absent"), volume(IMG_CLONE, state="absent"),
                volume(IMG_THIN, state="absent"), volume(IMG_IMPORT, state="absent"),
                domain(SD_A, state="detached", **member), domain(SD_A, state="detached", **member)])
        assert clone_gone["actions"] == thin_gone["actions"] == import_gone["actions"] == ["delete_image"], \
            (clone_gone, thin_gone, import_gone)
        assert images_gone["actions"] == ["delete_image"] and images_gone["chain"] == [], images_gone
        assert raw_gone["actions"] == ["delete_image"], raw_gone
        assert not [name for name in lv_tags(first) if name not in SPECIAL_MIB], lv_tags(first)
        assert detached["changed"] and detached["actions"] == ["detach"], detached
        assert not detached_again["changed"], detached_again
        assert vdsm_metadata(vg_report(first, SD_A)["tags"])["POOL_UUID"] == ""
        assert f"s {SD_A}:" not in lockspaces(first), lockspaces(first)
    finally:
        pool_teardown(tmp_path, san)
    assert f"s {SD_A}:" not in lockspaces(second), lockspaces(second)


def test_removal_in_check_mode_then_for_real_wipes_the_luns(san, tmp_path):
    first, second = san["hosts"]
    lun0, lun1 = san["luns"][:2]
    absent = domain(SD_A, state="absent")
    check, removed, again = play(tmp_path, "remove", first, [dict(absent, check_mode=True), absent, absent])
    assert check["changed"] and check["actions"] == ["remove"], check
    assert removed["changed"] and removed["actions"] == ["remove"] and removed["domain"] is None, removed
    assert not again["changed"], again
    pvs = lvm(first, "pvs", "--noheadings", "-o", "pv_name")
    assert lun0 not in pvs and lun1 not in pvs, pvs
    # vnkern2 still maps the special LVs it activated: absent there lets go of them.
    gone, released, again = play(tmp_path, "gone", second, [
        domain(SD_A, state="imported"), domain(SD_A, state="absent"), domain(SD_A, state="absent")])
    assert gone.get("failed") and "not found" in gone["msg"], gone
    assert released["changed"] and released["actions"] == ["release"], released
    assert not again["changed"] and again["actions"] == [], again
    left = lab_exec(second, "sh", "-c", "cat /sys/block/dm-*/dm/name").stdout.split()
    assert not [name for name in left if name.startswith(SD_A.replace("-", "--"))], left
