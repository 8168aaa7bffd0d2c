# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's tiny test guest: a Debian cloud kernel plus a busybox initramfs.

    python3 tests/lab/guest.py build --out DIR [--force]

writes, only when missing or when an input changed:

    DIR/vmlinuz      copy of the newest /boot/vmlinuz-*-cloud-amd64
    DIR/initrd.img   gzip'd newc cpio: busybox, the virtio modules, /init
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
                            writer_mb=N limits it to N MiB (default: whole disk)
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
    workload=idle           "idle", then silence
    disk=NAME               the disk the disk workloads use (default vda)

Every boot first prints "virtnode-guest ready workload=<w>". writer and
pattern_* print heartbeat lines once finished. PID 1 never exits.

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
FORMAT_VERSION = 1

KERNEL_GLOB = "vmlinuz-*-cloud-amd64"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = "/bin/busybox"
BUSYBOX_PACKAGE = "busybox-static"
CMDLINE_BASE = "console=ttyS0 quiet panic=-1"

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


def check_static_elf(path: Path) -> bytes:
    """The busybox binary; refuses a dynamically linked one (no libc in the guest)."""
    if not path.is_file():
        raise GuestBuildError(
            f"{path} not found; install the Debian package {BUSYBOX_PACKAGE}")
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise GuestBuildError(f"{path} is not a 64-bit ELF executable")
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
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


# ---------------------------------------------------------------- /init

INIT_TEMPLATE = r"""#!/bin/sh
# PID 1 of the virtnode lab guest, generated by tests/lab/guest.py.
# Never exits: every path ends in a sleep or heartbeat loop.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

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
pattern_mb=16
pattern_tag=virtnode
memory_mb=16
memory_tag=virtnode
disk=vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        workload=*) workload=${arg#*=} ;;
        writer_mb=*) writer_mb=${arg#*=} ;;
        pattern_mb=*) pattern_mb=${arg#*=} ;;
        pattern_tag=*) pattern_tag=${arg#*=} ;;
        memory_mb=*) memory_mb=${arg#*=} ;;
        memory_tag=*) memory_tag=${arg#*=} ;;
        disk=*) disk=${arg#*=} ;;
    esac
done

echo
echo "virtnode-guest boot kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) modules=$loaded"
echo "virtnode-guest ready workload=$workload"

MiB=1048576
CHUNK_MB=16

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

case "$workload" in
    heartbeat) heartbeat ;;
    memory_marker) memory_marker; heartbeat ;;
    writer) writer; heartbeat ;;
    pattern_write) pattern_write; heartbeat ;;
    pattern_check) pattern_check; heartbeat ;;
    idle) echo "idle" ;;
    *) echo "virtnode-guest unknown workload=$workload; idling" ;;
esac
forever
"""


def render_init(modules: list[str]) -> str:
    return INIT_TEMPLATE.replace("@MODULES@", " ".join(modules) if modules else "none")


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
                   init: str) -> bytes:
    """The uncompressed newc archive."""
    cpio = CpioWriter()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys",
              "tmp", "root", "lib", "lib/modules"):
        cpio.add_dir(d, 0o1777 if d == "tmp" else 0o755)
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_chardev("dev/null", 1, 3, 0o666)
    cpio.add_file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            cpio.add_symlink(applet, "/bin/busybox")
    for name, data in modules:
        cpio.add_file(f"lib/modules/{name}.ko", data)
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
          busybox: str | os.PathLike = BUSYBOX, force: bool = False,
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
    init = render_init(names)
    busybox_path = Path(busybox)
    busybox_bin = check_static_elf(busybox_path)

    kernel_sha = _file_sha256(kernel_src)
    digest = hashlib.sha256(json.dumps({
        "format": FORMAT_VERSION,
        "kernel": kernel_sha,
        "busybox": _sha256(busybox_bin),
        "modules": [(name, _file_sha256(path)) for name, path in module_files],
        "init": _sha256(init.encode()),
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
    modules = [(name, load_module(path)) for name, path in module_files]
    archive = make_initramfs(busybox_bin, busybox_applets(busybox_path), modules, init)
    initrd = gzip.compress(archive, compresslevel=9, mtime=0)
    _atomic_write(initrd_out, initrd)
    say(f"wrote {initrd_out} ({len(initrd) // 1024} KiB, {len(archive) // 1024} KiB unpacked); "
        f"modules: {' '.join(names) or 'none'}")
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
