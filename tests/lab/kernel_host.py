"""Lab hosts with a Linux kernel of their own: User-mode Linux booting systemd.

The namespace hosts (lab.py) share the machine's kernel, which has no device-mapper, bonding,
VLANs, NFS or iSCSI. A kernel host is one `linux.uml` process tree running Debian's UML kernel
(user-mode-linux, 6.1): its root file system is the machine's own root, read-only through
hostfs, under a copy-on-write overlay whose upper layer lives on the host's own disk image
(ext4 on ubd0). So the host sees the machine's installed packages, writes nothing to the
machine's root, keeps what it wrote across a reboot, and loses it with `lab.py down`.

Each host has:
- eth0 on the lab bridge with a static address (the management network: SSH, libvirt, iSCSI
  portal 1), eth1 and eth2 on the VM segment (bond slaves, VM networks, DHCP), eth3 on the storage
  segment (iSCSI portal 2); each NIC is a tap device on the machine (vector driver);
- systemd as PID 1, sshd, libvirtd + virtlogd (TCP listener for migration), sanlock, its own
  hostname, machine-id, iSCSI initiator name;
- the kernel's modules (dm, bonding, 8021q, nfs/nfsd, iscsi, LIO) from /usr/lib/uml/modules.

Host 1 is also the lab's storage server: NFS exports, an iSCSI target (LIO) with LUNs on both
portals, and a DHCP server (dnsmasq) on the VM segment. storage_server.py sets those up.

`lab.py reboot HOST` shuts the host down through systemd and boots its kernel again on the same
disk: what was enabled starts again by itself. (Not UML's own restart, a `reboot` inside: UML
re-executes itself with its tap descriptors still open, its NICs cannot attach again and init
panics.) `lab.py crash HOST` kills the process tree with SIGKILL, as a power cut would; the disk
keeps what was written to it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import lab  # tests/lab/lab.py (this module is imported by it lazily)

UML = "/usr/bin/linux.uml"
MODULES_ROOT = Path("/usr/lib/uml/modules")
PREFIX = "vnkern"
DISK_SIZE = "6G"
DATA_DISK_SIZE = "40G"  # sparse: the LUN files and NFS exports use what they hold
MEMORY = "1536M"
BOOT_TIMEOUT = 180
STORAGE_BRIDGE = f"vnlab{lab.LAB_ID}s"
STORAGE_SUBNET_PREFIX = f"10.252.{lab.LAB_ID}."
# The lab's DHCP segment: dnsmasq on the storage server's eth1 (VM segment) answers there.
DHCP_SUBNET_PREFIX = f"10.253.{lab.LAB_ID}."
DHCP_SERVER_IP = DHCP_SUBNET_PREFIX + "1"
STORAGE_SERVER = f"{PREFIX}1"
# Units of this machine's that a kernel host does not run, or runs only where it is the server.
MASK_UNITS = ("postgresql.service", "postgresql@.service", "getty@.service", "serial-getty@.service",
              "console-getty.service", "e2scrub_reap.service", "apt-daily.timer",
              "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer",
              "libvirt-guests.service", "systemd-timesyncd.service", "wdmd.service",
              # Installed on this machine for promtool only: no host runs a Prometheus server.
              "prometheus.service")
SERVER_ONLY_UNITS = ("nfs-server.service", "dnsmasq.service", "rtslib-fb-targetctl.service")


def log(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def host_name(index: int) -> str:
    return f"{PREFIX}{index}"


def host_index(name: str) -> int:
    return int(name[len(PREFIX):])


def is_kernel_host(name: str) -> bool:
    return name.startswith(PREFIX) and name[len(PREFIX):].isdigit()


def host_ip(index: int) -> str:
    return f"{lab.SUBNET_PREFIX}{100 + index}"


def storage_ip(index: int) -> str:
    return f"{STORAGE_SUBNET_PREFIX}{100 + index}"


def host_dir(name: str) -> Path:
    return lab.HOSTS_DIR / name


def disk_path(name: str) -> Path:
    return host_dir(name) / "disk.img"


def data_disk_path(name: str) -> Path:
    """The storage server's second disk: what it exports (an overlay cannot be exported)."""
    return host_dir(name) / "data.img"


def uml_dir(name: str) -> Path:
    return host_dir(name) / "uml"


def kernel_version() -> str:
    versions = sorted(p.name for p in MODULES_ROOT.iterdir()) if MODULES_ROOT.is_dir() else []
    if not versions:
        raise SystemExit("lab: user-mode-linux is not installed (no /usr/lib/uml/modules); run make deps")
    return versions[-1]


