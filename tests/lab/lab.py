"""The project's lab: several virtualization hosts on one machine.

Each host is a network namespace on a lab bridge plus a private mount and UTS
namespace (its own hostname, /run, /root, /etc/libvirt, /etc/pki, /var/lib/libvirt, /var/log,
machine-id), running its own sshd, virtlogd, libvirtd (TCP listener for
migration) and sanlock daemon. A directory outside the namespaces is the
shared storage, visible at the same path on every host.

    lab.py up [--hosts N] [--kernel-hosts K]
                              create or repair the lab (idempotent)
    lab.py down               remove everything it created (idempotent)
    lab.py status             one line per host
    lab.py exec HOST -- CMD   run CMD inside a host (a kernel host: over SSH)
    lab.py crash HOST         kill a host outright (its sanlock stops renewing)
    lab.py reboot HOST        reboot a kernel host (power on a crashed one), wait for the end of its boot

Beside the namespace hosts (vnhostN) the lab has kernel hosts (vnkernN, tests/lab/kernel_host.py):
User-mode Linux with a kernel of their own, for what the machine's kernel lacks (device-mapper,
bonding, VLANs, NFS, iSCSI); the first of them is also the lab's storage server
(tests/lab/storage_server.py).

Only the standard library is used; it runs as root.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
# Several labs can coexist (e.g. a developer's and a test run's): each id has
# its own directory, bridge, subnet and namespace names.
LAB_ID = int(os.environ.get("VIRTNODE_LAB_ID", "0"))
if not 0 <= LAB_ID <= 9:
    raise SystemExit("lab: VIRTNODE_LAB_ID must be 0..9")
LAB = Path(os.environ.get("VIRTNODE_LAB_DIR", REPO / (".lab" if LAB_ID == 0 else f".lab{LAB_ID}")))
HOSTS_DIR = LAB / "hosts"
SHARED_DIR = LAB / "shared"
SSH_DIR = LAB / "ssh"
GUEST_DIR = LAB / "guest"
STATE_FILE = LAB / "state.json"
INVENTORY = LAB / "inventory.yml"
SHIM_SRC = Path(__file__).with_name("setrlimit_shim.c")
SHIM = LAB / "shim" / "setrlimit_shim.so"

BRIDGE = f"vnlab{LAB_ID}"
# A second, address-less segment for VM traffic: every host's eth1 is on it,
# so a VM network bridged on eth1 exists on all hosts and guests can migrate.
VM_BRIDGE = f"vnlab{LAB_ID}v"
SUBNET_PREFIX = f"10.251.{LAB_ID}."
BRIDGE_IP = SUBNET_PREFIX + "1"
NETNS_PREFIX = f"vnlab{LAB_ID}-"
HOST_PREFIX = "vnhost"
# Stable identities, so a host keeps its UUID across lab-down/lab-up.
UUID_NAMESPACE = uuid.UUID("3f0f8f7e-6a52-4c0e-9d2b-5b7e1c9a0d11")

# Per-host directories bind-mounted over the machine's own.
# /etc/pki holds libvirt's TLS certificates (CA, server, client) at paths the libvirt client fixes.
# /root is a fresh Debian root home: the machine's may hold a developer's shell set-up (pyenv and
# the like), which bash would run for every command Ansible sends over SSH.
# /usr/lib/virtnode-agent is where node_agent installs the agent: shared, two labs of different
# checkouts would overwrite each other's copy.
BIND_DIRS = ("/run", "/etc/libvirt", "/etc/pki", "/var/lib/libvirt", "/var/cache/libvirt",
             "/var/log", "/etc/virtnode", "/var/lib/virtnode", "/rhev", "/root",
             "/usr/lib/virtnode-agent")
BIND_FILES = ("/etc/hosts", "/etc/machine-id")
READY_TIMEOUT = 60


def log(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=capture, check=False, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if capture else ""
        raise SystemExit(f"lab: command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


def host_name(index: int) -> str:
    return f"{HOST_PREFIX}{index}"


def host_ip(index: int) -> str:
    return f"{SUBNET_PREFIX}{10 + index}"


def netns_name(name: str) -> str:
    return NETNS_PREFIX + name


def host_uuid(name: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, name))


def host_dir(name: str) -> Path:
    return HOSTS_DIR / name


def bind_source(name: str, target: str) -> Path:
    return host_dir(name) / "root" / target.strip("/").replace("/", "_")


def load_state() -> dict:
    if STATE_FILE.exists():
        return json.loads(STATE_FILE.read_text())
    return {"hosts": {}, "created_mountpoints": []}


@contextlib.contextmanager
def lab_lock():
    """Serializes the commands that change the lab: the suite's two streams (tests/run_integration.sh)
    crash, reboot and bring back hosts of one lab at the same time."""
    LAB.mkdir(parents=True, exist_ok=True)
    with open(LAB / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def save_state(state: dict) -> None:
    LAB.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, STATE_FILE)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def netns_exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def netns_pids(ns: str) -> list[int]:
    if not netns_exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False, capture=True).stdout
    return [int(p) for p in out.split()]


def in_host(pid: int, cmd: list[str]) -> list[str]:
    return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "--"] + cmd


# ---------------------------------------------------------------- machine-wide parts

def ensure_shim() -> None:
    if SHIM.exists() and SHIM.stat().st_mtime >= SHIM_SRC.stat().st_mtime:
        return
    SHIM.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(SHIM), str(SHIM_SRC), "-ldl"])
    log(f"built {SHIM.relative_to(REPO)}")


def sanlock_needs_shim() -> bool:
    """True where this sandbox refuses the rlimits sanlock raises at start."""
    import resource
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
        return False
    except (ValueError, OSError):
        return True


def ensure_storage_owner() -> None:
    """Give the machine the ids of shared storage's owner (36:36, VDSM's vdsm:kvm), as bootstrap does.

    The namespace hosts share the machine's /etc: made once here, concurrent bootstrap runs on
    several hosts find the ids instead of racing to create them. (The kernel and systemd hosts have
    their own /etc, where bootstrap itself creates them.)
    """
    import grp
    import pwd
    try:
        group = grp.getgrgid(36).gr_name
    except KeyError:
        run(["groupadd", "--system", "--gid", "36", "vdsm"])
        group = "vdsm"
    try:
        pwd.getpwuid(36)
    except KeyError:
        run(["useradd", "--system", "--uid", "36", "--gid", "36", "--no-create-home", "--home-dir", "/var/lib/vdsm",
             "--shell", "/usr/sbin/nologin", "--comment", "Owner of shared storage (VDSM's vdsm)", "vdsm"])
    if group not in {g.gr_name for g in grp.getgrall() if "sanlock" in g.gr_mem}:
        try:
            pwd.getpwnam("sanlock")
        except KeyError:
            return
        run(["usermod", "--append", "--groups", group, "sanlock"])


def ensure_ssh_key() -> None:
    key = SSH_DIR / "id_ed25519"
    if not key.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(SSH_DIR, 0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtnode-lab", "-f", str(key)])
        log("generated lab SSH key")
    (SSH_DIR / "authorized_keys").write_text((SSH_DIR / "id_ed25519.pub").read_text())


def ensure_guest() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import guest  # tests/lab/guest.py
    return guest.build(GUEST_DIR)


def ensure_bridge() -> None:
    for bridge in (BRIDGE, VM_BRIDGE):
        if not Path("/sys/class/net", bridge).exists():
            run(["ip", "link", "add", bridge, "type", "bridge"])
            log(f"created bridge {bridge}")
        run(["ip", "link", "set", bridge, "up"])
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE], capture=True).stdout
    if f" {BRIDGE_IP}/24 " not in addrs:
        run(["ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE])


def ensure_mountpoints(state: dict) -> None:
    for target in BIND_DIRS:
        if not os.path.isdir(target):
            os.makedirs(target)
            state["created_mountpoints"].append(target)


def seed_root_home(home: Path) -> None:
    """A root home as a fresh Debian has it: Debian's shell start-up files and nothing else."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    for name in (".bashrc", ".profile"):
        if Path("/etc/skel", name).exists() and not (home / name).exists():
            shutil.copyfile(Path("/etc/skel", name), home / name)


