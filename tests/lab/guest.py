# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's tiny test guest: a Debian cloud kernel plus a busybox initramfs.

    python3 tests/lab/guest.py build --out DIR [--force]

writes, only when missing or when an input changed:

    DIR/vmlinuz      copy of the newest /boot/vmlinuz-*-cloud-amd64
    DIR/initrd.img   gzip'd newc cpio: busybox, the virtio modules, qemu-ga
                     with its shared libraries and dynamic loader, /init
    DIR/guest.json   {"kernel", "initrd", "kernel_version", "cmdline_base", ...}

`build(out_dir)` does the same and returns the guest.json dict.

The guest's /init reads its job from the kernel command line and reports on
the serial console (console=ttyS0):

    workload=heartbeat      "heartbeat N", N = 1, 2, ... once a second (default)
    workload=writer         dd zeros over the disk at full speed:
                            "writer start ...", "writer progress <bytes>",
                            then "writer done <bytes>" or "writer error ...",
                            after done "writer rate bytes=<n> cs=<guest
                            centiseconds the writes took>";
                            writer_mb=N limits it to N MiB (default: whole disk);
                            writer_go=PATH waits (at most 10 min) until the file
                            PATH exists in the guest, first printing "writer
                            waiting PATH": the host creates it through the guest
                            agent (guest-file-open) when it wants the writes
    workload=pattern_write  writes pattern_mb=N MiB (default 16) of a pattern
                            (64-byte lines naming pattern_tag=T, default
                            "virtnode", and their MiB's index): "pattern written N"
    workload=pattern_check  reads it back: "pattern ok N" or "pattern bad ..."
    workload=memory_marker  fills memory_mb=N MiB (default 16) of the guest's RAM
                            (files in its RAM-backed root) with 64-byte lines
                            "virtnode-ram-marker T", T = memory_tag (default
                            "virtnode"): "memory marked N", then heartbeats;
                            the full marker is only in RAM, never in the
                            command line, so a capture that holds it saw RAM
    workload=dirty          rewrites dirty_mb=N MiB (default 8) of a file in
                            the guest's RAM (text, never zero pages) over and
                            over in the background: "dirty started N", then
                            heartbeats; a migration keeps finding those pages
                            dirty again
    workload=cidata         mounts the cloud-init seed (the CD-ROM labelled
                            cidata) and prints each line of its files as
                            "cidata <file>: <line>", then "cidata done <dev>"
    workload=fs             makes an ext2 filesystem on the disk (busybox
                            mke2fs), mounts it at /mnt/data, writes
                            /mnt/data/hello.txt: "fs mounted /mnt/data" (or
                            "fs error ..."), then heartbeats; gives the guest
                            agent's fsfreeze a filesystem to freeze
    workload=idle           "idle", then silence
    disk=NAME               the disk the disk workloads use (default vda)
    agent=off               do not start the guest agent

Every boot first prints "virtnode-guest firmware uefi secure_boot=on|off" (or
"firmware bios"), "virtnode-guest tpm version=2" when it has a TPM, and
"virtnode-guest ready workload=<w>". writer,
pattern_* and fs print heartbeat lines once finished. PID 1 never exits.

The guest agent: when the guest has a virtio-serial port named
org.qemu.guest_agent.0 (libvirt's <channel type='unix'> with that target
name), /init runs qemu-ga on it in the background (restarting it if it exits,
fsfreeze hook off) and prints "virtnode-guest agent started port=/dev/vportXpY";
without such a port "virtnode-guest agent none", with agent=off
"virtnode-guest agent off". qemu-ga is the build host's /usr/sbin/qemu-ga
(Debian package qemu-guest-agent) with every library `ldd` resolves for it.
guest-shutdown works: /sbin/shutdown is a script that runs busybox
poweroff -f (halt -f, reboot -f for the other modes), since PID 1 is /init
and takes no shutdown requests. The hostname is "virtnode-guest" and
/etc/os-release is the build host's, for guest-get-host-name and
guest-get-osinfo.

Only the standard library is used; root is not needed to build.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when the initramfs layout or /init changes in a way the digest misses.
FORMAT_VERSION = 5

KERNEL_GLOB = "vmlinuz-*-cloud-amd64"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = "/bin/busybox"
BUSYBOX_PACKAGE = "busybox-static"
CMDLINE_BASE = "console=ttyS0 quiet panic=-1"

QEMU_GA = "/usr/sbin/qemu-ga"
QEMU_GA_PACKAGE = "qemu-guest-agent"
# Copied to the guest's /etc/os-release, which guest-get-osinfo reads.
OS_RELEASE = "/usr/lib/os-release"
LDD = "ldd"
# Where the guest's dynamic loader looks for libraries without an
# ld.so.cache; used when `LOADER --help` does not list its own.
DEFAULT_LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")

# insmod order; each module's own dependencies (modules.dep) go in before it,
# which puts failover and net_failover ahead of virtio_net.
WANTED_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    # Disks on a virtio-scsi controller (and direct LUNs) show as /dev/sdX.
    "virtio_scsi",
    "sd_mod",
    # workload=fs mounts ext2 with the ext4 driver; built into Debian's cloud
    # kernel (modules.builtin), loaded with its dependencies where it is not.
    "ext4",
)

