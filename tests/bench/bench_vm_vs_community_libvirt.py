"""Benchmark (not a test): virtnode.kvm.vm against community.libvirt.virt on one lab host.

On the first host of the lab, in one run, each round does for both sides:

  start   N tiny guests (TCG `qemu` domains, direct kernel boot of the lab's
          guest, idle workload, 128 MiB), defined persistent and started;
  no-op   the same playbook again: it must report changed=0.

virtnode.kvm.vm does it in one task per guest (persistent: true, state:
running), and then in its bulk form: one task for every guest (vms, the
guests converged --parallel at a time; not alternated with the loops, it
runs after them in each round). community.libvirt.virt needs two: `command: define` with the domain
XML templated from the same spec (tests/bench/bench_vm_domain.xml.j2, the XML
virtnode.kvm.vm builds, less its metadata element), then `state: running`.

What makes it a fair comparison:

* Both define a persistent domain and start it with libvirt's create, which
  returns once QEMU runs the guest's vCPUs. virtnode.kvm.vm then checks the
  state (running at the first poll) and looks for hooks; neither waits for
  the guest OS. Between the start and the no-op run the benchmark waits, out
  of the measured time, until every guest printed its ready line, so the
  guests' boot CPU does not land in the no-op figures.
* Same controller, ansible.cfg (pipelining, SSH ControlPersist), inventory,
  host and guest. The loop items run one after another on one host.
* The sides alternate (round 1 ours first, round 2 theirs first, ...), all
  guests are destroyed and undefined between sides, and the medians of the
  rounds are compared: other labs share the 2 cores.
* A loop of ansible.builtin.ping (same item count) gives the fixed cost of
  one task (controller, SSH, remote Python start-up, AnsiballZ): what a task
  costs beyond it is the module's own import and work.

Then, for one guest: the time of a single no-op virtnode.kvm.vm task on a
running VM, and a profile of virtnode.kvm.vm on the host (imports, libvirt
calls) that says where a start and a no-op spend their time.

community.libvirt comes from the `ansible` package on PyPI (pinned below),
downloaded with pip into .cache/bench-vm/ (git-ignored); only
ansible_collections/community/libvirt is kept.

    make bench-vm                                       # 20 guests, 3 rounds
    make bench-vm BENCH_ARGS="--guests 2 --rounds 1"    # a quick look
    VIRTNODE_LAB_ID=5 make BUILD=.build-x bench-vm

Runs under /usr/bin/python3 (host-side parts need python3-libvirt); needs
the collection copy of `make collection` and a lab (`make lab-up`).
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
ANSIBLE_VERSION = "12.3.0"  # PyPI `ansible`; ships community.libvirt 2.0.0
CACHE = REPO / ".cache" / "bench-vm"
COMMUNITY_PREFIX = "ansible_collections/community/libvirt/"
GUEST_PREFIX = "bench-vm-"
RECORDS_DIR = "/var/lib/virtnode/vms"
CONSOLE_LOG = "/var/log/libvirt/qemu/%s-console.log"
READY_LINE = "virtnode-guest ready"
SIDES = ("ours", "theirs")
SIDE_LABEL = {"ours": "virtnode.kvm.vm", "theirs": "community.libvirt.virt"}
UUID_NS = uuid.UUID("5d1f3a3e-6c0e-4b7a-9a63-1f6a2c9e0b11")

# ------------------------------------------------------------------ pure parts (unit tested)


def guests(count: int, prefix: str = GUEST_PREFIX) -> list[dict]:
    """Names and fixed UUIDs of the bench guests (a define without UUID is not idempotent)."""
    return [{"name": f"{prefix}{i:02d}", "uuid": str(uuid.uuid5(UUID_NS, f"{prefix}{i:02d}"))}
            for i in range(1, count + 1)]


def side_order(round_index: int) -> tuple[str, str]:
    """Ours first in even rounds (0, 2...), theirs first in odd ones."""
    return SIDES if round_index % 2 == 0 else SIDES[::-1]


def item_stats(items: list[float]) -> dict:
    """Median and spread of loop item times; the first item (task set-up, first SSH) apart."""
    if not items:
        return {"first": None, "median": None, "min": None, "max": None}
    rest = items[1:] or items
    return {"first": items[0], "median": statistics.median(rest), "min": min(rest), "max": max(rest)}


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def median_of(runs: list[dict], key) -> float | None:
    values = [key(run) for run in runs]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.{digits}f} s"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def module_tasks(run: dict) -> list[dict]:
    """The measured tasks of a playbook run (all of them: the plays have no set-up task)."""
    return run["tasks"]


def per_guest_item(run: dict) -> float | None:
    """Median time one guest costs in a run: the sum over its tasks of their median item time."""
    total = 0.0
    for task in module_tasks(run):
        median = item_stats(task["items"])["median"]
        if median is None:
            return None
        total += median
    return total


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds of every phase's wall time and per-guest item time, and the ratios."""
    out = {}
    for phase in ("start", "noop"):
        for side in SIDES:
            runs = [r[side][phase] for r in rounds]
            out[(side, phase, "wall")] = median_of(runs, lambda run: run["wall"])
            out[(side, phase, "tasks")] = median_of(runs, lambda run: sum(t["seconds"] for t in module_tasks(run)))
            out[(side, phase, "item")] = median_of(runs, per_guest_item)
        for what in ("wall", "tasks", "item"):
            out[("ratio", phase, what)] = ratio(out[("ours", phase, what)], out[("theirs", phase, what)])
    out[("ping", "item")] = median_of([r["ping"] for r in rounds], per_guest_item)
    out[("ping", "wall")] = median_of([r["ping"] for r in rounds], lambda run: run["wall"])
    return out


