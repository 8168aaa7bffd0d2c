"""A lab host booted with systemd as PID 1, for the roles' systemd mode.

The namespace lab hosts (lab.py) run their daemons under the lab's own supervision because this
machine has no systemd as init. This host is the same kind of namespace host on the lab bridge,
but its mount, PID and cgroup namespaces make it a small container in which
/lib/systemd/systemd runs as PID 1 and boots multi-user.target from the machine's installed
Debian: its own /proc, read-only /sys, a cgroup2 subtree of its own, a private /dev, /run and
/tmp, copy-on-write overlays of /etc, /usr and /var (nothing it writes reaches the machine), and
a root home of its own, as a fresh Debian has it (the machine's holds a developer's shell set-up).
So ssh, libvirtd, virtlogd and sanlock start from their Debian unit files, and the roles'
enable/start/restart tasks and the agent's unit run for real, at native speed.

What a container cannot offer is set up as on a host that lacks it, and nothing else:
- no watchdog device, and no module loading or clock setting (the kernel is the machine's; a
  software watchdog armed there would reboot the machine): the roles run with
  bootstrap_sanlock_use_watchdog false;
- sanlock needs the lab's setrlimit shim (no CAP_SYS_RESOURCE here), given by a drop-in;
- units of this machine's own that a virtualization node does not have are masked (postgresql).

    systemd_host.py up | reboot | down | status | exec -- CMD

It needs the lab's bridge (`make lab-up`); `lab.py down` removes it too (its netns is a lab one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402  tests/lab/lab.py
import testhost  # noqa: E402  tests/lab/testhost.py: the Debian host profile (firewall)

# Index 9 of the lab's address plan: far above the 2-3 hosts the suite brings up.
INDEX = 9
NAME = lab.host_name(INDEX)
IP = lab.host_ip(INDEX)
NETNS = lab.netns_name(NAME)
HOST_DIR = lab.host_dir(NAME)
OVERLAYS = ("/etc", "/usr", "/var")
# Device nodes a virtualization host's services open; bound from the machine's /dev.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "kvm", "net/tun", "vhost-net")
MASK_UNITS = ("postgresql.service", "postgresql@.service", "getty@.service", "console-getty.service",
              "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
              "fstrim.timer", "man-db.timer",
              # The kernel hosts' storage server packages, installed on this machine: a container
              # cannot mount nfsd or rpc_pipefs, and serves no NFS, iSCSI, DHCP or multipath.
              "proc-fs-nfsd.mount", "run-rpc_pipefs.mount", "nfs-server.service", "nfs-kernel-server.service",
              "nfs-mountd.service", "nfs-idmapd.service", "nfsdcld.service", "rpc-statd.service",
              "rpc-svcgssd.service", "rpc-gssd.service", "rpcbind.service", "rpcbind.socket",
              "iscsid.service", "iscsid.socket", "open-iscsi.service", "rtslib-fb-targetctl.service",
              "rpc-statd-notify.service", "nfs-blkmap.service", "nfs-client.target", "rpc_pipefs.target",
              "var-lib-nfs-rpc_pipefs.mount", "targetclid.service", "targetclid.socket",
              "multipathd.service", "multipathd.socket", "multipath-tools.service", "dnsmasq.service",
              # No device-mapper in a container: LVM's monitor and event daemon have nothing to watch.
              "lvm2-monitor.service", "lvm2-lvmpolld.socket", "dm-event.socket", "dm-event.service",
              # Installed on this machine for promtool only: no host runs a Prometheus server.
              "prometheus.service")
BOOT_TIMEOUT = 90


def log(msg: str) -> None:
    print(f"systemd-host: {msg}", flush=True)


def cgroup_root() -> Path:
    """The machine's cgroup2 hierarchy: /sys/fs/cgroup/unified on a hybrid machine."""
    for path in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (path / "cgroup.procs").exists() and (path / "cgroup.subtree_control").exists():
            return path
    raise SystemExit("systemd-host: no cgroup2 hierarchy on this machine")


def cgroup_dir() -> Path:
    return cgroup_root() / f"virtnode-lab{lab.LAB_ID}-{NAME}"


def upper(target: str) -> Path:
    return HOST_DIR / "upper" / target.strip("/")


def write(root_target: str, rel: str, content: str, mode: int = 0o644) -> None:
    """Write a file into an overlay's upper layer, i.e. into the host's own view of it."""
    path = upper(root_target) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def mask(unit: str) -> None:
    link = upper("/etc") / "systemd" / "system" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to("/dev/null")


