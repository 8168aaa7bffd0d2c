"""NFS storage on the lab's kernel hosts, against the lab's NFS server (vnkern1, kernel group vars).

- storage_server connects and disconnects NFS exports with a protocol version, timeo and retrans;
  /proc/mounts shows what was asked for, plus nosuid,nodev.
- A file storage domain on an NFS export is used by both kernel hosts: the first creates it, the
  pool and its SPM role, the second joins the pool, and a volume the SPM made is seen on both.
- The export evaporates under a running VM: vnkern1 drops the second host's NFS packets (a dead
  server, not a refusing one). The guest's writes fail, QEMU pauses it on EIO; storage modules
  fail within their deadlines naming the mount that does not answer; the node agent reports the
  domain invalid and goes on answering. When the server answers again the agent sees the domain
  valid and resumes the VM, whose writer goes on.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from conftest import REPO, lab_exec, run_playbook, wait_for

SP = "3c1e5a7f-9b2d-4e6f-8a1c-5d7e9f1a3b50"
SD = "4d2f6b8a-0c3e-4f7a-9b2d-6e8f0a2b4c61"
IMG = "5e3a7c9b-1d4f-4a8b-8c3e-7f9a1b3c5d72"
VOL = "6f4b8d0c-2e5a-4b9c-9d4f-8a0b2c4d6e83"
IO_TIMEOUT = 3
# The domain's export: timeo=20 (2 s), retrans=2, so an NFS call to a dead server fails after
# 2 + 4 + 6 s (linear backoff over TCP) instead of VDSM's default of minutes.
DOMAIN_TIMEO, DOMAIN_RETRANS = 20, 2


def play(tmp_path, name: str, hosts: str, body: str, timeout: int = 600) -> float:
    """Run one play (``body``: its vars and tasks, YAML indented for a play); fail with its output; its seconds."""
    playbook = tmp_path / f"{name.replace(' ', '_')}.yml"
    playbook.write_text(f"- name: {name}\n  hosts: {hosts}\n  gather_facts: false\n{body}")
    started = time.monotonic()
    proc = run_playbook(playbook, timeout=timeout)
    seconds = time.monotonic() - started
    print(f"{name}: {seconds:.1f}s")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-20000:]}"
    return seconds


# ---------------------------------------------------------------- storage_server on NFS

# One version of NFS, looped over by CONNECT_PLAY: item = {path, version, timeo, retrans, fstype}.
NFS_VERSION_TASKS = """---
- name: Connect (check mode)
  virtnode.kvm.storage_server: &nfs
    type: nfs
    path: "{{ item.path }}"
    nfs_version: "{{ item.version }}"
    timeo: "{{ item.timeo }}"
    retrans: "{{ item.retrans }}"
  check_mode: true
  register: nfs_check

- name: Connect
  virtnode.kvm.storage_server: *nfs
  register: nfs_real

- name: Connect again
  virtnode.kvm.storage_server: *nfs
  register: nfs_again

- name: Read the mount table and the export's root
  ansible.builtin.shell: cat /proc/mounts; ls -a {{ nfs_real.mount_point | quote }}
  register: mounted
  changed_when: false

- name: Disconnect (check mode)
  virtnode.kvm.storage_server: &nfs_off
    type: nfs
    path: "{{ item.path }}"
    state: disconnected
  check_mode: true
  register: off_check

- name: Disconnect
  virtnode.kvm.storage_server: *nfs_off
  register: off_real

- name: Disconnect again
  virtnode.kvm.storage_server: *nfs_off
  register: off_again

- name: Read the mount table and look for the mount point
  ansible.builtin.shell: cat /proc/mounts; test -e {{ nfs_real.mount_point | quote }} && echo MOUNT POINT LEFT || true
  register: unmounted
  changed_when: false

