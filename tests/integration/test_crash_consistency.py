"""Crash consistency: a task killed at any step converges when it is run again, and leaves nothing half-written.

Every crash point of plugins/module_utils/common/faults.py (domain create, volume create, snapshot and
clone, pool create, SPM start, network apply) is hit in turn: the task runs with VIRTNODE_CRASH_AT set
and dies there (SIGKILL, no clean-up), then runs again without it and must report a change, then a
third time and must report none. After each, the shared storage is checked: no temp or staging
files, every metadata file parses (sealed domain metadata, complete .meta files), no ILLEGAL volume,
and every file the task had no business touching is byte-identical to before.

A host crash (`lab.py crash`, every process of the host killed at once) is covered too, in the
middle of a volume create, between a domain's rename and its leases, of a snapshot and a pool create
(side by side, one crash), of a clone and of an SPM start: after `lab.py up` the host rejoins the pool
with another id and every re-run converges.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (LAB, REPO, bring_back_namespace_hosts, lab_exec, play_in_background, run_playbook,
                      stopped_at_crash_point, wait_for)

sys.path.insert(0, str(REPO))
from plugins.module_utils.common.faults import CRASH_POINTS  # noqa: E402  pylint: disable=wrong-import-position

EXPORT_NAME = "crash-consistency"
SP = "0c4a5e6f-1a2b-4c3d-8e4f-5a6b7c8d9e01"
SD = "0c4a5e6f-1a2b-4c3d-8e4f-5a6b7c8d9e02"
BASE_IMG = "0c4a5e6f-1a2b-4c3d-8e4f-5a6b7c8d9e03"
BASE_VOL = "0c4a5e6f-1a2b-4c3d-8e4f-5a6b7c8d9e04"
# A second active domain of the pool: volume creates hold their domain's lock, so a host crash can stop
# two of them at their crash points at once only when they are on different domains.
SD2 = "0c4a5e6f-1a2b-4c3d-8e4f-5a6b7c8d9e05"
IO_TIMEOUT = 1
SERVER = {"type": "posixfs", "path": "{{ export }}", "vfstype": "none", "options": "bind"}
# Files sanlock and the SPM rewrite on their own (lease renewals, mailboxes): never compared.
LIVE_FILES = {"ids", "leases", "xleases", "inbox", "outbox"}


def uid(point: str, what: str) -> str:
    """A stable UUID for the object ``what`` of crash point ``point`` (each point works on its own objects)."""
    digest = hashlib.sha1(f"{point}/{what}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def shared_dir() -> Path:
    inventory = json.loads((LAB / "inventory.yml").read_text())
    return Path(inventory["all"]["children"]["lab"]["vars"]["virtnode_lab_shared_dir"])


def play(tmp_path: Path, name: str, host: str, tasks: list, check: bool = True) -> str:
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{"name": name, "hosts": host, "gather_facts": False,
                                     "vars": {"export": "{{ virtnode_lab_shared_dir }}/" + EXPORT_NAME, "sp": SP, "sd": SD},
                                     "tasks": tasks}]))
    proc = run_playbook(playbook, timeout=600)
    if check:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return proc.stdout


def volume(img: str, vol: str, **extra) -> dict:
    return {"virtnode.kvm.volume": {"sd_uuid": "{{ sd }}", "image_uuid": img, "volume_uuid": vol, **extra}}


def cleanup_tasks() -> list:
    return [
        {"name": "Stop SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "stopped"}, "failed_when": False},
        {"name": "Disconnect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "state": "disconnected"},
         "failed_when": False},
        {"name": "Leave every lockspace of the export (pools created by the crash cases)",
         "ansible.builtin.command": {"argv": [
             "/usr/bin/python3", "-c",
             "import sanlock,sys\nfor ls in sanlock.get_lockspaces():\n"
             "    path = ls['path'].decode() if isinstance(ls['path'], bytes) else ls['path']\n"
             "    if sys.argv[1] in path:\n"
             "        sanlock.rem_lockspace(ls['lockspace'], ls['host_id'], ls['path'])",
             EXPORT_NAME + "/"]},
         "failed_when": False, "changed_when": False},
        {"name": "Disconnect server", "virtnode.kvm.storage_server": dict(SERVER, state="disconnected"), "failed_when": False},
        {"name": "No stale bind mount is left over the export", "failed_when": False, "changed_when": False,
         "ansible.builtin.shell": "mp=/rhev/data-center/mnt/$(echo '{{ export }}' | sed 's/_/__/g; s|/|_|g'); "
                                  "if grep -q \" $mp \" /proc/mounts; then umount -l \"$mp\"; fi"},
        {"name": "Remove export", "ansible.builtin.file": {"path": "{{ export }}", "state": "absent"}},
    ]


def setup_tasks() -> list:
    return [
        {"name": "Export dir", "ansible.builtin.file": {"path": "{{ export }}", "state": "directory", "mode": "0755"}},
        {"name": "Connect server", "virtnode.kvm.storage_server": SERVER},
        {"name": "Domain", "virtnode.kvm.storage_domain": {"sd_uuid": "{{ sd }}", "server": "{{ export }}", "io_timeout": IO_TIMEOUT}},
        {"name": "Pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "master_sd_uuid": "{{ sd }}", "host_id": 1,
                                                       "state": "present"}},
        {"name": "Connect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "host_id": 1}},
        {"name": "SPM", "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5}},
        {"name": "Base volume for snapshots and clones", **volume(BASE_IMG, BASE_VOL, size="16MiB", format="RAW")},
        {"name": "Second domain", "virtnode.kvm.storage_domain": {"sd_uuid": SD2, "server": "{{ export }}", "io_timeout": IO_TIMEOUT}},
        {"name": "Second domain active in the pool", "virtnode.kvm.storage_domain": {"sd_uuid": SD2, "pool_uuid": "{{ sp }}",
                                                                                     "state": "active"}},
    ]


@pytest.fixture(scope="module")
def storage(lab_hosts, tmp_path_factory):
    host = list(lab_hosts)[0]
    tmp = tmp_path_factory.mktemp("crash")
    play(tmp, "cleanup-before", host, cleanup_tasks())
    play(tmp, "setup", host, setup_tasks())
    yield host, shared_dir() / EXPORT_NAME
    play(tmp, "cleanup-after", host, cleanup_tasks())


# ------------------------------------------------------------------ what each crash point runs

def case(point: str) -> tuple[list, list, set]:
    """``(preparation tasks, crashed tasks, names of objects they create)`` for crash ``point``."""
    if point.startswith("domain_create."):
        sd = uid(point, "sd")
        return [], [{"virtnode.kvm.storage_domain": {"sd_uuid": sd, "server": "{{ export }}", "io_timeout": IO_TIMEOUT}}], {sd}
    if point.startswith("domain_leases."):
        # The domain a crash between its rename and its leases left: `present` finds its areas blank.
        sd = uid(point, "sd")
        create = {"virtnode.kvm.storage_domain": {"sd_uuid": sd, "server": "{{ export }}", "io_timeout": IO_TIMEOUT}}
        prep = [dict(create, environment={"VIRTNODE_CRASH_AT": "domain_create.renamed"}, ignore_errors=True)]
        return prep, [create], {sd}
    if point.startswith("volume_create."):
        parent_img, parent, snap = uid(point, "parent-img"), uid(point, "parent"), uid(point, "snap")
        prep = [volume(parent_img, parent, size="16MiB", format="COW")]
        crashed = [volume(parent_img, snap, parent_volume_uuid=parent)]
        made = {parent_img}
        if point != "volume_create.parent_internal":
            img, vol, clone_img, clone = uid(point, "img"), uid(point, "vol"), uid(point, "clone-img"), uid(point, "clone")
            crashed += [volume(img, vol, size="16MiB", format="RAW"),
                        volume(clone_img, clone, clone_from={"image_uuid": BASE_IMG, "volume_uuid": BASE_VOL})]
            made |= {img, clone_img}
        return prep, crashed, made
    if point.startswith("pool_create."):
        sd, sp = uid(point, "sd"), uid(point, "sp")
        prep = [{"virtnode.kvm.storage_domain": {"sd_uuid": sd, "server": "{{ export }}", "io_timeout": IO_TIMEOUT}}]
        return prep, [{"virtnode.kvm.storage_pool": {"pool_uuid": sp, "master_sd_uuid": sd, "host_id": 1, "state": "present"}}], {sd}
    if point.startswith("spm_start."):
        prep = [{"virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "stopped"}}]
        return prep, [{"virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5}}], {"dom_md/metadata"}
    if point.startswith("network_apply."):
        # One change without and one with a connectivity check (a watched transaction the controller never
        # got to confirm: the next run must roll it back at once rather than wait for its deadline).
        nics = network_nics(point)
        prep = [{"ansible.builtin.shell": "; ".join(f"ip link del {nic} 2>/dev/null; ip link add {nic} type veth peer name {nic}p"
                                                    for nic in nics)}]
        crashed = [{"virtnode.kvm.network": {"networks": [{"name": nic + "n", "nic": nic, "ipv4": {"addresses": [f"198.51.100.{7 + 16 * i}/28"]}}],
                                             "connectivity_check": bool(i), "connectivity_timeout": 60}}
                   for i, nic in enumerate(nics)]
        return prep, crashed, set()
    raise AssertionError(f"no test case for crash point {point}: add one")


def network_nics(point: str) -> list:
    tag = "s" if point.endswith(".step") else "a"
    return [f"vncr{tag}{i}" for i in range(2)]


def network_cleanup(point: str) -> list:
    return [{"virtnode.kvm.network": {"purge": True, "connectivity_check": False}, "failed_when": False},
            {"ansible.builtin.shell": "; ".join(f"ip link del {nic} 2>/dev/null" for nic in network_nics(point)) + "; true"}]


# Points after the task's last durable write: the re-run finds the work done (changed or not).
DONE_BEFORE_CRASH = {"domain_create.leases", "volume_create.legal", "pool_create.metadata"}


def three_runs(point: str, crashed: list) -> list:
    """The crashed tasks with the crash point set, again without it, and a third time; then the assertions."""
    tasks = []
    for run, env in (("crash", {"VIRTNODE_CRASH_AT": point}), ("rerun", {}), ("third", {})):
        for index, task in enumerate(crashed):
            entry = dict(task, name=f"{run} {index}", register=f"{run}{index}", environment=env)
            if run == "crash":
                entry["ignore_errors"] = True
            tasks.append(entry)
    that = []
    for index in range(len(crashed)):
        that += [f"crash{index} is failed", f"rerun{index} is succeeded", f"third{index} is not changed"]
        if point not in DONE_BEFORE_CRASH:
            that.append(f"rerun{index} is changed")
    tasks.append({"name": "Died, then converged", "ansible.builtin.assert": {"that": that}})
    return tasks


# ------------------------------------------------------------------ what is on the shared storage

def checksum(pairs: dict) -> str:
    digest = hashlib.sha1()
    for key in sorted(pairs):
        digest.update(f"{key}={pairs[key]}".encode("ascii", "xmlcharrefreplace"))
    return digest.hexdigest()


def pairs_of(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.split("\n") if "=" in line)


def fingerprint(root: Path) -> dict:
    """sha256 of every regular file under ``root`` except the ones sanlock and the SPM keep rewriting."""
    result = {}
    for path in sorted(root.rglob("*")):
        # master/tasks holds the SPM's per-task records, written by every SPM task.
        if path.is_file() and not path.is_symlink() and path.name not in LIVE_FILES and "/master/tasks/" not in str(path):
            result[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def half_written(root: Path) -> list:
    """Everything on the export that a crash must never leave behind."""
    problems = []
    for path in sorted(root.rglob("*")):
        name, rel = path.name, str(path.relative_to(root))
        if name.endswith((".new", ".tmp", ".creating")) or name.startswith(("_remove_me_", ".")):
            problems.append(f"leftover {rel}")
        if name == "metadata" and path.parent.name == "dom_md":
            text = path.read_text()
            pairs = pairs_of(text)
            declared = pairs.pop("_SHA_CKSUM", None)
            if declared is None or declared.strip() != checksum({k: v.strip() for k, v in pairs.items()}):
                problems.append(f"{rel}: no valid seal")
        if name.endswith(".meta"):
            text = path.read_text()
            if not text.rstrip("\0").endswith("EOF\n"):
                problems.append(f"{rel}: no EOF line")
            legality = pairs_of(text).get("LEGALITY")
            if legality != "LEGAL":
                problems.append(f"{rel}: LEGALITY={legality}")
            if not path.with_suffix("").exists():
                problems.append(f"{rel}: no data file")
    return problems


def touched_by(rel: str, made: set) -> bool:
    return any(part in made for part in rel.split("/")) or any(rel.endswith(m) for m in made)


# Block domains and their volumes need LUNs: their points run on the kernel hosts (test_kernel_block_domain.py).
KERNEL_HOST_POINTS = tuple(point for point in CRASH_POINTS if point.startswith(("block_domain_", "block_volume_")))
NAMESPACE_POINTS = sorted(point for point in CRASH_POINTS if point not in KERNEL_HOST_POINTS)


@pytest.mark.parametrize("point", NAMESPACE_POINTS)
def test_crash_at_every_step_converges(storage, tmp_path, point):
    host, export = storage
    prep, crashed, made = case(point)
    network = point.startswith("network_apply.")
    if prep:
        play(tmp_path, "prepare", host, prep)
    before = fingerprint(export)
    # Each point answers for what it leaves: an earlier point's leftover is reported there.
    known = set(half_written(export))
    try:
        play(tmp_path, point, host, three_runs(point, crashed))
    finally:
        if network:
            play(tmp_path, "network-cleanup", host, network_cleanup(point), check=False)
    assert [p for p in half_written(export) if p not in known] == []
    after = fingerprint(export)
    changed = sorted(rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel) and not touched_by(rel, made))
    assert changed == [], f"the crash or the re-run changed files it had no business with: {changed}"
    if network:
        records = lab_exec(host, "sh", "-c", "cat /var/lib/virtnode/network/transactions/*.json 2>/dev/null || true").stdout
        assert '"rolling_back"' not in records and '"pending"' not in records


# ------------------------------------------------------------------ the whole host dies

def crash_host_in_the_middle(storage, tmp_path, lab_hosts, crashed: list, new_host_id: int, made: set,
                             at_crash=None, prep: list | None = None) -> None:
    """Every process of the host (sanlock, libvirtd, sshd, the modules) dies at once while each task of
    ``crashed`` (``[(crash point, task)]``) is at its point, as in a power cut; the host comes back,
    rejoins the pool and every task converges.

    The tasks run side by side (async), so one crash, and one wait, covers them all. The host comes
    back with another host id (``new_host_id``): rejoining the lockspace with its old one, like taking
    the SDM lease the dead SPM held, waits until sanlock calls the old one dead (about 70 s). Nothing
    on the export changes but what the tasks make (``made``) and what the pool records of the host's
    return. An SPM start among ``crashed`` is re-run as the step that makes the host SPM again.
    """
    host, export = storage
    if prep:
        play(tmp_path, "prepare", host, prep)
    before = fingerprint(export)
    known = set(half_written(export))
    playbook = tmp_path / "host-crash.yml"
    # Each module stops itself at its step (VIRTNODE_CRASH_HOW=stop), so the host dies exactly there.
    stop_at = [dict(task, name=f"crash at {point}", environment={"VIRTNODE_CRASH_AT": point, "VIRTNODE_CRASH_HOW": "stop"},
                    **{"async": 600, "poll": 0}) for point, task in crashed]
    playbook.write_text(json.dumps([{"name": "crash", "hosts": host, "gather_facts": False,
                                     "vars": {"export": "{{ virtnode_lab_shared_dir }}/" + EXPORT_NAME, "sp": SP, "sd": SD},
                                     "tasks": stop_at}]))
    running = play_in_background(playbook)
    try:
        wait_for(f"{len(crashed)} modules on {host} to stop at their crash points",
                 lambda: len(stopped_at_crash_point(host)) >= len(crashed), timeout=120)
        if at_crash is not None:
            at_crash(export)
        crash = subprocess.run([sys.executable, str(REPO / "tests/lab/lab.py"), "crash", host],
                               capture_output=True, text=True, timeout=120, check=False)
        assert crash.returncode == 0, crash.stderr
    finally:
        running.communicate(timeout=300)
        bring_back_namespace_hosts(lab_hosts)
    spm_starts = [task for _point, task in crashed if task.get("virtnode.kvm.spm", {}).get("state") == "started"]
    others = [task for _point, task in crashed if task not in spm_starts]
    tasks = [
        {"name": "Connect server", "virtnode.kvm.storage_server": SERVER},
        {"name": "Forget the connection of before the crash", "failed_when": False,
         "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "state": "disconnected"}},
        {"name": "Connect pool", "virtnode.kvm.storage_pool": {"pool_uuid": "{{ sp }}", "host_id": new_host_id}},
        {"name": "SPM once the dead host's lease expired", "register": "spm", "until": "spm is succeeded", "retries": 75, "delay": 2,
         "virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5}},
    ]
    that = ["spm is changed"] if spm_starts else []
    for index, task in enumerate(others):
        tasks += [{"name": f"Re-run {index}", **task, "register": f"rerun{index}"},
                  {"name": f"Third {index}", **task, "register": f"third{index}"}]
        that += [f"rerun{index} is changed", f"third{index} is not changed"]
    if spm_starts:
        tasks.append({"name": "SPM start again", "virtnode.kvm.spm": spm_starts[0]["virtnode.kvm.spm"], "register": "spm_again"})
        that.append("spm_again is not changed")
    play(tmp_path, "after-crash", host, tasks + [{"name": "Converged", "ansible.builtin.assert": {"that": that}}])
    assert [p for p in half_written(export) if p not in known] == []
    after = fingerprint(export)
    made = made | {"dom_md/metadata", f"master/hosts/{new_host_id}"}  # the pool records the host's new id
    assert sorted(r for r in set(before) | set(after) if before.get(r) != after.get(r) and not touched_by(r, made)) == []


def test_host_crash_in_the_middle_of_two_volume_creates_and_a_domain_create(storage, tmp_path, lab_hosts):
    """Three tasks at their crash points when the host dies: a volume whose metadata says ILLEGAL (on the
    second domain), a clone whose data file is written and its .meta not, and a new domain in place with no
    lockspace and no leases (`present` must give it both)."""
    img, vol = uid("host-crash", "img"), uid("host-crash", "vol")
    clone_img, clone = uid("host-crash", "clone-img"), uid("host-crash", "clone")
    sd = uid("host-crash", "sd")

    def all_half_done(export):
        assert "LEGALITY=ILLEGAL" in (export / SD2 / "images" / img / (vol + ".meta")).read_text()
        clone_dir = export / SD / "images" / clone_img
        assert (clone_dir / clone).is_file() and not (clone_dir / (clone + ".meta")).exists()
        assert (export / sd / "dom_md" / "metadata").is_file()
    crash_host_in_the_middle(storage, tmp_path, lab_hosts, [
        ("volume_create.meta_illegal", volume(img, vol, size="16MiB", format="RAW", sd_uuid=SD2)),
        ("volume_create.data", volume(clone_img, clone, clone_from={"image_uuid": BASE_IMG, "volume_uuid": BASE_VOL})),
        ("domain_create.renamed", {"virtnode.kvm.storage_domain": {"sd_uuid": sd, "server": "{{ export }}",
                                                                   "io_timeout": IO_TIMEOUT}}),
    ], 2, {img, clone_img, sd}, all_half_done)


def test_host_crash_in_the_middle_of_a_snapshot_and_a_pool_create(storage, tmp_path, lab_hosts):
    """A snapshot whose parent is already INTERNAL, and a new pool whose master tree exists while its
    domain's metadata names no pool, both on storage when the host dies."""
    img, parent, snap = uid("host-crash", "snap-img"), uid("host-crash", "snap-parent"), uid("host-crash", "snap")
    sd, sp = uid("host-crash", "pool-sd"), uid("host-crash", "pool")

    def both_half_done(export):
        assert "VOLTYPE=INTERNAL" in (export / SD / "images" / img / (parent + ".meta")).read_text()
        assert "LEGALITY=ILLEGAL" in (export / SD / "images" / img / (snap + ".meta")).read_text()
        assert (export / sd / "master").is_dir() and f"POOL_UUID={sp}" not in (export / sd / "dom_md" / "metadata").read_text()
    prep = [volume(img, parent, size="16MiB", format="COW"),
            {"virtnode.kvm.storage_domain": {"sd_uuid": sd, "server": "{{ export }}", "io_timeout": IO_TIMEOUT}}]
    crash_host_in_the_middle(storage, tmp_path, lab_hosts, [
        ("volume_create.parent_internal", volume(img, snap, parent_volume_uuid=parent)),
        ("pool_create.master_tree", {"virtnode.kvm.storage_pool": {"pool_uuid": sp, "master_sd_uuid": sd, "host_id": 1,
                                                                   "state": "present"}}),
    ], 3, {img, sd}, both_half_done, prep)


def test_host_crash_in_the_middle_of_an_spm_start(storage, tmp_path, lab_hosts):
    """The pool metadata names the host as SPM when it dies: the host, back with another id, takes over."""
    def names_the_spm(export):
        assert re.search(r"^POOL_SPM_ID=[1-9][0-9]*$", (export / SD / "dom_md" / "metadata").read_text(), re.M)
    crash_host_in_the_middle(storage, tmp_path, lab_hosts, [
        ("spm_start.metadata", {"virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "started", "check_interval": 0.5}})],
        4, set(), names_the_spm, [{"virtnode.kvm.spm": {"pool_uuid": "{{ sp }}", "state": "stopped"}}])


def test_crash_points_all_have_a_case():
    for point in NAMESPACE_POINTS:
        assert case(point)[1], point