def prepare(use_shim: bool) -> None:
    shutil.rmtree(HOST_DIR, ignore_errors=True)
    for target in OVERLAYS:
        upper(target).mkdir(parents=True)
        (HOST_DIR / "work" / target.strip("/")).mkdir(parents=True)
    write("/etc", "hostname", NAME + "\n")
    write("/etc", "hosts", f"127.0.0.1\tlocalhost\n{IP}\t{NAME}\n{lab.BRIDGE_IP}\tcontroller\n")
    write("/etc", "machine-id", lab.uuid.UUID(lab.host_uuid(NAME)).hex + "\n", 0o444)
    # The Debian host profile's firewall: a drop policy with SSH open; the role adds its ports.
    write("/etc", "nftables.conf", testhost.NFTABLES_CONF, 0o755)
    link = upper("/etc") / "systemd/system/sysinit.target.wants/nftables.service"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/lib/systemd/system/nftables.service")
    write("/etc", "ssh/sshd_config.d/virtnode-lab.conf", "PermitRootLogin prohibit-password\nUseDNS no\n")
    home = HOST_DIR / "root-home"
    lab.seed_root_home(home)
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text((lab.SSH_DIR / "id_ed25519.pub").read_text())
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    if use_shim:
        # Copied in: the checkout may live under /tmp, which is the host's own.
        shim = upper("/usr") / "lib" / "virtnode-lab" / lab.SHIM.name
        shim.parent.mkdir(parents=True)
        shutil.copyfile(lab.SHIM, shim)
        write("/etc", "systemd/system/sanlock.service.d/virtnode-lab-shim.conf",
              f"# lab only: this sandbox refuses sanlock's setrlimit calls\n[Service]\n"
              f"Environment=LD_PRELOAD=/usr/lib/virtnode-lab/{lab.SHIM.name}\n")
    for unit in MASK_UNITS:
        mask(unit)


def init_script() -> str:
    """Runs as PID 1 of the new PID namespace, sets up the host's file systems, execs systemd."""
    overlays = "\n".join(
        f"mount -t overlay overlay -o lowerdir={t},upperdir={upper(t)},workdir={HOST_DIR / 'work' / t.strip('/')} {t}"
        for t in OVERLAYS)
    devices = "\n".join(
        f"mkdir -p \"$(dirname $D/{d})\"; touch $D/{d}; mount --bind /dev/{d} $D/{d}"
        for d in DEVICES if Path("/dev", d).exists())
    return f"""set -eu
hostname {NAME}
# The netns handles of other hosts this mount namespace inherited would keep them alive.
findmnt -rn -t nsfs -o TARGET | while read -r m; do umount -l "$m"; done
{overlays}
mount --bind {HOST_DIR / "root-home"} /root
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
D=/run/.dev
mkdir $D
mount -t tmpfs -o mode=755,nosuid tmpfs $D
{devices}
mkdir $D/pts $D/shm
ln -s pts/ptmx $D/ptmx; ln -s /proc/self/fd $D/fd
ln -s /proc/self/fd/0 $D/stdin; ln -s /proc/self/fd/1 $D/stdout; ln -s /proc/self/fd/2 $D/stderr
mount --move $D /dev
rmdir $D
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t proc -o nosuid,nodev,noexec proc /proc
# Kernel-wide settings stay read-only; this host's network settings are its own.
mount --bind /proc/sys /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi
# `ip netns exec` mounted this network namespace's sysfs on /sys already.
umount -R /sys/fs/cgroup 2>/dev/null || true
mount -o remount,bind,ro,nosuid,nodev,noexec /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
# The kernel and the clock are the machine's: no module loading (no softdog that could reboot
# the machine), no clock setting.
exec setpriv --bounding-set=-sys_module,-sys_time \\
    env -i container=virtnode-lab PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    /lib/systemd/systemd --unit=multi-user.target --log-target=console
"""


