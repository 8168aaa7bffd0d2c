"""A pool whose master is an iSCSI block domain, on the lab's kernel hosts, and its SPM's crash.

vnkern2 creates the domain on a LUN, makes it the master of a new pool and becomes SPM; vnkern1
(which also serves the lab's iSCSI target, so it is the one that survives) joins. The master
tree (``master/{vms,tasks,hosts}``) is on the ``master`` LV's ext3 file system, which only the
SPM mounts, as VDSM does: checked with plain commands on both hosts, with a volume
created on the SPM (its task lease lives on that file system). A guest on the SPM gets a live
snapshot of its disk onto a new volume, merged back while it writes (the base LV grown first, the
merged LV removed), then migrates to vnkern1, where its volumes are prepared first (and deactivated
on vnkern2 after). Then vnkern2 is killed outright.
vnkern1 takes the SPM role once sanlock calls vnkern2 dead (the failover time is printed:
``pytest -s``), mounts the master after e2fsck has replayed what the crash left in its journal,
and creates a volume of its own. vnkern1 then steps down (the master unmounted, its LV
deactivated) and leaves the pool; vnkern2 is powered on again for the tests after this one.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

import kernel_san
from conftest import REPO, lab_exec, run_playbook

SP = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d50"
SD_M = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d51"
IMG_1, VOL_1 = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d52", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d53"
IMG_2, VOL_2 = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d54", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d55"
VOL_SNAP = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3d56"   # the live snapshot of the guest's disk, merged away
GUEST = "kmerge"
CODE = "/run/virtnode-kblockmaster"
IO_TIMEOUT = 1
NO_DEVICES_FILE = "devices { use_devicesfile=0 hints=\"none\" }"
MASTER_DIR = f"/rhev/data-center/mnt/blockSD/{SD_M}/master"


@pytest.fixture(scope="module")
def san(kernel_hosts, kernel_vars):
    with kernel_san.san_session(kernel_hosts, kernel_vars, [SD_M], CODE) as session:
        session["lun"] = kernel_san.lun_guid(session, 0)
        yield session


def play(tmp_path: Path, name: str, host: str, tasks: list) -> list:
    """Run ``tasks`` on ``host`` (each may fail, unless it says otherwise); their registered results, in order."""
    registered = []
    for index, task in enumerate(tasks):
        registered.append({"ignore_errors": True, **task, "name": task.get("name", f"step {index}"), "register": f"r{index}"})
    names = ", ".join(f"'r{i}': r{i}" for i in range(len(tasks)))
    registered.append({"name": "Keep the results", "delegate_to": "localhost", "ansible.builtin.copy": {
        "content": "{{ {%s} | to_json }}" % names, "dest": str(tmp_path / f"{name}.json"), "mode": "0600"}})
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{"name": name, "hosts": host, "gather_facts": False, "tasks": registered}]))
    started = time.monotonic()
    proc = run_playbook(playbook, timeout=900)
    assert proc.returncode == 0, f"{name}: playbook failed:\n{proc.stdout[-20000:]}"
    print(f"{name} on {host}: {time.monotonic() - started:.1f}s")
    found = json.loads((tmp_path / f"{name}.json").read_text())
    return [found[f"r{i}"] for i in range(len(tasks))]


def pool_metadata(host: str) -> dict:
    """The pool keys of the master's metadata, from the VG's tags with plain LVM."""
    tags = lab_exec(host, "vgs", "--config", NO_DEVICES_FILE, "--noheadings", "-o", "vg_tags", SD_M).stdout.strip().split(",")
    lines = [re.sub(r"&(\d+)&", lambda m: chr(int(m.group(1))), tag[4:]) for tag in tags if tag.startswith("MDT_")]
    pairs = dict(line.split("=", 1) for line in lines)
    return {key: pairs.get(key) for key in ("ROLE", "POOL_UUID", "POOL_DOMAINS", "POOL_SPM_ID", "POOL_SPM_LVER", "MASTER_VERSION")}


def master_mount(host: str) -> str:
    """``<source> <fstype>`` of the master file system's mount on ``host``, or '' when it is not mounted."""
    proc = lab_exec(host, "findmnt", "-n", "-o", "SOURCE,FSTYPE", MASTER_DIR, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def master_lv_active(host: str) -> bool:
    dm_name = SD_M.replace("-", "--") + "-master"
    return lab_exec(host, "test", "-e", f"/dev/mapper/{dm_name}", check=False).returncode == 0


def volume(img: str, vol: str, **options) -> dict:
    return {"virtnode.kvm.volume": {"sd_uuid": SD_M, "image_uuid": img, "volume_uuid": vol,
                                    **(options or {"size": "1GiB", "format": "COW"})}}


def lvs(host: str) -> dict:
    """``{lv name: size in MiB}`` of the master domain's volume LVs, read with plain LVM."""
    out = lab_exec(host, "lvs", "--config", NO_DEVICES_FILE, "--noheadings", "--units", "m", "--nosuffix", "--separator", "|",
                   "-o", "lv_name,lv_size", SD_M).stdout
    return {name: int(float(size)) for name, size in (line.strip().split("|") for line in out.splitlines() if line.strip())}


def disk_source(host: str) -> str:
    return lab_exec(host, "virsh", "domblklist", GUEST).stdout


def live_snapshot_and_merge_on_the_spm(tmp_path: Path, spm_host: str, survivor: str):
    """A guest on the SPM writes to its disk on the block master while a live snapshot is taken onto a new
    volume and merged back (an active commit): the thin base LV grows first, as VDSM grows it, and the
    merged volume's LV is removed."""
    guest = {"virtnode.kvm.vm": {
        "name": GUEST, "memory": "128MiB", "kernel": "{{ virtnode_lab_guest_kernel }}", "initrd": "{{ virtnode_lab_guest_initrd }}",
        "cmdline": "{{ virtnode_lab_guest_cmdline }} workload=writer writer_mb=64",
        "disks": [{"domain_id": SD_M, "image_id": IMG_1, "volume_id": VOL_1, "type": "block", "format": "qcow2"}]}}
    snap = {"name": GUEST, "volumes": [{"domain_id": SD_M, "image_id": IMG_1, "volume_id": VOL_SNAP}]}
    base_before = lvs(spm_host)[VOL_1]
    try:
        started, made, taken, taken_again = play(tmp_path, "snapshot", spm_host, [
            guest, volume(IMG_1, VOL_SNAP, parent_volume_uuid=VOL_1),
            {"virtnode.kvm.vm_snapshot": dict(snap, state="present")},
            {"virtnode.kvm.vm_snapshot": dict(snap, state="present")}])
        assert started["changed"] and made["actions"] == ["snapshot"], (started, made)
        assert taken["changed"] and not taken.get("failed") and not taken_again["changed"], (taken, taken_again)
        assert f"/rhev/data-center/mnt/blockSD/{SD_M}/images/{IMG_1}/{VOL_SNAP}" in disk_source(spm_host), disk_source(spm_host)
        check, merged, merged_again, read_back = play(tmp_path, "merge", spm_host, [
            {"virtnode.kvm.vm_snapshot": dict(snap, state="absent"), "check_mode": True},
            {"virtnode.kvm.vm_snapshot": dict(snap, state="absent")},
            {"virtnode.kvm.vm_snapshot": dict(snap, state="absent")}, volume(IMG_1, VOL_1)])
        print(f"live merge on the block master: {merged.get('duration_s')} s, actions {merged.get('actions')}")
        assert check["changed"] and check["actions"][0].startswith(f"active commit {VOL_SNAP} into {VOL_1}"), check
        assert merged["changed"] and not merged.get("failed"), merged
        assert merged["deleted"] == [{"domain_id": SD_M, "image_id": IMG_1, "volume_id": VOL_SNAP}], merged
        assert not merged_again["changed"] and not merged_again.get("failed"), merged_again
        after = lvs(spm_host)
        assert VOL_SNAP not in after and after[VOL_1] > base_before, (base_before, after)
        assert f"images/{IMG_1}/{VOL_1}" in disk_source(spm_host) and VOL_SNAP not in disk_source(spm_host)
        assert not read_back["changed"] and read_back["volume"]["legality"] == "LEGAL", read_back
        migrate_to_the_other_host(tmp_path, spm_host, survivor)
        hosts = [survivor]
    except BaseException:
        hosts = [spm_host, survivor]
        raise
    finally:
        for host in hosts:
            play(tmp_path, f"guest-gone-{host}", host, [{"virtnode.kvm.vm": {"name": GUEST, "state": "absent"}}])
    assert not active_volume_lvs(survivor) and not active_volume_lvs(spm_host)


def active_volume_lvs(host: str) -> list:
    """The master domain's volume LVs active on ``host`` (device-mapper names, read in sysfs)."""
    names = lab_exec(host, "sh", "-c", "cat /sys/block/dm-*/dm/name 2>/dev/null || true").stdout.split()
    prefix = SD_M.replace("-", "--") + "-"
    return [name for name in names if name.startswith(prefix) and len(name) > len(prefix) + 30]


def migrate_to_the_other_host(tmp_path: Path, source: str, destination: str):
    """The guest on block volumes migrates: its chain prepared on the destination first (prepareImage), its LVs
    deactivated on the source after."""
    prepare = volume(IMG_1, VOL_1, state="prepared")
    migrate = {"virtnode.kvm.vm": {"name": GUEST, "migrate_to": destination, "migrate_transport": "tcp",
                                   "migrate_unsafe": True, "migrate_options": {"timeout": 240}}}
    check, prepared, again = play(tmp_path, "prepare", destination, [dict(prepare, check_mode=True), prepare, prepare])
    assert check["changed"] and check["actions"] == ["prepare"], check
    assert prepared["changed"] and not prepared.get("failed") and not again["changed"], (prepared, again)
    assert active_volume_lvs(destination) == [f"{SD_M.replace('-', '--')}-{VOL_1.replace('-', '--')}"], active_volume_lvs(destination)
    (moved,) = play(tmp_path, "migrate", source, [migrate])
    assert moved["changed"] and not moved.get("failed"), moved
    print(f"migration of a guest on a block volume: {moved['migration']['duration_s']} s")
    assert lab_exec(destination, "virsh", "domstate", GUEST).stdout.strip() == "running"
    assert active_volume_lvs(source) == [], active_volume_lvs(source)


def leave_pool() -> list:
    return [{"virtnode.kvm.spm": {"pool_uuid": SP, "state": "stopped"}},
            {"virtnode.kvm.storage_pool": {"pool_uuid": SP, "state": "disconnected"}}]


def test_a_block_master_is_mounted_by_its_spm_only_and_fails_over_when_the_spm_crashes(san, tmp_path):
    # The SPM that crashes is the host without the lab's iSCSI target; the other one survives it.
    survivor, spm_host = san["hosts"]
    must = {"ignore_errors": False}
    crashed = left_cleanly = False
    try:
        made, again = play(tmp_path, "master", spm_host, [
            {**must, "virtnode.kvm.storage_domain": {"sd_uuid": SD_M, "type": "iscsi", "luns": [san["lun"]],
                                                     "io_timeout": IO_TIMEOUT, "description": "block master"}},
            {**must, "virtnode.kvm.storage_pool": {"pool_uuid": SP, "master_sd_uuid": SD_M, "host_id": 2, "state": "present",
                                                   "hostname": spm_host}},
            {**must, "virtnode.kvm.spm": {"pool_uuid": SP, "state": "started", "check_interval": 0.5}},
            volume(IMG_1, VOL_1), volume(IMG_1, VOL_1)])[3:]
        joined, status = play(tmp_path, "join", survivor, [
            {**must, "virtnode.kvm.storage_pool": {"pool_uuid": SP, "host_id": 1, "hostname": survivor}},
            {**must, "virtnode.kvm.spm": {"pool_uuid": SP}}])
        assert joined["pool"]["master_sd_uuid"] == SD_M and status["spm"]["spm_id"] == 2, (joined, status)
        assert made["changed"] and not made.get("failed") and not again["changed"], (made, again)

        # Only the SPM mounts the master: the tree is on the LV, and the SPM named itself there.
        assert master_mount(spm_host) == f"/dev/mapper/{SD_M.replace('-', '--')}-master ext3", master_mount(spm_host)
        listing = lab_exec(spm_host, "ls", MASTER_DIR).stdout.split()
        assert {"hosts", "tasks", "vms"} <= set(listing), listing
        assert lab_exec(spm_host, "cat", f"{MASTER_DIR}/hosts/2").stdout.strip() == spm_host
        assert lab_exec(spm_host, "stat", "-c", "%u:%g", MASTER_DIR).stdout.strip() == "36:36"
        assert master_mount(survivor) == "" and not master_lv_active(survivor)
        assert lab_exec(survivor, "sh", "-c", f"ls -A {MASTER_DIR} 2>/dev/null || true").stdout.strip() == "", \
            "the other host wrote into the mount point"
        live_snapshot_and_merge_on_the_spm(tmp_path, spm_host, survivor)
        md = pool_metadata(survivor)
        assert md["ROLE"] == "Master" and md["POOL_UUID"] == SP and md["POOL_DOMAINS"] == f"{SD_M}:Active", md
        assert md["POOL_SPM_ID"] == "2", md
        lver_before = int(md["POOL_SPM_LVER"])

        crash = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "crash", spm_host],
                               capture_output=True, text=True, timeout=120, check=False)
        assert crash.returncode == 0, crash.stdout + crash.stderr
        crashed, crashed_at = True, time.monotonic()
        (takeover,) = play(tmp_path, "takeover", survivor, [
            {**must, "name": "The survivor takes over once the crashed SPM's lease expires",
             "virtnode.kvm.spm": {"pool_uuid": SP, "state": "started", "check_interval": 0.5},
             "until": "r0 is succeeded", "retries": 200, "delay": 1}])
        failover = time.monotonic() - crashed_at
        # The dead SPM's volume is there for the new one: read back, nothing to change.
        made_second, seen = play(tmp_path, "volumes-on-the-new-spm", survivor, [volume(IMG_2, VOL_2), volume(IMG_1, VOL_1)])
        print(f"SPM failover on a block master after {spm_host} crashed: {failover:.1f} s (sanlock io timeout {IO_TIMEOUT} s)")
        assert takeover["spm"]["spm_status"] == "SPM" and takeover["spm"]["spm_id"] == 1, takeover
        # sanlock calls a host dead 8 io timeouts plus the 60 s watchdog fire timeout after its last renewal.
        assert 60 + 6 * IO_TIMEOUT - 1 <= failover < 8 * IO_TIMEOUT + 60 + 90, failover
        assert made_second["changed"] and not made_second.get("failed"), made_second
        md = pool_metadata(survivor)
        assert md["POOL_SPM_ID"] == "1" and int(md["POOL_SPM_LVER"]) > lver_before, md
        assert master_mount(survivor).endswith(" ext3"), master_mount(survivor)
        assert lab_exec(survivor, "cat", f"{MASTER_DIR}/hosts/2").stdout.strip() == spm_host, "the crashed SPM's record is gone"
        assert not seen["changed"] and seen["volume"]["legality"] == "LEGAL", seen

        # Stepping down unmounts the master and deactivates its LV before the lease goes.
        stopped, left = play(tmp_path, "leave", survivor, [
            {**must, "virtnode.kvm.spm": {"pool_uuid": SP, "state": "stopped"}},
            {**must, "virtnode.kvm.storage_pool": {"pool_uuid": SP, "state": "disconnected"}}])
        assert stopped["changed"] and left["changed"], (stopped, left)
        assert master_mount(survivor) == "" and not master_lv_active(survivor)
        assert pool_metadata(survivor)["POOL_SPM_ID"] == "-1"
        assert f"s {SD_M}:" not in lab_exec(survivor, "sanlock", "client", "status").stdout
        left_cleanly = True
    finally:
        if not crashed:
            play(tmp_path, "cleanup-spm", spm_host, leave_pool())
        if not left_cleanly:
            play(tmp_path, "cleanup-survivor", survivor, leave_pool())
        if crashed:
            kernel_san.power_on_again(san, spm_host, CODE)