- name: "NFS {{ item.version }}: mounted as asked, nosuid,nodev, idempotent, unmounted"
  vars:
    lines: "{{ mounted.stdout_lines | select('search', ' ' ~ (nfs_real.mount_point | regex_escape) ~ ' ') | list }}"
    fields: "{{ (lines | last).split() }}"
    opts: "{{ fields[3].split(',') }}"
  ansible.builtin.assert:
    that:
      - nfs_check is changed
      - nfs_real is changed and nfs_real.connected
      - nfs_again is not changed and nfs_again.connected
      - nfs_real.mount_point == '/rhev/data-center/mnt/' + (item.path | replace('_', '__') | replace('/', '_'))
      - lines | length == 1
      - fields[0] == item.path
      - fields[2] == item.fstype
      - ('vers=' ~ item.version) in opts
      - ('timeo=' ~ item.timeo) in opts
      - ('retrans=' ~ item.retrans) in opts
      - "'soft' in opts and 'nosharecache' in opts"
      - "'nosuid' in opts and 'nodev' in opts"
      - "'.' in mounted.stdout_lines"
      - off_check is changed
      - off_real is changed and not off_real.connected
      - off_again is not changed and not off_again.connected
      - (' ' ~ nfs_real.mount_point ~ ' ') not in unmounted.stdout
      - "'MOUNT POINT LEFT' not in unmounted.stdout"
    fail_msg: "{{ lines }} {{ nfs_real }} {{ unmounted.stdout_lines | select('search', 'nfs') | list }}"
"""

CONNECT_PLAY = """  tasks:
    - name: Each NFS version against the lab's server
      ansible.builtin.include_tasks: %(tasks)s
      loop:
        - path: "{{ virtnode_lab_nfs_server }}:{{ virtnode_lab_nfs_exports_v3[1] }}"
          version: "3"
          timeo: 50
          retrans: 3
          fstype: nfs
        # NFSv4 names the export under the server's v4 root (fsid=0), not by its path there.
        - path: "{{ virtnode_lab_nfs_server }}:{{ virtnode_lab_nfs_exports_v4[1] }}"
          version: "4.2"
          timeo: 70
          retrans: 4
          fstype: nfs4
      loop_control:
        label: "{{ item.version }}"
"""


def test_nfs_connect_disconnect_with_version_timeo_retrans(kernel_hosts, tmp_path):
    tasks = tmp_path / "nfs_version.yml"
    tasks.write_text(NFS_VERSION_TASKS)
    play(tmp_path, "storage_server on NFS 3 and 4.2", "kernel[1]", CONNECT_PLAY % {"tasks": tasks})


# ---------------------------------------------------------------- a file domain on NFS, two hosts

GUEST = "nfs-writer"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"
# The plays below share these vars; their own text is plain YAML.
VARS = f"""  vars:
    server: "{{{{ virtnode_lab_nfs_server }}}}:{{{{ virtnode_lab_nfs_exports_v3[0] }}}}"
    sp: {SP}
    sd: {SD}
    img: {IMG}
    vol: {VOL}
    io_timeout: {IO_TIMEOUT}
    timeo: {DOMAIN_TIMEO}
    retrans: {DOMAIN_RETRANS}
    guest: {GUEST}
    log: {LOG}
    first: "{{{{ groups.kernel[0] }}}}"
"""
DOMAIN_PLAY = VARS + """  tasks:
    - name: Connect the export
      virtnode.kvm.storage_server:
        type: nfs
        path: "{{ server }}"
        nfs_version: "3"
        timeo: "{{ timeo }}"
        retrans: "{{ retrans }}"
    - name: Create the domain on the first host
      virtnode.kvm.storage_domain:
        sd_uuid: "{{ sd }}"
        server: "{{ server }}"
        type: nfs
        description: on nfs
        io_timeout: "{{ io_timeout }}"
      register: created
      when: inventory_hostname == first
    - name: Create the pool on the first host
      virtnode.kvm.storage_pool:
        pool_uuid: "{{ sp }}"
        master_sd_uuid: "{{ sd }}"
        host_id: 1
        state: present
      when: inventory_hostname == first
    - name: Every host joins the pool
      virtnode.kvm.storage_pool:
        pool_uuid: "{{ sp }}"
        host_id: "{{ groups.kernel.index(inventory_hostname) + 1 }}"
      register: joined
    - name: The first host is SPM
      virtnode.kvm.spm:
        pool_uuid: "{{ sp }}"
        state: started
        check_interval: 0.5
      when: inventory_hostname == first
    - name: The SPM creates a volume (sparse, 2 GiB; the guest writes into it)
      virtnode.kvm.volume:
        sd_uuid: "{{ sd }}"
        image_uuid: "{{ img }}"
        volume_uuid: "{{ vol }}"
        size: 2GiB
        format: RAW
      when: inventory_hostname == first
    - name: What each host sees of the domain
      virtnode.kvm.storage_info:
        sd_uuid: "{{ sd }}"
      register: seen
    - name: Both hosts see the domain valid, in the pool, with the volume
      vars:
        domain: "{{ seen.domains[0] }}"
        volumes: "{{ domain.images | map(attribute='volumes') | flatten }}"
      ansible.builtin.assert:
        that:
          - inventory_hostname != first or created is changed
          - inventory_hostname == first or joined is changed
          - joined.pool.domains[sd] == 'Active'
          - seen.domains | length == 1 and 'error' not in domain
          - domain.type == 'NFS' and domain.remote_path == server and domain.pool_uuids == [sp]
          - domain.mount_point == '/rhev/data-center/mnt/' + (server | replace('_', '__') | replace('/', '_'))
          - volumes | map(attribute='volume_uuid') | list == [vol]
          - volumes[0].legality == 'LEGAL' and volumes[0].capacity == 2147483648
          - seen.unreachable == []
        fail_msg: "{{ seen.domains }} {{ seen.unreachable }} {{ joined.pool }}"
