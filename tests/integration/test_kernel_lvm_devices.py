"""lvm_devices on a kernel host: the host's LVM limited to its own PVs, the collection's commands not.

vnkern2 gets a local PV (a loop device over a file, with a VG and an LV, standing for the host's
own disk) and sees the lab's LUNs through multipath, one of them holding a VG tagged as a storage
domain. After the module, the host's plain LVM commands see the local VG only, the devices file
lists the local PV only, and lun_info (the collection's LVM runner) still finds the domain's VG on
its LUN. Check mode writes nothing, a second run changes nothing, ``absent`` lets LVM see
everything again.
"""

from __future__ import annotations

import json

import pytest

import kernel_san
from conftest import lab_exec, run_playbook

CODE = "/run/virtnode-klvmdevices"
LOCAL_VG, DOMAIN_VG = "vnlabhostvg", "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c21"
IMAGE = "/var/tmp/virtnode-lvm-devices-test.img"
CONF, DEVICES = "/etc/lvm/lvm.conf", "/etc/lvm/devices/system.devices"
SAVED = "/var/tmp/virtnode-lvm-conf-saved"


@pytest.fixture(scope="module")
def host_with_luns(kernel_hosts, kernel_vars):
    with kernel_san.san_session(kernel_hosts, kernel_vars, [DOMAIN_VG], CODE) as session:
        host = session["hosts"][1]
        lun = kernel_san.lun_guid(session, 0)
        lab_exec(host, "sh", "-c", f"""set -e
cp {CONF} {SAVED}; rm -f {DEVICES}
truncate -s 256M {IMAGE}; loop=$(losetup --find --show {IMAGE})
pvcreate -y "$loop" >/dev/null; vgcreate {LOCAL_VG} "$loop" >/dev/null; lvcreate -y -n root -L 64m {LOCAL_VG} >/dev/null
pvcreate -y -ff /dev/mapper/{lun} >/dev/null; vgcreate --addtag RHAT_storage_domain {DOMAIN_VG} /dev/mapper/{lun} >/dev/null
""", timeout=300)
        try:
            yield host, lun
        finally:
            lab_exec(host, "sh", "-c", f"""cp {SAVED} {CONF}; rm -f {DEVICES} {SAVED}
vgremove -ff {LOCAL_VG}; for loop in $(losetup -j {IMAGE} -O NAME -n); do pvremove -ff -y "$loop"; losetup -d "$loop"; done
rm -f {IMAGE}""", check=False, timeout=300)


PLAYBOOK = """\
- name: lvm_devices
  hosts: %(host)s
  gather_facts: false
  tasks:
    - {name: Check mode, virtnode.kvm.lvm_devices: {}, check_mode: true, register: check}
    - {name: Conf after check mode, ansible.builtin.command: "md5sum %(conf)s", register: conf_after_check, changed_when: false}
    - {name: Present, virtnode.kvm.lvm_devices: {}, diff: true, register: present}
    - {name: Again, virtnode.kvm.lvm_devices: {}, register: again}
    - {name: Host VGs, ansible.builtin.command: "vgs --noheadings -o vg_name", register: vgs_limited, changed_when: false}
    - {name: The collection's view, virtnode.kvm.lun_info: {guids: ["%(lun)s"]}, register: luns}
    - {name: Absent, virtnode.kvm.lvm_devices: {state: absent}, register: absent}
    - {name: Absent again, virtnode.kvm.lvm_devices: {state: absent}, register: absent_again}
    - {name: Host VGs again, ansible.builtin.command: "vgs --noheadings -o vg_name", register: vgs_all, changed_when: false}
    - name: Keep them for the test
      ansible.builtin.copy:
        content: "{{ {'check': check, 'conf_after_check': conf_after_check.stdout, 'present': present, 'again': again,
                     'vgs_limited': vgs_limited.stdout.split(), 'luns': luns, 'absent': absent,
                     'absent_again': absent_again, 'vgs_all': vgs_all.stdout.split()} | to_json }}"
        dest: "%(dest)s"
        mode: "0600"
      delegate_to: localhost
"""


def test_the_host_sees_its_own_pvs_only_and_the_collection_still_sees_the_luns(host_with_luns, tmp_path):
    host, lun = host_with_luns
    conf_before = lab_exec(host, "md5sum", CONF).stdout
    playbook = tmp_path / "lvm_devices.yml"
    playbook.write_text(PLAYBOOK % {"host": host, "lun": lun, "conf": CONF, "dest": tmp_path / "result.json"})
    proc = run_playbook(playbook, timeout=600)
    assert proc.returncode == 0, proc.stdout[-10000:]
    got = json.loads((tmp_path / "result.json").read_text())
    check, present, again = got["check"], got["present"], got["again"]
    assert check["changed"] and check["actions"] == ["add_devices", "enable"], check
    assert got["conf_after_check"] == conf_before.strip(), "check mode changed lvm.conf"
    assert present["changed"] and present["actions"] == ["add_devices", "enable"], present
    assert present["diff"] == {"before": {"use_devicesfile": None}, "after": {"use_devicesfile": 1}}, present
    assert len(present["added"]) == 1 and present["added"][0].startswith("/dev/loop"), present
    assert not again["changed"] and again["actions"] == [], again
    # The host's own LVM: the local VG only. The collection's commands: the domain's VG on its LUN.
    assert LOCAL_VG in got["vgs_limited"] and DOMAIN_VG not in got["vgs_limited"], got["vgs_limited"]
    (found,) = got["luns"]["luns"]
    assert found["vg_name"] == DOMAIN_VG and found["sd_uuid"] == DOMAIN_VG, found
    assert got["absent"]["changed"] and got["absent"]["actions"] == ["disable"], got["absent"]
    assert not got["absent_again"]["changed"], got["absent_again"]
    assert LOCAL_VG in got["vgs_all"] and DOMAIN_VG in got["vgs_all"], got["vgs_all"]
    listed = lab_exec(host, "cat", DEVICES).stdout
    assert "IDTYPE=loop_file" in listed and lun not in listed and "mpath" not in listed, listed
