# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A full Debian 12 test host: a QEMU (TCG) virtual machine with systemd as PID 1.

The namespace lab has no systemd; this host is where the roles' systemd mode
(unit files, enable, start, restart handlers) runs for real.

    testhost.py build                 build the cached image (only when its recipe changed)
    testhost.py up [--name N] [--port P]
                                      boot a throw-away copy, wait for SSH, print its state
    testhost.py ssh [--name N] -- CMD run CMD (an argv; use sh -c '...' for a shell line) on it as root
    testhost.py down [--name N]       kill it by its pid file, remove its run directory

The image (CACHE/<recipe hash>/disk.img) comes from debootstrap --variant=minbase
with systemd-sysv, openssh-server, python3, kmod and the packages the bootstrap
and node_agent roles install on Debian (read from their vars), so the roles'
package step needs no network inside the VM. `mkfs.ext4 -d` turns the folder
into a file system without mounting it. The machine's kernel and initrd
(/boot/vmlinuz-*-cloud-amd64, the lab guest's kernel) boot it; its modules are
copied in. Each boot writes to a qcow2 overlay, so every boot starts from the
same fresh host. SSH: root with a key generated per image, 127.0.0.1:<port>
forwarded to the VM's port 22 (QEMU user networking).

Only the standard library is used; building and booting need root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VIRTNODE_TESTHOST_CACHE", REPO / ".cache" / "testhost"))
LAB_ID = int(os.environ.get("VIRTNODE_LAB_ID", "0"))
# Bump when the build steps change in a way the recipe below does not show.
FORMAT_VERSION = 1

SUITE = "bookworm"
HOSTNAME = "vntesthost"
MEMORY_MB = 2048
CPUS = 2
IMAGE_SIZE = "6G"  # sparse; the file system's size, not its disk use
KERNEL_GLOB = "vmlinuz-*-cloud-amd64"
BOOT_TIMEOUT = 240
# What the host needs to be reachable and managed; the roles' packages are added from their vars.
# dbus and libpam-systemd are named because debootstrap does not resolve virtual packages
# (dbus-system-bus, logind) that systemd-container and polkitd depend on.
BASE_PACKAGES = ["systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "python3", "python3-apt", "kmod",
                 "nftables"]
ROLE_PACKAGE_VARS = [
    (REPO / "roles/bootstrap/vars/Debian.yml", "__bootstrap_packages"),
    (REPO / "roles/node_agent/vars/Debian.yml", "__node_agent_packages"),
]

# Files written into the image (path -> (mode, content)); part of the recipe hash.
NETWORK_UNIT = """[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""
# A firewall with a drop policy, as a hardened host has one: SSH and loopback only.
# The bootstrap role adds its ports through /etc/nftables.d.
NFTABLES_CONF = """#!/usr/sbin/nft -f
flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiif "lo" accept
\t\tip protocol icmp accept
\t\ttcp dport 22 accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t}
}
"""
DPKG_NODOC = """path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""
IMAGE_FILES = {
    "etc/hostname": (0o644, HOSTNAME + "\n"),
    "etc/hosts": (0o644, f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n"),
    "etc/fstab": (0o644, "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"),
    "etc/systemd/network/10-virtnode-testhost.network": (0o644, NETWORK_UNIT),
    "etc/nftables.conf": (0o755, NFTABLES_CONF),
    "etc/ssh/sshd_config.d/virtnode-testhost.conf": (0o644, "PermitRootLogin prohibit-password\nUseDNS no\nUsePAM no\n"),
    "etc/apt/sources.list": (0o644, "deb {mirror} bookworm main\n"),
}
ENABLE_UNITS = ["systemd-networkd.service", "nftables.service"]
# Units that only slow a test host's boot down.
MASK_UNITS = ["systemd-networkd-wait-online.service", "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
              "e2scrub_all.timer", "fstrim.timer", "logrotate.timer", "man-db.timer"]


class TestHostError(SystemExit):
    def __init__(self, msg: str) -> None:
        super().__init__(f"testhost: {msg}")


def log(msg: str) -> None:
    print(f"testhost: {msg}", flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=capture, check=False, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip()[-4000:] if capture else ""
        raise TestHostError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


# ---------------------------------------------------------------- recipe

def yaml_list(path: Path, key: str) -> list[str]:
    """The items of a top-level `key:` list in a plain YAML vars file."""
    items, inside = [], False
    for line in path.read_text().splitlines():
        if re.match(rf"^{re.escape(key)}:\s*$", line):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s+-\s+(\S+)\s*$", line)
            if m:
                items.append(m.group(1).strip("'\""))
            elif line.strip() and not line.lstrip().startswith("#"):
                break
    if not items:
        raise TestHostError(f"no list {key} in {path}")
    return items


def debian_mirror() -> str:
    """The Debian archive the machine's apt uses (deb822 .sources or one-line lists)."""
    candidates = []
    sources = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in sources:
        if not path.is_file() or not (path.name.endswith(".list") or path.name.endswith(".sources")):
            continue
        text = path.read_text(errors="replace")
        if path.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "Enabled" in fields and fields["Enabled"].lower() == "no":
                    continue
                if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    candidates += fields.get("URIs", "").split()
        else:
            for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                if m.group(2) == SUITE:
                    candidates.append(m.group(1))
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def kernel() -> tuple[Path, Path, str]:
    kernels = sorted(Path("/boot").glob(KERNEL_GLOB))
    if not kernels:
        raise TestHostError(f"no /boot/{KERNEL_GLOB}: apt-get install linux-image-cloud-amd64")
    vmlinuz = kernels[-1]
    version = vmlinuz.name[len("vmlinuz-"):]
    initrd = Path("/boot") / f"initrd.img-{version}"
    modules = Path("/lib/modules") / version
    if not initrd.exists() or not modules.is_dir():
        raise TestHostError(f"{initrd} or {modules} missing")
    return vmlinuz, initrd, version


def recipe() -> dict:
    packages = list(BASE_PACKAGES)
    for path, key in ROLE_PACKAGE_VARS:
        packages += [p for p in yaml_list(path, key) if p not in packages]
    mirror = debian_mirror()
    return {
        "format": FORMAT_VERSION,
        "suite": SUITE,
        "mirror": mirror,
        "packages": packages,
        "kernel_version": kernel()[2],
        "files": {path: [mode, content.replace("{mirror}", mirror)] for path, (mode, content) in IMAGE_FILES.items()},
        "dpkg_nodoc": DPKG_NODOC,
        "dpkg_build": "force-unsafe-io",
        "enable": ENABLE_UNITS,
        "mask": MASK_UNITS,
        "size": IMAGE_SIZE,
    }


def recipe_hash(rec: dict) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def image_dir(rec: dict | None = None) -> Path:
    return CACHE / recipe_hash(rec or recipe())


# ---------------------------------------------------------------- build

def _write(root: Path, rel: str, mode: int, content: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    os.chmod(path, mode)


def seed_debs(debs: Path) -> None:
    """Hard-link the machine's downloaded packages into debootstrap's cache (it checks each one's
    checksum and downloads what is missing or different). Nothing is copied across file systems."""
    seeded = 0
    for deb in Path("/var/cache/apt/archives").glob("*.deb"):
        target = debs / deb.name
        if target.exists():
            continue
        try:
            os.link(deb, target)
        except OSError:
            return
        seeded += 1
    if seeded:
        log(f"{seeded} packages from /var/cache/apt/archives offered to debootstrap")


def build(force: bool = False) -> dict:
    """Build the image for the current recipe unless it is cached; returns image.json's dict."""
    if os.geteuid() != 0:
        raise TestHostError("building the image needs root")
    rec = recipe()
    out = image_dir(rec)
    meta_file = out / "image.json"
    if meta_file.exists() and not force:
        return json.loads(meta_file.read_text())
    if not shutil.which("debootstrap"):
        raise TestHostError("debootstrap is missing: apt-get install debootstrap (make deps installs it)")
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    # Only the current recipe's image is kept; the downloaded packages stay for the next build.
    for old in CACHE.iterdir():
        if old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name) and old != out:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work = out / "build"
    root = work / "root"
    (root / "usr/sbin").mkdir(parents=True)
    debs = CACHE / "debs"
    debs.mkdir(exist_ok=True)
    seed_debs(debs)
    # dpkg skips documentation and fsync (the build is thrown away if it fails); no service starts
    # inside the build chroot.
    _write(root, "etc/dpkg/dpkg.cfg.d/01-virtnode-nodoc", 0o644, rec["dpkg_nodoc"])
    _write(root, "etc/dpkg/dpkg.cfg.d/02-virtnode-build", 0o644, "force-unsafe-io\n")
    _write(root, "usr/sbin/policy-rc.d", 0o755, "#!/bin/sh\nexit 101\n")
    log(f"debootstrap {SUITE} from {rec['mirror']} with {len(rec['packages'])} packages into {root}")
    # Its own mount namespace: the chroot's /proc and /sys mounts end with it, even on failure.
    proc = run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                f"--cache-dir={debs}", "--include=" + ",".join(rec["packages"]), SUITE, str(root), rec["mirror"]],
               check=False, capture=True)
    if proc.returncode != 0:
        debootstrap_log = root / "debootstrap" / "debootstrap.log"
        tail = debootstrap_log.read_text(errors="replace")[-4000:] if debootstrap_log.exists() else proc.stderr[-4000:]
        raise TestHostError(f"debootstrap failed ({proc.returncode}):\n{tail}")
    t_boot = time.monotonic()
    log(f"debootstrap done in {t_boot - t0:.0f}s")

    key = out / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtnode-testhost", "-f", str(key)])
    for rel, (mode, content) in rec["files"].items():
        _write(root, rel, mode, content)
    _write(root, "root/.ssh/authorized_keys", 0o600, (out / "id_ed25519.pub").read_text())
    os.chmod(root / "root/.ssh", 0o700)
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)  # debootstrap may have removed it
    (root / "etc/dpkg/dpkg.cfg.d/02-virtnode-build").unlink()
    # A fixed machine id: an empty one would make systemd's first boot apply presets to every unit.
    run(["chroot", str(root), "systemd-machine-id-setup"], capture=True)
    run(["chroot", str(root), "systemctl", "enable", *rec["enable"]], capture=True)
    run(["chroot", str(root), "systemctl", "mask", *rec["mask"]], capture=True)
    vmlinuz, initrd, version = kernel()
    shutil.copytree(f"/lib/modules/{version}", root / "lib/modules" / version, symlinks=True, dirs_exist_ok=True)
    run(["chroot", str(root), "depmod", "-a", version], capture=True)
    for path in (root / "var/cache/apt/archives").glob("*.deb"):
        path.unlink()
    shutil.rmtree(root / "debootstrap", ignore_errors=True)

    image = out / "disk.img"
    run(["mkfs.ext4", "-q", "-F", "-L", "vntestroot", "-E", "root_owner=0:0", "-d", str(root),
         str(image), rec["size"]], capture=True)
    shutil.rmtree(work)
    meta = {"image": str(image), "key": str(key), "kernel": str(vmlinuz), "initrd": str(initrd),
            "kernel_version": version, "recipe": recipe_hash(rec), "hostname": HOSTNAME,
            "packages": rec["packages"], "build_seconds": round(time.monotonic() - t0, 1)}
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    log(f"image {image} built in {meta['build_seconds']}s")
    return meta


