"""The lab's storage server: NFS exports, an iSCSI target and a DHCP server on kernel host 1.

Everything it serves lives on the server's data disk (ubd1, ext4 at /srv/virtnode): an overlay
cannot be exported over NFS, and LUN files on the data disk survive the server's reboot.

- NFS (nfs-kernel-server): /srv/virtnode/nfs/export1 and export2 to the lab's subnets, rw,
  no_root_squash (VDSM's storage runs as vdsm:kvm but needs root on the export to set it up).
  NFSv3 mounts them by those paths. NFSv4's root is /srv/virtnode (fsid=0: the default pseudo
  root would be the server's overlay root, which cannot give out file handles), so v4 mounts
  them as /nfs/export1 and /nfs/export2.
- iSCSI (LIO through python3-rtslib-fb, saved so it comes back at boot): one target with LUNS
  file-backed LUNs, one portal on the management segment and one on the storage segment, so
  an initiator logged in to both sees two paths to each LUN (dm-multipath's case); and a second
  target with one small LUN on the same portals that needs CHAP.
- DHCP (dnsmasq): 10.253.<lab>.0/24 on the VM segment, from the server's eth1.

`ensure(count)` is idempotent and runs on every lab-up, after the kernel hosts booted.
"""

from __future__ import annotations

import json
import time

import kernel_host
import lab

TARGET_IQN = f"iqn.2026-12.lab.virtnode:storage{lab.LAB_ID}"
# A second target, with one small LUN, that only lets in initiators that know its CHAP secret.
CHAP_TARGET_IQN = f"iqn.2026-12.lab.virtnode:chap{lab.LAB_ID}"
CHAP_USER, CHAP_PASSWORD = "vnlab-initiator", "lab-chap-secret-0"
CHAP_LUN_SIZE = 64 * 1024 ** 2
LUNS = 3
# A VDSM block domain's special LVs take 4.5 GiB: each LUN holds one, with room for volumes (sparse files).
LUN_SIZE = 8 * 1024 ** 3
EXPORT_ROOT = "/srv/virtnode/nfs"
EXPORTS = ("export1", "export2")
V4_ROOT = "/srv/virtnode"
DHCP_RANGE = (kernel_host.DHCP_SUBNET_PREFIX + "50", kernel_host.DHCP_SUBNET_PREFIX + "150")
DHCP_LEASE = "2m"
PORT = 3260


def portals() -> list[str]:
    server = kernel_host.host_index(kernel_host.STORAGE_SERVER)
    return [f"{kernel_host.host_ip(server)}:{PORT}", f"{kernel_host.storage_ip(server)}:{PORT}"]


def inventory_vars() -> dict:
    server = kernel_host.host_index(kernel_host.STORAGE_SERVER)
    return {
        "virtnode_lab_nfs_server": kernel_host.host_ip(server),
        "virtnode_lab_nfs_exports_v3": [f"{EXPORT_ROOT}/{e}" for e in EXPORTS],
        "virtnode_lab_nfs_exports_v4": [f"{EXPORT_ROOT[len(V4_ROOT):]}/{e}" for e in EXPORTS],
        "virtnode_lab_iscsi_target": TARGET_IQN,
        "virtnode_lab_iscsi_portals": portals(),
        "virtnode_lab_iscsi_luns": LUNS,
        "virtnode_lab_iscsi_lun_size": LUN_SIZE,
        "virtnode_lab_iscsi_chap_target": CHAP_TARGET_IQN,
        "virtnode_lab_iscsi_chap_user": CHAP_USER,
        "virtnode_lab_iscsi_chap_password": CHAP_PASSWORD,
        "virtnode_lab_dhcp_subnet": kernel_host.DHCP_SUBNET_PREFIX + "0/24",
        "virtnode_lab_dhcp_server": kernel_host.DHCP_SERVER_IP,
        "bootstrap_sanlock_use_watchdog": False,
    }


