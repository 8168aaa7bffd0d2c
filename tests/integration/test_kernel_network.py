"""Host networks on a real kernel: the network module on the lab's kernel hosts.

vnkern2 (kernel[1]) is the host under test. Its eth1 and eth2 are on the VM segment, where vnkern1
(kernel[0], the storage server) has 10.253.<lab>.1 on its eth1 and serves DHCP (dnsmasq, 2 min
leases); the tests give vnkern1 a VLAN 10 device with 10.254.<lab>.1 as the peer of the networks
made on vnkern2, and remove it at the end.

- Bonds over eth1+eth2, active-backup then balance-xor (a mode change re-creates the bond, and the
  kernel takes the VLAN on it along), a VLAN on the bond, a bridge on the VLAN, the MTU lowered and
  raised through bond -> VLAN -> bridge, one the NIC cannot take (rolled back), the kernel's view
  (/proc/net/bonding, ip -d link), pings to the peer, and a second run that changes nothing.
  802.3ad is not tested: it needs an LACP partner, and the lab's VM segment is a Linux bridge,
  which does not speak LACP.
- DHCP: a network on the bond gets an address from dnsmasq, keeps it across a renewal (forced
  with udhcpc's SIGUSR1), and releases it when the network is removed (dnsmasq's lease file).
- The connectivity-loss rollback of a bond change: the controller reaches vnkern2 through the bond
  (SSH through vnkern1 to the VLAN address); an ARP monitor aimed at an address nobody has takes
  every slave down, and the host rolls the change back by itself.
- Boot: bootstrap's boot-time restore (its network_restore.yml, the tasks its systemd path runs),
  a saved configuration and an unsaved change, then a real reboot: the saved networks come back
  before libvirtd, the unsaved one does not.
- A power cut in the middle of an apply (lab.py crash): after the next boot the saved networks are
  back, no transaction is left pending, and the same task converges.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import INVENTORY, LAB_ID, REPO, ansible_env, lab_exec, run_playbook, wait_for

PEER_VLAN_DEV = "eth1.10"
PEER_IP = f"10.254.{LAB_ID}.1"
HOST_IP = f"10.254.{LAB_ID}.2/24"
UNUSED_IP = f"10.254.{LAB_ID}.99"  # nobody answers ARP for it
LEASES = "/var/lib/misc/dnsmasq.leases"
RESTORE_FILES = ["/usr/lib/virtnode-network", "/etc/systemd/system/virtnode-network-restore.service",
                 "/etc/systemd/system/multi-user.target.wants/virtnode-network-restore.service"]
PERSISTENT = "/var/lib/virtnode/network/persistent/netconf.json"
TRANSACTIONS = "/var/lib/virtnode/network/transactions"

AB = {"name": "vnbond0", "mode": "active-backup", "options": {"miimon": "100"}, "nics": ["eth1", "eth2"]}
XOR = {"name": "vnbond0", "mode": "balance-xor", "options": {"miimon": "100", "xmit_hash_policy": "layer2+3"},
       "nics": ["eth1", "eth2"]}
VLAN_NET = {"name": "vnvlan", "bond": "vnbond0", "vlan": 10, "ipv4": {"addresses": [HOST_IP]}}
DHCP_NET = {"name": "vndhcp", "bond": "vnbond0", "ipv4": {"method": "dhcp"}}
UNSAVED_NET = {"name": "vnunsaved"}  # an isolated bridge
ALL_ABSENT = {"networks": [{"name": n, "state": "absent"} for n in ("vnvlan", "vndhcp", "vnunsaved")],
              "bonds": [{"name": "vnbond0", "state": "absent"}], "connectivity_check": False}


def network(**args) -> dict:
    return {"virtnode.kvm.network": args}


def run(tmp_path, name: str, plays: list, timeout: int = 600) -> dict:
    """Run ``plays`` (the last task of the last play may save results to OUT); return what it saved."""
    out = tmp_path / f"{name}.json"
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps(plays).replace("@OUT@", str(out)))
    started = time.monotonic()
    proc = run_playbook(playbook, timeout=timeout)
    print(f"{name}: {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return json.loads(out.read_text()) if out.exists() else {}


def save(names: list[str]) -> dict:
    """A task that writes the registered results ``names`` to the run's output file on the controller."""
    content = "{{ {%s} | to_json }}" % ", ".join(f"'{n}': {n}" for n in names)
    return {"name": "Save the results", "ansible.builtin.copy": {"content": content, "dest": "@OUT@"},
            "delegate_to": "localhost"}


