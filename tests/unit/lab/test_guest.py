# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for tests/lab/guest.py (the lab's test guest builder).

Fast and root-free: the cpio writer is checked against a small newc reader
written here (and `cpio -t` when installed); the full build runs on a fake
/boot and /lib/modules tree.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
import guest  # noqa: E402

BUSYBOX = Path("/bin/busybox")
needs_busybox = pytest.mark.skipif(
    not BUSYBOX.is_file() or not os.access(BUSYBOX, os.X_OK), reason="busybox not installed")


def read_newc(data: bytes) -> list[dict]:
    """Parses a newc archive; every entry up to and including the trailer."""
    entries = []
    pos = 0
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
             "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
    while True:
        assert pos % 4 == 0
        header = data[pos:pos + 110]
        assert header[:6] == b"070701", f"bad magic at {pos}: {header[:6]!r}"
        fields = {n: int(header[6 + 8 * i:14 + 8 * i], 16) for i, n in enumerate(names)}
        pos += 110
        raw_name = data[pos:pos + fields["namesize"]]
        assert raw_name.endswith(b"\0")
        name = raw_name[:-1].decode()
        pos += fields["namesize"]
        pos += -pos % 4
        body = data[pos:pos + fields["filesize"]]
        assert len(body) == fields["filesize"]
        pos += fields["filesize"]
        pos += -pos % 4
        entries.append(dict(fields, name=name, data=body))
        if name == "TRAILER!!!":
            assert pos == len(data), "bytes after the trailer"
            return entries


def sample_archive() -> bytes:
    cpio = guest.CpioWriter()
    cpio.add_dir("bin")
    cpio.add_dir("/tmp/", 0o1777)
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_file("bin/busybox", b"\x7fELF" + b"x" * 13, 0o755)
    cpio.add_file("empty", b"")
    cpio.add_symlink("bin/sh", "/bin/busybox")
    cpio.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    return cpio.finish()


def test_cpio_roundtrip():
    data = sample_archive()
    assert len(data) % 4 == 0
    entries = read_newc(data)
    by_name = {e["name"]: e for e in entries}
    assert [e["name"] for e in entries] == [
        "bin", "tmp", "dev/console", "bin/busybox", "empty", "bin/sh", "init", "TRAILER!!!"]
    assert stat.S_ISDIR(by_name["bin"]["mode"]) and stat.S_IMODE(by_name["bin"]["mode"]) == 0o755
    assert stat.S_IMODE(by_name["tmp"]["mode"]) == 0o1777
    console = by_name["dev/console"]
    assert stat.S_ISCHR(console["mode"])
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert by_name["bin/busybox"]["data"] == b"\x7fELF" + b"x" * 13
    assert stat.S_IMODE(by_name["bin/busybox"]["mode"]) == 0o755
    assert by_name["empty"]["data"] == b""
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"])
    assert by_name["bin/sh"]["data"] == b"/bin/busybox"
    assert by_name["init"]["data"].startswith(b"#!/bin/sh\n")
    inodes = [e["ino"] for e in entries[:-1]]
    assert len(set(inodes)) == len(inodes) and 0 not in inodes
    assert all(e["uid"] == e["gid"] == e["mtime"] == 0 for e in entries)


def test_cpio_is_deterministic():
    assert sample_archive() == sample_archive()


def test_cpio_rejects_duplicates_and_writes_after_finish():
    cpio = guest.CpioWriter()
    cpio.add_dir("bin")
    with pytest.raises(ValueError):
        cpio.add_file("bin/", b"")
    cpio.finish()
    with pytest.raises(ValueError):
        cpio.add_dir("usr")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_cpio_tool_lists_archive():
    proc = subprocess.run(["cpio", "-it", "--quiet"], input=sample_archive(),
                          capture_output=True, check=True)
    assert proc.stdout.decode().split() == [
        "bin", "tmp", "dev/console", "bin/busybox", "empty", "bin/sh", "init"]