def init_pid() -> int | None:
    """Host pid of the container's systemd, while it runs."""
    try:
        pid = int((HOST_DIR / "init.pid").read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "systemd" and lab.pid_alive(pid) else None


def exec_argv(cmd: list[str]) -> list[str]:
    pid = init_pid()
    if pid is None:
        raise SystemExit(f"systemd-host: {NAME} is not up")
    return ["nsenter", "-t", str(pid), "-a", "--"] + cmd


def run_in(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(exec_argv(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def journal(lines: int = 80) -> str:
    if init_pid() is None:
        return "(host not running)"
    out = run_in(["journalctl", "-b", "--no-pager", "-n", str(lines)]).stdout
    failed = run_in(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
    return f"failed units:\n{failed}\njournal (tail):\n{out}"


def up() -> dict:
    """Boot the host afresh and wait for the end of its boot and for SSH; returns what booted."""
    if os.geteuid() != 0:
        raise SystemExit("systemd-host: must run as root")
    if not Path("/sys/class/net", lab.BRIDGE).exists():
        raise SystemExit(f"systemd-host: lab {lab.LAB_ID} is not up (no bridge {lab.BRIDGE}); run make lab-up")
    down()
    lab.ensure_ssh_key()
    use_shim = lab.sanlock_needs_shim()
    if use_shim:
        lab.ensure_shim()
    prepare(use_shim)
    return boot()


def reboot() -> dict:
    """Power off and boot again on the same file systems: what is enabled starts by itself."""
    if init_pid() is None:
        raise SystemExit(f"systemd-host: {NAME} is not up")
    poweroff()
    return boot()


def boot() -> dict:
    t0 = time.monotonic()
    lab.ensure_host_network(NAME, INDEX)
    cgroup = cgroup_dir()
    cgroup.mkdir(exist_ok=True)
    script = HOST_DIR / "init.sh"
    script.write_text(init_script())
    console = open(HOST_DIR / "console.log", "w")
    # The shell moves itself into the host's cgroup, then becomes unshare, whose child is PID 1.
    proc = subprocess.Popen(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" unshare --mount --uts --ipc '
         '--pid --cgroup --fork --propagation private sh "$3"', "sh", str(cgroup), NETNS, str(script)],
        stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = t0 + BOOT_TIMEOUT
    pid = None
    while pid is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"systemd-host: {NAME} did not start systemd:\n{(HOST_DIR / 'console.log').read_text()}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        kids = children.read_text().split() if children.exists() else []
        if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
            pid = int(kids[0])
            (HOST_DIR / "init.pid").write_text(str(pid))
        time.sleep(0.05)
    # Until systemd has its bus up, systemctl answers nothing; then --wait lasts until the boot ends.
    state = ""
    while state not in ("running", "degraded"):
        if not lab.pid_alive(pid) or time.monotonic() > deadline:
            raise SystemExit(f"systemd-host: {NAME} did not finish booting ('{state}')\n{journal()}")
        state = run_in(["systemctl", "is-system-running", "--wait"],
                       timeout=max(1, deadline - time.monotonic())).stdout.strip()
        time.sleep(0.1)
    while True:
        try:
            with lab.socket.create_connection((IP, 22), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"systemd-host: no SSH on {IP}\n{journal()}")
            time.sleep(0.2)
    # A host without a watchdog boots "degraded" (Debian enables wdmd); what failed is returned.
    failed = [line.split()[0] for line in
              run_in(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout.splitlines()]
    info = {"name": NAME, "ip": IP, "pid": pid, "state": state, "failed_units": failed,
            "boot_seconds": round(time.monotonic() - t0, 1)}
    log(f"{NAME}: systemd pid {pid}, boot finished ({state}), SSH on {IP} after {info['boot_seconds']}s")
    return info


def inventory_vars() -> dict:
    return {"ansible_host": IP, "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(lab.SSH_DIR / "id_ed25519"),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"}


def down() -> None:
    """Power the host off, then remove every trace of it."""
    poweroff()
    shutil.rmtree(HOST_DIR, ignore_errors=True)


def poweroff() -> None:
    """Let systemd stop its units and exit; then remove the namespaces and the cgroup."""
    pid = init_pid()
    if pid is not None:
        # SIGRTMIN+4: systemd's "poweroff"; as PID 1 of a container it then exits.
        os.kill(pid, signal.SIGRTMIN + 4)
        deadline = time.monotonic() + 30
        while lab.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if lab.pid_alive(pid):
            log(f"{NAME}: no clean poweroff in 30 s, killing it")
            os.kill(pid, signal.SIGKILL)
    lab.destroy_host(NAME)
    lab.remove_cgroup_tree(cgroup_dir())
    (HOST_DIR / "init.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("up")
    sub.add_parser("reboot")
    sub.add_parser("down")
    sub.add_parser("status")
    ex = sub.add_parser("exec")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "up":
        print(json.dumps(up(), indent=2))
    elif args.action == "reboot":
        print(json.dumps(reboot(), indent=2))
    elif args.action == "down":
        down()
    elif args.action == "status":
        pid = init_pid()
        print(f"{NAME} {IP} " + (f"systemd pid {pid}: {run_in(['systemctl', 'is-system-running']).stdout.strip()}"
                                 if pid else "down"))
    else:
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        os.execvp("nsenter", exec_argv(cmd))


if __name__ == "__main__":
    main()