def play(host: str, tasks: list, **extra) -> dict:
    return {"name": "Networks of the host under test", "hosts": host, "gather_facts": False, "tasks": tasks, **extra}


def kernel_view(register: str) -> dict:
    """A task reading what the kernel has: /proc/net/bonding, ip -d link, and a ping to the peer."""
    return {"name": f"The kernel's view ({register})", "register": register, "changed_when": False,
            "ansible.builtin.shell": "cat /proc/net/bonding/vnbond0; echo '@@'; ip -j -d link show; echo '@@'; "
                                     f"busybox ping -c 3 -W 2 {PEER_IP} | tail -n 2"}


def parse_view(result: dict) -> tuple[dict, dict, str]:
    bonding, links, ping = result["stdout"].split("@@")
    return bonding_info(bonding), {link["ifname"]: link for link in json.loads(links)}, ping


def bonding_info(text: str) -> dict:
    """/proc/net/bonding/<bond>: the mode, MII/ARP polling and each slave's MII status."""
    info = {"slaves": {}}
    slave = None
    for line in text.splitlines():
        key, _sep, value = line.partition(": ")
        if key == "Slave Interface":
            slave = info["slaves"].setdefault(value.strip(), {})
        elif slave is not None and key == "MII Status":
            slave["mii"] = value.strip()
        elif slave is None and key in ("Bonding Mode", "MII Status", "MII Polling Interval (ms)",
                                       "ARP Polling Interval (ms)", "Transmit Hash Policy", "Currently Active Slave"):
            info[key] = value.strip()
    return info


def received(ping: str) -> int:
    match = re.search(r"(\d+) packets received", ping)
    return int(match.group(1)) if match else 0


def mtus(links: dict) -> dict:
    return {name: links[name]["mtu"] for name in ("eth1", "eth2", "vnbond0", "vnbond0.10", "vnvlan")}


@pytest.fixture(scope="module")
def hosts(kernel_hosts, tmp_path_factory):
    """(host under test, peer): the peer gets its VLAN 10 address; everything is removed afterwards."""
    peer, host = list(kernel_hosts)[:2]
    lab_exec(peer, "sh", "-c", f"ip link del {PEER_VLAN_DEV} 2>/dev/null; "
             f"ip link add link eth1 name {PEER_VLAN_DEV} type vlan id 10 && "
             f"ip addr add {PEER_IP}/24 dev {PEER_VLAN_DEV} && ip link set {PEER_VLAN_DEV} up")
    try:
        yield host, peer
    finally:
        tmp = tmp_path_factory.mktemp("network_cleanup")
        try:
            run(tmp, "cleanup", [play(host, [{"name": "Remove the test's networks and bond", **network(**ALL_ABSENT)}])])
        finally:
            lab_exec(host, "rm", "-rf", PERSISTENT, *RESTORE_FILES, check=False)
            lab_exec(peer, "ip", "link", "del", PEER_VLAN_DEV, check=False)