"""
TEARDOWN_PLAY = VARS + """  tasks:
    - name: Remove the guest
      virtnode.kvm.vm:
        name: "{{ guest }}"
        state: absent
      failed_when: false
    - name: Stop SPM
      virtnode.kvm.spm:
        pool_uuid: "{{ sp }}"
        state: stopped
      failed_when: false
    - name: Disconnect the pool
      virtnode.kvm.storage_pool:
        pool_uuid: "{{ sp }}"
        state: disconnected
      failed_when: false
    - name: Disconnect the export
      virtnode.kvm.storage_server:
        type: nfs
        path: "{{ server }}"
        state: disconnected
      failed_when: false
    - name: Remove the domain from the server's export
      ansible.builtin.file:
        path: "{{ virtnode_lab_nfs_exports_v3[0] }}/{{ sd }}"
        state: absent
      when: inventory_hostname == first
"""


def teardown_pool(tmp_path):
    play(tmp_path, "NFS pool teardown", "kernel", TEARDOWN_PLAY)


@pytest.fixture(scope="module")
def nfs_pool(kernel_hosts, kernel_vars, tmp_path_factory):
    """The NFS domain, pool, SPM (first host) and a volume, both hosts joined; torn down after the module."""
    tmp_path = tmp_path_factory.mktemp("nfs_pool")
    first = list(kernel_hosts)[0]
    export = kernel_vars["virtnode_lab_nfs_exports_v3"][0]
    if lab_exec(first, "test", "-e", f"{export}/{SD}", check=False).returncode == 0:
        teardown_pool(tmp_path)  # what an interrupted run left
    try:
        play(tmp_path, "NFS domain used by two hosts", "kernel", DOMAIN_PLAY)
        yield
    finally:
        teardown_pool(tmp_path)


def test_file_domain_on_nfs_is_shared_by_two_hosts(nfs_pool, kernel_hosts, kernel_vars):
    # The checks of the setup play, and what they rest on: the files on the server, the lockspace held
    # by each host with its own id.
    first = list(kernel_hosts)[0]
    volume = f"{kernel_vars['virtnode_lab_nfs_exports_v3'][0]}/{SD}/images/{IMG}/{VOL}"
    assert lab_exec(first, "stat", "-c", "%s", volume).stdout.split() == ["2147483648"]
    for host_id, host in enumerate(kernel_hosts, start=1):
        status = lab_exec(host, "sanlock", "client", "status").stdout
        assert f"s {SD}:{host_id}:" in status, f"{host}: {status}"


# ---------------------------------------------------------------- the export evaporates under a running VM

# The node agent of this test, from the collection the controller uses (the kernel hosts see the
# machine's files): installing it with the node_agent role copies ~70 files, 4 s each on a kernel
# host. Its own socket, pid file and events: an agent deployed there before is left alone.
AGENT_DIR = "/run/virtnode-nfs-test"
AGENT_CONFIG = {
    "interval": 2, "storage_interval": 1, "storage_timeout": 2, "metrics_enabled": False, "mailbox_enabled": False,
    "socket_path": f"{AGENT_DIR}/agent.sock", "events_file": f"{AGENT_DIR}/events.jsonl",
    "log_file": f"{AGENT_DIR}/agent.log",
}
AGENT_PIDFILE = f"{AGENT_DIR}/agent.pid"
AGENT_START = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import daemon\n"
    "sys.exit(daemon.main(sys.argv[2:]))\n"
)
AGENT_QUERY = (
    "import json, sys; sys.path.insert(0, sys.argv[1])\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client, events\n"
    "status = client.query('status', timeout=5, path=sys.argv[2])\n"
    "storage = client.query('storage', timeout=5, path=sys.argv[2], max_age=3600)\n"
    "print(json.dumps({'status': status['data'], 'domain': storage['data']['domains'].get(sys.argv[3]),\n"
    "                  'events': events.read_events(sys.argv[4])['events']}))\n"
)

START_GUEST = VARS + """  tasks:
    - name: Start the guest on a volume of the NFS domain, writing over it
      virtnode.kvm.vm:
        name: "{{ guest }}"
        memory: 128MiB
        kernel: "{{ virtnode_lab_guest_kernel }}"
        initrd: "{{ virtnode_lab_guest_initrd }}"
        cmdline: "{{ virtnode_lab_guest_cmdline }} workload=writer"
        disks:
          - domain_id: "{{ sd }}"
            image_id: "{{ img }}"
            volume_id: "{{ vol }}"
            format: raw
    - name: Wait for the writer
      ansible.builtin.wait_for:
        path: "{{ log }}"
        search_regex: writer progress
        timeout: 120