# ------------------------------------------------------------------ controller side


def fetch_community_libvirt(pip: str) -> Path:
    """A collections path holding community.libvirt from the pinned `ansible` wheel."""
    dest = CACHE / f"ansible-{ANSIBLE_VERSION}"
    manifest = dest / COMMUNITY_PREFIX / "MANIFEST.json"
    if manifest.exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = glob.glob(str(CACHE / f"ansible-{ANSIBLE_VERSION}-*.whl"))
    if not wheels:
        print(f"downloading ansible=={ANSIBLE_VERSION} from PyPI (wheel only, no dependencies)", flush=True)
        subprocess.run([pip, "download", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
                        f"ansible=={ANSIBLE_VERSION}", "-d", str(CACHE)], check=True)
        wheels = glob.glob(str(CACHE / f"ansible-{ANSIBLE_VERSION}-*.whl"))
    tmp = Path(tempfile.mkdtemp(prefix="community-libvirt-", dir=CACHE))
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(tmp, [n for n in wheel.namelist() if n.startswith(COMMUNITY_PREFIX)])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    for wheel_path in wheels:
        os.unlink(wheel_path)
    return dest


class Lab:
    def __init__(self, lab_dir: Path):
        self.inventory = lab_dir / "inventory.yml"
        if not self.inventory.exists():
            raise SystemExit(f"no lab inventory at {self.inventory}: run `make lab-up` first")
        data = json.loads(self.inventory.read_text())
        lab = data["all"]["children"]["lab"]
        self.host = sorted(lab["hosts"])[0]
        # The guest's kernel is in all.vars since the lab has kernel hosts too.
        self.vars = {**data["all"].get("vars", {}), **lab.get("vars", {})}

    def host_python(self, *args: str, timeout: int = 300) -> str:
        """Runs this script's host-side subcommand inside the lab host."""
        cmd = [sys.executable, str(REPO / "tests/lab/lab.py"), "exec", self.host, "--",
               "/usr/bin/python3", str(Path(__file__).resolve()), *args]
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{self.host}: {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout


def write_playbooks(work: Path, count: int) -> dict:
    host = "lab[0]"
    head = (f"- name: Bench\n  hosts: \"{host}\"\n  gather_facts: false\n  tasks:\n")
    loop = ("      loop: \"{{ bench_guests }}\"\n"
            "      loop_control:\n        label: \"{{ item.name }}\"\n")
    ours = head + (
        "    - name: Define and start the guests (virtnode.kvm.vm)\n"
        "      virtnode.kvm.vm:\n"
        "        name: \"{{ item.name }}\"\n"
        "        uuid: \"{{ item.uuid }}\"\n"
        "        persistent: true\n"
        "        domain_type: qemu\n"
        "        memory: \"{{ bench_memory_mib }}MiB\"\n"
        "        kernel: \"{{ virtnode_lab_guest_kernel }}\"\n"
        "        initrd: \"{{ virtnode_lab_guest_initrd }}\"\n"
        "        cmdline: \"{{ virtnode_lab_guest_cmdline }} workload={{ bench_workload }}\"\n"
        "        state: running\n") + loop
    template = BENCH / "bench_vm_domain.xml.j2"
    theirs = head + (
        "    - name: Define the guests (community.libvirt.virt)\n"
        "      community.libvirt.virt:\n"
        "        command: define\n"
        f"        xml: \"{{{{ lookup('ansible.builtin.template', '{template}') }}}}\"\n") + loop + (
        "    - name: Start the guests (community.libvirt.virt)\n"
        "      community.libvirt.virt:\n"
        "        name: \"{{ item.name }}\"\n"
        "        state: running\n") + loop
    bulk = head + (
        "    - name: Define and start every guest in one task (virtnode.kvm.vm, vms)\n"
        "      virtnode.kvm.vm:\n"
        "        vms: \"{{ bench_guests }}\"\n"
        "        parallel: \"{{ bench_parallel }}\"\n"
        "        persistent: true\n"
        "        domain_type: qemu\n"
        "        memory: \"{{ bench_memory_mib }}MiB\"\n"
        "        kernel: \"{{ virtnode_lab_guest_kernel }}\"\n"
        "        initrd: \"{{ virtnode_lab_guest_initrd }}\"\n"
        "        cmdline: \"{{ virtnode_lab_guest_cmdline }} workload={{ bench_workload }}\"\n"
        "        state: running\n")
    ping = head + "    - name: Fixed cost of a task (ansible.builtin.ping)\n      ansible.builtin.ping:\n" + loop
    single = head + (
        "    - name: One no-op virtnode.kvm.vm task on a running VM\n"
        "      virtnode.kvm.vm:\n"
        "        name: \"{{ bench_guests[0].name }}\"\n"
        "        uuid: \"{{ bench_guests[0].uuid }}\"\n"
        "        persistent: true\n"
        "        domain_type: qemu\n"
        "        memory: \"{{ bench_memory_mib }}MiB\"\n"
        "        kernel: \"{{ virtnode_lab_guest_kernel }}\"\n"
        "        initrd: \"{{ virtnode_lab_guest_initrd }}\"\n"
        "        cmdline: \"{{ virtnode_lab_guest_cmdline }} workload={{ bench_workload }}\"\n"
        "        state: running\n")
    paths = {}
    for name, text in (("ours", ours), ("theirs", theirs), ("bulk", bulk), ("ping", ping), ("single", single)):
        paths[name] = work / f"{name}.yml"
        paths[name].write_text(text)
    return paths


class Runner:
    def __init__(self, lab: Lab, collections: str, community: Path, work: Path, extra_vars: Path):
        self.lab = lab
        self.work = work
        self.extra_vars = extra_vars
        self.env = dict(os.environ)
        self.env.update({
            "ANSIBLE_COLLECTIONS_PATH": f"{collections}:{community}",
            "ANSIBLE_CONFIG": str(REPO / "tests" / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(BENCH / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "bench_timing",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        })

    def playbook(self, path: Path, expect_changed: int | None = None) -> dict:
        timing = self.work / "timing.json"
        if timing.exists():
            timing.unlink()
        env = dict(self.env, BENCH_TIMING_FILE=str(timing))
        cmd = ["ansible-playbook", "-i", str(self.lab.inventory), str(path), "-e", f"@{self.extra_vars}"]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              check=False)
        wall = time.monotonic() - started
        if proc.returncode != 0 or not timing.exists():
            raise SystemExit(f"{path.name} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
        run = json.loads(timing.read_text())
        run["wall"] = wall
        changed = sum(t["changed"] for t in run["tasks"])
        if expect_changed is not None and changed != expect_changed:
            raise SystemExit(f"{path.name}: changed={changed}, expected {expect_changed}:\n{proc.stdout[-6000:]}")
        run["changed"] = changed
        return run


def run_side(runner: Runner, lab: Lab, playbook: Path, side: str, count: int) -> dict:
    lab.host_python("host-cleanup")
    changed_tasks = {"ours": count, "theirs": 2 * count, "bulk": 1}[side]
    start = runner.playbook(playbook, expect_changed=changed_tasks)
    settle = json.loads(lab.host_python("host-wait-ready", "--count", str(count)))
    noop = runner.playbook(playbook, expect_changed=0)
    lab.host_python("host-cleanup")
    return {"start": start, "noop": noop, "settle": settle["seconds"]}


def print_round(index: int, result: dict, order: tuple[str, str]) -> None:
    parts = []
    for side in order + ("bulk",):
        parts.append(f"{side} start {fmt(result[side]['start']['wall'])} no-op {fmt(result[side]['noop']['wall'])}")
    print(f"round {index + 1} ({' then '.join(order)}): " + "; ".join(parts)
          + f"; ping loop {fmt(result['ping']['wall'])}", flush=True)


def report(rounds: list[dict], count: int) -> dict:
    summary = summarize(rounds)
    print()
    print(f"Wall time of ansible-playbook per phase, {count} guests (median of {len(rounds)} rounds)")
    rows = []
    for phase, label in (("start", "define + start"), ("noop", "re-run (no-op)")):
        for what, what_label in (("wall", "playbook wall"), ("tasks", "module tasks"),
                                 ("item", "per guest (median item)")):
            unit = "ms" if what == "item" else "s"
            rows.append([f"{label}: {what_label}", fmt(summary[("ours", phase, what)], unit),
                         fmt(summary[("theirs", phase, what)], unit), fmt(summary[("ratio", phase, what)], "x")])
    print(table(["phase", SIDE_LABEL["ours"], SIDE_LABEL["theirs"], "ours/theirs"], rows))
    print(f"fixed cost of one task (ansible.builtin.ping item, median): {fmt(summary[('ping', 'item')], 'ms')}")

    print()
    print("All rounds (playbook wall / sum of module task times)")
    rows = []
    for index, result in enumerate(rounds):
        for side in SIDES:
            for phase in ("start", "noop"):
                run = result[side][phase]
                rows.append([f"round {index + 1} {SIDE_LABEL[side]} {phase}", fmt(run["wall"]),
                             fmt(sum(t["seconds"] for t in run["tasks"])), str(run["changed"])])
    print(table(["run", "wall", "tasks", "changed"], rows))

    print()
    print("Per task, last round (item times: first item / median / min / max of the others)")
    rows = []
    last = rounds[-1]
    for side in SIDES:
        for phase in ("start", "noop"):
            for task in last[side][phase]["tasks"]:
                stats = item_stats(task["items"])
                rows.append([f"{phase}: {task['name']}", fmt(task["seconds"]), fmt(stats["first"], "ms"),
                             fmt(stats["median"], "ms"), fmt(stats["min"], "ms"), fmt(stats["max"], "ms")])
    for task in last["ping"]["tasks"]:
        stats = item_stats(task["items"])
        rows.append([task["name"], fmt(task["seconds"]), fmt(stats["first"], "ms"), fmt(stats["median"], "ms"),
                     fmt(stats["min"], "ms"), fmt(stats["max"], "ms")])
    print(table(["task", "total", "first", "median", "min", "max"], rows))
    return summary


def bulk_summary(rounds: list[dict], summary: dict) -> dict:
    """Medians of the bulk form's wall times, and their ratio to community.libvirt's loop."""
    out = {}
    for phase in ("start", "noop"):
        wall = median_of([r["bulk"][phase] for r in rounds], lambda run: run["wall"])
        out[phase] = wall
        out[(phase, "ratio")] = ratio(wall, summary[("theirs", phase, "wall")])
    return out


def report_bulk(rounds: list[dict], count: int, parallel: int, summary: dict) -> dict:
    bulk = bulk_summary(rounds, summary)
    print()
    print(f"The bulk form: {count} guests in one virtnode.kvm.vm task (vms, parallel {parallel}), "
          f"median of {len(rounds)} rounds, against community.libvirt.virt's loop")
    rows = []
    for phase, label, goal in (("start", "define + start", 0.5), ("noop", "re-run (no-op)", 0.1)):
        ours = bulk[(phase, "ratio")]
        rows.append([label, fmt(bulk[phase]), fmt(summary[("theirs", phase, "wall")]), fmt(ours, "x"),
                     f"<= {goal}x: {'met' if ours is not None and ours <= goal else 'NOT met'}"])
    print(table(["phase", "vm (vms)", SIDE_LABEL["theirs"], "ratio", "goal"], rows))
    return bulk


def write_summary(path: str | None, summary: dict, bulk: dict, count: int) -> None:
    if not path:
        return
    sys.path.insert(0, str(BENCH))
    import bench_table  # pylint: disable=import-outside-toplevel
    theirs = SIDE_LABEL["theirs"]
    rows = []
    for phase, label in (("start", "define + start"), ("noop", "no-op re-run")):
        rows.append(bench_table.row(f"vm: {label}, {count} guests, loop", fmt(summary[("ours", phase, "wall")]),
                                    f"{theirs} {fmt(summary[('theirs', phase, 'wall')])}",
                                    summary[("ratio", phase, "wall")]))
    for phase, label, limit in (("start", "define + start", 0.5), ("noop", "no-op re-run", 0.1)):
        rows.append(bench_table.row(f"vm: {label}, {count} guests, one task (vms)", fmt(bulk[phase]),
                                    f"{theirs} loop {fmt(summary[('theirs', phase, 'wall')])}", bulk[(phase, "ratio")],
                                    limit))
    item, ping = summary[("ours", "noop", "item")], summary[("ping", "item")]
    rows.append(bench_table.row("vm: one no-op loop item", fmt(item, "ms"), f"ping task {fmt(ping, 'ms')}",
                                ratio(item, ping), 1.3))
    bench_table.write(path, rows)


def where_time_goes(summary: dict, single: dict, probe: dict) -> None:
    ping = summary[("ping", "item")]
    print()
    print("Where the time goes (medians)")
    for side in SIDES:
        for phase, label in (("start", "define + start"), ("noop", "no-op")):
            item = summary[(side, phase, "item")]
            tasks = 1 if side == "ours" else 2
            if item is None or ping is None:
                continue
            module = item - tasks * ping
            print(f"  {SIDE_LABEL[side]:<24} {label:<15} {item * 1000:6.0f} ms per guest = {tasks} x {ping * 1000:.0f} ms "
                  f"task fixed cost (controller, SSH, Python start, AnsiballZ) + {module * 1000:5.0f} ms module import and work")
    print(f"  single no-op virtnode.kvm.vm task on a running VM: task {fmt(single['task'], 'ms')} "
          f"(median of {single['runs']}), whole ansible-playbook {fmt(single['wall'])}")
    print()
    print("virtnode.kvm.vm on the host, profiled (one guest; /usr/bin/python3, no Ansible around it)")
    print(f"  python3 start-up {fmt(probe['python_startup'], 'ms')}; imports: ansible.module_utils.basic "
          f"{fmt(probe['import_basic'], 'ms')}, libvirt {fmt(probe['import_libvirt'], 'ms')}, "
          f"lxml {fmt(probe['import_lxml'], 'ms')}, the vm module and its module_utils {fmt(probe['import_vm'], 'ms')}")
    print(f"  compiling from source, as every AnsiballZ run does: virtnode.kvm vm + module_utils "
          f"({probe['lines_ours']} lines) {fmt(probe['compile_ours'], 'ms')}, community.libvirt virt "
          f"({probe['lines_theirs']} lines) {fmt(probe['compile_theirs'], 'ms')}")
    for phase, label in (("start", "define + start"), ("noop", "no-op")):
        data = probe[phase]
        print(f"  {label}: connect {fmt(data['connect'], 'ms')}, vm_spec.normalize {fmt(data['normalize'], 'ms')}, "
              f"run() {fmt(data['run'], 'ms')} (median of {data['runs']})")
        calls = ", ".join(f"{name} {count}x {seconds * 1000:.1f} ms" for name, count, seconds in data["libvirt"])
        print(f"    libvirt calls: {calls}")
        print("    top of the profile (tottime): " + "; ".join(
            f"{name} {seconds * 1000:.1f} ms" for name, seconds in data["top"]))


def controller_main(args) -> int:
    lab_id = int(os.environ.get("VIRTNODE_LAB_ID", "0"))
    lab = Lab(REPO / (".lab" if lab_id == 0 else f".lab{lab_id}"))
    community = fetch_community_libvirt(str(REPO / ".venv" / "bin" / "pip"))
    manifest = json.loads((community / COMMUNITY_PREFIX / "MANIFEST.json").read_text())
    print(__doc__.split("\n\n", 1)[0])
    print(f"lab {lab_id} host {lab.host}; {args.guests} guests, {args.rounds} rounds; ansible=={ANSIBLE_VERSION} "
          f"(community.libvirt {manifest['collection_info']['version']}); collection {args.collections}")
    print("Fairness: see the docstring of tests/bench/bench_vm_vs_community_libvirt.py (both define persistent "
          "domains and return once libvirt runs them; sides alternate, medians of rounds).", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        work = Path(tmp)
        extra = work / "vars.json"
        extra.write_text(json.dumps({"bench_guests": guests(args.guests), "bench_memory_mib": args.memory_mib,
                                     "bench_workload": "idle", "bench_parallel": args.parallel}))
        playbooks = write_playbooks(work, args.guests)
        runner = Runner(lab, args.collections, community, work, extra)
        rounds = []
        try:
            for index in range(args.rounds):
                order = side_order(index)
                result = {"ping": runner.playbook(playbooks["ping"])}
                for side in order:
                    result[side] = run_side(runner, lab, playbooks[side], side, args.guests)
                result["bulk"] = run_side(runner, lab, playbooks["bulk"], "bulk", args.guests)
                print_round(index, result, order)
                rounds.append(result)
            summary = report(rounds, args.guests)
            bulk = report_bulk(rounds, args.guests, args.parallel, summary)
            write_summary(args.summary, summary, bulk, args.guests)

            # One running VM: a single no-op task, then the profile on the host.
            lab.host_python("host-cleanup")
            runner.playbook(playbooks["single"], expect_changed=1)
            lab.host_python("host-wait-ready", "--count", "1")
            singles = [runner.playbook(playbooks["single"], expect_changed=0) for _attempt in range(3)]
            single = {"task": statistics.median(s["tasks"][0]["seconds"] for s in singles),
                      "wall": statistics.median(s["wall"] for s in singles), "runs": len(singles)}
            lab.host_python("host-cleanup")
            probe = json.loads(lab.host_python(
                "host-probe", "--collections", args.collections, "--kernel", lab.vars["virtnode_lab_guest_kernel"],
                "--initrd", lab.vars["virtnode_lab_guest_initrd"],
                "--cmdline", lab.vars["virtnode_lab_guest_cmdline"] + " workload=idle",
                "--memory-mib", str(args.memory_mib)))
            where_time_goes(summary, single, probe)
        finally:
            lab.host_python("host-cleanup")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds))
    return 0


# ------------------------------------------------------------------ host side (inside the lab host)


def _libvirt():
    import libvirt  # pylint: disable=import-outside-toplevel
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt


def host_cleanup(_args) -> int:
    """Destroys and undefines every bench guest, drops its records and console log."""
    libvirt = _libvirt()
    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            if not (name.startswith(GUEST_PREFIX) or name == "bench-probe"):
                continue
            vm_uuid = dom.UUIDString()
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            shutil.rmtree(os.path.join(RECORDS_DIR, vm_uuid), ignore_errors=True)
            for path in (CONSOLE_LOG % name,):
                if os.path.exists(path):
                    os.unlink(path)
    finally:
        conn.close()
    return 0


def _ready(name: str) -> bool:
    try:
        with open(CONSOLE_LOG % name, errors="replace") as handle:
            return READY_LINE in handle.read()
    except OSError:
        return False


def host_wait_ready(args) -> int:
    """Waits until the bench guests printed their ready line (their boot is over)."""
    names = [g["name"] for g in guests(args.count)]
    started = time.monotonic()
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        if all(_ready(n) for n in names):
            break
        time.sleep(0.5)
    else:
        missing = [n for n in names if not _ready(n)]
        raise SystemExit(f"guests not ready after {args.timeout}s: {', '.join(missing)}")
    print(json.dumps({"seconds": round(time.monotonic() - started, 2)}))
    return 0


def _timed(func):
    started = time.perf_counter()
    value = func()
    return time.perf_counter() - started, value


def _profile_summary(profile: cProfile.Profile, top: int = 6) -> dict:
    stats = pstats.Stats(profile, stream=io.StringIO())
    calls, own = {}, []
    for (filename, _line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        if filename.endswith("libvirt.py") and not func.startswith("_") and func[0].islower():
            name = func
            count, seconds = calls.get(name, (0, 0.0))
            calls[name] = (count + ncalls, seconds + cumtime)
        short = "%s:%s" % (os.path.basename(filename), func) if filename != "~" else func.strip("<>")
        own.append((short, tottime))
    libvirt_calls = sorted(((n, c, s) for n, (c, s) in calls.items()), key=lambda x: -x[2])
    own.sort(key=lambda x: -x[1])
    return {"libvirt": [(n, c, round(s, 5)) for n, c, s in libvirt_calls if s >= 0.0005][:10],
            "top": [(n, round(s, 5)) for n, s in own[:top]]}


def _compile_time(files: list[str]) -> float:
    sources = [(path, Path(path).read_text()) for path in files]
    return min(_timed(lambda: [compile(text, path, "exec") for path, text in sources])[0] for _attempt in range(3))


def host_probe(args) -> int:
    """Imports and runs virtnode.kvm.vm's run() as the module does, timed and profiled."""
    sys.path.insert(0, args.collections)
    # ansible.module_utils from the controller's venv (same Python 3.11); the host's own packages come first.
    sys.path.extend(glob.glob(str(REPO / ".venv" / "lib" / "python3*" / "site-packages")))
    python_startup = min(_timed(lambda: subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True))[0]
                         for _attempt in range(3))
    result = {"python_startup": python_startup}
    result["import_basic"] = _timed(lambda: __import__("ansible.module_utils.basic"))[0]
    result["import_libvirt"] = _timed(_libvirt)[0]
    result["import_lxml"] = _timed(lambda: __import__("lxml.etree"))[0]
    result["import_vm"], vm = _timed(lambda: __import__(
        "ansible_collections.virtnode.kvm.plugins.modules.vm", fromlist=["run"]))
    from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn  # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge as vm_converge  # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import options as vm_options  # pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes  # pylint: disable=import-outside-toplevel

    # AnsiballZ ships sources only: every task compiles the module and the module_utils it imports.
    ours = [m.__file__ for n, m in sorted(sys.modules.items())
            if n.startswith("ansible_collections.virtnode.") and getattr(m, "__file__", None)
            and m.__file__.endswith(".py") and not m.__file__.endswith("__init__.py")]
    theirs = glob.glob(str(CACHE / f"ansible-{ANSIBLE_VERSION}" / COMMUNITY_PREFIX / "plugins/modules/virt.py"))
    for key, files in (("compile_ours", ours), ("compile_theirs", theirs)):
        result[key] = _compile_time(files)
        result[key.replace("compile", "lines")] = sum(len(Path(f).read_text().splitlines()) for f in files)

    params = {k: v.get("default") for k, v in vm_options.module_argument_spec().items()}
    params.update(name="bench-probe", uuid=str(uuid.uuid5(UUID_NS, "bench-probe")), persistent=True,
                  domain_type="qemu", memory=f"{args.memory_mib}MiB", kernel=args.kernel, initrd=args.initrd,
                  cmdline=args.cmdline, state="running")
    module = types.SimpleNamespace(params=params, check_mode=False)

    def once(profile=None):
        normalize, spec = _timed(lambda: vm_volumes.normalize_on_host(params))
        connect_started = time.perf_counter()
        with libvirt_conn.connect(params["uri"]) as conn:
            connect = time.perf_counter() - connect_started
            if profile:
                profile.enable()
            run_time, outcome = _timed(lambda: vm_converge.run(module, conn, spec))
            if profile:
                profile.disable()
        return {"normalize": normalize, "connect": connect, "run": run_time, "changed": bool(outcome["actions"])}

    try:
        profile = cProfile.Profile()
        start = once(profile)
        assert start["changed"], "the probe guest did not start"
        start.update(_profile_summary(profile), runs=1)
        result["start"] = start
        # Let the guest boot before timing the no-op runs.
        deadline = time.monotonic() + 120
        while not _ready("bench-probe") and time.monotonic() < deadline:
            time.sleep(0.5)
        runs = [once() for _attempt in range(5)]
        assert not any(r["changed"] for r in runs), "the no-op run changed something"
        profile = cProfile.Profile()
        once(profile)
        noop = {key: statistics.median(r[key] for r in runs) for key in ("normalize", "connect", "run")}
        noop.update(_profile_summary(profile), runs=len(runs))
        result["noop"] = noop
    finally:
        host_cleanup(args)
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=8,
                        help="the bulk form's parallel (default %(default)s, the module's default)")
    parser.add_argument("--collections", default=str(REPO / os.environ.get("BUILD", ".build")))
    parser.add_argument("--json", help="write every round's raw timings to this file")
    parser.add_argument("--summary", help="write the summary rows of `make bench` to this file")
    sub.add_parser("host-cleanup")
    wait = sub.add_parser("host-wait-ready")
    wait.add_argument("--count", type=int, required=True)
    wait.add_argument("--timeout", type=int, default=180)
    probe = sub.add_parser("host-probe")
    for option in ("--collections", "--kernel", "--initrd", "--cmdline"):
        probe.add_argument(option, required=True)
    probe.add_argument("--memory-mib", type=int, default=128)
    args = parser.parse_args()
    handlers = {"host-cleanup": host_cleanup, "host-wait-ready": host_wait_ready, "host-probe": host_probe}
    if args.command:
        return handlers[args.command](args)
    if args.guests < 1 or args.rounds < 1:
        parser.error("--guests and --rounds must be at least 1")
    return controller_main(args)


if __name__ == "__main__":
    sys.exit(main())