def test_bonds_vlan_bridge_and_mtu_on_a_real_kernel(hosts, tmp_path):
    host, _peer = hosts
    nocheck = {"connectivity_check": False}
    results = run(tmp_path, "bonds", [play(host, [
        {"name": "Start from a clean slate", **network(**ALL_ABSENT)},
        {"name": "Active-backup bond, VLAN 10 on it, a bridge on the VLAN", **network(bonds=[AB], networks=[VLAN_NET]),
         "register": "ab"},
        {"name": "The same again", **network(bonds=[AB], networks=[VLAN_NET], **nocheck), "register": "ab_again"},
        kernel_view("ab_kernel"),
        {"name": "MTU 1400 through bond, VLAN and bridge",
         **network(bonds=[AB], networks=[dict(VLAN_NET, mtu=1400)], **nocheck), "register": "mtu_down"},
        kernel_view("mtu_down_kernel"),
        {"name": "An MTU the NICs cannot take (UML's NICs stop at 1500)",
         **network(bonds=[AB], networks=[dict(VLAN_NET, mtu=9000)], **nocheck), "register": "mtu_too_big",
         "ignore_errors": True},
        kernel_view("mtu_too_big_kernel"),
        {"name": "Back to 1500", **network(bonds=[AB], networks=[VLAN_NET], **nocheck), "register": "mtu_up"},
        kernel_view("mtu_up_kernel"),
        {"name": "balance-xor: the bond is re-created, with the VLAN on it",
         **network(bonds=[XOR], networks=[VLAN_NET], **nocheck), "register": "xor"},
        {"name": "The same again", **network(bonds=[XOR], networks=[VLAN_NET], **nocheck), "register": "xor_again"},
        kernel_view("xor_kernel"),
        save(["ab", "ab_again", "ab_kernel", "mtu_down", "mtu_down_kernel", "mtu_too_big", "mtu_too_big_kernel",
              "mtu_up", "mtu_up_kernel", "xor", "xor_again", "xor_kernel"]),
    ])])

    assert results["ab"]["changed"] and results["ab"]["transaction"]["state"] == "confirmed", results["ab"]
    bonding, links, ping = parse_view(results["ab_kernel"])
    assert bonding["Bonding Mode"] == "fault-tolerance (active-backup)" and bonding["MII Polling Interval (ms)"] == "100"
    assert bonding["slaves"] == {"eth1": {"mii": "up"}, "eth2": {"mii": "up"}}, bonding
    assert links["vnbond0.10"]["linkinfo"]["info_kind"] == "vlan" and links["vnbond0.10"]["link"] == "vnbond0"
    assert links["vnbond0.10"]["linkinfo"]["info_data"]["id"] == 10 and links["vnbond0.10"]["master"] == "vnvlan"
    assert links["vnvlan"]["linkinfo"]["info_kind"] == "bridge"
    assert links["eth1"]["master"] == links["eth2"]["master"] == "vnbond0"
    assert received(ping) >= 2, ping
    for name in ("ab_again", "xor_again"):
        assert not results[name]["changed"] and results[name]["plan"] == [], results[name]["plan"]

    # Lowering goes top down, raising bottom up; the bond's slaves follow the bond.
    down = [s["command"] for s in results["mtu_down"]["plan"]]
    assert down == ["ip link set dev vnvlan mtu 1400", "ip link set dev vnbond0.10 mtu 1400",
                    "ip link set dev vnbond0 mtu 1400"], down
    bonding, links, ping = parse_view(results["mtu_down_kernel"])
    assert set(mtus(links).values()) == {1400}, mtus(links)
    assert received(ping) >= 2, ping
    too_big = results["mtu_too_big"]
    assert too_big["failed"] and "every step was undone" in too_big["msg"], too_big["msg"]
    assert set(mtus(parse_view(results["mtu_too_big_kernel"])[1]).values()) == {1400}
    up = [s["command"] for s in results["mtu_up"]["plan"]]
    assert up == ["ip link set dev vnbond0 mtu 1500", "ip link set dev vnbond0.10 mtu 1500",
                  "ip link set dev vnvlan mtu 1500"], up
    bonding, links, ping = parse_view(results["mtu_up_kernel"])
    assert set(mtus(links).values()) == {1500} and received(ping) >= 2, (mtus(links), ping)

    xor = [s["command"] for s in results["xor"]["plan"]]
    assert "ip link del dev vnbond0.10" in xor and "ip link add link vnbond0 name vnbond0.10 type vlan id 10" in xor, xor
    bonding, links, ping = parse_view(results["xor_kernel"])
    assert bonding["Bonding Mode"] == "load balancing (xor)", bonding
    assert bonding["Transmit Hash Policy"].startswith("layer2+3"), bonding
    assert set(bonding["slaves"]) == {"eth1", "eth2"} and links["vnbond0.10"]["master"] == "vnvlan"
    assert received(ping) >= 2, ping