# Loaded only by workload=cidata, so other boots do not pay for probing the IDE bus (the cloud kernel has
# no AHCI driver: the seed is read on i440fx machines, whose CD-ROM drives are IDE).
CD_MODULES = (
    "ata_piix",
    "sr_mod",
    "isofs",
)

MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


class GuestBuildError(SystemExit):
    """A build input is missing or unusable; the message says what to do."""

    def __init__(self, msg: str) -> None:
        super().__init__(f"guest: {msg}")


def log(msg: str) -> None:
    print(f"guest: {msg}", flush=True)


# ---------------------------------------------------------------- cpio (newc)

class CpioWriter:
    """Builds a newc ("070701") cpio archive in memory, as the kernel unpacks it.

    Every entry has uid/gid 0 and mtime 0, so equal inputs give equal bytes.
    """

    MAGIC = b"070701"

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 0
        self._names: set[str] = set()
        self._finished = False

    @staticmethod
    def _pad(n: int) -> bytes:
        return b"\0" * (-n % 4)

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        if self._finished:
            raise ValueError("cpio archive already finished")
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"bad or duplicate cpio name: {name!r}")
        self._names.add(name)
        self._ino += 1
        self._write(name, mode, data, nlink, rdev, self._ino)

    def _write(self, name: str, mode: int, data: bytes, nlink: int,
               rdev: tuple[int, int], ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = self.MAGIC + b"".join(b"%08X" % f for f in fields)
        out = self._buf
        out.write(header)
        out.write(encoded)
        out.write(self._pad(len(header) + len(encoded)))
        out.write(data)
        out.write(self._pad(len(data)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        if not self._finished:
            self._write("TRAILER!!!", 0, b"", 1, (0, 0), 0)
            self._finished = True
        return self._buf.getvalue()


# ---------------------------------------------------------------- inputs

def _version_key(version: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p]


def find_kernel(boot_dir: str | os.PathLike = "/boot") -> tuple[Path, str]:
    """The newest cloud kernel in boot_dir and its version string."""
    candidates = []
    for path in Path(boot_dir).glob(KERNEL_GLOB):
        if path.is_file():
            candidates.append((_version_key(path.name[len("vmlinuz-"):]), path))
    if not candidates:
        raise GuestBuildError(
            f"no {boot_dir}/{KERNEL_GLOB} found; install the Debian package "
            f"{KERNEL_PACKAGE} (apt-get install {KERNEL_PACKAGE})")
    path = max(candidates)[1]
    return path, path.name[len("vmlinuz-"):]


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_modules_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (path relative to moddir, [dependency names]) from modules.dep."""
    dep_file = moddir / "modules.dep"
    if not dep_file.is_file():
        raise GuestBuildError(
            f"{dep_file} missing; reinstall the kernel package or run depmod {moddir.name}")
    table = {}
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        table[module_name(path)] = (path.strip(), [module_name(d) for d in deps.split()])
    return table


def read_builtin(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    if not path.is_file():
        return set()
    return {module_name(line) for line in path.read_text().split()}


def resolve_modules(moddir: Path, wanted=WANTED_MODULES) -> tuple[list[tuple[str, Path]], list[str]]:
    """Load-ordered [(name, file)] for wanted and their dependencies, and skipped notes."""
    table = read_modules_dep(moddir)
    builtin = read_builtin(moddir)
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()
    skipped: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            skipped.append(f"{name} (built in)")
            return
        if name not in table:
            skipped.append(f"{name} (not shipped)")
            return
        rel, deps = table[name]
        for dep in deps:
            if dep not in stack:
                visit(dep, stack + (name,))
        path = moddir / rel
        if not path.is_file():
            raise GuestBuildError(f"modules.dep lists {path} but it is missing")
        order.append((name, path))

    for name in wanted:
        visit(name, ())
    return order, skipped


def load_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed if Debian shipped it compressed."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if not zstd:
            raise GuestBuildError(f"{path} is zstd-compressed; install the Debian package zstd")
        return subprocess.run([zstd, "-dcq"], input=raw, capture_output=True, check=True).stdout
    return raw


PT_INTERP = 3


def elf_interpreter(path: Path, data: bytes) -> str | None:
    """The PT_INTERP path (the dynamic loader) of a 64-bit ELF, None if static."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise GuestBuildError(f"{path} is not a 64-bit ELF executable")
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        (p_type,) = struct.unpack_from(endian + "I", data, base)
        if p_type == PT_INTERP:
            # Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
            (offset,) = struct.unpack_from(endian + "Q", data, base + 8)
            (size,) = struct.unpack_from(endian + "Q", data, base + 32)
            return data[offset:offset + size].split(b"\0", 1)[0].decode()
    return None


def check_static_elf(path: Path) -> bytes:
    """The busybox binary; refuses a dynamically linked one (no libc in the guest)."""
    if not path.is_file():
        raise GuestBuildError(
            f"{path} not found; install the Debian package {BUSYBOX_PACKAGE}")
    data = path.read_bytes()
    if elf_interpreter(path, data) is not None:
        raise GuestBuildError(
            f"{path} is dynamically linked; install the Debian package {BUSYBOX_PACKAGE} "
            "(it replaces busybox)")
    return data


def busybox_applets(path: Path) -> list[str]:
    """Applet paths ('bin/sh', 'sbin/insmod', ...) the binary provides."""
    proc = subprocess.run([str(path), "--list-full"], capture_output=True, text=True, check=False)
    applets = [a.strip().strip("/") for a in proc.stdout.split() if a.strip()]
    if proc.returncode != 0 or "bin/sh" not in applets:
        raise GuestBuildError(f"{path} --list-full did not list bin/sh; is it busybox?")
    return sorted(set(applets))


# ---------------------------------------------------------------- qemu-ga

def parse_ldd(text: str, binary: str | os.PathLike = "binary") -> list[str]:
    """The absolute paths in `ldd` output: resolved libraries and the loader.

    Skips the vDSO (no path); a library ldd could not find is an error.
    """
    paths: list[str] = []
    missing: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.endswith("statically linked"):
            continue
        if "=>" in line:
            name, target = (part.strip() for part in line.split("=>", 1))
            if target.startswith("not found"):
                missing.append(name)
                continue
            path = target.split(" (", 1)[0].strip()
        else:
            path = line.split(" (", 1)[0].strip()
        if path.startswith("/") and path not in paths:
            paths.append(path)
    if missing:
        raise GuestBuildError(
            f"ldd {binary}: libraries not found: {' '.join(missing)}; "
            f"reinstall the Debian package {QEMU_GA_PACKAGE}")
    return paths


def loader_library_dirs(loader: str | os.PathLike) -> tuple[str, ...]:
    """The directories the dynamic loader searches when there is no ld.so.cache."""
    try:
        proc = subprocess.run([str(loader), "--help"], capture_output=True, text=True,
                              check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_LIBRARY_DIRS
    dirs = tuple(line.split("(system search path)")[0].strip()
                 for line in proc.stdout.splitlines() if "(system search path)" in line)
    return dirs or DEFAULT_LIBRARY_DIRS


def guest_library_path(resolved: str, library_dirs=DEFAULT_LIBRARY_DIRS) -> str:
    """Where a library ldd resolved goes in the guest: the same path when its
    directory is one the loader searches, else the first such directory."""
    directory, name = os.path.split(os.path.normpath(resolved))
    if directory in {os.path.normpath(d) for d in library_dirs}:
        return os.path.join(directory, name)
    return os.path.join(library_dirs[0], name)


def dynamic_closure(binary: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The binary's loader path and [(guest path, host file)] for the loader and
    every shared library it needs (ldd, so DT_NEEDED recursively, RUNPATH and
    ld.so.cache as the loader itself resolves them)."""
    interp = elf_interpreter(binary, binary.read_bytes())
    if interp is None:
        return "", []
    ldd = shutil.which(LDD)
    if not ldd:
        raise GuestBuildError("ldd not found; install the Debian package libc-bin")
    proc = subprocess.run([ldd, str(binary)], capture_output=True, text=True, check=False,
                          timeout=60)
    paths = parse_ldd(proc.stdout, binary)
    if proc.returncode != 0 or not paths:
        raise GuestBuildError(
            f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip()}; "
            f"reinstall the Debian package {QEMU_GA_PACKAGE}")
    library_dirs = loader_library_dirs(interp)
    files: dict[str, Path] = {interp: Path(interp)}
    for path in paths:
        if os.path.basename(path) == os.path.basename(interp):
            continue  # the loader, under its own (PT_INTERP) path
        dest = guest_library_path(path, library_dirs)
        if dest in files and files[dest].resolve() != Path(path).resolve():
            raise GuestBuildError(f"ldd {binary}: {path} and {files[dest]} both map to {dest}")
        files[dest] = Path(path)
    for dest, src in files.items():
        if not src.is_file():
            raise GuestBuildError(f"{src} (needed by {binary}) is missing")
    return interp, sorted(files.items())


# /sbin/shutdown in the guest. qemu-ga's guest-shutdown runs
# "/sbin/shutdown -h -P|-H|-r +0 MESSAGE"; PID 1 is /init, which takes no
# shutdown requests, so this acts at once, like busybox's -f.
SHUTDOWN_SCRIPT = r"""#!/bin/sh
# /sbin/shutdown of the virtnode lab guest, generated by tests/lab/guest.py.
action=poweroff
for arg in "$@"; do
    case "$arg" in
        -r) action=reboot ;;
        -H) action=halt ;;
        -P) action=poweroff ;;
    esac
done
echo "virtnode-guest shutdown $action" >/dev/console
sync
exec /bin/busybox "$action" -f
"""

ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
ETC_GROUP = "root:x:0:\n"


def agent_files(qemu_ga: str | os.PathLike = QEMU_GA,
                os_release: str | os.PathLike = OS_RELEASE) -> list[tuple[str, Path | bytes, int]]:
    """[(guest path, host file or bytes, mode)] of qemu-ga, its loader and
    libraries, and the small files it reads at run time."""
    binary = Path(qemu_ga)
    if not binary.is_file():
        raise GuestBuildError(
            f"{binary} not found; install the Debian package {QEMU_GA_PACKAGE} "
            f"(apt-get install {QEMU_GA_PACKAGE})")
    interp, libraries = dynamic_closure(binary)
    files: list[tuple[str, Path | bytes, int]] = [(QEMU_GA, binary, 0o755)]
    files += [(dest, src, 0o755) for dest, src in libraries]
    release = Path(os_release)
    if not release.is_file():
        raise GuestBuildError(f"{release} not found; reinstall the Debian package base-files")
    files += [
        ("/etc/os-release", release, 0o644),
        ("/etc/passwd", ETC_PASSWD.encode(), 0o644),
        ("/etc/group", ETC_GROUP.encode(), 0o644),
        ("/sbin/shutdown", SHUTDOWN_SCRIPT.encode(), 0o755),
    ]
    return files


# ---------------------------------------------------------------- /init

INIT_TEMPLATE = r"""#!/bin/sh
# PID 1 of the virtnode lab guest, generated by tests/lab/guest.py.
# Never exits: every path ends in a sleep or heartbeat loop.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
hostname virtnode-guest
ip link set lo up 2>/dev/null

loaded=
for m in @MODULES@; do
    [ -f "/lib/modules/$m.ko" ] || continue
    if insmod "/lib/modules/$m.ko"; then
        loaded="$loaded${loaded:+,}$m"
    else
        echo "virtnode-guest insmod failed: $m"
    fi
done

workload=heartbeat
writer_mb=
writer_go=
pattern_mb=16
pattern_tag=virtnode
memory_mb=16
memory_tag=virtnode
dirty_mb=8
disk=vda
agent=on
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        workload=*) workload=${arg#*=} ;;
        writer_mb=*) writer_mb=${arg#*=} ;;
        writer_go=*) writer_go=${arg#*=} ;;
        pattern_mb=*) pattern_mb=${arg#*=} ;;
        pattern_tag=*) pattern_tag=${arg#*=} ;;
        memory_mb=*) memory_mb=${arg#*=} ;;
        memory_tag=*) memory_tag=${arg#*=} ;;
        dirty_mb=*) dirty_mb=${arg#*=} ;;
        disk=*) disk=${arg#*=} ;;
        agent=*) agent=${arg#*=} ;;
    esac
done

echo
echo "virtnode-guest boot kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) modules=$loaded"
# What the firmware and TPM tests read: UEFI or BIOS, Secure Boot as the kernel found it, a TPM's version.
if [ -d /sys/firmware/efi ]; then
    secure=off
    dmesg | grep -q 'Secure boot enabled' && secure=on
    echo "virtnode-guest firmware uefi secure_boot=$secure"
else
    echo "virtnode-guest firmware bios"
fi
[ -e /sys/class/tpm/tpm0 ] && echo "virtnode-guest tpm version=$(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)"
echo "virtnode-guest ready workload=$workload"

MiB=1048576
CHUNK_MB=16
AGENT_PORT_NAME=org.qemu.guest_agent.0

# Whether the guest has a virtio console device (virtio device id 3).
has_virtio_serial() {
    for f in /sys/bus/virtio/devices/*/device; do
        [ -f "$f" ] && [ "$(cat "$f")" = 0x0003 ] && return 0
    done
    return 1
}

# Prints /dev/vportXpY of the port named $AGENT_PORT_NAME. The host announces
# ports and their names after the driver probes, so with a virtio console
# device this waits up to 10 s for it.
agent_port() {
    i=0
    while :; do
        for f in /sys/class/virtio-ports/*/name; do
            [ -f "$f" ] || continue
            [ "$(cat "$f")" = "$AGENT_PORT_NAME" ] || continue
            dev=${f%/name}
            dev=/dev/${dev##*/}
            if [ -c "$dev" ]; then
                echo "$dev"
                return 0
            fi
        done
        has_virtio_serial || return 1
        i=$((i + 1))
        [ "$i" -gt 100 ] && return 1
        sleep 0.1
    done
}

# Runs in the background: qemu-ga on the agent port, restarted if it exits
# (at most 5 times), fsfreeze hook off (no -F).
start_agent() {
    if [ "$agent" = off ]; then
        echo "virtnode-guest agent off"
        return 0
    fi
    if ! port=$(agent_port); then
        echo "virtnode-guest agent none"
        return 0
    fi
    mkdir -p /run/qga
    echo "virtnode-guest agent started port=$port"
    runs=0
    while [ "$runs" -lt 5 ]; do
        runs=$((runs + 1))
        /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run/qga -f /run/qemu-ga.pid
        echo "virtnode-guest agent exited rc=$?"
        sleep 1
    done
    echo "virtnode-guest agent gave up"
}

is_number() {
    case "$1" in ''|*[!0-9]*) return 1 ;; esac
}

forever() {
    while :; do sleep 3600; done
}

heartbeat() {
    n=0
    while :; do
        n=$((n + 1))
        echo "heartbeat $n"
        sleep 1
    done
}

# Waits up to 30 s for /dev/$disk.
wait_disk() {
    i=0
    while [ ! -b "/dev/$disk" ]; do
        i=$((i + 1))
        [ "$i" -gt 300 ] && return 1
        sleep 0.1
    done
}

# Guest uptime in centiseconds (/proc/uptime has two decimals).
uptime_cs() {
    up=$(cut -d' ' -f1 /proc/uptime)
    echo $(( ${up%.*} * 100 + $(echo "${up#*.}" | sed 's/^0//') ))
}

disk_mb() {
    echo $(( $(cat "/sys/block/$disk/size") / 2048 ))
}

writer() {
    if ! wait_disk; then
        echo "writer error no /dev/$disk"
        return 1
    fi
    total=$(disk_mb)
    if [ -n "$writer_mb" ]; then
        if ! is_number "$writer_mb"; then
            echo "writer error bad writer_mb=$writer_mb"
            return 1
        fi
        [ "$writer_mb" -lt "$total" ] && total=$writer_mb
    fi
    if [ -n "$writer_go" ]; then
        echo "writer waiting $writer_go"
        waited=0
        while [ ! -e "$writer_go" ]; do
            if [ "$waited" -ge 3000 ]; then
                echo "writer error $writer_go never came"
                return 1
            fi
            sleep 0.2
            waited=$((waited + 1))
        done
    fi
    echo "writer start dev=/dev/$disk bytes=$((total * MiB))"
    started=$(uptime_cs)
    off=0
    while [ "$off" -lt "$total" ]; do
        n=$((total - off))
        [ "$n" -gt "$CHUNK_MB" ] && n=$CHUNK_MB
        if ! dd if=/dev/zero of="/dev/$disk" bs=1M count="$n" seek="$off" \
                oflag=direct conv=notrunc,fsync 2>/tmp/dd.err; then
            echo "writer error at $((off * MiB)): $(tail -n 1 /tmp/dd.err)"
            return 1
        fi
        off=$((off + n))
        echo "writer progress $((off * MiB))"
    done
    echo "writer done $((total * MiB))"
    echo "writer rate bytes=$((total * MiB)) cs=$(( $(uptime_cs) - started ))"
}

# One MiB of the pattern for MiB number $1 into /tmp/pattern.blk: 16384
# 64-byte lines, each naming the tag and the MiB index. A 4 KiB unit is
# built in the shell, then one cat repeats it 256 times.
pattern_units=/tmp/pattern.unit
for _ in 1 2 3 4 5 6 7 8; do pattern_units="$pattern_units $pattern_units"; done
pattern_block() {
    line=$(printf '%-63s' "virtnode-pattern tag=$pattern_tag mib=$1")
    unit="$line
"
    for _ in 1 2 3 4 5 6; do unit="$unit$unit"; done
    printf '%s' "$unit" >/tmp/pattern.unit
    cat $pattern_units >/tmp/pattern.blk
}

pattern_args_ok() {
    if ! is_number "$pattern_mb" || [ "$pattern_mb" -lt 1 ]; then
        echo "pattern bad pattern_mb=$pattern_mb"
        return 1
    fi
    case "$pattern_tag" in
        ''|*[!A-Za-z0-9_.-]*) echo "pattern bad pattern_tag=$pattern_tag"; return 1 ;;
    esac
    [ "${#pattern_tag}" -le 32 ] || { echo "pattern bad pattern_tag too long"; return 1; }
    if ! wait_disk; then
        echo "pattern bad no /dev/$disk"
        return 1
    fi
    if [ "$pattern_mb" -gt "$(disk_mb)" ]; then
        echo "pattern bad pattern_mb=$pattern_mb larger than /dev/$disk"
        return 1
    fi
}

pattern_write() {
    pattern_args_ok || return 1
    i=0
    while [ "$i" -lt "$pattern_mb" ]; do
        pattern_block "$i"
        if ! dd if=/tmp/pattern.blk of="/dev/$disk" bs=1M count=1 seek="$i" \
                oflag=direct conv=notrunc,fsync 2>/tmp/dd.err; then
            echo "pattern bad write error at mib $i: $(tail -n 1 /tmp/dd.err)"
            return 1
        fi
        i=$((i + 1))
    done
    rm -f /tmp/pattern.blk /tmp/pattern.unit
    echo "pattern written $pattern_mb"
}

pattern_check() {
    pattern_args_ok || return 1
    i=0
    while [ "$i" -lt "$pattern_mb" ]; do
        pattern_block "$i"
        if ! dd if="/dev/$disk" of=/tmp/pattern.got bs=1M count=1 skip="$i" \
                iflag=direct 2>/tmp/dd.err; then
            echo "pattern bad read error at mib $i: $(tail -n 1 /tmp/dd.err)"
            return 1
        fi
        if ! cmp -s /tmp/pattern.blk /tmp/pattern.got; then
            echo "pattern bad at mib $i"
            return 1
        fi
        i=$((i + 1))
    done
    rm -f /tmp/pattern.blk /tmp/pattern.unit /tmp/pattern.got
    echo "pattern ok $pattern_mb"
}

# memory_mb MiB of "virtnode-ram-marker <memory_tag>" lines in files of the
# RAM-backed root: a known pattern in guest memory, for migration captures.
memory_marker() {
    if ! is_number "$memory_mb" || [ "$memory_mb" -lt 1 ]; then
        echo "memory bad memory_mb=$memory_mb"
        return 1
    fi
    case "$memory_tag" in
        ''|*[!A-Za-z0-9_.-]*) echo "memory bad memory_tag=$memory_tag"; return 1 ;;
    esac
    line=$(printf '%-63s' "virtnode-ram-marker $memory_tag")
    unit="$line
"
    for _ in 1 2 3 4 5 6; do unit="$unit$unit"; done
    printf '%s' "$unit" >/tmp/pattern.unit
    mkdir -p /tmp/ram
    i=0
    while [ "$i" -lt "$memory_mb" ]; do
        cat $pattern_units >"/tmp/ram/$i" || { echo "memory bad at mib $i"; return 1; }
        i=$((i + 1))
    done
    rm -f /tmp/pattern.unit
    echo "memory marked $memory_mb"
}