# ---------------------------------------------------------------- run

def default_port() -> int:
    return 22200 + LAB_ID


def run_dir(name: str) -> Path:
    return CACHE / "run" / name


def pid_of(rdir: Path) -> int | None:
    """The QEMU pid from the run directory's pid file, when that process is still that QEMU."""
    try:
        pid = int((rdir / "qemu.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(rdir) in cmdline else None


def ssh_argv(state: dict, *cmd: str) -> list[str]:
    return ["ssh", "-i", state["key"], "-p", str(state["port"]), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=30", "root@127.0.0.1", *cmd]


def serial_tail(name: str, lines: int = 60) -> str:
    path = run_dir(name) / "serial.log"
    if not path.exists():
        return "(no serial log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def up(name: str, port: int, timeout: float = BOOT_TIMEOUT) -> dict:
    """Boot a fresh copy of the image and wait until SSH answers; returns the state dict."""
    meta = build()
    down(name)
    rdir = run_dir(name)
    rdir.mkdir(parents=True)
    overlay = rdir / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", meta["image"], str(overlay)], capture=True)
    state = dict(meta, name=name, port=port, run_dir=str(rdir), serial=str(rdir / "serial.log"))
    t0 = time.monotonic()
    run(["qemu-system-x86_64", "-name", f"virtnode-testhost-{name}", "-accel", "tcg", "-cpu", "max",
         "-m", str(MEMORY_MB), "-smp", str(CPUS), "-display", "none", "-monitor", "none",
         "-serial", f"file:{rdir / 'serial.log'}", "-no-reboot",
         "-kernel", meta["kernel"], "-initrd", meta["initrd"],
         "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
         "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
         "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
         "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci",
         "-daemonize", "-pidfile", str(rdir / "qemu.pid")], capture=True)
    (rdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    deadline = t0 + timeout
    while True:
        if pid_of(rdir) is None:
            raise TestHostError(f"QEMU of {name} exited while booting; serial log:\n{serial_tail(name)}")
        proc = subprocess.run(ssh_argv(state, "true"), capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise TestHostError(f"{name}: no SSH on 127.0.0.1:{port} after {timeout:.0f}s; serial log:\n"
                                f"{serial_tail(name)}")
        time.sleep(2)
    state["boot_seconds"] = round(time.monotonic() - t0, 1)
    (rdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    log(f"{name}: SSH answers on 127.0.0.1:{port} after {state['boot_seconds']}s")
    return state


def down(name: str) -> None:
    """Kill the VM by its pid file and remove its run directory (overlay, logs)."""
    rdir = run_dir(name)
    pid = pid_of(rdir)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_of(rdir) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_of(rdir) is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        log(f"{name}: stopped QEMU pid {pid}")
    shutil.rmtree(rdir, ignore_errors=True)


def load_state(name: str) -> dict:
    path = run_dir(name) / "state.json"
    if not path.exists():
        raise TestHostError(f"{name} is not up")
    return json.loads(path.read_text())


def ssh(name: str, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the command (an argv, quoted for the remote shell) on the test host as root."""
    proc = subprocess.run(ssh_argv(load_state(name), shlex.join(cmd)), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise TestHostError(f"{name}: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build the cached image when its recipe changed")
    b.add_argument("--force", action="store_true")
    for action in ("up", "down", "ssh"):
        p = sub.add_parser(action)
        p.add_argument("--name", default=f"th{LAB_ID}")
        if action == "up":
            p.add_argument("--port", type=int, default=default_port())
        if action == "ssh":
            p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "build":
        print(json.dumps(build(force=args.force), indent=2))
    elif args.action == "up":
        print(json.dumps(up(args.name, args.port), indent=2))
    elif args.action == "down":
        down(args.name)
    else:
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        proc = ssh(args.name, *cmd, check=False)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