def leases(peer: str) -> dict:
    """dnsmasq's leases on the peer: MAC -> (expiry, address)."""
    text = lab_exec(peer, "cat", LEASES, check=False).stdout
    return {f[1]: (int(f[0]), f[2]) for f in (line.split() for line in text.splitlines()) if len(f) >= 3}


def dynamic_address(host: str, dev: str) -> tuple[str | None, int | None]:
    """The DHCP address of ``dev`` and its remaining lifetime."""
    proc = lab_exec(host, "ip", "-j", "-4", "addr", "show", "dev", dev, check=False)
    for entry in json.loads(proc.stdout or "[]"):
        for addr in entry.get("addr_info", []):
            if addr.get("dynamic"):
                return f"{addr['local']}/{addr['prefixlen']}", addr.get("valid_life_time")
    return None, None


def test_dhcp_address_obtained_renewed_and_released(hosts, kernel_vars, tmp_path):
    host, peer = hosts
    pidfile = "/run/virtnode/network/dhcp/vndhcp.4.pid"
    results = run(tmp_path, "dhcp", [play(host, [
        {"name": "A DHCP network on the bond (untagged, the VM segment)",
         **network(bonds=[XOR], networks=[VLAN_NET, DHCP_NET], connectivity_check=False), "register": "dhcp"},
        {"name": "Wait for the lease", "ansible.builtin.command": "ip -j -4 addr show dev vndhcp",
         "register": "addr", "changed_when": False, "retries": 30, "delay": 1,
         "until": "addr.stdout | from_json | map(attribute='addr_info') | flatten | selectattr('dynamic', 'defined') | list | length > 0"},
        {"name": "The same again: the DHCP address is the client's, not a change",
         **network(bonds=[XOR], networks=[VLAN_NET, DHCP_NET], connectivity_check=False), "register": "dhcp_again"},
        {"name": "The bridge's MAC", "ansible.builtin.command": "cat /sys/class/net/vndhcp/address",
         "register": "mac", "changed_when": False},
        save(["dhcp", "dhcp_again", "mac"]),
    ])])
    assert results["dhcp"]["changed"] and "dhcp start vndhcp IPv4" in [s["command"] for s in results["dhcp"]["plan"]]
    assert not results["dhcp_again"]["changed"], results["dhcp_again"]["plan"]
    mac = results["mac"]["stdout"].strip()
    address, _lifetime = dynamic_address(host, "vndhcp")
    subnet = ipaddress.ip_network(kernel_vars["virtnode_lab_dhcp_subnet"])
    assert address and ipaddress.ip_interface(address).network == subnet, address
    assert 50 <= int(ipaddress.ip_interface(address).ip) - int(subnet.network_address) <= 150, address
    expiry, leased = leases(peer)[mac]
    assert leased == str(ipaddress.ip_interface(address).ip)

    # Renewal, forced (udhcpc renews on SIGUSR1): dnsmasq extends the lease, the address stays.
    time.sleep(2)  # so that the new expiry is later by whole seconds
    lab_exec(host, "sh", "-c", f"kill -USR1 $(cat {pidfile})")
    renewed = wait_for("the renewed lease", lambda: leases(peer).get(mac, (0,))[0] > expiry and leases(peer)[mac],
                       timeout=30, step=1)
    assert renewed[1] == leased
    assert dynamic_address(host, "vndhcp")[0] == address

    pid = lab_exec(host, "cat", pidfile).stdout.strip()
    results = run(tmp_path, "dhcp_removed", [play(host, [
        {"name": "Remove the DHCP network", "register": "removed",
         **network(networks=[{"name": "vndhcp", "state": "absent"}], connectivity_check=False)},
        save(["removed"]),
    ])])
    assert [s["command"] for s in results["removed"]["plan"]][0] == "dhcp stop vndhcp IPv4"
    # The client released the lease on its way out (before the bridge went away) and is gone.
    assert mac not in leases(peer), leases(peer)
    assert lab_exec(host, "test", "-e", f"/proc/{pid}", check=False).returncode != 0
    assert lab_exec(host, "test", "-e", "/sys/class/net/vndhcp", check=False).returncode != 0


