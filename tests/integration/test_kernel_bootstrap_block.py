"""bootstrap's block storage set-up on a kernel host (its own /etc): VDSM's multipath.conf, and the
host's own LVM confined to its own disks.

The role's block_storage tasks write /etc/multipath.conf; multipath-tools itself (``multipath
-t``, the configuration it would run with) shows VDSM's settings; a second run changes nothing;
a new no_path_retry rewrites the file; a file marked ``# VDSM PRIVATE`` is left alone.

``lvm_devices`` (the role's first block storage task) on a host with a mounted local LV, an
unmounted local VG and a storage domain's VG (on loop devices): asking for the domain's VG is
refused and changes nothing; check mode changes nothing; the first two go in the LVM
devices file, the domain's never; the host's own LVM then sees only those, and a VG that appears
later on a new device (a guest's, a new LUN's) stays out of its sight. The host's LVM
configuration is put back afterwards, since later tests run plain LVM commands there.
Services are not managed here (systemd skips multipathd under User-mode Linux; the block tests
start it by hand), packages are the machine's.
"""

from __future__ import annotations

import json
import time

from conftest import lab_exec, run_playbook
from test_kernel_block_domain import play as play_tasks

CONF = "/etc/multipath.conf"
SAVED = "/etc/multipath.conf.virtnode-test-saved"


def play(tmp_path, host: str, name: str, extra_vars: dict) -> dict:
    """The role's block_storage tasks on ``host``; how many tasks changed something (from the recap)."""
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": host, "gather_facts": False,
        # The host's LVM configuration is the other test's.
        "vars": dict({"bootstrap_install_packages": False, "bootstrap_lvm_devices": False}, **extra_vars),
        "tasks": [
            {"name": "bootstrap block storage", "ansible.builtin.include_role": {
                "name": "virtnode.kvm.bootstrap", "tasks_from": "block_storage.yml"}},
        ]}]))
    proc = run_playbook(playbook, timeout=300)
    assert proc.returncode == 0, proc.stdout[-10000:]
    recap = [line for line in proc.stdout.splitlines() if line.startswith(host) and "changed=" in line]
    assert recap, proc.stdout[-3000:]
    return {"changed": int(recap[-1].split("changed=")[1].split()[0])}


def multipath_config(host: str) -> str:
    return lab_exec(host, "multipath", "-t").stdout


def test_bootstrap_writes_vdsm_multipath_settings_once_and_leaves_a_private_file_alone(kernel_hosts, tmp_path):
    host = list(kernel_hosts)[1]
    lab_exec(host, "sh", "-c", f"if [ -e {CONF} ]; then mv {CONF} {SAVED}; fi")
    started = time.monotonic()
    try:
        assert play(tmp_path, host, "first", {})["changed"] == 1
        text = lab_exec(host, "cat", CONF).stdout
        assert text.startswith("# VDSM REVISION 2.2\n"), text[:200]
        config = multipath_config(host)
        defaults = config.split("defaults {", 1)[1].split("}", 1)[0]
        for setting in ('polling_interval 5', 'no_path_retry 16', 'user_friendly_names "no"',
                        'flush_on_last_del "yes"', 'fast_io_fail_tmo 5', 'dev_loss_tmo 30', 'find_multipaths "off"'):
            assert setting in defaults, (setting, defaults)
        assert 'protocol "(scsi:adt|scsi:sbp)"' in config and 'devnode "^(rbd)[0-9]*"' in config
        overrides = config.split("overrides {", 1)[1].split("}", 1)[0]
        assert "no_path_retry 16" in overrides, overrides

        assert play(tmp_path, host, "again", {})["changed"] == 0
        assert play(tmp_path, host, "retry", {"bootstrap_multipath_no_path_retry": 12})["changed"] == 1
        assert "no_path_retry 12" in multipath_config(host).split("defaults {", 1)[1].split("}", 1)[0]

        private = "# VDSM REVISION 2.2\n# VDSM PRIVATE\ndefaults {\n    user_friendly_names no\n    polling_interval 7\n}\n"
        lab_exec(host, "sh", "-c", f"cat > {CONF} <<'EOF'\n{private}EOF\n")
        assert play(tmp_path, host, "private", {})["changed"] == 0
        assert lab_exec(host, "cat", CONF).stdout == private
    finally:
        lab_exec(host, "sh", "-c", f"rm -f {CONF}; if [ -e {SAVED} ]; then mv {SAVED} {CONF}; fi", check=False)
    print(f"bootstrap block storage on {host}: {time.monotonic() - started:.1f}s")


LVM_CONF, LVM_SAVED = "/etc/lvm/lvm.conf", "/etc/lvm/lvm.conf.virtnode-test-saved"
DEVICES_FILE = "/etc/lvm/devices/system.devices"
IMAGES = "/run/vnlvmdev"
SEE_ALL = "devices { use_devicesfile=0 hints=\"none\" }"
LOCAL_VGS = {"vnlocal": "mounted", "vnspare": "spare", "vnfakesd": "domain", "vnlater": "later"}


