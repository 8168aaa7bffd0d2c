"""The virtnode.kvm.vms inventory plugin against the lab's libvirt daemons, through ansible-inventory.

One guest runs on the first host (its disk under a pool's directory, a NIC on a libvirt network over a bridge
of its own) and one is defined but down on the second (its disk under the mount root). The tiny guest has no
network stack and no guest agent, so the test writes the lease a DHCP server would have given it into the
network's lease file, which libvirt's lease source reads: the address must come back as the guest's address
and as ``ansible_host``. The host's neighbour table gets an entry for the guest's MAC too, for the ARP source;
Debian 12's libvirt (9.0) fails every ARP query ("wrong nlmsg len"), so the test only checks that the
inventory goes on without it there.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, ansible_env, lab_exec, remove_guest_everywhere, run_playbook

UP, DOWN = "invtest-up", "invtest-down"
SP = "5e1d4a3c-0b7e-4c2a-9f11-2d6a1c0b9e01"
SD1 = "a1b2c3d4-0000-4000-8000-000000000001"
SD2 = "a1b2c3d4-0000-4000-8000-000000000002"
IMG = "b1b2c3d4-0000-4000-8000-000000000003"
VOL = "c1b2c3d4-0000-4000-8000-000000000004"
UP_DISK = f"/rhev/data-center/{SP}/{SD1}/images/{IMG}/{VOL}"
DOWN_DISK = f"/rhev/data-center/mnt/lab:_inventory/{SD2}/images/{IMG}/{VOL}"
BRIDGE = "vninvbr0"
NETWORK = "vninvnet"
LEASES = f"/var/lib/libvirt/dnsmasq/{BRIDGE}.status"
MAC = "52:54:00:4e:56:01"
GUEST_IP = "192.0.2.77"

PLAYBOOK = f"""
- name: A running guest with a pool disk and a NIC
  hosts: lab[0]
  gather_facts: false
  tasks:
    - name: Bridge and disk
      ansible.builtin.shell: |
        ip link show {BRIDGE} >/dev/null 2>&1 || ip link add {BRIDGE} type bridge
        ip link set {BRIDGE} up
        virsh net-info {NETWORK} >/dev/null 2>&1 || virsh net-create /dev/stdin <<EOF
        <network><name>{NETWORK}</name><forward mode='bridge'/><bridge name='{BRIDGE}'/></network>
        EOF
        mkdir -p $(dirname {UP_DISK}) && truncate -s 16M {UP_DISK}
      changed_when: true
    - name: Start
      virtnode.kvm.vm:
        name: {UP}
        memory: 128MiB
        vcpus: 1
        kernel: "{{{{ virtnode_lab_guest_kernel }}}}"
        initrd: "{{{{ virtnode_lab_guest_initrd }}}}"
        cmdline: "{{{{ virtnode_lab_guest_cmdline }}}} workload=idle"
        disks: [{{path: {UP_DISK}, format: raw}}]
        nics: [{{network: {NETWORK}, mac: "{MAC}"}}]
    - name: The guest's DHCP lease (libvirt's lease source) and neighbour entry (its ARP source)
      ansible.builtin.shell: |
        mkdir -p /var/lib/libvirt/dnsmasq
        echo '[{{"ip-address": "{GUEST_IP}", "mac-address": "{MAC}", "hostname": "{UP}",' \
             '"expiry-time": '$(( $(date +%s) + 3600 ))'}}]' > {LEASES}
        ip neigh replace {GUEST_IP} lladdr {MAC} dev {BRIDGE} nud permanent
      changed_when: true

- name: A guest defined but down, its disk under the mount root
  hosts: lab[1]
  gather_facts: false
  tasks:
    - name: Disk
      ansible.builtin.shell: mkdir -p $(dirname {DOWN_DISK}) && truncate -s 16M {DOWN_DISK}
      changed_when: true
    - name: Define and start (the module defines a VM only as it starts it)
      virtnode.kvm.vm:
        name: {DOWN}
        persistent: true
        memory: 128MiB
        kernel: "{{{{ virtnode_lab_guest_kernel }}}}"
        initrd: "{{{{ virtnode_lab_guest_initrd }}}}"
        cmdline: "{{{{ virtnode_lab_guest_cmdline }}}} workload=idle"
        disks: [{{path: {DOWN_DISK}, format: raw}}]
    - name: Stop, still defined
      virtnode.kvm.vm:
        name: {DOWN}
        state: destroyed