# Reaching the host under test through the bond: SSH via the peer to the VLAN address.
THROUGH_THE_BOND = {
    "ansible_host": str(ipaddress.ip_interface(HOST_IP).ip),
    "ansible_ssh_common_args": (
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
        "-o ProxyCommand=\"ssh -i {{ ansible_ssh_private_key_file }} -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -W %h:%p root@{{ hostvars[groups['kernel'][0]].ansible_host }}\""),
}


def test_bond_change_that_cuts_the_controller_off_rolls_back_by_itself(hosts, tmp_path):
    host, _peer = hosts
    # ARP monitoring towards an address nobody has: with arp_validate all, no slave ever sees a reply,
    # so the bond takes them all down and the controller's path through it is cut.
    arp = dict(AB, options={"arp_interval": "100", "arp_ip_target": UNUSED_IP, "arp_validate": "all"})
    results = run(tmp_path, "cut", [
        play(host, [{"name": "The active-backup bond carrying VLAN 10",
                     **network(bonds=[AB], networks=[VLAN_NET], connectivity_check=False)}]),
        {**play(host, [
            {"name": "Where this connection lands", "ansible.builtin.command": "ip -4 -br addr show dev vnvlan",
             "register": "path", "changed_when": False},
            {"name": "ARP monitoring that takes every slave down", "register": "cut", "ignore_errors": True,
             **network(bonds=[arp], networks=[VLAN_NET], connectivity_timeout=10)},
            {"name": "Reachable again through the bond", "virtnode.kvm.network_info": {}, "register": "info"},
            kernel_view("after"),
            save(["path", "cut", "info", "after"]),
        ]), "name": "Through the bond", "vars": THROUGH_THE_BOND},
    ])
    assert HOST_IP in results["path"]["stdout"], results["path"]
    cut = results["cut"]
    print("connectivity-loss rollback:", {k: cut["transaction"].get(k) for k in
                                          ("lost_after", "rolled_back_after", "reachable_again_after")})
    assert cut["failed"] and "rolled back to its previous network configuration by itself" in cut["msg"], cut
    transaction = cut["transaction"]
    assert transaction["state"] == "rolled_back" and transaction["rollback"]["restored"], transaction
    assert transaction["rollback"]["errors"] == [] and transaction["rolled_back_after"] >= 10, transaction
    assert results["info"]["bonds"]["vnbond0"]["mode"] == "active-backup"
    assert results["info"]["networks"]["vnvlan"]["config"]["bond"] == "vnbond0"
    bonding, _links, ping = parse_view(results["after"])
    # MII monitoring is back; the kernel lists no ARP polling interval once ARP monitoring is off.
    assert bonding["MII Polling Interval (ms)"] == "100" and "ARP Polling Interval (ms)" not in bonding, bonding
    assert bonding["slaves"] == {"eth1": {"mii": "up"}, "eth2": {"mii": "up"}} and received(ping) >= 2, (bonding, ping)


def monotonic_us(host: str, unit: str, prop: str) -> int:
    return int(lab_exec(host, "systemctl", "show", "-p", prop, "--value", unit).stdout.strip() or 0)


