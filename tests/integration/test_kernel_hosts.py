"""The lab's kernel hosts are whole virtualization hosts with a kernel of their own.

They load what the machine's kernel lacks (device-mapper, bonding, 802.1q, NFS, iSCSI, LIO), run
the tiny guest under their own libvirtd, and live-migrate it between them with the collection's
vm module: the heartbeat counter goes on across the move.
"""

from __future__ import annotations

from conftest import heartbeats, lab_exec, run_playbook, wait_for

GUEST = "kerntest-tiny"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"
FEATURES = ("dm_mod", "dm_multipath", "bonding", "8021q", "nfsd", "nfs", "iscsi_tcp", "iscsi_target_mod",
            "bridge", "tun", "loop")

PLAYBOOK = """
- name: The tiny guest on the first kernel host, then live-migrated to the second
  hosts: kernel[0]
  gather_facts: false
  tasks:
    - name: Start
      virtnode.kvm.vm:
        name: %(guest)s
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=heartbeat"
    - name: Wait for the third heartbeat (software emulation inside User-mode Linux is slow)
      ansible.builtin.wait_for:
        path: %(log)s
        search_regex: heartbeat 3
        timeout: 180
    - name: Migrate to the second kernel host
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['kernel'][1] }}"
        migrate_transport: tcp  # the lab's hosts listen on plain TCP
        migrate_unsafe: true
        migrate_options:
          timeout: 240
      register: moved
    - name: The guest left this host
      virtnode.kvm.vm_info:
        name: %(guest)s
      register: here
    - name: Check
      ansible.builtin.assert:
        that:
          - moved is changed
          - here.vms | selectattr('status', 'equalto', 'Up') | list | length == 0
"""

CLEANUP = """
- name: Remove the guest from every kernel host
  hosts: kernel
  gather_facts: false
  tasks:
    - name: Absent
      virtnode.kvm.vm:
        name: %(guest)s
        state: absent
"""


def test_kernel_hosts_load_what_the_machine_kernel_lacks(kernel_hosts):
    for host in kernel_hosts:
        proc = lab_exec(host, "sh", "-c", f"modprobe -a {' '.join(FEATURES)} && uname -r && hostname")
        release, name = proc.stdout.split()
        assert release.startswith("6.1") and name == host, proc.stdout


def test_tiny_guest_runs_and_migrates_between_kernel_hosts(kernel_hosts, tmp_path):
    first, second = list(kernel_hosts)[:2]
    playbook = tmp_path / "kernel_guest.yml"
    playbook.write_text(PLAYBOOK % {"guest": GUEST, "log": LOG})
    try:
        proc = run_playbook(playbook)
        assert proc.returncode == 0, proc.stdout[-6000:]
        before = max(heartbeats(lab_exec(first, "cat", LOG).stdout))

        def beats_on_second() -> list[int]:
            return heartbeats(lab_exec(second, "cat", LOG, check=False).stdout)

        # The destination's console log starts with the migrated guest's next beats: no reboot.
        after = wait_for("heartbeats on the destination", lambda: [n for n in beats_on_second() if n > before],
                         timeout=120, step=2)
        assert min(after) > before >= 3, (before, after)
        assert "running" in lab_exec(second, "virsh", "domstate", GUEST).stdout
    finally:
        cleanup = tmp_path / "cleanup.yml"
        cleanup.write_text(CLEANUP % {"guest": GUEST})
        run_playbook(cleanup)
