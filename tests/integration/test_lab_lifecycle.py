"""lab-up and lab-down are idempotent both ways and leave nothing behind.

Uses its own lab (id 9: one namespace host, one kernel host) so the lab the other tests run on is
untouched.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time

from conftest import REPO

LAB_ID = "9"
LAB_DIR = REPO / f".lab{LAB_ID}"


def lab(*args: str) -> str:
    env = dict(os.environ, VIRTNODE_LAB_ID=LAB_ID)
    env.pop("VIRTNODE_LAB_DIR", None)
    proc = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), *args], env=env, text=True,
                          capture_output=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def footprint() -> dict:
    netns = [n.split()[0] for n in subprocess.run(["ip", "netns"], text=True, capture_output=True,
                                                  check=True).stdout.splitlines() if n.startswith(f"vnlab{LAB_ID}-")]
    links = [n for n in os.listdir("/sys/class/net") if n.startswith((f"vnlab{LAB_ID}", f"vk{LAB_ID}h"))]
    mounts, processes = 0, []
    for path in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{path}/mountinfo") as handle:
                mounts += handle.read().count(str(LAB_DIR) + "/")
            with open(f"{path}/cmdline", "rb") as handle:
                if str(LAB_DIR).encode() + b"/" in handle.read() and int(path[6:]) != os.getpid():
                    processes.append(int(path[6:]))
        except (OSError, ValueError):
            continue
    return {"netns": netns, "links": links, "mounts": mounts, "processes": processes}


CLEAN = {"netns": [], "links": [], "mounts": 0, "processes": []}


def settled_footprint() -> dict:
    """The footprint once killed processes have finished exiting (a few seconds at most)."""
    deadline = time.monotonic() + 10
    while (current := footprint()) != CLEAN and time.monotonic() < deadline:
        time.sleep(0.2)
    return current


def test_lab_up_twice_then_down_twice_leaves_nothing():
    before = settled_footprint()
    assert before == CLEAN, before
    try:
        lab("up", "--hosts", "1", "--kernel-hosts", "1")
        up = footprint()
        # Three lab bridges (management, VM traffic, storage), the namespace host's two veths and the
        # kernel host's four taps.
        assert len(up["netns"]) == 1 and len(up["links"]) == 9 and up["mounts"] > 0 and up["processes"], up
        second = lab("up", "--hosts", "1", "--kernel-hosts", "1")
        assert "started" not in second and "recreating" not in second and "booted" not in second, second
        assert sorted(footprint()["links"]) == sorted(up["links"]), "a second lab-up must change nothing"
        status = lab("status")
        assert "vnhost1" in status and "vnkern1" in status and "DOWN" not in status, status
        # A crashed host comes back with lab-up, fresh but with its disks.
        lab("crash", "vnhost1")
        assert "DOWN" in lab("status")
        # A crashed kernel host boots again on the disk it had: what it wrote is still there.
        lab("exec", "vnkern1", "--", "sh", "-c", "echo before-crash > /var/lib/virtnode-lab-mark && sync")
        lab("crash", "vnkern1")
        assert "vnkern1 10.251.9.101 kernel=DOWN" in lab("status")
        assert "booted" in lab("up", "--hosts", "1", "--kernel-hosts", "1")
        assert "DOWN" not in lab("status")
        assert lab("exec", "vnkern1", "--", "cat", "/var/lib/virtnode-lab-mark").strip() == "before-crash"
    finally:
        lab("down")
    lab("down")
    assert settled_footprint() == CLEAN
    assert not (LAB_DIR / "hosts").exists() and not (LAB_DIR / "state.json").exists()