def nics(index: int) -> list[tuple[str, str, str]]:
    """(tap device on the machine, NIC name inside, bridge) of each NIC."""
    base = f"vk{lab.LAB_ID}h{index}"
    return [(f"{base}e0", "eth0", lab.BRIDGE), (f"{base}e1", "eth1", lab.VM_BRIDGE),
            (f"{base}e2", "eth2", lab.VM_BRIDGE), (f"{base}e3", "eth3", STORAGE_BRIDGE)]


def mac(index: int, nic: int) -> str:
    return f"52:54:00:{lab.LAB_ID:02x}:{index:02x}:{nic:02x}"


# ---------------------------------------------------------------- machine side

def ensure_storage_bridge() -> None:
    if not Path("/sys/class/net", STORAGE_BRIDGE).exists():
        lab.run(["ip", "link", "add", STORAGE_BRIDGE, "type", "bridge"])
    lab.run(["ip", "link", "set", STORAGE_BRIDGE, "up"])


def ensure_taps(index: int) -> None:
    for tap, _nic, bridge in nics(index):
        if not Path("/sys/class/net", tap).exists():
            lab.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        lab.run(["ip", "link", "set", tap, "master", bridge, "up"])


def remove_taps(index: int) -> None:
    for tap, _nic, _bridge in nics(index):
        if Path("/sys/class/net", tap).exists():
            lab.run(["ip", "link", "del", tap], check=False, capture=True)