"""
# While the server is gone: what storage modules say, and how long they take.
DEAD_SERVER_CHECKS = VARS + """  tasks:
    - name: storage_info of the domain
      virtnode.kvm.storage_info:
        sd_uuid: "{{ sd }}"
      register: info
      ignore_errors: true
    - name: storage_domain's state check
      virtnode.kvm.storage_domain:
        sd_uuid: "{{ sd }}"
        server: "{{ server }}"
        type: nfs
        io_timeout: "{{ io_timeout }}"
      register: domain
      ignore_errors: true
    - name: Both failed, naming the mount that does not answer
      vars:
        mount: "{{ '/rhev/data-center/mnt/' + (server | replace('_', '__') | replace('/', '_')) }}"
      ansible.builtin.assert:
        that:
          - info is failed and ('storage domain ' + sd + ' not found') in info.msg
          - domain is failed and ('cannot tell whether storage domain ' + sd + ' exists') in domain.msg
          - "'did not answer' in info.msg and mount in info.msg"
          - "'did not answer' in domain.msg and mount in domain.msg"
          - info.unreachable == [mount] and domain.unreachable == [mount]
        fail_msg: "{{ info }} {{ domain }}"
"""
# The server is back: the second host joins the lockspace sanlock dropped while it could not renew.
SERVER_BACK = VARS + """  tasks:
    - name: Reconnect the pool
      virtnode.kvm.storage_pool:
        pool_uuid: "{{ sp }}"
        host_id: 2
      register: rejoined
    - name: What the host sees of the domain
      virtnode.kvm.storage_info:
        sd_uuid: "{{ sd }}"
      register: seen
    - name: Valid again
      ansible.builtin.assert:
        that:
          - seen.domains | length == 1 and 'error' not in seen.domains[0] and seen.unreachable == []
          - rejoined.pool.domains[sd] == 'Active'
        fail_msg: "{{ seen }} {{ rejoined }}"
"""


def writer_progress(host: str) -> int:
    text = lab_exec(host, "cat", LOG, check=False).stdout
    done = [int(n) for n in re.findall(r"writer progress (\d+)", text)]
    return max(done, default=0)


def agent_sees_domain(ask, valid: bool):
    """A probe: the agent's answer once it reports the domain ``valid`` (or not), else None."""
    def probe():
        answer = ask()
        return answer if answer and answer["domain"] and answer["domain"]["valid"] is valid else None
    return probe


def vm_state(host: str) -> str:
    return lab_exec(host, "virsh", "domstate", "--reason", GUEST, check=False).stdout.strip()


