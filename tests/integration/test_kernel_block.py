"""Block storage on the lab's kernel hosts: the LVM backend of thin block volumes, and host_info.

Both kernel hosts log in to the lab's iSCSI target (vnkern1 serves it and logs in to itself) on
its two portals, so each LUN has two paths, and dm-multipath makes one device per LUN. A volume
group named after a storage domain sits on one LUN's multipath device, with a logical volume
for a thin COW volume (qcow2, tagged ``IU_<image>`` as VDSM tags it). The product's
``thin_block.LvmBackend`` then runs on the hosts, as the node agent runs it: with the volume
active on vnkern2 (the host running the VM), it is extended by the SPM's code on vnkern1 (where
the LV is not active), and vnkern2 sees the new size only after its refresh. The VG here is bare
(no domain metadata), so the test activates the LV by hand; the backend's own activation of a
domain's volume chain is tested on a real block domain in test_kernel_block_domain.py.

The backend runs from a copy of the collection's module_utils in each host's /run, sent over
SSH, one Python process per list of steps (every fork costs 20-100 ms under User-mode Linux).
The SAN set-up and its lab specifics are in kernel_san.py.
"""

from __future__ import annotations

import json
import time

import pytest

import kernel_san
from conftest import lab_exec, run_playbook
from kernel_san import PY

SD = "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41"
IMG = "8b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d52"
VOL = "8c3d4e5f-6a7b-4c8d-8e9f-1a2b3c4d5e63"
NO_PARENT = "00000000-0000-0000-0000-000000000000"
MIB = 1024 ** 2
CAPACITY = 1024 * MIB
EXTENT_MIB = 128  # VDSM's extent size on block domains
CODE = "/run/virtnode-kblock"
BOND, VLAN_ID = "vnbond0", 42

# The product's code on the host: steps [[name, args...], ...] -> [result, ...]; stops at the first error.
STEPS = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, %r)
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
backend = block.LvmBackend()
special = {
    'extend_on_spm': block.extend_volume_on_spm,
    'backend_for': lambda sd: block.backend_for(sd).name,
    'create_cow': lambda path, size: qemu_img.create(path, 'COW', size),
    'exists': os.path.exists,
    'readlink': os.readlink,
    'set_link': block.set_link,
    'remove_link': block.remove_link,
    'run': lambda *argv: command.run_checked(argv),
    'try_run': lambda *argv: subprocess.run(argv, capture_output=True, check=False).returncode,
}
results = []
for step in json.loads(sys.argv[1]):
    name, args = step[0], step[1:]
    started = time.monotonic()
    try:
        results.append({'ok': special[name](*args) if name in special else getattr(backend, name)(*args)})
    except VirtnodeError as err:
        results.append({'error': '%%s: %%s' %% (name, err.message)})
        break
    finally:
        results[-1]['seconds'] = round(time.monotonic() - started, 2)
print(json.dumps(results))
""" % CODE


def steps(host: str, *todo) -> list:
    """The product's block code run on ``host``: the result of each step; fails on the first error."""
    proc = lab_exec(host, PY, "-c", STEPS, json.dumps(todo), check=False, timeout=300)
    assert proc.returncode == 0, f"{host}: {proc.stderr}{proc.stdout}"
    results = json.loads(proc.stdout)
    print(f"{host}: " + ", ".join(f"{step[0]} {r['seconds']}s" for step, r in zip(todo, results)))
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, f"{host}: {errors[0]} (after {results[:-1]})"
    return [r["ok"] for r in results]


@pytest.fixture(scope="module")
def san(kernel_hosts, kernel_vars):
    """Both kernel hosts on the lab's SAN (kernel_san.py); the LVM test's VG goes at the end."""
    with kernel_san.san_session(kernel_hosts, kernel_vars, [SD], CODE) as session:
        yield session