def write_hosts_file(count: int) -> Path:
    path = LAB / "etc_hosts"
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{host_ip(i)}\t{host_name(i)}" for i in range(1, count + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- one host

def prepare_host_dirs(name: str, index: int, hosts_file: Path) -> None:
    hdir = host_dir(name)
    fresh = not (hdir / "root").exists()
    for target in BIND_DIRS:
        bind_source(name, target).mkdir(parents=True, exist_ok=True)
    if fresh:
        # Each host starts from the machine's packaged libvirt configuration.
        run(["cp", "-a", "/etc/libvirt/.", str(bind_source(name, "/etc/libvirt"))])
        run(["cp", "-a", "/var/lib/libvirt/.", str(bind_source(name, "/var/lib/libvirt"))])
        autostart = bind_source(name, "/etc/libvirt") / "qemu" / "networks" / "autostart"
        if autostart.is_dir():
            for link in autostart.iterdir():
                link.unlink()
        with open(bind_source(name, "/etc/libvirt") / "libvirtd.conf", "a") as f:
            f.write("\n# virtnode lab: plain TCP migration listener, no auth, own identity\n"
                    "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n"
                    f"host_uuid = \"{host_uuid(name)}\"\n")
        with open(bind_source(name, "/etc/libvirt") / "qemu.conf", "a") as f:
            # No cgroups: hosts share the machine's cgroup tree and would collide.
            # swtpm as root like QEMU: the machine's swtpm-localca CA directory is shared by every host,
            # and whatever user first wrote it must be able to again.
            f.write("\n# virtnode lab\nuser = \"root\"\ngroup = \"root\"\n"
                    "swtpm_user = \"root\"\nswtpm_group = \"root\"\n"
                    "security_driver = \"none\"\ncgroup_controllers = [ ]\n"
                    # VM leases enforced as bootstrap sets it (bootstrap_libvirt_lock_manager).
                    "lock_manager = \"sanlock\"\n")
        with open(bind_source(name, "/etc/libvirt") / "qemu-sanlock.conf", "a") as f:
            f.write("\n# virtnode lab, as bootstrap writes it\nauto_disk_leases = 0\nrequire_lease_for_disks = 0\n")
    seed_root_home(bind_source(name, "/root"))
    log_dir = bind_source(name, "/var/log")
    (log_dir / "libvirt" / "qemu").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hosts_file, hdir / "root" / "etc_hosts")
    (hdir / "root" / "etc_machine-id").write_text(uuid.UUID(host_uuid(name)).hex + "\n")
    ssh = hdir / "ssh"
    ssh.mkdir(exist_ok=True)
    if not (ssh / "ssh_host_ed25519_key").exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "ssh_host_ed25519_key")])
    (ssh / "sshd_config").write_text(
        f"ListenAddress {host_ip(index)}\n"
        "Port 22\n"
        f"HostKey {ssh / 'ssh_host_ed25519_key'}\n"
        "PidFile /run/sshd.pid\n"
        f"AuthorizedKeysFile {SSH_DIR / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxSessions 50\n"
        "MaxStartups 50:30:100\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )


def host_nics(index: int) -> list[tuple[str, str, str]]:
    """(outer veth end, NIC name inside the host, lab bridge) of each host NIC."""
    return [(f"vnlab{LAB_ID}-h{index}", "eth0", BRIDGE), (f"vnlab{LAB_ID}-v{index}", "eth1", VM_BRIDGE)]


def ensure_host_network(name: str, index: int, addresses: bool = True) -> None:
    """The host's namespace and NICs, and (when asked) its address and default route.

    A running host is repaired without touching addresses: tests may have moved
    them, e.g. onto a bridge over eth0, and take care of them themselves.
    """
    ns = netns_name(name)
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns])
    for veth, nic, bridge in host_nics(index):
        peer = run(["ip", "-n", ns, "link", "show", "dev", nic], check=False, capture=True)
        if Path("/sys/class/net", veth).exists() and peer.returncode != 0:
            run(["ip", "link", "del", veth])  # a stale end left by a half-removed host
        if not Path("/sys/class/net", veth).exists():
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", nic, "netns", ns])
        run(["ip", "link", "set", veth, "master", bridge, "up"])
        run(["ip", "-n", ns, "link", "set", nic, "up"])
    if not addresses:
        return
    addrs = run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"], capture=True).stdout
    if f" {host_ip(index)}/24 " not in addrs:
        run(["ip", "-n", ns, "addr", "add", f"{host_ip(index)}/24", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    routes = run(["ip", "-n", ns, "route", "show", "default"], capture=True).stdout
    if not routes.strip():
        run(["ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP])


def start_holder(name: str, index: int) -> int:
    """Create the host's namespaces; return the pid that keeps them alive."""
    ns = netns_name(name)
    ensure_host_network(name, index)
    mounts = [f"mkdir -p {t} && mount --bind {bind_source(name, t)} {t}" for t in BIND_DIRS]
    mounts += [f"mount --bind {host_dir(name) / 'root' / t.strip('/').replace('/', '_')} {t}"
               for t in BIND_FILES]
    # Drop the copies of other hosts' /run/netns handles this mount namespace
    # inherited: they would keep those namespaces (and their veths) alive
    # after `ip netns del`.
    # hugetlbfs at /dev/hugepages, as systemd's dev-hugepages.mount gives a host: libvirtd looks for it
    # when it starts, and hugepage-backed guests need it (the pages themselves are the kernel's, shared).
    forget_netns = "findmnt -rn -t nsfs -o TARGET | while read -r m; do umount -l \"$m\"; done\n"
    script = "set -e\n" + f"hostname {name}\n" + forget_netns + "\n".join(mounts) + "\n" + \
        "mkdir -p /run/sshd /run/libvirt /run/sanlock /run/lock\n" + \
        "mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages\n" + \
        "echo ready > /run/virtnode-lab-host\n" + "exec sleep infinity\n"
    (host_dir(name) / "holder.sh").write_text(script)
    logf = open(host_dir(name) / "holder.log", "w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "-m", "-u", "--propagation", "private",
         "sh", str(host_dir(name) / "holder.sh")],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    marker = bind_source(name, "/run") / "virtnode-lab-host"
    deadline = time.monotonic() + 10
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lab: host {name} failed to start its namespaces:\n"
                             + (host_dir(name) / "holder.log").read_text())
        time.sleep(0.05)
    return proc.pid


def daemon_pid(name: str, pidfile: str) -> int | None:
    path = bind_source(name, "/run") / pidfile
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# pid file under the host's /run, command line
def daemons(use_shim: bool) -> list[tuple[str, str, list[str], dict]]:
    sanlock_env = {"LD_PRELOAD": str(SHIM)} if use_shim else {}
    return [
        # sanlock before libvirtd: libvirt's sanlock lock manager registers every QEMU with it.
        # -w 0: the lab has no watchdog device.
        ("sanlock", "sanlock/sanlock.pid", ["sanlock", "daemon", "-w", "0", "-U", "root", "-G", "root"],
         sanlock_env),
        ("virtlogd", "virtlogd.pid", ["virtlogd", "-d"], {}),
        ("libvirtd", "libvirtd.pid", ["libvirtd", "-d", "--listen"], {}),
        ("sshd", "sshd.pid", ["/usr/sbin/sshd", "-f", "{ssh}/sshd_config", "-E", "/var/log/sshd.log"], {}),
    ]


def ensure_daemons(name: str, holder: int, use_shim: bool) -> list[str]:
    started = []
    for label, pidfile, cmd, extra_env in daemons(use_shim):
        if pid_alive(daemon_pid(name, pidfile)):
            continue
        cmd = [c.replace("{ssh}", str(host_dir(name) / "ssh")) for c in cmd]
        env = dict(os.environ, **extra_env)
        proc = run(in_host(holder, cmd), check=False, capture=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"lab: {label} failed to start on {name}: {proc.stderr.strip()}")
        started.append(label)
    return started


def wait_ready(name: str, index: int, holder: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    checks = {
        "libvirtd": in_host(holder, ["virsh", "-q", "-c", "qemu:///system", "version"]),
        "sanlock": in_host(holder, ["sanlock", "client", "status"]),
    }
    pending = dict(checks)
    while pending:
        for label, cmd in list(pending.items()):
            if run(cmd, check=False, capture=True).returncode == 0:
                del pending[label]
        try:
            with socket.create_connection((host_ip(index), 22), timeout=1):
                ssh_ok = True
        except OSError:
            ssh_ok = False
        if not pending and ssh_ok:
            return
        if time.monotonic() > deadline:
            missing = list(pending) + ([] if ssh_ok else ["sshd"])
            raise SystemExit(f"lab: {name} not ready after {READY_TIMEOUT}s: {', '.join(missing)}; "
                             f"logs in {host_dir(name)}")
        time.sleep(0.2)


def ensure_host(state: dict, index: int, use_shim: bool) -> None:
    """Create or repair one host's namespaces and start its missing daemons."""
    name = host_name(index)
    info = state["hosts"].get(name, {})
    holder = info.get("holder")
    ns = netns_name(name)
    if not (pid_alive(holder) and netns_exists(ns) and holder in netns_pids(ns)):
        if netns_exists(ns) or info:
            log(f"{name}: incomplete, recreating")
            destroy_host(name)
        # A host coming back starts with an empty /run, as after a reboot:
        # stale pid files and sockets of its previous life must not count.
        shutil.rmtree(bind_source(name, "/run"), ignore_errors=True)
        prepare_host_dirs(name, index, LAB / "etc_hosts")
        holder = start_holder(name, index)
        log(f"{name}: namespaces up (holder pid {holder})")
    else:
        prepare_host_dirs(name, index, LAB / "etc_hosts")
        ensure_host_network(name, index, addresses=False)
    state["hosts"][name] = {"index": index, "holder": holder, "ip": host_ip(index),
                            "netns": ns, "uuid": host_uuid(name)}
    save_state(state)
    started = ensure_daemons(name, holder, use_shim)
    if started:
        log(f"{name}: started {', '.join(started)}")


def destroy_host(name: str) -> None:
    ns = netns_name(name)
    pids = netns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in netns_pids(ns) if pid_alive(p)]
        if not pids:
            break
    if netns_exists(ns):
        run(["ip", "netns", "del", ns], check=False)
    # The kernel frees a namespace lazily; delete its veths now so nothing lingers.
    for veth, _nic, _bridge in host_nics(int(name[len(HOST_PREFIX):])):
        if Path("/sys/class/net", veth).exists():
            run(["ip", "link", "del", veth], check=False, capture=True)


def remove_cgroup_tree(top: Path, timeout: float = 20.0) -> None:
    """Remove a cgroup and the ones its processes made below it, deepest first.

    Processes of a host whose init just died are killed by the kernel but can take a moment to
    leave their cgroups (more so on a loaded machine): until then rmdir says EBUSY. Whatever is
    still inside is killed, and the removal retried until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while top.exists():
        for group in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                _kill_cgroup_members(group)
        if top.exists():
            time.sleep(0.1)


def _kill_cgroup_members(group: Path) -> None:
    try:
        members = (group / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return
    for pid in members:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_inventory(state: dict, guest: dict) -> None:
    """Groups by kind: lab (namespace hosts), kernel (kernel hosts), storage_server (its first)."""
    hosts = {name: {"ansible_host": h["ip"], "virtnode_lab_host_uuid": h["uuid"]}
             for name, h in sorted(state["hosts"].items(), key=lambda kv: kv[1]["index"])}
    kernel = {name: {"ansible_host": h["ip"], "virtnode_lab_host_uuid": h["uuid"],
                     "virtnode_lab_storage_ip": h["storage_ip"]}
              for name, h in sorted(state.get("kernel_hosts", {}).items(), key=lambda kv: kv[1]["index"])}
    # Namespace hosts share the machine's /etc: bootstrap must not write its multipath.conf there
    # (the kernel hosts, with /etc of their own, test it).
    children = {"lab": {"hosts": hosts, "vars": {"virtnode_lab_shared_dir": str(SHARED_DIR),
                                                 "bootstrap_block_storage": False}}}
    if kernel:
        import kernel_host
        import storage_server
        children["kernel"] = {"hosts": kernel, "vars": storage_server.inventory_vars()}
        children["storage_server"] = {"hosts": {kernel_host.STORAGE_SERVER: {}}}
    inv = {"all": {
        "vars": {
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(SSH_DIR / "id_ed25519"),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                       "-o LogLevel=ERROR",
            "virtnode_lab_guest_kernel": guest["kernel"],
            "virtnode_lab_guest_initrd": guest["initrd"],
            "virtnode_lab_guest_cmdline": guest["cmdline_base"],
        },
        "children": children}}
    # JSON is valid YAML; keeps the tool free of third-party modules.
    # Replaced whole: ansible-playbook runs of the other stream read it at any moment.
    tmp = INVENTORY.with_suffix(".tmp")
    tmp.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, INVENTORY)


def kernel_hosts_up(state: dict, count: int) -> None:
    """Start (or keep) `count` kernel hosts, in parallel; the first one serves storage."""
    import kernel_host
    import storage_server
    if count and not Path(kernel_host.UML).exists():
        raise SystemExit("lab: user-mode-linux is not installed; run make deps")
    kernel_host.ensure_storage_bridge()
    hosts = state.setdefault("kernel_hosts", {})
    for name in list(hosts):
        if hosts[name]["index"] > count:
            kernel_host.destroy(name)
            del hosts[name]
            log(f"{name}: removed")
    started = {}
    for index in range(1, count + 1):
        name, fresh = kernel_host.ensure(state, index, count)
        if fresh:
            started[name] = time.monotonic()
    save_state(state)
    for name, t0 in started.items():
        seconds = kernel_host.wait_ready(name, kernel_host.host_index(name), t0)
        log(f"{name}: booted, ready at {kernel_host.host_ip(kernel_host.host_index(name))} in {seconds:.1f}s")
    if count:
        kernel_host.save_capability_cache(kernel_host.host_name(1))
        storage_server.ensure(count)


# ---------------------------------------------------------------- commands

def cmd_up(args) -> None:
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root")
    t0 = time.monotonic()
    LAB.mkdir(parents=True, exist_ok=True)
    state = load_state()
    use_shim = sanlock_needs_shim()
    if use_shim:
        ensure_shim()
    ensure_ssh_key()
    ensure_storage_owner()
    guest = ensure_guest()
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    ensure_mountpoints(state)
    ensure_bridge()
    write_hosts_file(args.hosts)
    # Hosts beyond the requested count are removed, so HOSTS=N is the whole truth.
    for name in list(state["hosts"]):
        if state["hosts"][name]["index"] > args.hosts:
            destroy_host(name)
            del state["hosts"][name]
    save_state(state)
    # Start every host first, then wait: the daemons come up in parallel.
    for index in range(1, args.hosts + 1):
        ensure_host(state, index, use_shim)
    for index in range(1, args.hosts + 1):
        wait_ready(host_name(index), index, state["hosts"][host_name(index)]["holder"])
        log(f"{host_name(index)}: ready at {host_ip(index)}")
    # Without --kernel-hosts the kernel hosts are left as they are: a test that brings back a
    # crashed namespace host must not boot or reconfigure kernel hosts another test is using.
    if args.kernel_hosts is not None:
        kernel_hosts_up(state, args.kernel_hosts)
    write_inventory(state, guest)
    log(f"{args.hosts} namespace host(s) and {len(state.get('kernel_hosts', {}))} kernel host(s) ready in "
        f"{time.monotonic() - t0:.1f}s; inventory {INVENTORY}")


def cmd_down(args) -> None:
    state = load_state()
    names = set(state["hosts"])
    names |= {ns[len(NETNS_PREFIX):] for ns in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
              if ns.startswith(NETNS_PREFIX)}
    for name in sorted(names):
        destroy_host(name)
        log(f"{name}: removed")
    import kernel_host
    for name in sorted(set(state.get("kernel_hosts", {})) | set(kernel_host.known_hosts())):
        kernel_host.destroy(name)
        log(f"{name}: removed")
    for tap in kernel_host.leftover_taps():
        run(["ip", "link", "del", tap], check=False, capture=True)
    for bridge in (BRIDGE, VM_BRIDGE, kernel_host.STORAGE_BRIDGE):
        if Path("/sys/class/net", bridge).exists():
            run(["ip", "link", "del", bridge], check=False)
            log(f"removed bridge {bridge}")
    # Removing a directory detaches the mounts on it in every namespace, so the
    # mount points stay while any other lab still has hosts.
    other_labs = [ns for ns in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
                  if ns.startswith("vnlab") and not ns.startswith(NETNS_PREFIX)]
    for target in reversed(state.get("created_mountpoints", []) if not other_labs else []):
        try:
            os.rmdir(target)
        except OSError:
            pass
    # The systemd host's cgroup (tests/lab/systemd_host.py), empty once its processes are gone.
    for cgroup in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        for top in cgroup.glob(f"virtnode-lab{LAB_ID}-*"):
            remove_cgroup_tree(top)
    # Lab state goes; the cached guest, SSH key and shim stay for the next lab-up.
    for path in (HOSTS_DIR, SHARED_DIR):
        shutil.rmtree(path, ignore_errors=True)
    for path in (STATE_FILE, INVENTORY, LAB / "etc_hosts"):
        if path.exists():
            path.unlink()
    log("lab is down")


def cmd_status(args) -> None:
    state = load_state()
    if not state["hosts"] and not state.get("kernel_hosts"):
        print("lab: no hosts")
        return
    import kernel_host
    for name, h in sorted(state.get("kernel_hosts", {}).items(), key=lambda kv: kv[1]["index"]):
        pid = kernel_host.init_pid(name)
        print(f"{name} {h['ip']} kernel={'up (pid %d, %d processes)' % (pid, len(kernel_host.process_tree(name))) if pid else 'DOWN'}")
    for name, h in sorted(state["hosts"].items(), key=lambda kv: kv[1]["index"]):
        parts = [f"{name} {h['ip']} holder={'up' if pid_alive(h['holder']) else 'DOWN'}"]
        for label, pidfile, _cmd, _env in daemons(False):
            parts.append(f"{label}={'up' if pid_alive(daemon_pid(name, pidfile)) else 'DOWN'}")
        print(" ".join(parts))


def cmd_crash(args) -> None:
    """Kill a host outright (SIGKILL, no clean-up), as a power failure would."""
    state = load_state()
    if args.host in state.get("kernel_hosts", {}):
        import kernel_host
        kernel_host.kill(args.host)
        log(f"{args.host}: crashed (lab-up boots it again on the same disk)")
        return
    if args.host not in state["hosts"]:
        raise SystemExit(f"lab: no host {args.host}")
    ns = netns_name(args.host)
    # Freeze first, then kill: no process of the host (sanlock, libvirtd, qemu, sshd, a module) gets to
    # react to another's death, fork, write or release anything; all of them stop at the same moment.
    stopped: set[int] = set()
    for _round in range(20):
        fresh = [pid for pid in netns_pids(ns) if pid not in stopped]
        if not fresh:
            break
        for pid in fresh:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            stopped.add(pid)
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    destroy_host(args.host)
    log(f"{args.host}: crashed (lab-up brings it back)")


def cmd_reboot(args) -> None:
    state = load_state()
    if args.host not in state.get("kernel_hosts", {}):
        raise SystemExit(f"lab: {args.host} is not a kernel host")
    import kernel_host
    log(f"{args.host}: rebooted, ready in {kernel_host.reboot(args.host):.1f}s")


def cmd_exec(args) -> None:
    state = load_state()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.host in state.get("kernel_hosts", {}):
        import kernel_host
        os.execvp("ssh", kernel_host.ssh_argv(args.host, kernel_host.host_index(args.host), cmd))
    if args.host not in state["hosts"]:
        raise SystemExit(f"lab: no host {args.host}; hosts: {', '.join(sorted(state['hosts'])) or 'none'}")
    os.execvp("nsenter", in_host(state["hosts"][args.host]["holder"], cmd))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    up = sub.add_parser("up", help="create or repair the lab")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--kernel-hosts", type=int, default=None,
                    help="User-mode Linux hosts (0-9); the first is the storage server. Without it the "
                         "kernel hosts are left as they are (make lab-up gives KERNEL_HOSTS, default 2)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="remove the lab").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show hosts").set_defaults(func=cmd_status)
    crash = sub.add_parser("crash", help="kill a host outright, as a power failure would")
    crash.add_argument("host")
    crash.set_defaults(func=cmd_crash)
    reboot = sub.add_parser("reboot", help="reboot a kernel host (power on a crashed one) and wait for its boot to end")
    reboot.add_argument("host")
    reboot.set_defaults(func=cmd_reboot)
    ex = sub.add_parser("exec", help="run a command inside a host")
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    args = parser.parse_args(argv)
    if getattr(args, "hosts", 1) < 1 or getattr(args, "hosts", 1) > 50:
        parser.error("--hosts must be between 1 and 50")
    if not 0 <= (getattr(args, "kernel_hosts", 0) or 0) <= 9:
        parser.error("--kernel-hosts must be between 0 and 9")
    if args.command_name in ("up", "down", "crash", "reboot"):
        with lab_lock():
            args.func(args)
    else:
        args.func(args)


if __name__ == "__main__":
    main()