"""


def uri(host: dict, port: int | None = None) -> str:
    return f"qemu+tcp://{host['ansible_host']}{':%d' % port if port else ''}/system"


@pytest.fixture(scope="module")
def guests(lab_hosts, tmp_path_factory):
    hosts = list(lab_hosts.values())
    assert len(hosts) >= 2, "the inventory test needs two lab hosts"
    tmp = tmp_path_factory.mktemp("inventory")
    playbook = tmp / "guests.yml"
    playbook.write_text(PLAYBOOK)
    started = time.monotonic()
    proc = run_playbook(playbook)
    print(f"guests ready in {time.monotonic() - started:.1f} s")
    try:
        assert proc.returncode == 0, proc.stdout
        yield hosts
    finally:
        remove_guest_everywhere(tmp, UP)
        remove_guest_everywhere(tmp, DOWN)
        first, second = list(lab_hosts)[:2]
        lab_exec(first, "sh", "-c", f"virsh net-destroy {NETWORK}; rm -f {LEASES}; ip link del {BRIDGE}; "
                 f"rm -rf /rhev/data-center/{SP}", check=False)
        lab_exec(second, "rm", "-rf", "/rhev/data-center/mnt/lab:_inventory", check=False)


def inventory(tmp_path: Path, config: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "lab.vms.yml"
    path.write_text(json.dumps({"plugin": "virtnode.kvm.vms", **config}))
    return subprocess.run(["ansible-inventory", "-i", str(path), *args], cwd=REPO, env={**ansible_env(), **(env or {})},
                          text=True, capture_output=True, timeout=120, check=False)


def _plain(obj: dict):
    # ansible-inventory marks what a plugin read from outside as unsafe (never templated): {"__ansible_unsafe": "Up"}.
    return obj["__ansible_unsafe"] if set(obj) == {"__ansible_unsafe"} else obj


def listed(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout, object_hook=_plain)


def group_hosts(data: dict, group: str) -> list:
    return data.get(group, {}).get("hosts", [])


def test_vms_grouped_with_vars_and_addresses(guests, tmp_path):
    first, second = guests
    # The third URI is the first host on a port nothing listens on: warned about, the others still listed.
    proc = inventory(tmp_path, {"hosts": [uri(first), uri(second), uri(first, port=1)], "set_ansible_host": True},
                     "--list")
    data = listed(proc)
    assert "port 1 does not answer" in proc.stderr and "its VMs are not listed" in proc.stderr
    assert {UP, DOWN} <= set(group_hosts(data, "virtnode_vms"))
    assert UP in group_hosts(data, "virtnode_host_vnhost1") and DOWN in group_hosts(data, "virtnode_host_vnhost2")
    assert UP in group_hosts(data, "virtnode_status_up") and DOWN in group_hosts(data, "virtnode_status_down")
    assert group_hosts(data, "virtnode_pool_" + SP.replace("-", "_")) == [UP]
    assert group_hosts(data, "virtnode_storage_domain_" + SD1.replace("-", "_")) == [UP]
    assert group_hosts(data, "virtnode_storage_domain_" + SD2.replace("-", "_")) == [DOWN]

    up = data["_meta"]["hostvars"][UP]
    assert up["virtnode_status"] == "Up" and up["virtnode_vcpus"] == 1 and up["virtnode_memory_mib"] == 128
    assert up["virtnode_host"] == "vnhost1" and up["virtnode_host_uri"] == uri(first)
    assert up["virtnode_disks"][0] == {"target": "vda", "path": UP_DISK, "format": "raw", "bus": "virtio",
                                       "pool": SP, "domain": SD1, "image": IMG, "volume": VOL}
    assert up["virtnode_nics"][0]["mac"] == MAC and up["virtnode_nics"][0]["source"] in (NETWORK, BRIDGE)
    # No guest agent: the lease source answers.
    assert {"address": GUEST_IP, "source": "lease", "mac": MAC, "family": "ipv4"}.items() <= up["virtnode_ips"][0].items()
    assert up["ansible_host"] == GUEST_IP

    down = data["_meta"]["hostvars"][DOWN]
    assert down["virtnode_status"] == "Down" and down["virtnode_ips"] == [] and "ansible_host" not in down
    assert down["virtnode_disks"][0]["pool"] is None and down["virtnode_disks"][0]["domain"] == SD2


def test_graph_constructed_groups_and_options(guests, tmp_path):
    first, second = guests
    config = {"hosts": [uri(first), uri(second)], "include_inactive": False, "ip_sources": [], "set_ansible_host": True,
              "group_prefix": "lab_", "groups": {"small": "virtnode_memory_mib < 1024"},
              "keyed_groups": [{"key": "virtnode_status", "prefix": "state"}]}
    proc = inventory(tmp_path, config, "--graph")
    assert proc.returncode == 0, proc.stderr
    graph = proc.stdout
    assert "@lab_host_vnhost1:" in graph and f"--{UP}" in graph and DOWN not in graph
    assert "@small:" in graph and "@state_Up:" in graph
    # No address sources: no addresses, so no ansible_host either.
    data = listed(inventory(tmp_path, config, "--host", UP))
    assert data["virtnode_ips"] == [] and "ansible_host" not in data


def test_unreachable_host_fails_the_source_when_asked(guests, tmp_path):
    first = guests[0]
    config = {"hosts": [uri(first), uri(first, port=1)], "fail_on_unreachable": True}
    proc = inventory(tmp_path, config, "--list")
    # The source fails as a whole (none of its VMs), which ansible-inventory warns about...
    assert "port 1 does not answer" in proc.stderr and UP not in listed(proc)["_meta"]["hostvars"]
    # ...and fails on when Ansible is told to fail on a source that does not parse.
    proc = inventory(tmp_path, config, "--list", env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"})
    assert proc.returncode != 0 and "port 1 does not answer" in proc.stderr


def test_qemu_ssh_uri(guests, tmp_path, inventory_vars):
    first = guests[0]
    key = inventory_vars["ansible_ssh_private_key_file"]
    ssh_uri = f"qemu+ssh://root@{first['ansible_host']}/system?keyfile={key}&no_verify=1"
    data = listed(inventory(tmp_path, {"hosts": [ssh_uri], "ip_sources": ["arp"]}, "--list"))
    up = data["_meta"]["hostvars"][UP]
    assert up["virtnode_host_uri"] == ssh_uri and up["virtnode_status"] == "Up"
    # libvirt 9.0 fails ARP queries; a libvirt that answers them gives the neighbour entry.
    assert [ip["address"] for ip in up["virtnode_ips"]] in ([], [GUEST_IP])


@pytest.fixture
def inventory_vars(inventory):
    return inventory["all"]["vars"]


def test_cache_answers_until_flushed(guests, tmp_path):
    second = guests[1]
    config = {"hosts": [uri(second)], "cache": True, "cache_plugin": "ansible.builtin.jsonfile",
              "cache_connection": str(tmp_path / "cache"), "cache_timeout": 600}
    before = listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"][DOWN]
    assert before["virtnode_memory_mib"] == 128
    assert list((tmp_path / "cache").iterdir()), "nothing written to the cache"
    lab_exec("vnhost2", "virsh", "setmaxmem", DOWN, "256M", "--config")
    cached = listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"][DOWN]
    assert cached["virtnode_memory_mib"] == 128, "the second run did not answer from the cache"
    fresh = listed(inventory(tmp_path, config, "--list", "--flush-cache"))["_meta"]["hostvars"][DOWN]
    assert fresh["virtnode_memory_mib"] == 256
    again = listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"][DOWN]
    assert again["virtnode_memory_mib"] == 256, "the flushed run did not refresh the cache"