# dirty_mb MiB of a file in the RAM-backed root rewritten in place (1<>: no
# truncation, the same pages) by a background loop: pages a migration finds
# dirty again at every pass. Text, since QEMU sends zero pages almost for free;
# copies of one MiB of it, since cat copies hundreds of MiB/s even under TCG
# (/dev/urandom gives a fraction of that).
dirty_workload() {
    if ! is_number "$dirty_mb" || [ "$dirty_mb" -lt 1 ]; then
        echo "dirty bad dirty_mb=$dirty_mb"
        return 1
    fi
    yes virtnode-dirty | head -c "$MiB" >/tmp/dirty.mib
    blocks=
    i=0
    while [ "$i" -lt "$dirty_mb" ]; do
        blocks="$blocks /tmp/dirty.mib"
        i=$((i + 1))
    done
    # The root holds at most half the RAM: a short file means it was full.
    cat $blocks >/tmp/dirty.ram
    if [ "$(wc -c </tmp/dirty.ram)" -ne "$((dirty_mb * MiB))" ]; then
        echo "dirty bad no room for $dirty_mb MiB"
        return 1
    fi
    while :; do cat $blocks 1<>/tmp/dirty.ram; done &
    echo "dirty started $dirty_mb"
}

# ext2 (the kernel's ext4 driver) on the disk, mounted at /mnt/data.
fs_workload() {
    if ! wait_disk; then
        echo "fs error no /dev/$disk"
        return 1
    fi
    if ! mke2fs -F "/dev/$disk" >/tmp/mkfs.log 2>&1; then
        echo "fs error mke2fs: $(tail -n 1 /tmp/mkfs.log)"
        return 1
    fi
    mkdir -p /mnt/data
    if ! mount -t ext2 "/dev/$disk" /mnt/data 2>/tmp/mount.err; then
        echo "fs error mount: $(tail -n 1 /tmp/mount.err)"
        return 1
    fi
    if ! echo "virtnode-guest fs $(uname -r)" >/mnt/data/hello.txt || ! sync; then
        echo "fs error write /mnt/data/hello.txt"
        return 1
    fi
    echo "fs mounted /mnt/data"
}