def test_find_kernel_picks_newest(tmp_path):
    for ver in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "5.10.0-30-cloud-amd64"):
        (tmp_path / f"vmlinuz-{ver}").write_bytes(b"k")
    (tmp_path / "vmlinuz-6.9.0-1-amd64").write_bytes(b"not a cloud kernel")
    path, ver = guest.find_kernel(tmp_path)
    assert ver == "6.1.0-10-cloud-amd64"
    assert path == tmp_path / "vmlinuz-6.1.0-10-cloud-amd64"


def test_find_kernel_missing_names_package(tmp_path):
    with pytest.raises(guest.GuestBuildError) as exc:
        guest.find_kernel(tmp_path)
    assert "linux-image-cloud-amd64" in str(exc.value.code)


ELF_STUB = b"\x7fELF\x02\x01" + b"\0" * 58  # 64-bit, no program headers


def make_modules(root: Path, kver: str, compress: str = "xz") -> Path:
    """A fake /lib/modules/<kver> with virtio modules, some compressed."""
    moddir = root / kver
    suffix = {"xz": ".ko.xz", "gz": ".ko.gz", "none": ".ko"}[compress]
    dep_lines = []
    layout = {
        "virtio/virtio_ring": [],
        "virtio/virtio": ["virtio/virtio_ring"],
        "virtio/virtio_pci_modern_dev": [],
        "virtio/virtio_pci_legacy_dev": [],
        "virtio/virtio_pci": ["virtio/virtio_pci_legacy_dev", "virtio/virtio_pci_modern_dev",
                              "virtio/virtio", "virtio/virtio_ring"],
        "block/virtio_blk": ["virtio/virtio", "virtio/virtio_ring"],
        "core/failover": [],
        "net/net_failover": ["core/failover"],
        "net/virtio_net": ["net/net_failover", "core/failover", "virtio/virtio",
                           "virtio/virtio_ring"],
    }
    for mod, deps in layout.items():
        path = moddir / "kernel" / (mod + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = ELF_STUB + f"name={mod.rsplit('/', maxsplit=1)[-1]}".encode()
        if compress == "xz":
            body = lzma.compress(body, format=lzma.FORMAT_XZ)
        elif compress == "gz":
            body = gzip.compress(body)
        path.write_bytes(body)
        dep_lines.append(f"kernel/{mod}{suffix}: " + " ".join(f"kernel/{d}{suffix}" for d in deps))
    (moddir / "modules.dep").write_text("\n".join(dep_lines) + "\n")
    # virtio_console built in on this fake kernel.
    (moddir / "modules.builtin").write_text("kernel/drivers/char/virtio_console.ko\n")
    return moddir


EXPECTED_ORDER = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net"]


@pytest.mark.parametrize("compress", ["xz", "gz", "none"])
def test_resolve_and_decompress_modules(tmp_path, compress):
    moddir = make_modules(tmp_path, "6.1.0-1-cloud-amd64", compress)
    order, skipped = guest.resolve_modules(moddir)
    assert [name for name, _path in order] == EXPECTED_ORDER
    assert skipped == ["virtio_console (built in)"]
    for name, path in order:
        assert guest.load_module(path) == ELF_STUB + f"name={name}".encode()


def test_module_name_normalises():
    assert guest.module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert guest.module_name("virtio_blk.ko.zst") == "virtio_blk"
    assert guest.module_name("failover.ko") == "failover"


def fake_elf(p_type: int) -> bytes:
    """A 64-bit little-endian ELF header with one program header of p_type."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)       # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)   # e_phentsize, e_phnum
    phdr = bytearray(56)
    struct.pack_into("<I", phdr, 0, p_type)
    return bytes(header + phdr)


def test_busybox_must_be_static(tmp_path):
    static = tmp_path / "static"
    static.write_bytes(fake_elf(1))  # PT_LOAD only
    assert guest.check_static_elf(static) == fake_elf(1)
    dynamic = tmp_path / "dynamic"
    dynamic.write_bytes(fake_elf(3))  # PT_INTERP
    with pytest.raises(guest.GuestBuildError) as exc:
        guest.check_static_elf(dynamic)
    assert "busybox-static" in str(exc.value.code)
    with pytest.raises(guest.GuestBuildError) as exc:
        guest.check_static_elf(tmp_path / "missing")
    assert "busybox-static" in str(exc.value.code)


def shell_for_syntax_check() -> list[str]:
    if BUSYBOX.is_file():
        return [str(BUSYBOX), "sh", "-n"]
    return ["/bin/sh", "-n"]


def test_init_script_syntax_and_content(tmp_path):
    init = guest.render_init(EXPECTED_ORDER)
    script = tmp_path / "init"
    script.write_text(init)
    subprocess.run(shell_for_syntax_check() + [str(script)], check=True)
    assert init.startswith("#!/bin/sh\n")
    assert "for m in " + " ".join(EXPECTED_ORDER) + "; do" in init
    assert 'echo "virtnode-guest ready workload=$workload"' in init
    for token in ("mount -t proc", "mount -t sysfs", "mount -t devtmpfs", "/proc/cmdline",
                  "heartbeat $n", "writer done", "pattern ok", "pattern written", "oflag=direct"):
        assert token in init
    # PID 1 must not run off the end.
    assert init.rstrip().endswith("forever")


@needs_busybox
def test_build_is_cached_and_rebuilds_on_change(tmp_path, capsys):
    kver = "6.1.0-99-cloud-amd64"
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{kver}").write_bytes(b"fake kernel")
    modules_root = tmp_path / "modules"
    make_modules(modules_root, kver, "xz")
    out = tmp_path / "out"

    info = guest.build(out, boot_dir=boot, modules_root=modules_root)
    assert info["kernel"] == str(out / "vmlinuz")
    assert info["initrd"] == str(out / "initrd.img")
    assert info["kernel_version"] == kver
    assert info["cmdline_base"].startswith("console=ttyS0")
    assert info["modules"] == EXPECTED_ORDER
    assert json.loads((out / "guest.json").read_text()) == info
    assert (out / "vmlinuz").read_bytes() == b"fake kernel"
    entries = {e["name"]: e for e in read_newc(gzip.decompress((out / "initrd.img").read_bytes()))}
    assert entries["init"]["data"].decode() == guest.render_init(EXPECTED_ORDER)
    assert stat.S_IMODE(entries["init"]["mode"]) == 0o755
    assert entries["bin/busybox"]["data"] == BUSYBOX.read_bytes()
    assert entries["bin/sh"]["data"] == b"/bin/busybox"
    assert entries["sbin/insmod"]["data"] == b"/bin/busybox"
    assert entries["lib/modules/virtio_net.ko"]["data"] == ELF_STUB + b"name=virtio_net"
    assert stat.S_ISCHR(entries["dev/console"]["mode"])
    out_lines = capsys.readouterr().out
    assert "wrote" in out_lines

    stamp = (out / "initrd.img").stat().st_mtime_ns
    assert guest.build(out, boot_dir=boot, modules_root=modules_root) == info
    assert "up to date" in capsys.readouterr().out
    assert (out / "initrd.img").stat().st_mtime_ns == stamp

    # A changed kernel is copied again; the initrd is rebuilt (same bytes).
    (boot / f"vmlinuz-{kver}").write_bytes(b"fake kernel, rebuilt")
    info2 = guest.build(out, boot_dir=boot, modules_root=modules_root)
    assert info2["inputs_sha256"] != info["inputs_sha256"]
    assert info2["initrd_sha256"] == info["initrd_sha256"]
    assert (out / "vmlinuz").read_bytes() == b"fake kernel, rebuilt"
    assert "copied" in capsys.readouterr().out
