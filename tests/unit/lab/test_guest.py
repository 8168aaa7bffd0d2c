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
QEMU_GA = Path(guest.QEMU_GA)
needs_qemu_ga = pytest.mark.skipif(
    not QEMU_GA.is_file() or shutil.which("ldd") is None,
    reason="qemu-guest-agent or ldd not installed")
# A small dynamically linked binary that stands in for qemu-ga in the build tests.
DYNAMIC = Path("/bin/true")
needs_ldd = pytest.mark.skipif(
    shutil.which("ldd") is None or not DYNAMIC.is_file()
    or b"ld-linux" not in DYNAMIC.read_bytes()[:4096],
    reason="ldd or a dynamically linked /bin/true missing")


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
        "scsi/scsi_common": [],
        "scsi/scsi_mod": ["scsi/scsi_common"],
        "scsi/virtio_scsi": ["scsi/scsi_mod", "scsi/scsi_common", "virtio/virtio", "virtio/virtio_ring"],
        "scsi/sd_mod": ["scsi/scsi_mod", "scsi/scsi_common"],
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
    # virtio_console and ext4 built in on this fake kernel.
    (moddir / "modules.builtin").write_text(
        "kernel/drivers/char/virtio_console.ko\nkernel/fs/ext4/ext4.ko\n")
    return moddir


EXPECTED_ORDER = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net",
                  "scsi_common", "scsi_mod", "virtio_scsi", "sd_mod"]


@pytest.mark.parametrize("compress", ["xz", "gz", "none"])
def test_resolve_and_decompress_modules(tmp_path, compress):
    moddir = make_modules(tmp_path, "6.1.0-1-cloud-amd64", compress)
    order, skipped = guest.resolve_modules(moddir)
    assert [name for name, _path in order] == EXPECTED_ORDER
    assert skipped == ["virtio_console (built in)", "ext4 (built in)"]
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