# The cloud-init seed (a CD-ROM labelled cidata) mounted read-only, its files printed line by line as
# "cidata <file>: <line>", then "cidata done"; the CD drivers are loaded only here.
cidata_workload() {
    for m in @CD_MODULES@; do
        [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko" 2>/dev/null
    done
    # The ISO9660 volume label (32 bytes at 32808, in the primary volume descriptor) names the seed, as
    # cloud-init's NoCloud finds it; drives without a disc fail the read and are passed over.
    i=0
    dev=
    while [ -z "$dev" ]; do
        for d in /dev/sr*; do
            [ -b "$d" ] || continue
            label=$(dd if="$d" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ')
            [ "$label" = cidata ] && dev=$d && break
        done
        i=$((i + 1))
        [ "$i" -gt 300 ] && { echo "cidata error no device labelled cidata"; return 1; }
        [ -z "$dev" ] && sleep 0.1
    done
    mkdir -p /mnt/cidata
    if ! mount -t iso9660 -o ro "$dev" /mnt/cidata 2>/tmp/mount.err; then
        echo "cidata error mount $dev: $(tail -n 1 /tmp/mount.err)"
        return 1
    fi
    for f in meta-data user-data network-config; do
        [ -f "/mnt/cidata/$f" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            echo "cidata $f: $line"
        done <"/mnt/cidata/$f"
    done
    echo "cidata done $dev"
}

start_agent &

case "$workload" in
    heartbeat) heartbeat ;;
    memory_marker) memory_marker; heartbeat ;;
    dirty) dirty_workload; heartbeat ;;
    writer) writer; heartbeat ;;
    pattern_write) pattern_write; heartbeat ;;
    pattern_check) pattern_check; heartbeat ;;
    fs) fs_workload; heartbeat ;;
    cidata) cidata_workload; heartbeat ;;
    idle) echo "idle" ;;
    *) echo "virtnode-guest unknown workload=$workload; idling" ;;