def test_saved_networks_come_back_at_boot_and_unsaved_ones_do_not(hosts, tmp_path):
    host, _peer = hosts
    results = run(tmp_path, "saved", [play(host, [
        {"name": "What bootstrap's systemd path installs for the boot-time restore",
         "ansible.builtin.include_role": {"name": "virtnode.kvm.bootstrap", "tasks_from": "network_restore.yml"}},
        {"name": "Save the bond and its VLAN network", **network(bonds=[AB], networks=[VLAN_NET], save=True),
         "register": "saved"},
        {"name": "A change that is not saved", **network(networks=[UNSAVED_NET], connectivity_check=False),
         "register": "unsaved"},
        save(["saved", "unsaved"]),
    ])])
    assert results["saved"]["saved"] and results["unsaved"]["changed"]
    assert lab_exec(host, "test", "-d", "/sys/class/net/vnunsaved", check=False).returncode == 0

    proc = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "reboot", host], text=True,
                          capture_output=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout.strip())

    # Every part is read even when one is missing, so that a failure shows the unit's journal.
    state = lab_exec(host, "sh", "-c", "systemctl is-active virtnode-network-restore; "
                     "journalctl -b -u virtnode-network-restore --no-pager -o cat; "
                     "tail -n 20 /var/log/virtnode/network.log; echo '@@'; "
                     "cat /proc/net/bonding/vnbond0; echo '@@'; ip -j -d link show; echo '@@'; "
                     f"busybox ping -c 3 -W 2 {PEER_IP} | tail -n 2; echo '@@'; "
                     "cat /run/virtnode/network/running.json 2>/dev/null || echo '{}'").stdout
    unit, bonding, links, ping, running = state.split("@@")
    assert unit.startswith("active") and "networks: vnvlan; bonds: vnbond0" in unit, unit
    bonding = bonding_info(bonding)
    links = {link["ifname"]: link for link in json.loads(links)}
    assert bonding.get("Bonding Mode") == "fault-tolerance (active-backup)" and set(bonding["slaves"]) == {"eth1", "eth2"}, unit
    assert links["vnbond0.10"]["master"] == "vnvlan" and "vnunsaved" not in links, (sorted(links), unit)
    assert received(ping) >= 2, ping
    assert set(json.loads(running).get("networks", {})) == {"vnvlan"}, (running, unit)
    # Before libvirtd (which autostarts VMs on these bridges), if libvirtd started at boot at all.
    restored = monotonic_us(host, "virtnode-network-restore", "ExecMainExitTimestampMonotonic")
    libvirtd = monotonic_us(host, "libvirtd", "ExecMainStartTimestampMonotonic")
    assert restored and (libvirtd == 0 or restored <= libvirtd), (restored, libvirtd)


def kernel_address(host: str) -> str:
    return json.loads(INVENTORY.read_text())["all"]["children"]["kernel"]["hosts"][host]["ansible_host"]