def fake_elf_interp(interp: str) -> bytes:
    """A 64-bit little-endian ELF with a PT_LOAD and a PT_INTERP naming interp."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)
    struct.pack_into("<HH", header, 0x36, 56, 2)
    payload = interp.encode() + b"\0"
    phdrs = bytearray(112)
    struct.pack_into("<I", phdrs, 0, 1)
    struct.pack_into("<IIQ", phdrs, 56, 3, 4, 64 + 112)  # p_type, p_flags, p_offset
    struct.pack_into("<Q", phdrs, 56 + 32, len(payload))  # p_filesz
    return bytes(header + phdrs + payload)


def test_elf_interpreter(tmp_path):
    assert guest.elf_interpreter(tmp_path / "x", fake_elf(1)) is None
    data = fake_elf_interp("/lib64/ld-linux-x86-64.so.2")
    assert guest.elf_interpreter(tmp_path / "x", data) == "/lib64/ld-linux-x86-64.so.2"
    path = tmp_path / "dynamic"
    path.write_bytes(data)
    with pytest.raises(guest.GuestBuildError):
        guest.check_static_elf(path)
    with pytest.raises(guest.GuestBuildError):
        guest.elf_interpreter(tmp_path / "x", b"#!/bin/sh\n" + b"\0" * 64)


LDD_OUTPUT = """\tlinux-vdso.so.1 (0x00007ffd6b3f2000)
\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f71c2413000)
\tlibglib-2.0.so.0 => /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f71c22c7000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f71c1ffd000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f71c254c000)
\tld-linux-x86-64.so.2 => /lib64/ld-linux-x86-64.so.2 (0x00007f71c254c000)
\tlibpcre2-8.so.0 => /lib/x86_64-linux-gnu/libpcre2-8.so.0 (0x00007f71c1f63000)
"""


def test_parse_ldd():
    assert guest.parse_ldd(LDD_OUTPUT) == [
        "/lib/x86_64-linux-gnu/libudev.so.1",
        "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    ]
    assert guest.parse_ldd("\tstatically linked\n") == []
    with pytest.raises(guest.GuestBuildError) as exc:
        guest.parse_ldd(LDD_OUTPUT + "\tlibnuma.so.1 => not found\n", "/usr/sbin/qemu-ga")
    assert "libnuma.so.1" in str(exc.value.code)
    assert "qemu-guest-agent" in str(exc.value.code)


def test_guest_library_path():
    dirs = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
    assert guest.guest_library_path("/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0", dirs) == \
        "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0"
    assert guest.guest_library_path("/lib/x86_64-linux-gnu/libc.so.6", dirs) == \
        "/lib/x86_64-linux-gnu/libc.so.6"
    # Found through ld.so.cache or RUNPATH in a directory the guest's loader
    # does not search without a cache: moved to its first directory.
    assert guest.guest_library_path("/opt/foo/lib/libfoo.so.1", dirs) == \
        "/lib/x86_64-linux-gnu/libfoo.so.1"
    assert guest.guest_library_path(
        "/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libbar.so.2", dirs) == \
        "/lib/x86_64-linux-gnu/libbar.so.2"


@needs_ldd
def test_dynamic_closure_of_a_real_binary():
    interp, files = guest.dynamic_closure(DYNAMIC)
    assert interp == guest.elf_interpreter(DYNAMIC, DYNAMIC.read_bytes())
    dests = dict(files)
    # The loader keeps its absolute PT_INTERP path; libraries sit where it searches.
    assert dests[interp] == Path(interp)
    libc = [d for d in dests if os.path.basename(d) == "libc.so.6"]
    assert len(libc) == 1
    assert os.path.dirname(libc[0]) in guest.loader_library_dirs(interp)
    assert all(src.is_file() for src in dests.values())
    if BUSYBOX.is_file():
        assert guest.dynamic_closure(BUSYBOX) == ("", [])  # static: nothing to add


@needs_qemu_ga
def test_agent_files_of_the_real_qemu_ga():
    files = {dest: (src, mode) for dest, src, mode in guest.agent_files()}
    assert files[guest.QEMU_GA] == (QEMU_GA, 0o755)
    interp = guest.elf_interpreter(QEMU_GA, QEMU_GA.read_bytes())
    assert interp in files
    names = {os.path.basename(d) for d in files}
    assert {"libglib-2.0.so.0", "libc.so.6"} <= names
    assert files["/etc/os-release"] == (Path(guest.OS_RELEASE), 0o644)
    assert isinstance(files["/sbin/shutdown"][0], bytes)


def test_agent_files_missing_qemu_ga_names_package(tmp_path):
    with pytest.raises(guest.GuestBuildError) as exc:
        guest.agent_files(tmp_path / "qemu-ga")
    assert "qemu-guest-agent" in str(exc.value.code)


def test_shutdown_script(tmp_path):
    script = tmp_path / "shutdown"
    script.write_text(guest.SHUTDOWN_SCRIPT)
    subprocess.run(shell_for_syntax_check() + [str(script)], check=True)
    # What qemu-ga 7.2 runs for guest-shutdown: "shutdown -h -P +0 MESSAGE".
    assert 'exec /bin/busybox "$action" -f' in guest.SHUTDOWN_SCRIPT
    for flag, action in (("-P", "poweroff"), ("-H", "halt"), ("-r", "reboot")):
        assert f"{flag}) action={action} ;;" in guest.SHUTDOWN_SCRIPT


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


def test_init_starts_the_agent_and_has_the_fs_workload():
    init = guest.render_init(EXPECTED_ORDER)
    # The agent starts in the background after the modules load, on the port
    # named org.qemu.guest_agent.0; agent=off on the command line skips it.
    assert init.index("insmod") < init.index("start_agent &")
    assert "agent=*) agent=${arg#*=} ;;" in init
    assert 'if [ "$agent" = off ]; then' in init
    assert "AGENT_PORT_NAME=org.qemu.guest_agent.0" in init
    assert "/sys/class/virtio-ports/*/name" in init
    assert ('/usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run/qga '
            '-f /run/qemu-ga.pid') in init
    qga_lines = [line for line in init.splitlines() if "qemu-ga -m" in line]
    assert len(qga_lines) == 1 and " -F" not in qga_lines[0]  # no fsfreeze hook
    for line in ('echo "virtnode-guest agent started port=$port"',
                 'echo "virtnode-guest agent none"', 'echo "virtnode-guest agent off"'):
        assert line in init
    assert init.index("start_agent &") < init.index('case "$workload" in')
    # workload=fs
    assert "fs) fs_workload; heartbeat ;;" in init
    assert 'mke2fs -F "/dev/$disk"' in init
    assert 'mount -t ext2 "/dev/$disk" /mnt/data' in init
    assert 'echo "fs mounted /mnt/data"' in init
    assert "hostname virtnode-guest" in init


def test_init_has_the_dirty_workload():
    init = guest.render_init(EXPECTED_ORDER)
    assert "dirty) dirty_workload; heartbeat ;;" in init
    assert "dirty_mb=*) dirty_mb=${arg#*=} ;;" in init
    # Non-zero pages (zero pages cost a migration almost nothing), rewritten in place in the background.
    assert 'yes virtnode-dirty | head -c "$MiB" >/tmp/dirty.mib' in init
    assert "while :; do cat $blocks 1<>/tmp/dirty.ram; done &" in init
    assert 'echo "dirty started $dirty_mb"' in init
    assert init.index("dirty_workload() {") < init.index('case "$workload" in')


@needs_busybox
@needs_ldd
def test_build_is_cached_and_rebuilds_on_change(tmp_path, capsys):
    kver = "6.1.0-99-cloud-amd64"
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{kver}").write_bytes(b"fake kernel")
    modules_root = tmp_path / "modules"
    make_modules(modules_root, kver, "xz")
    out = tmp_path / "out"
    qemu_ga = tmp_path / "qemu-ga"
    shutil.copy(DYNAMIC, qemu_ga)
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Test Linux"\nID=test\n')
    kwargs = dict(boot_dir=boot, modules_root=modules_root, qemu_ga=qemu_ga,
                  os_release=os_release)

    info = guest.build(out, **kwargs)
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
    # qemu-ga, its loader at its absolute path, its libraries where the loader looks.
    assert entries["usr/sbin/qemu-ga"]["data"] == DYNAMIC.read_bytes()
    assert stat.S_IMODE(entries["usr/sbin/qemu-ga"]["mode"]) == 0o755
    interp = guest.elf_interpreter(DYNAMIC, DYNAMIC.read_bytes())
    loader = entries[interp.lstrip("/")]
    assert stat.S_ISREG(loader["mode"]) and loader["data"] == Path(interp).read_bytes()
    libc = [n for n in entries if n.endswith("/libc.so.6")]
    assert len(libc) == 1 and stat.S_ISREG(entries[libc[0]]["mode"])
    assert "/" + os.path.dirname(libc[0]) in guest.loader_library_dirs(interp)
    # Every directory on the way is in the archive, before what it holds.
    names = [e["name"] for e in read_newc(gzip.decompress((out / "initrd.img").read_bytes()))]
    for name in (libc[0], interp.lstrip("/"), "usr/sbin/qemu-ga", "etc/os-release"):
        parent = os.path.dirname(name)
        while parent:
            assert stat.S_ISDIR(entries[parent]["mode"])
            assert names.index(parent) < names.index(name)
            parent = os.path.dirname(parent)
    assert entries["etc/os-release"]["data"] == os_release.read_bytes()
    assert entries["etc/passwd"]["data"].startswith(b"root:x:0:0:")
    assert entries["sbin/shutdown"]["data"] == guest.SHUTDOWN_SCRIPT.encode()
    assert stat.S_IMODE(entries["sbin/shutdown"]["mode"]) == 0o755
    assert stat.S_ISDIR(entries["run"]["mode"])
    assert entries["var/run"]["data"] == b"/run"
    out_lines = capsys.readouterr().out
    assert "wrote" in out_lines

    stamp = (out / "initrd.img").stat().st_mtime_ns
    assert guest.build(out, **kwargs) == info
    assert "up to date" in capsys.readouterr().out
    assert (out / "initrd.img").stat().st_mtime_ns == stamp

    # A changed kernel is copied again; the initrd is rebuilt (same bytes).
    (boot / f"vmlinuz-{kver}").write_bytes(b"fake kernel, rebuilt")
    info2 = guest.build(out, **kwargs)
    assert info2["inputs_sha256"] != info["inputs_sha256"]
    assert info2["initrd_sha256"] == info["initrd_sha256"]
    assert (out / "vmlinuz").read_bytes() == b"fake kernel, rebuilt"
    assert "copied" in capsys.readouterr().out

    # A changed qemu-ga or os-release rebuilds the initrd.
    with open(qemu_ga, "ab") as f:
        f.write(b"\0trailing bytes")
    info3 = guest.build(out, **kwargs)
    assert info3["inputs_sha256"] != info2["inputs_sha256"]
    assert info3["initrd_sha256"] != info2["initrd_sha256"]
    os_release.write_text('PRETTY_NAME="Test Linux 2"\n')
    info4 = guest.build(out, **kwargs)
    assert info4["inputs_sha256"] != info3["inputs_sha256"]
    entries = {e["name"]: e for e in read_newc(gzip.decompress((out / "initrd.img").read_bytes()))}
    assert entries["etc/os-release"]["data"] == b'PRETTY_NAME="Test Linux 2"\n'