esac
forever
"""


def render_init(modules: list[str], cd_modules: list[str] = ()) -> str:
    return (INIT_TEMPLATE.replace("@MODULES@", " ".join(modules) if modules else "none")
            .replace("@CD_MODULES@", " ".join(cd_modules) if cd_modules else "none"))


# ---------------------------------------------------------------- build

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_initramfs(busybox: bytes, applets: list[str], modules: list[tuple[str, bytes]],
                   init: str, files: list[tuple[str, bytes, int]] = ()) -> bytes:
    """The uncompressed newc archive; files are [(path, data, mode)] added with
    their parent directories (qemu-ga, its libraries, /etc files); a file
    takes the place of a busybox applet of the same path."""
    cpio = CpioWriter()
    dirs: set[str] = set()

    def add_dir(d: str) -> None:
        if d and d not in dirs:
            add_dir(os.path.dirname(d))
            cpio.add_dir(d, 0o1777 if d == "tmp" else 0o755)
            dirs.add(d)

    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root",
              "lib/modules", "etc", "run", "var", "mnt"):
        add_dir(d)
    cpio.add_symlink("var/run", "/run")
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_chardev("dev/null", 1, 3, 0o666)
    cpio.add_file("bin/busybox", busybox, 0o755)
    own = {path.strip("/") for path, _data, _mode in files}
    for applet in applets:
        if applet != "bin/busybox" and applet not in own:
            cpio.add_symlink(applet, "/bin/busybox")
    for name, data in modules:
        cpio.add_file(f"lib/modules/{name}.ko", data)
    for path, data, mode in files:
        path = path.strip("/")
        add_dir(os.path.dirname(path))
        cpio.add_file(path, data, mode)
    cpio.add_file("init", init.encode(), 0o755)
    return cpio.finish()


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build(out_dir: str | os.PathLike, *, boot_dir: str | os.PathLike = "/boot",
          modules_root: str | os.PathLike = "/lib/modules",
          busybox: str | os.PathLike = BUSYBOX, qemu_ga: str | os.PathLike = QEMU_GA,
          os_release: str | os.PathLike = OS_RELEASE, force: bool = False,
          quiet: bool = False) -> dict:
    """Build (or reuse) the guest in out_dir; returns what guest.json holds."""
    say = (lambda msg: None) if quiet else log
    out = Path(out_dir).resolve()
    kernel_src, kver = find_kernel(boot_dir)
    moddir = Path(modules_root) / kver
    if not moddir.is_dir():
        raise GuestBuildError(
            f"{moddir} missing for kernel {kernel_src}; reinstall {KERNEL_PACKAGE}")
    module_files, skipped = resolve_modules(moddir)
    names = [name for name, _path in module_files]
    cd_files, cd_skipped = resolve_modules(moddir, CD_MODULES)
    cd_files = [(name, path) for name, path in cd_files if name not in names]
    cd_names = [name for name, _path in cd_files]
    skipped += [note for note in cd_skipped if note not in skipped]
    init = render_init(names, cd_names)
    busybox_path = Path(busybox)
    busybox_bin = check_static_elf(busybox_path)
    extra = agent_files(qemu_ga, os_release)

    def extra_bytes(src: Path | bytes) -> bytes:
        return src if isinstance(src, bytes) else src.read_bytes()

    kernel_sha = _file_sha256(kernel_src)
    digest = hashlib.sha256(json.dumps({
        "format": FORMAT_VERSION,
        "kernel": kernel_sha,
        "busybox": _sha256(busybox_bin),
        "modules": [(name, _file_sha256(path)) for name, path in module_files + cd_files],
        "init": _sha256(init.encode()),
        "files": [(dest, mode, _sha256(src) if isinstance(src, bytes) else _file_sha256(src))
                  for dest, src, mode in extra],
    }, sort_keys=True).encode()).hexdigest()

    kernel_out = out / "vmlinuz"
    initrd_out = out / "initrd.img"
    meta_out = out / "guest.json"
    info = {
        "kernel": str(kernel_out),
        "initrd": str(initrd_out),
        "kernel_version": kver,
        "cmdline_base": CMDLINE_BASE,
        "modules": names,
        "inputs_sha256": digest,
    }

    if not force and meta_out.is_file():
        try:
            old = json.loads(meta_out.read_text())
        except ValueError:
            old = {}
        if ({k: old.get(k) for k in info} == info
                and initrd_out.is_file() and kernel_out.is_file()
                and old.get("initrd_sha256") == _file_sha256(initrd_out)
                and kernel_sha == _file_sha256(kernel_out)):
            say(f"up to date: {out} (kernel {kver})")
            return dict(info, initrd_sha256=old["initrd_sha256"])

    out.mkdir(parents=True, exist_ok=True)
    if not kernel_out.is_file() or _file_sha256(kernel_out) != kernel_sha:
        _atomic_write(kernel_out, kernel_src.read_bytes())
        say(f"copied {kernel_src} -> {kernel_out}")
    modules = [(name, load_module(path)) for name, path in module_files + cd_files]
    files = [(dest, extra_bytes(src), mode) for dest, src, mode in extra]
    archive = make_initramfs(busybox_bin, busybox_applets(busybox_path), modules, init, files)
    initrd = gzip.compress(archive, compresslevel=9, mtime=0)
    _atomic_write(initrd_out, initrd)
    say(f"wrote {initrd_out} ({len(initrd) // 1024} KiB, {len(archive) // 1024} KiB unpacked); "
        f"modules: {' '.join(names) or 'none'}; agent files: "
        f"{' '.join(dest for dest, _src, _mode in extra)}")
    for note in skipped:
        say(f"module {note}, skipped")
    info["initrd_sha256"] = _sha256(initrd)
    _atomic_write(meta_out, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    say(f"wrote {meta_out}")
    return info


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build", help="build the guest kernel + initramfs (cached)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
