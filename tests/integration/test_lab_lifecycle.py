"""lab-up and lab-down are idempotent both ways and leave nothing behind.

Uses its own lab (id 9, one host) so the lab the other tests run on is untouched.
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
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def footprint() -> dict:
    netns = [n.split()[0] for n in subprocess.run(["ip", "netns"], text=True, capture_output=True,
                                                  check=True).stdout.splitlines() if n.startswith(f"vnlab{LAB_ID}-")]
    links = [n for n in os.listdir("/sys/class/net") if n.startswith(f"vnlab{LAB_ID}")]
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
        lab("up", "--hosts", "1")
        up = footprint()
        # Two lab bridges (management, VM traffic) and the host's two veths.
        assert len(up["netns"]) == 1 and len(up["links"]) == 4 and up["mounts"] > 0 and up["processes"], up
        second = lab("up", "--hosts", "1")
        assert "started" not in second and "recreating" not in second, second
        assert footprint() == up, "a second lab-up must change nothing"
        assert "vnhost1" in lab("status") and "DOWN" not in lab("status")
        # A crashed host comes back with lab-up, fresh but with its disks.
        lab("crash", "vnhost1")
        assert "DOWN" in lab("status")
        lab("up", "--hosts", "1")
        assert "DOWN" not in lab("status")
    finally:
        lab("down")
    lab("down")
    assert settled_footprint() == CLEAN
    assert not (LAB_DIR / "hosts").exists() and not (LAB_DIR / "state.json").exists()