def test_host_crash_in_the_middle_of_a_network_apply(hosts, tmp_path):
    """The host dies (lab.py crash, a power cut) while the network module applies a change.

    At the next boot the saved networks come back, the change's transaction is closed (its rollback
    is moot: what it would undo died with the kernel), and the same task then converges.
    """
    host, _peer = hosts
    run(tmp_path, "saved", [play(host, [
        {"name": "What bootstrap's systemd path installs for the boot-time restore",
         "ansible.builtin.include_role": {"name": "virtnode.kvm.bootstrap", "tasks_from": "network_restore.yml"}},
        {"name": "Save the bond and its VLAN network", **network(bonds=[AB], networks=[VLAN_NET], save=True)},
    ])])
    change = {"name": "Change", **network(bonds=[AB], networks=[VLAN_NET, UNSAVED_NET])}
    playbook = tmp_path / "crash.yml"
    # The module stops itself after its first applied step, so the host dies exactly there.
    playbook.write_text(json.dumps([play(host, [{**change, "environment": {
        "VIRTNODE_CRASH_AT": "network_apply.step", "VIRTNODE_CRASH_HOW": "stop"}}])]))
    lab_cmd = ["python3", str(REPO / "tests/lab/lab.py")]
    running = subprocess.Popen(["ansible-playbook", "-i", str(INVENTORY), str(playbook)], cwd=REPO, env=ansible_env(),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        probe = ("for f in $(grep -l VIRTNODE_CRASH_HOW=stop /proc/[0-9]*/environ 2>/dev/null); do "
                 "grep -q '^State:.*T' ${f%/environ}/status && echo stopped; done; true")

        def module_stopped() -> str:
            return lab_exec(host, "sh", "-c", probe, check=False).stdout.strip()
        wait_for("the module to stop at the crash point", module_stopped, timeout=180, step=1)
        assert lab_exec(host, "test", "-d", "/sys/class/net/vnunsaved", check=False).returncode == 0
        crash = subprocess.run(lab_cmd + ["crash", host], capture_output=True, text=True, timeout=120, check=False)
        assert crash.returncode == 0, crash.stdout + crash.stderr
    finally:
        # A kernel that vanished sends no FIN: the controller's SSH connections to it (the run's and
        # Ansible's persistent masters) would wait for hours. End them as their keepalives would.
        os.killpg(running.pid, signal.SIGKILL)
        running.communicate(timeout=60)
        address = kernel_address(host)
        subprocess.run(["pkill", "-f", f"ControlPersist=.* {address} "], check=False)
    boot = subprocess.run(lab_cmd + ["reboot", host], capture_output=True, text=True, timeout=400, check=False)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    print(boot.stdout.strip())
    links = {link["ifname"] for link in json.loads(lab_exec(host, "ip", "-j", "link", "show").stdout)}
    assert {"vnbond0", "vnbond0.10", "vnvlan"} <= links and "vnunsaved" not in links, sorted(links)
    records = lab_exec(host, "sh", "-c", f"cat {TRANSACTIONS}/*.json 2>/dev/null; true").stdout
    assert '"pending"' not in records and '"rolling_back"' not in records, records
    results = run(tmp_path, "converge", [play(host, [
        {**change, "register": "rerun"},
        {**change, "register": "third"},
        save(["rerun", "third"]),
    ])])
    assert results["rerun"]["changed"] and not results["third"]["changed"], results


def test_host_deploy_sets_up_bonds_networks_and_storage_servers(hosts, kernel_vars, tmp_path):
    """playbooks/host_networks_storage.yml (host_deploy.yml's last part) passes bonds, network options
    and NFS options through: a bond with a VLAN network on it, and an export mounted with timeo/retrans."""
    host, _peer = hosts
    export = f"{kernel_vars['virtnode_lab_nfs_server']}:{kernel_vars['virtnode_lab_nfs_exports_v3'][1]}"
    server = {"type": "nfs", "path": export, "nfs_version": "3", "timeo": 150, "retrans": 4}
    extra = {"virtnode_deploy_hosts": host, "virtnode_deploy_bonds": [AB], "virtnode_deploy_networks": [VLAN_NET],
             "virtnode_deploy_network_options": {"connectivity_timeout": 45},
             "virtnode_deploy_storage_servers": [server]}
    playbook = REPO / "playbooks" / "host_networks_storage.yml"
    try:
        for run_number, expect_changed in ((1, True), (2, False)):
            proc = run_playbook(playbook, "-e", json.dumps(extra), timeout=600)
            assert proc.returncode == 0, proc.stdout[-20000:]
            changed = int(re.search(rf"{re.escape(host)}\s*:.*changed=(\d+)", proc.stdout).group(1))
            assert (changed > 0) == expect_changed, f"run {run_number}: changed={changed}\n{proc.stdout[-6000:]}"
        state = lab_exec(host, "sh", "-c", "cat /proc/net/bonding/vnbond0; echo '@@'; ip -j -d link show; echo '@@'; "
                         "grep ' nfs ' /proc/mounts").stdout
        bonding, links, mounts = state.split("@@")
        assert bonding_info(bonding).get("Bonding Mode") == "fault-tolerance (active-backup)"
        assert {link["ifname"]: link for link in json.loads(links)}["vnbond0.10"]["master"] == "vnvlan"
        mount = next(line for line in mounts.splitlines() if line.startswith(export + " "))
        assert "vers=3" in mount and "timeo=150" in mount and "retrans=4" in mount, mount
        assert lab_exec(host, "test", "-f", PERSISTENT, check=False).returncode == 0, "the deploy saves the networks"
    finally:
        run(tmp_path, "disconnect", [play(host, [{"name": "Disconnect the export", "virtnode.kvm.storage_server": dict(
            {k: v for k, v in server.items() if k in ("type", "path")}, state="disconnected")}])])