def init_pid(name: str) -> int | None:
    """The machine pid of the host's kernel (the first linux.uml process), while it runs."""
    try:
        pid = int((uml_dir(name) / name / "pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if f"umid={name}".encode() in cmdline and lab.pid_alive(pid) else None


def process_tree(name: str) -> list[int]:
    """Every machine process of this host: UML runs each of its processes' address spaces as one."""
    marker = f"umid={name}".encode()
    root = str(uml_dir(name)).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and root in cmdline:
            pids.append(int(entry.name))
    return pids


# ---------------------------------------------------------------- the host's disk

def write_upper(stage: Path, rel: str, content: str, mode: int = 0o644) -> None:
    path = stage / "upper" / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def link_upper(stage: Path, rel: str, target: str) -> None:
    path = stage / "upper" / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def hosts_file(count: int) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{lab.BRIDGE_IP}\tcontroller"]
    lines += [f"{host_ip(i)}\t{host_name(i)}" for i in range(1, count + 1)]
    return "\n".join(lines) + "\n"


def stage_files(name: str, index: int, count: int) -> Path:
    """The upper layer's first contents: identity, SSH, libvirt, and the lab's boot settings."""
    stage = host_dir(name) / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "upper").mkdir(parents=True)
    (stage / "work").mkdir()
    ident = lab.host_uuid(name)
    write_upper(stage, "etc/hostname", name + "\n")
    write_upper(stage, "etc/hosts", hosts_file(count))
    write_upper(stage, "etc/machine-id", uuid.UUID(ident).hex + "\n", 0o444)
    write_upper(stage, "etc/iscsi/initiatorname.iscsi",
                f"InitiatorName=iqn.2026-12.lab.virtnode:{name}\n", 0o600)
    # The machine's own libvirt configuration plus the lab's listener and identity, as on the
    # namespace hosts; the kernel host has cgroups and a security driver of its own.
    conf_dir = stage / "upper" / "etc" / "libvirt"
    conf_dir.mkdir(parents=True)
    for conf in ("libvirtd.conf", "qemu.conf"):
        shutil.copyfile(Path("/etc/libvirt", conf), conf_dir / conf)
    with open(conf_dir / "libvirtd.conf", "a") as f:
        f.write("\n# virtnode lab: plain TCP migration listener, no auth, own identity\n"
                "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n"
                f"host_uuid = \"{ident}\"\n")
    with open(conf_dir / "qemu.conf", "a") as f:
        f.write("\n# virtnode lab\nuser = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n")
    # libvirtd --listen needs the TCP socket unit, which Debian leaves off.
    link_upper(stage, "etc/systemd/system/sockets.target.wants/libvirtd-tcp.socket",
               "/lib/systemd/system/libvirtd-tcp.socket")
    # The machine's default network would start on every host and collide; none autostarts.
    autostart = Path("/etc/libvirt/qemu/networks/autostart")
    if autostart.is_dir():
        whiteouts = stage / "upper" / "etc/libvirt/qemu/networks/autostart"
        whiteouts.mkdir(parents=True, exist_ok=True)
        for entry in autostart.iterdir():
            # An overlay whiteout (a 0:0 character device): the entry is gone in this host.
            os.mknod(whiteouts / entry.name, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    ssh_key = host_dir(name) / "ssh_host_ed25519_key"
    if not ssh_key.exists():
        lab.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_key)])
    for suffix in ("", ".pub"):
        dst = stage / "upper" / "etc" / "ssh" / f"ssh_host_ed25519_key{suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(ssh_key) + suffix, dst)
        dst.chmod(0o600 if not suffix else 0o644)
    write_upper(stage, "etc/ssh/sshd_config.d/virtnode-lab.conf",
                "PermitRootLogin prohibit-password\nUseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
                "MaxSessions 50\nMaxStartups 50:30:100\n")
    home = stage / "upper" / "root"
    lab.seed_root_home(home)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    write_upper(stage, "root/.ssh/authorized_keys", (lab.SSH_DIR / "id_ed25519.pub").read_text(), 0o600)
    for unit in MASK_UNITS + (() if name == STORAGE_SERVER else SERVER_ONLY_UNITS):
        link_upper(stage, f"etc/systemd/system/{unit}", "/dev/null")
    # Only the server has a data disk; the machine's fstab means nothing to a kernel host.
    fstab = "# virtnode lab kernel host\n"
    if name == STORAGE_SERVER:
        fstab += "/dev/ubdb /srv/virtnode ext4 defaults 0 0\n"
        (stage / "upper" / "srv" / "virtnode").mkdir(parents=True)
    write_upper(stage, "etc/fstab", fstab)
    # sanlock without a watchdog device: the roles run with bootstrap_sanlock_use_watchdog false.
    # Debian's unit passes $sanlock_opts (SANLOCKOPTS is EL's name): with the watchdog on and no
    # wdmd, every add_lockspace fails with -203.
    write_upper(stage, "etc/default/sanlock", "sanlock_opts=\"-w 0\"\n")
    # Debian empties /tmp at every boot (tmpfiles' "D /tmp"); on this root that would hide the
    # machine's /tmp, where a checkout, its lab (the guest's kernel) and its collection may live.
    write_upper(stage, "etc/tmpfiles.d/tmp.conf", "# virtnode lab: the machine's /tmp stays visible\nd /tmp 1777 root root -\n")
    # LVM on a host whose udev does not manage dm nodes for it (UML has no udev rules run for dm).
    write_upper(stage, "etc/lvm/lvmlocal.conf",
                "# virtnode lab\nactivation {\n  udev_sync = 0\n  udev_rules = 0\n}\n"
                "devices {\n  obtain_device_list_from_udev = 0\n}\n")
    # The libvirt capability probe costs ~25 s of forks in UML: a cache kept between lab-ups.
    cache = lab.LAB / "kernel-cache" / "libvirt-qemu-capabilities"
    if cache.is_dir():
        shutil.copytree(cache, stage / "upper" / "var/cache/libvirt/qemu/capabilities", dirs_exist_ok=True)
    return stage


def make_disk(name: str, index: int, count: int) -> None:
    stage = stage_files(name, index, count)
    disk = disk_path(name)
    disk.unlink(missing_ok=True)
    lab.run(["truncate", "-s", DISK_SIZE, str(disk)])
    # -d copies the staged upper layer in without mounting anything on the machine.
    lab.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(stage), str(disk)], capture=True)
    if name == STORAGE_SERVER:
        data = data_disk_path(name)
        data.unlink(missing_ok=True)
        lab.run(["truncate", "-s", DATA_DISK_SIZE, str(data)])
        lab.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", str(data)], capture=True)
    shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- boot