@pytest.fixture
def test_agent(kernel_hosts):
    host = list(kernel_hosts)[1]
    collections = os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build")).split(os.pathsep)[0]
    lab_exec(host, "sh", "-c", f"mkdir -p {AGENT_DIR} && rm -f {AGENT_DIR}/events.jsonl* && cat > {AGENT_DIR}/agent.conf"
             f" <<'EOF'\n{json.dumps(AGENT_CONFIG)}\nEOF\n")
    lab_exec(host, "/usr/bin/python3", "-c", AGENT_START, collections, "--config", f"{AGENT_DIR}/agent.conf",
             "--daemon", "--pidfile", AGENT_PIDFILE)
    pid = lab_exec(host, "cat", AGENT_PIDFILE).stdout.strip()

    def ask():
        proc = lab_exec(host, "/usr/bin/python3", "-c", AGENT_QUERY, collections, AGENT_CONFIG["socket_path"], SD,
                        AGENT_CONFIG["events_file"], check=False, timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else None
    try:
        yield host, int(pid), ask
    finally:
        lab_exec(host, "sh", "-c", f"kill {pid}; for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; "
                 "sleep 0.2; done; exit 1", check=False)


def test_evaporated_nfs_export_pauses_the_vm_and_the_agent_resumes_it(nfs_pool, test_agent, kernel_hosts, tmp_path):
    first, second = list(kernel_hosts)[:2]
    host, pid, ask = test_agent
    assert host == second
    wait_for("the agent to see the domain valid", agent_sees_domain(ask, True), timeout=60)
    play(tmp_path, "Guest writing to the NFS domain", second, START_GUEST)
    # vnkern1 drops what the second host sends to its NFS server: no answer, no refusal.
    block = ["iptables-legacy", "-I", "INPUT", "-s", kernel_hosts[second]["ansible_host"], "-p", "tcp", "--dport", "2049",
             "-j", "DROP"]
    lab_exec(first, *block)
    try:
        blocked_at = time.monotonic()
        # The guest's next write fails once the soft mount gives up (timeo x (1 + ... + retrans + 1)).
        wait_for("the guest paused on an I/O error", lambda: vm_state(second) == "paused (I/O error)", timeout=90, step=1)
        paused_at = time.monotonic()
        before = writer_progress(second)
        answer = wait_for("the agent to see the domain invalid", agent_sees_domain(ask, False), timeout=60, step=1)
        assert answer["domain"]["code"] in (5, 110), answer["domain"]
        seconds = play(tmp_path, "Storage modules while the server is gone", second, DEAD_SERVER_CHECKS)
        # Two modules, each bounded by the 10 s listing deadline (the mount's own soft timeout is 12 s).
        assert seconds < 75, seconds
        started = time.monotonic()
        answer = ask()
        assert answer and time.monotonic() - started < 10
        assert answer["status"]["pid"] == pid and not answer["domain"]["valid"]
        assert vm_state(second) == "paused (I/O error)"
        print(f"paused {paused_at - blocked_at:.1f}s after the server went away")
    finally:
        lab_exec(first, *["-D" if arg == "-I" else arg for arg in block])
    back_at = time.monotonic()
    wait_for("the agent to see the domain valid again", agent_sees_domain(ask, True), timeout=90, step=1)
    wait_for("the agent to resume the guest", lambda: vm_state(second).startswith("running"), timeout=60, step=1)
    resumed_at = time.monotonic()
    events = ask()["events"]
    names = [(e["event"], e.get("sd_uuid"), e.get("vm")) for e in events]
    assert ("storage_domain_unreachable", SD, None) in names, names
    assert ("storage_domain_reachable", SD, None) in names, names
    assert ("vm_resumed_after_storage", SD, GUEST) in names, names
    assert ask()["status"]["pid"] == pid
    # The guest goes on writing where it stopped.
    wait_for("the writer to go on", lambda: writer_progress(second) > before, timeout=60, step=1)
    print(f"domain valid {resumed_at - back_at:.1f}s after the server came back, guest resumed")
    play(tmp_path, "The second host back on the domain", second, SERVER_BACK)
    status = lab_exec(second, "sanlock", "client", "status").stdout
    assert f"s {SD}:2:" in status, status