# One Python process on the server: every fork there costs 20-100 ms.
RTSLIB_SCRIPT = """
import json, os, sys
from rtslib_fb import RTSRoot, FileIOStorageObject, Target, TPG, NetworkPortal, LUN, FabricModule
cfg = json.loads(sys.argv[1])
root = RTSRoot()
changed = False
stores = {so.name: so for so in root.storage_objects}
fabric = FabricModule("iscsi")
targets = {t.wwn: t for t in fabric.targets}
for want in cfg["targets"]:
    objs = []
    for name in want["luns"]:
        if name in stores and stores[name].size == want["size"]:
            objs.append(stores[name])
            continue
        if name in stores:
            # A lab made when LUNs had another size: the LUN is made again, empty.
            stores[name].delete()
            os.unlink("%s/%s.img" % (cfg["dir"], name))
        os.makedirs(cfg["dir"], exist_ok=True)
        objs.append(FileIOStorageObject(name, "%s/%s.img" % (cfg["dir"], name), size=want["size"], write_back=False))
        changed = True
    if want["iqn"] in targets:
        target = targets[want["iqn"]]
    else:
        target = Target(fabric, want["iqn"])
        changed = True
    tpgs = list(target.tpgs)
    tpg = tpgs[0] if tpgs else TPG(target, 1)
    have = {(p.ip_address, p.port) for p in tpg.network_portals}
    for portal in cfg["portals"]:
        ip, port = portal.rsplit(":", 1)
        if (ip, int(port)) not in have:
            NetworkPortal(tpg, ip, int(port))
            changed = True
    luns = {lun.storage_object.name for lun in tpg.luns}
    for i, so in enumerate(objs):
        if so.name not in luns:
            LUN(tpg, i, so)
            changed = True
    # A lab target: any initiator, writable; CHAP (one user for every initiator) only where asked.
    chap = want.get("chap")
    for attr, value in (("generate_node_acls", "1"), ("demo_mode_write_protect", "0"),
                        ("authentication", "1" if chap else "0"), ("cache_dynamic_acls", "1")):
        if tpg.get_attribute(attr) != value:
            tpg.set_attribute(attr, value)
            changed = True
    if chap and (tpg.chap_userid, tpg.chap_password) != tuple(chap):
        tpg.chap_userid, tpg.chap_password = chap
        changed = True
    tpg.enable = True
if changed:
    root.save_to_file()
print(json.dumps({"changed": changed}))
"""


def ensure(count: int) -> None:
    """Serve NFS, iSCSI and DHCP from the storage server (it is up and ready)."""
    name = kernel_host.STORAGE_SERVER
    if count < 1:
        return
    clients = (f"{lab.SUBNET_PREFIX}0/24", f"{kernel_host.STORAGE_SUBNET_PREFIX}0/24")
    exports = f"{V4_ROOT} " + " ".join(f"{c}(ro,fsid=0,crossmnt,no_subtree_check)" for c in clients) + "\n"
    exports += "".join(
        f"{EXPORT_ROOT}/{e} " + " ".join(f"{c}(rw,sync,no_root_squash,no_subtree_check)" for c in clients) + "\n"
        for e in EXPORTS)
    dnsmasq = (f"# virtnode lab: DHCP on the VM segment, no DNS\nport=0\ninterface=eth1\nbind-interfaces\n"
               f"dhcp-range={DHCP_RANGE[0]},{DHCP_RANGE[1]},255.255.255.0,{DHCP_LEASE}\n"
               "dhcp-leasefile=/var/lib/misc/dnsmasq.leases\nlog-dhcp\n")
    config = {"dir": "/srv/virtnode/iscsi", "portals": portals(), "targets": [
        {"iqn": TARGET_IQN, "luns": [f"lun{i}" for i in range(LUNS)], "size": LUN_SIZE},
        {"iqn": CHAP_TARGET_IQN, "luns": ["chaplun0"], "size": CHAP_LUN_SIZE, "chap": [CHAP_USER, CHAP_PASSWORD]}]}
    script = f"""set -eu
mkdir -p /etc/exports.d /etc/dnsmasq.d {" ".join(f"{EXPORT_ROOT}/{e}" for e in EXPORTS)}
chmod 0777 {' '.join(f'{EXPORT_ROOT}/{e}' for e in EXPORTS)}
printf '%s' {kernel_host.shlex.quote(exports)} > /etc/exports.d/virtnode-lab.exports
# The units are enabled by their packages (the machine's /etc is every kernel host's lower layer):
# `systemctl enable` would cost a daemon-reload, 20 s of forks here.
systemctl start nfs-server.service rtslib-fb-targetctl.service
exportfs -ra
printf '%s' {kernel_host.shlex.quote(dnsmasq)} > /etc/dnsmasq.d/virtnode-lab.conf.new
if cmp -s /etc/dnsmasq.d/virtnode-lab.conf.new /etc/dnsmasq.d/virtnode-lab.conf && systemctl is-active -q dnsmasq.service; then
    rm /etc/dnsmasq.d/virtnode-lab.conf.new
else
    mv /etc/dnsmasq.d/virtnode-lab.conf.new /etc/dnsmasq.d/virtnode-lab.conf
    systemctl restart dnsmasq.service
fi
modprobe -a target_core_mod iscsi_target_mod target_core_file
python3 -c {kernel_host.shlex.quote(RTSLIB_SCRIPT)} {kernel_host.shlex.quote(json.dumps(config))}
"""
    t0 = time.monotonic()
    proc = kernel_host.run_in(name, script, timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"lab: storage server {name} failed to set up:\n{proc.stdout}{proc.stderr}\n"
                         f"{kernel_host.diagnose(name)}")
    lab.log(f"{name}: serving NFS {', '.join(EXPORTS)}, iSCSI {TARGET_IQN} ({LUNS} LUNs) and {CHAP_TARGET_IQN} (CHAP) on "
            f"{' and '.join(portals())}, DHCP on {kernel_host.DHCP_SUBNET_PREFIX}0/24 "
            f"({time.monotonic() - t0:.1f}s)")