def test_multipath_gives_one_device_per_lun_with_a_path_per_portal(san):
    cfg = san["cfg"]
    first, second = san["hosts"]
    for host, maps in san["maps"].items():
        assert len(maps) == cfg["luns"], (host, maps)
        for wwid, dev in maps.items():
            assert len(dev["paths"]) == len(cfg["portals"]) and len(dev["luns"]) == 1, (host, wwid, dev)
    # The same LUNs (by WWID) on both hosts, whatever names the paths got there.
    assert set(san["maps"][first]) == set(san["maps"][second])


def lun_device(san) -> str:
    """The multipath device of the target's last LUN (the same WWID on both hosts)."""
    return f"/dev/mapper/{kernel_san.lun_guid(san, san['cfg']['luns'] - 1)}"


def test_lvm_backend_extend_and_refresh_across_two_hosts(san):
    spm, runner = san["hosts"]  # vnkern1 plays the SPM, vnkern2 runs the VM
    pv = lun_device(san)
    san["cfg"]["pv"] = pv
    lv = f"{SD}/{VOL}"
    link = f"/rhev/data-center/mnt/blockSD/{SD}/images/{IMG}/{VOL}"
    started = time.monotonic()
    # The domain's VG (128 MiB extents and metadata area, as VDSM makes them) and the volume's LV,
    # tagged as VDSM tags it; the qcow2 is written through VDSM's path to the LV. What an
    # interrupted run left goes first (the san fixture deactivated it on both hosts).
    steps(spm,
          ["try_run", "vgremove", "--force", "--force", SD],
          ["try_run", "pvremove", "--force", "--force", "--yes", pv],
          ["run", "pvcreate", "--metadatasize", "128m", pv],
          ["run", "vgcreate", "--physicalextentsize", f"{EXTENT_MIB}m", SD, pv],
          ["run", "lvcreate", "--autobackup", "n", "--contiguous", "n", "--size", f"{EXTENT_MIB}m",
           "--addtag", f"IU_{IMG}", "--addtag", f"PU_{NO_PARENT}", "--addtag", "MD_1", "--name", VOL, SD],
          ["run", "lvchange", "--activate", "y", lv],
          ["set_link", link, f"/dev/{lv}"],
          ["create_cow", link, CAPACITY],
          ["run", "lvchange", "--activate", "n", lv],
          ["remove_link", link])
    setup = time.monotonic()

    # The host running the VM: the LV active, the stable VDSM path, sizes, the image tag.
    (kind, _active, _linked, target, physical, storage, capacity, image, pvs) = steps(
        runner,
        ["backend_for", SD],
        ["run", "lvchange", "--activate", "y", lv],
        ["set_link", link, f"/dev/{lv}"],
        ["readlink", link],
        ["physical_size", SD, IMG, VOL],
        ["storage_size", SD, IMG, VOL],
        ["capacity", SD, IMG, VOL],
        ["image_of", SD, VOL],
        ["run", "pvs", "--noheadings", "-o", "pv_name", "--select", f"vg_name={SD}"])
    assert kind == "lvm"
    assert target == f"/dev/{lv}"
    assert physical == storage == EXTENT_MIB * MIB
    assert capacity == CAPACITY and image == IMG
    # LVM on the host sees the VG through the multipath device, not through one of its paths.
    assert pvs.split() == [pv], pvs

    # The SPM grows the volume (rounded up to whole extents); the LV is not active there, and the
    # capacity check that caps the request leaves it so.
    grown, spm_storage, spm_active = steps(
        spm,
        ["extend_on_spm", SD, VOL, 300],
        ["storage_size", SD, IMG, VOL],
        ["exists", f"/dev/{lv}"])
    assert grown == 3 * EXTENT_MIB and spm_storage == grown * MIB and spm_active is False

    # The runner reads the new size from the shared metadata at once, but its device (what QEMU
    # writes to) keeps the old size until the refresh.
    # Then the volume is given back.
    before, metadata, refreshed, after, check, _off, _none, link_left, device_left = steps(
        runner,
        ["physical_size", SD, IMG, VOL],
        ["storage_size", SD, IMG, VOL],
        ["refresh", SD, IMG, VOL],
        ["physical_size", SD, IMG, VOL],
        ["try_run", "qemu-img", "check", "-f", "qcow2", link],
        ["run", "lvchange", "--activate", "n", lv],
        ["remove_link", link],
        ["exists", link],
        ["exists", f"/dev/{lv}"])
    assert before == EXTENT_MIB * MIB, "the device grew without a refresh"
    assert metadata == refreshed == after == 3 * EXTENT_MIB * MIB
    assert check == 0, "qemu-img check found the qcow2 damaged"
    assert link_left is False and device_left is False

    # Never shrinks; a request past capacity x 1.1 is capped there (then rounded up to an extent).
    same, capped = steps(spm, ["extend_on_spm", SD, VOL, 200], ["extend_on_spm", SD, VOL, 100000])
    assert same == 3 * EXTENT_MIB
    assert capped == -(-1127 // EXTENT_MIB) * EXTENT_MIB  # 1127 MiB = 1 GiB x 1.1, MiB aligned
    print(f"LVM on two hosts: setup {setup - started:.1f}s, backend steps {time.monotonic() - setup:.1f}s")


HOST_INFO = """
- name: host_info on a kernel host with a bond, a VLAN, iSCSI sessions and multipath devices
  hosts: %(host)s
  gather_facts: false
  tasks:
    - name: Gather
      virtnode.kvm.host_info:
        gather: [network, storage]
      register: info
    - name: Keep it for the test
      ansible.builtin.copy:
        content: "{{ info | to_json }}"
        dest: %(dest)s
        mode: "0600"
      delegate_to: localhost
"""


def test_host_info_reports_bonds_vlans_iscsi_and_multipath(san, kernel_vars, tmp_path):
    host = san["hosts"][1]
    vlan = f"{BOND}.{VLAN_ID}"
    cleanup = f"ip link del {vlan}; ip link del {BOND}; ip link set eth1 down; ip link set eth2 down"
    lab_exec(host, "sh", "-c", cleanup + " 2>/dev/null", check=False)  # leftovers of an interrupted run
    macs = dict(zip(("eth1", "eth2"), lab_exec(host, "cat", "/sys/class/net/eth1/address",
                                               "/sys/class/net/eth2/address").stdout.split()))
    lab_exec(host, "sh", "-c", f"ip link add {BOND} type bond mode active-backup miimon 100 && "
             f"ip link set eth1 down && ip link set eth1 master {BOND} && "
             f"ip link set eth2 down && ip link set eth2 master {BOND} && ip link set {BOND} up && "
             f"ip link add link {BOND} name {vlan} type vlan id {VLAN_ID} && ip link set {vlan} up")
    try:
        playbook = tmp_path / "host_info.yml"
        dest = tmp_path / "host_info.json"
        playbook.write_text(HOST_INFO % {"host": host, "dest": dest})
        proc = run_playbook(playbook, timeout=300)
        assert proc.returncode == 0, proc.stdout[-10000:]
    finally:
        lab_exec(host, "sh", "-c", cleanup, check=False)
    facts = json.loads(dest.read_text())["host"]
    nets = {n["name"]: n for n in facts["network"]}

    bond = nets[BOND]
    assert bond["kind"] == "bond" and bond["slaves"] == ["eth1", "eth2"] and bond["mode"] == "active-backup", bond
    assert bond["active_slave"] in ("eth1", "eth2") and bond["miimon"] == 100, bond
    for nic in ("eth1", "eth2"):
        assert nets[nic]["kind"] == "nic" and nets[nic]["master"] == BOND, nets[nic]
        # The bond gave both slaves its own address; each NIC is still reported by its own.
        assert nets[nic]["mac"] == macs[nic], (nets[nic], macs)
        assert nets[nic]["bond_slave_state"] == ("active" if nic == bond["active_slave"] else "backup"), nets[nic]
    assert (nets[vlan]["kind"], nets[vlan]["vlan_id"], nets[vlan]["parent"]) == ("vlan", VLAN_ID, BOND), nets[vlan]

    storage = facts["storage"]
    assert storage["iscsi_initiator_name"] == f"iqn.2026-12.lab.virtnode:{host}"
    cfg = san["cfg"]
    sessions = storage["iscsi_sessions"]
    assert sorted(s["portal"] for s in sessions) == sorted(cfg["portals"]), sessions
    assert all(s["target"] == cfg["target"] and s["state"] == "LOGGED_IN" and len(s["devices"]) == cfg["luns"]
               for s in sessions), sessions
    multipath = storage["multipath"]
    assert multipath["installed"] and multipath["config_present"] and multipath["daemon_running"], multipath
    maps = san["maps"][host]
    assert {d["wwid"]: sorted(p["device"] for p in d["paths"]) for d in multipath["devices"]} == \
        {w: m["paths"] for w, m in maps.items()}, multipath["devices"]
    session_devices = {dev for s in sessions for dev in s["devices"]}
    for dev in multipath["devices"]:
        assert dev["name"] == dev["wwid"] and dev["size_bytes"] == kernel_vars["virtnode_lab_iscsi_lun_size"] and dev["vendor"] == "LIO-ORG", dev
        assert all(p["state"] == "running" and p["device"] in session_devices for p in dev["paths"]), dev
        assert len({p["hctl"].rsplit(":", 1)[1] for p in dev["paths"]}) == 1, dev  # one LUN


LUN_INFO = """\
- name: lun_info
  hosts: %(hosts)s
  gather_facts: false
  tasks:
    - name: Every LUN
      virtnode.kvm.lun_info:
      register: every
    - name: One LUN and one this host does not see
      virtnode.kvm.lun_info:
        guids: ["%(guid)s", "36001405ffffffffffffffffffffffff9"]
      register: some
    - name: A GUID that is a path
      virtnode.kvm.lun_info:
        guids: ["../dm-0"]
      register: bad
      ignore_errors: true
    - name: Keep them for the test
      ansible.builtin.copy:
        content: "{{ {'every': every, 'some': some, 'bad': bad} | to_json }}"
        dest: "%(dest)s/{{ inventory_hostname }}.json"
        mode: "0600"
      delegate_to: localhost
"""


def test_lun_info_lists_each_lun_once_with_its_paths_and_the_domain_using_it(san, tmp_path):
    cfg = san["cfg"]
    first_map = san["maps"][san["hosts"][0]]
    guid = sorted(first_map)[0]
    playbook = tmp_path / "lun_info.yml"
    playbook.write_text(LUN_INFO % {"hosts": ",".join(san["hosts"]), "guid": guid, "dest": tmp_path})
    proc = run_playbook(playbook, timeout=300)
    assert proc.returncode == 0, proc.stdout[-10000:]
    # The LVM test (run before this one) left the domain's VG on the last LUN.
    vg_lun = lun_device(san).rsplit("/", 1)[1] if cfg.get("pv") else None
    serials = {}
    for host in san["hosts"]:
        answer = json.loads((tmp_path / f"{host}.json").read_text())
        luns = {lun["guid"]: lun for lun in answer["every"]["luns"]}
        maps = san["maps"][host]
        assert set(luns) == set(maps), (host, sorted(luns), sorted(maps))
        for wwid, lun in luns.items():
            assert sorted(p["name"] for p in lun["paths"]) == maps[wwid]["paths"], (host, lun)
            assert {p["lun"] for p in lun["paths"]} == set(maps[wwid]["luns"]), (host, lun)
            assert lun["paths_active"] == len(cfg["portals"]) and lun["capacity"] == cfg["lun_size"], (host, lun)
            assert lun["vendor_id"] == "LIO-ORG" and lun["serial"], (host, lun)
            assert {p["type"] for p in lun["paths"]} == {"iscsi"}, (host, lun)
            assert {p["target"] for p in lun["paths"]} == {cfg["target"]}, (host, lun)
            assert sorted(f"{p['address']}:{p['port']}" for p in lun["paths"]) == sorted(cfg["portals"]), (host, lun)
            if wwid == vg_lun:
                assert (lun["status"], lun["vg_name"], lun["sd_uuid"]) == ("used", SD, SD), (host, lun)
            elif vg_lun:
                assert (lun["status"], lun["vg_name"]) == ("free", ""), (host, lun)
            serials.setdefault(wwid, set()).add(lun["serial"])
        some = answer["some"]
        assert [lun["guid"] for lun in some["luns"]] == [guid] and some["missing"] == ["36001405ffffffffffffffffffffffff9"]
        assert not answer["every"]["changed"]
        assert answer["bad"]["failed"] and "LUN GUID" in answer["bad"]["msg"], answer["bad"]
    # One LUN, one serial, whichever host asks.
    assert all(len(found) == 1 for found in serials.values()), serials


DIRECT_LUN_GUEST = "kerntest-lun"
DIRECT_LUN = """
- name: A guest with one of the SAN's LUNs passed through on virtio-scsi
  hosts: %(host)s
  gather_facts: false
  tasks:
    - name: Start it writing a pattern to the LUN
      virtnode.kvm.vm: &guest
        name: %(guest)s
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=pattern_write pattern_mb=4 pattern_tag=directlun disk=sda agent=off"
        disks:
          - {path: "%(lun)s", bus: scsi, lun: true, format: raw}
      register: started
    - name: Again
      virtnode.kvm.vm: *guest
      register: again
    - name: Pattern written (software emulation inside User-mode Linux is slow)
      ansible.builtin.wait_for:
        path: /var/log/libvirt/qemu/%(guest)s-console.log
        search_regex: pattern (written|bad)
        timeout: 240
    - name: What the guest and QEMU say
      ansible.builtin.shell:
        cmd: >-
          grep -a pattern /var/log/libvirt/qemu/%(guest)s-console.log;
          tr '\\0' ' ' < /proc/$(pgrep -f 'guest=%(guest)s' | head -1)/cmdline
      register: seen
      changed_when: false
    - name: Remove the guest
      virtnode.kvm.vm:
        name: %(guest)s
        state: absent
    - name: The LUN went through whole (SCSI commands passed to the multipath device), idempotently
      ansible.builtin.assert:
        that:
          - started is changed and not (again is changed)
          - seen.stdout is search('pattern written 4')
          - seen.stdout is search('scsi-block')
        fail_msg: "{{ seen.stdout }}"
"""


def test_a_guest_writes_to_a_lun_passed_through_and_the_san_has_it(san, tmp_path):
    """A direct LUN (the multipath device of a LUN no domain uses, ``lun: true`` on virtio-scsi): QEMU's
    scsi-block passes the guest's SCSI commands to it; the other host reads the guest's pattern off the SAN."""
    runner, other = san["hosts"][1], san["hosts"][0]
    guid = kernel_san.lun_guid(san, 0)
    playbook = tmp_path / "direct_lun.yml"
    playbook.write_text(DIRECT_LUN % {"host": runner, "guest": DIRECT_LUN_GUEST, "lun": f"/dev/mapper/{guid}"})
    proc = run_playbook(playbook, timeout=600)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-10000:]
    # The pattern's 64-byte lines name their MiB; the last MiB's lines are on the LUN as the other host sees it.
    read = lab_exec(other, "sh", "-c", f"dd if=/dev/mapper/{guid} bs=1M count=4 iflag=direct 2>/dev/null "
                    "| tr -s ' ' | grep -ao 'virtnode-pattern tag=directlun mib=[0-9]*' | sort -u")
    lab_exec(runner, "dd", "if=/dev/zero", f"of=/dev/mapper/{guid}", "bs=1M", "count=4", "oflag=direct")
    assert read.stdout.split("\n")[:4] == [f"virtnode-pattern tag=directlun mib={i}" for i in range(4)], read.stdout