def host_vgs(host: str) -> set:
    """The VGs the host's own LVM configuration lets it see."""
    return set(lab_exec(host, "vgs", "--noheadings", "-o", "vg_name").stdout.split())


def loop_vg(host: str, vg: str, *extra: str) -> str:
    """A VG on a new 64 MiB loop device, made whatever the host's LVM configuration says; its device."""
    device = lab_exec(host, "sh", "-c", f"mkdir -p {IMAGES} && truncate -s 64M {IMAGES}/{vg} && "
                      f"losetup -f --show {IMAGES}/{vg}").stdout.strip()
    lab_exec(host, "vgcreate", "--config", SEE_ALL, *extra, vg, device, timeout=120)
    return device


def test_lvm_devices_keeps_the_hosts_lvm_to_its_own_disks(kernel_hosts, tmp_path):
    host = list(kernel_hosts)[1]
    lab_exec(host, "sh", "-c", f"cp -p {LVM_CONF} {LVM_SAVED}; rm -f {DEVICES_FILE}")
    conf_before = lab_exec(host, "cat", LVM_CONF).stdout
    started = time.monotonic()
    try:
        devices = {"vnlocal": loop_vg(host, "vnlocal"), "vnspare": loop_vg(host, "vnspare"),
                   "vnfakesd": loop_vg(host, "vnfakesd", "--addtag", "RHAT_storage_domain")}
        lab_exec(host, "sh", "-c", "lvcreate --config '%s' -q -L 16M -n root vnlocal && mkfs.ext4 -q /dev/vnlocal/root && "
                 "mkdir -p /mnt/vnlocal && mount /dev/vnlocal/root /mnt/vnlocal" % SEE_ALL, timeout=120)
        module = {"virtnode.kvm.lvm_devices": {}}
        # Bad input first: a storage domain's VG asked for is refused, and neither file is touched.
        refused, check = play_tasks(tmp_path, "lvm-devices-refused", host, [
            {"virtnode.kvm.lvm_devices": {"vgs": ["vnfakesd"]}}, dict(module, check_mode=True)])
        assert refused.get("failed") and "storage domain" in refused["msg"], refused
        assert lab_exec(host, "cat", LVM_CONF).stdout == conf_before
        assert lab_exec(host, "test", "-e", DEVICES_FILE, check=False).returncode != 0
        done, again = play_tasks(tmp_path, "lvm-devices", host, [module, module])
        assert check["changed"] and check["actions"] == ["import_vgs", "enable_devices_file"], check
        assert done["changed"] and done["actions"] == check["actions"], done
        assert not again["changed"] and again["actions"] == [], again
        mounts = {m["lv"]: m for m in done["lvm"]["mounts"]}
        assert mounts["/dev/mapper/vnlocal-root"]["mountpoint"] == "/mnt/vnlocal", mounts
        imported = set(done["lvm"]["imported"])
        assert {"vnlocal", "vnspare"} <= imported and "vnfakesd" not in imported, done["lvm"]
        # What LVM itself now uses: the devices file with the local PVs, and no other device.
        assert "use_devicesfile=1" in lab_exec(host, "lvmconfig", "--typeconfig", "full", "devices/use_devicesfile").stdout
        listed = lab_exec(host, "lvm", "lvmdevices").stdout
        for vg, device in devices.items():
            assert (f"DEVNAME={device} " in listed) == (vg != "vnfakesd"), (vg, device, listed)
        seen = host_vgs(host)
        assert {"vnlocal", "vnspare"} <= seen and "vnfakesd" not in seen, seen
        # A VG that appears later on a new device (a guest's disk, a new LUN) stays out of sight.
        loop_vg(host, "vnlater")
        assert "vnlater" not in host_vgs(host)
        # The role runs it first of its block storage tasks: configured already, nothing changes.
        saved_mpath = lab_exec(host, "sh", "-c", f"cat {CONF} 2>/dev/null || true").stdout
        try:
            role = play(tmp_path, host, "role", {"bootstrap_lvm_devices": True})
        finally:
            lab_exec(host, "sh", "-c", f"cat > {CONF} <<'EOF'\n{saved_mpath}EOF\n" if saved_mpath else f"rm -f {CONF}")
        assert role["changed"] <= 1, role  # multipath.conf only, when this host had none
    finally:
        cleanup = ["umount /mnt/vnlocal", f"cp -p {LVM_SAVED} {LVM_CONF}", f"rm -f {LVM_SAVED} {DEVICES_FILE}"]
        cleanup += [f"vgremove --config '{SEE_ALL}' -f -y {vg}" for vg in LOCAL_VGS]
        cleanup += [f"for d in $(losetup -j {IMAGES}/{vg} -O NAME -n); do losetup -d $d; done" for vg in LOCAL_VGS]
        cleanup.append(f"rm -rf {IMAGES}")
        lab_exec(host, "sh", "-c", "; ".join(cleanup) + "; true", check=False, timeout=180)
    assert lab_exec(host, "cat", LVM_CONF).stdout == conf_before
    print(f"lvm_devices on {host}: {time.monotonic() - started:.1f}s")