def init_script(name: str, index: int) -> str:
    """PID 1 before systemd: the copy-on-write root, the kernel's modules, the NICs' names."""
    version = kernel_version()
    server_net = (f"ip addr add {DHCP_SERVER_IP}/24 dev eth1\nip link set eth1 up\n"
                  if name == STORAGE_SERVER else "")
    renames = "\n".join(f"ip link set vec{i} name {nic}" for i, (_tap, nic, _br) in enumerate(nics(index)))
    return f"""#!/bin/sh
# Generated by tests/lab/kernel_host.py for {name}.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -n -t proc proc /proc
mount -n -t sysfs sysfs /sys
# The kernel fills devtmpfs asynchronously: wait for the disk's node.
n=0; while [ ! -b /dev/ubda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
mount -n -t tmpfs -o mode=755 lab /mnt
mkdir -p /mnt/disk /mnt/root /mnt/modules/lib/modules/{version}
mount -n -t hostfs -o {MODULES_ROOT / version} modules /mnt/modules/lib/modules/{version}
modprobe -d /mnt/modules overlay
mount -n -t ext4 /dev/ubda /mnt/disk
mount -n -t overlay root -o lowerdir=/,upperdir=/mnt/disk/upper,workdir=/mnt/disk/work /mnt/root
mkdir -p /mnt/root/lib/modules/{version}
mount -n --move /mnt/modules/lib/modules/{version} /mnt/root/lib/modules/{version}
{renames}
ip link set lo up
ip addr add {host_ip(index)}/24 dev eth0
ip link set eth0 up
ip route add default via {lab.BRIDGE_IP}
ip addr add {storage_ip(index)}/24 dev eth3
ip link set eth3 up
{server_net}umount /proc /sys
exec switch_root /mnt/root /lib/systemd/systemd --unit=multi-user.target
"""


def uml_argv(name: str, index: int) -> list[str]:
    argv = [UML, f"umid={name}", f"uml_dir={uml_dir(name)}", f"mem={MEMORY}",
            "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={host_dir(name) / 'init.sh'}", f"ubd0={disk_path(name)}",
            *([f"ubd1={data_disk_path(name)}"] if name == STORAGE_SERVER else []),
            "con=null", "con0=null,fd:1", "systemd.show_status=0", "quiet"]
    # gro=1: the machine's TCP stack hands the tap segmentation-offloaded (GSO) frames; without it
    # the vector driver drops them ("Incoming GSO frames and GRO disabled") and machine -> host TCP
    # crawls at ~30 KB/s through retransmissions (a module payload took seconds, SSH keepalives gave up).
    for i, (tap, _nic, _br) in enumerate(nics(index)):
        argv.append(f"vec{i}:transport=tap,ifname={tap},mac={mac(index, i)},gro=1")
    return argv


def start(name: str, index: int) -> None:
    """Start the host's kernel; `wait_ready` waits for the end of its boot."""
    ensure_taps(index)
    uml_dir(name).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(uml_dir(name) / name, ignore_errors=True)
    script = host_dir(name) / "init.sh"
    script.write_text(init_script(name, index))
    script.chmod(0o755)
    console = open(host_dir(name) / "console.log", "a")
    console.write(f"\n==== boot {time.strftime('%H:%M:%S')} ====\n")
    console.flush()
    proc = subprocess.Popen(uml_argv(name, index), stdin=subprocess.DEVNULL, stdout=console,
                            stderr=subprocess.STDOUT, start_new_session=True)
    (host_dir(name) / "started").write_text(f"{proc.pid} {time.time()}\n")


def ssh_argv(name: str, index: int, cmd: list[str] | str, timeout: int = 10) -> list[str]:
    remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
    return ["ssh", "-q", "-i", str(lab.SSH_DIR / "id_ed25519"), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={timeout}",
            "-o", "BatchMode=yes", f"root@{host_ip(index)}", remote]


def run_in(name: str, cmd: list[str] | str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_argv(name, host_index(name), cmd), capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def wait_ready(name: str, index: int, started: float) -> float:
    """Wait for SSH, the end of systemd's boot, libvirtd and sanlock; return the boot's seconds."""
    deadline = started + BOOT_TIMEOUT
    pending = ["ssh", "boot", "libvirtd", "sanlock"]
    checks = {
        "boot": "systemctl is-system-running --wait | grep -qE '^(running|degraded)$'",
        "libvirtd": "virsh -q -c qemu:///system version >/dev/null",
        "sanlock": "sanlock client status >/dev/null",
    }
    while pending:
        if init_pid(name) is None and time.monotonic() > started + 10:
            raise SystemExit(f"lab: {name}'s kernel is not running\n{console_tail(name)}")
        if pending[0] == "ssh":
            try:
                with socket.create_connection((host_ip(index), 22), timeout=1):
                    pending.pop(0)
                    continue
            except OSError:
                pass
        else:
            try:
                if run_in(name, checks[pending[0]], timeout=max(5, deadline - time.monotonic())).returncode == 0:
                    pending.pop(0)
                    continue
            except subprocess.TimeoutExpired:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"lab: {name} not ready after {BOOT_TIMEOUT}s: {', '.join(pending)}\n"
                             f"{diagnose(name)}")
        time.sleep(0.5)
    return time.monotonic() - started


def save_capability_cache(name: str) -> None:
    """Keep libvirt's QEMU probe for the next lab-up (it is keyed by the binaries it describes)."""
    cache = lab.LAB / "kernel-cache" / "libvirt-qemu-capabilities"
    if cache.is_dir() and any(cache.iterdir()):
        return
    cache.mkdir(parents=True, exist_ok=True)
    remote = ssh_argv(name, host_index(name), "cd /var/cache/libvirt/qemu/capabilities && tar -cf - .")
    with subprocess.Popen(remote, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as sender:
        subprocess.run(["tar", "-xf", "-", "-C", str(cache)], stdin=sender.stdout, check=False)
    if sender.returncode != 0:
        shutil.rmtree(cache, ignore_errors=True)


def console_tail(name: str, lines: int = 40) -> str:
    try:
        text = (host_dir(name) / "console.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no console log)"
    return f"console of {name} (last {lines} lines):\n" + "\n".join(text[-lines:])


def diagnose(name: str) -> str:
    parts = [console_tail(name)]
    try:
        failed = run_in(name, "systemctl list-units --failed --plain --no-legend; "
                              "journalctl -b --no-pager -n 40", timeout=20)
        parts.append("failed units and journal:\n" + failed.stdout + failed.stderr)
    except subprocess.TimeoutExpired:
        parts.append("(no answer over SSH)")
    return "\n".join(parts)


def ensure(state: dict, index: int, count: int) -> tuple[str, bool]:
    """Create or start one kernel host; returns (name, whether it was started now)."""
    name = host_name(index)
    host_dir(name).mkdir(parents=True, exist_ok=True)
    if init_pid(name) is not None:
        ensure_taps(index)
        state.setdefault("kernel_hosts", {})[name] = record(name, index)
        return name, False
    kill(name)
    if not disk_path(name).exists():
        make_disk(name, index, count)
    start(name, index)
    state.setdefault("kernel_hosts", {})[name] = record(name, index)
    return name, True


def record(name: str, index: int) -> dict:
    return {"index": index, "kind": "kernel", "ip": host_ip(index), "storage_ip": storage_ip(index),
            "uuid": lab.host_uuid(name)}


def kill(name: str) -> None:
    """SIGKILL to every process of the host at once: a power cut. The disk stays."""
    for _round in range(10):
        pids = process_tree(name)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    shutil.rmtree(uml_dir(name) / name, ignore_errors=True)


def poweroff(name: str, timeout: float = 40) -> None:
    """A clean shutdown through systemd; a kill when it does not end in time."""
    if init_pid(name) is not None:
        try:
            # systemd takes these hosts for containers (the machine's /.dockerenv shows through the
            # root) and so skips its final sync: what was written just before was lost (files came
            # back empty after the reboot). Sync first, as a real host's shutdown does.
            run_in(name, "sync; systemctl --no-block poweroff", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while init_pid(name) is not None and time.monotonic() < deadline:
            time.sleep(0.3)
    kill(name)


def reboot(name: str) -> float:
    """Reboot: a clean shutdown through systemd, then the kernel boots again on the same disk.

    A host that is down (after a crash) is only powered on.

    UML's own restart re-executes the kernel with the tap file descriptors of the old boot still
    open, so the vector NICs cannot attach to their taps again ("uml_tap: failed to select tap
    interface") and init panics; a new process is the reboot that works.
    """
    index = host_index(name)
    t0 = time.monotonic()
    # A host that is down (crashed: `lab.py crash`) is powered on.
    if init_pid(name) is not None:
        poweroff(name, timeout=60)
    start(name, index)
    return wait_ready(name, index, t0)


def destroy(name: str) -> None:
    kill(name)  # its disk goes too: nothing to shut down cleanly for
    remove_taps(host_index(name))
    shutil.rmtree(host_dir(name), ignore_errors=True)


def known_hosts() -> list[str]:
    names = set()
    if lab.HOSTS_DIR.is_dir():
        names |= {p.name for p in lab.HOSTS_DIR.iterdir() if is_kernel_host(p.name)}
    return sorted(names, key=host_index)


def leftover_taps() -> list[str]:
    return [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"vk{lab.LAB_ID}h")]
