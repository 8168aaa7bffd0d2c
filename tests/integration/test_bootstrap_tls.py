"""The bootstrap role's default migration path on the lab: libvirtd over TLS behind a firewall.

Both lab hosts get a firewall as a real host has it (an nftables ruleset whose input chain drops
everything but SSH), then the bootstrap role runs with its default listener: a CA the role makes
on the controller (here in a temporary directory), a certificate per host with its names and
address, libvirtd listening on 16514 only, and the firewall opened for the listener, QEMU's
migration ports and the console ports. libvirt on each host must answer the other over
qemu+tls with certificate verification, a second run must change nothing (after the ruleset
was reloaded from its file, as at boot), and the tiny guest must live-migrate over TLS with
the vm module, its heartbeat going on at the destination. QEMU's stream is encrypted too
(VIR_MIGRATE_TLS with the credentials the role gives QEMU): the guest holds a known string in
RAM, and the migration captured on the lab bridge must not carry it (test_vm_migration.py's
capture test is the control that finds it in a plain TCP migration); a migration without TLS
is refused.

The lab is put back as it was found, whatever happened: libvirtd.conf and qemu.conf, /etc/pki,
/etc/virtnode, an empty ruleset, libvirtd restarted on its plain TCP listener.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import LAB, LAST_HEARTBEAT, REPO, heartbeats, lab_exec, remove_guest_everywhere, run_playbook
from test_vm_migration import MARKER_MB, START_MARKER_GUEST, capture_between, marker_bytes, marker_tag

GUEST = "vmtest-tls-migrate"
LOG = f"/var/log/libvirt/qemu/{GUEST}-console.log"
# Each lab host's own /etc/virtnode holds the files the role would put in /etc (shared between lab hosts).
NFT_CONF = "/etc/virtnode/lab/nftables.conf"
NFT_RULES = "/etc/virtnode/lab/nftables.d/virtnode.nft"
# A host's firewall before the role: input dropped except established traffic, loopback, ICMP and SSH.
RULESET = """#!/usr/sbin/nft -f
flush ruleset
table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport 22 accept
    }
}
"""
# Host files the test changes, under the lab host's directory (tests/lab/lab.py bind_source).
SAVED = {"etc_libvirt/libvirtd.conf": "file", "etc_libvirt/qemu.conf": "file", "etc_pki": "dir", "etc_virtnode": "dir"}
LIBVIRTD = {"name": "libvirtd", "action": "restarted", "pidfile": "/run/libvirtd.pid",
            "argv": ["libvirtd", "-d", "--listen"], "wait_socket": "/run/libvirt/libvirt-sock"}

BOOTSTRAP = """
- name: Bootstrap the lab hosts with the role's defaults for migration (TLS, own CA, firewall auto)
  hosts: lab
  gather_facts: false
  vars:
    bootstrap_allow_software_emulation: true
    bootstrap_install_packages: false
    bootstrap_host_uuid: "{{ virtnode_lab_host_uuid }}"
    bootstrap_sanlock_use_watchdog: false
    bootstrap_sanlock_config_file: /etc/virtnode/lab/sanlock.conf
    bootstrap_hook_points: []
    bootstrap_pki_local_dir: %(pki)s
    bootstrap_nftables_config_file: %(conf)s
    bootstrap_nftables_rules_file: %(rules)s
  roles:
    - role: virtnode.kvm.bootstrap
"""

MIGRATE = """
- name: Live-migrate the tiny guest over TLS
  hosts: lab[0]
  gather_facts: false
  tasks:
""" + START_MARKER_GUEST + LAST_HEARTBEAT + """    - name: Migrate to the second host over TLS
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_to: "{{ groups['lab'][1] }}"
        migrate_transport: tls
        migrate_unsafe: true
        migrate_options:
          timeout: 120
      register: out
    - name: Report
      ansible.builtin.debug:
        msg: "MIGRATION {{ out.migration.duration_s }} s to {{ out.vm.host }}; heartbeat before: {{ before.stdout }}"
    - name: Migrated over TLS
      ansible.builtin.assert:
        that:
          - out is changed
          - out.vm.status == 'Up'
          - out.vm.host == 'qemu+tls://' + groups['lab'][1] + '/system'
          - out.migration.destination_uri == out.vm.host

- name: A migration without TLS for the memory is refused (qemu.conf migrate_tls_force)
  hosts: lab[1]
  gather_facts: false
  tasks:
    - name: Migrate back without VIR_MIGRATE_TLS
      virtnode.kvm.vm:
        name: %(guest)s
        migrate_uri: "qemu+tls://{{ groups['lab'][0] }}/system"
        migrate_transport: tcp
        migrate_unsafe: true
      register: plain
      ignore_errors: true
    - name: Refused, the VM stays
      ansible.builtin.assert:
        that:
          - plain is failed
          - "'TLS' in plain.msg"
"""


def host_root(host: str) -> Path:
    return LAB / "hosts" / host / "root"


def recap(output: str) -> dict:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)}


def tcp_probe(host: str, address: str, port: int) -> str:
    """'open', 'refused' or 'timeout' for a TCP connection from ``host``."""
    code = ("import socket,sys\ns=socket.socket();s.settimeout(2)\n"
            "try:\n s.connect((sys.argv[1],int(sys.argv[2])));print('open')\n"
            "except socket.timeout:\n print('timeout')\n"
            "except ConnectionRefusedError:\n print('refused')\n")
    return lab_exec(host, "python3", "-c", code, address, str(port)).stdout.strip()


def restart_libvirtd(host: str) -> None:
    script = REPO / "roles" / "bootstrap" / "files" / "lab_service.py"
    lab_exec(host, "/usr/bin/python3", str(script), json.dumps(LIBVIRTD))


@pytest.fixture
def tls_lab(lab_hosts, tmp_path):
    """Two lab hosts behind a dropping firewall; everything put back afterwards."""
    hosts = list(lab_hosts)[:2]
    assert len(hosts) == 2, "needs two lab hosts"
    for host in hosts:
        if lab_exec(host, "findmnt", "-n", "/etc/pki", check=False).returncode != 0:
            pytest.fail(f"{host}: /etc/pki is not the lab host's own directory; run `make lab-down lab-up`")
    saved = tmp_path / "saved"
    rulesets = {}
    for host in hosts:
        for rel, kind in SAVED.items():
            src, dest = host_root(host) / rel, saved / host / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                shutil.copytree(src, dest, symlinks=True)
            else:
                shutil.copy2(src, dest)
        rulesets[host] = lab_exec(host, "nft", "list", "ruleset").stdout
    try:
        for host in hosts:
            lab_exec(host, "mkdir", "-p", str(Path(NFT_CONF).parent))
            (host_root(host) / "etc_virtnode" / "lab" / "nftables.conf").write_text(RULESET)
            lab_exec(host, "nft", "-f", NFT_CONF)
        yield hosts
    finally:
        remove_guest_everywhere(tmp_path, GUEST)
        errors = []
        for host in hosts:
            try:
                restore(host, saved / host, rulesets[host], tmp_path)
            except (AssertionError, OSError) as exc:  # the other host is restored all the same
                errors.append(f"{host}: {exc}")
        assert not errors, errors
        # Back on the plain TCP listener the other tests use.
        lab_exec(hosts[0], "virsh", "-c", f"qemu+tcp://{hosts[1]}/system", "hostname")


def restore(host: str, saved: Path, ruleset: str, tmp_path: Path) -> None:
    lab_exec(host, "nft", "flush", "ruleset")
    if ruleset.strip():
        (tmp_path / f"{host}.nft").write_text(ruleset)
        lab_exec(host, "nft", "-f", str(tmp_path / f"{host}.nft"))
    for rel, kind in SAVED.items():
        src, dest = saved / rel, host_root(host) / rel
        if kind == "dir":
            # Emptied and refilled in place: the directory is a mount point inside the host.
            for entry in dest.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
    restart_libvirtd(host)


def test_default_tls_listener_firewall_and_migration(tls_lab, lab_hosts, tmp_path):
    hosts = tls_lab
    addresses = {h: lab_hosts[h]["ansible_host"] for h in hosts}
    t0 = time.monotonic()
    # The firewall is on: libvirtd's plain TCP listener (still up) is not reachable from the other host.
    assert tcp_probe(hosts[0], addresses[hosts[1]], 16509) == "timeout"

    playbook = tmp_path / "bootstrap.yml"
    playbook.write_text(BOOTSTRAP % {"pki": tmp_path / "pki", "conf": NFT_CONF, "rules": NFT_RULES})
    first = run_playbook(playbook)
    print(first.stdout)
    assert first.returncode == 0, first.stdout[-20000:]
    assert all(recap(first.stdout)[h] > 0 for h in hosts), recap(first.stdout)
    t_first = time.monotonic()

    for host in hosts:
        # The keys are root's alone; the controller keeps the CA and the signed certificates.
        modes = lab_exec(host, "stat", "-c", "%a %U %n", "/etc/pki/libvirt/private/serverkey.pem",
                         "/etc/pki/libvirt/private/clientkey.pem", "/etc/pki/libvirt/private").stdout.split("\n")
        assert modes[:3] == ["600 root /etc/pki/libvirt/private/serverkey.pem",
                             "600 root /etc/pki/libvirt/private/clientkey.pem",
                             "700 root /etc/pki/libvirt/private"], modes
        san = lab_exec(host, "openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                       "/etc/pki/libvirt/servercert.pem").stdout
        assert f"DNS:{host}" in san and f"IP Address:{addresses[host]}" in san, san
        lab_exec(host, "openssl", "verify", "-CAfile", "/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/servercert.pem")
        conf = (host_root(host) / "etc_libvirt" / "libvirtd.conf").read_text()
        assert re.search(r"^listen_tls = 1$", conf, re.M) and re.search(r"^listen_tcp = 0$", conf, re.M), conf[-600:]
        # The role's rules are in the running chain and in the file the boot ruleset includes.
        chain = lab_exec(host, "nft", "list", "chain", "inet", "filter", "input").stdout
        for port in ("16514", "49152-49215", "5900-6923"):
            assert re.search(rf'tcp dport {port} accept comment "virtnode"', chain), chain
        assert "16509" not in chain and "policy drop" in chain, chain
        assert f'include "{NFT_RULES}"' in (host_root(host) / "etc_virtnode" / "lab" / "nftables.conf").read_text()
    assert (tmp_path / "pki" / "ca-key.pem").stat().st_mode & 0o077 == 0
    for host in hosts:
        # QEMU's credentials for the migration stream: the names QEMU reads, keys for root and QEMU's group.
        qemu_conf = (host_root(host) / "etc_libvirt" / "qemu.conf").read_text()
        for line in ('migrate_tls_x509_cert_dir = "/etc/pki/libvirt-migrate"', "migrate_tls_x509_verify = 1",
                     "migrate_tls_force = 1"):
            assert re.search(rf"^{re.escape(line)}$", qemu_conf, re.M), (line, qemu_conf[-800:])
        names = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")
        modes = lab_exec(host, "stat", "-c", "%a %U %G %n", "/etc/pki/libvirt-migrate",
                         *(f"/etc/pki/libvirt-migrate/{name}" for name in names)).stdout.split("\n")
        assert modes[:6] == ["750 root libvirt-qemu /etc/pki/libvirt-migrate",
                             "644 root libvirt-qemu /etc/pki/libvirt-migrate/ca-cert.pem",
                             "644 root libvirt-qemu /etc/pki/libvirt-migrate/server-cert.pem",
                             "640 root libvirt-qemu /etc/pki/libvirt-migrate/server-key.pem",
                             "644 root libvirt-qemu /etc/pki/libvirt-migrate/client-cert.pem",
                             "640 root libvirt-qemu /etc/pki/libvirt-migrate/client-key.pem"], modes
        lab_exec(host, "openssl", "verify", "-CAfile", "/etc/pki/libvirt-migrate/ca-cert.pem",
                 "/etc/pki/libvirt-migrate/server-cert.pem", "/etc/pki/libvirt-migrate/client-cert.pem")

    # libvirt answers over TLS from the other host, certificates checked both ways.
    for src, dest in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
        for name in (dest, addresses[dest]):
            out = lab_exec(src, "virsh", "-c", f"qemu+tls://{name}/system", "hostname").stdout.strip()
            assert out == dest, (src, name, out)
    # A name the certificate does not carry is refused by the client's verification.
    wrong = lab_exec(hosts[1], "virsh", "-c", "qemu+tls://localhost/system", "hostname", check=False)
    assert wrong.returncode != 0 and "localhost" in wrong.stderr, wrong.stderr
    # Still closed: the port the role did not open (the TCP listener is off now, dropped not refused).
    assert tcp_probe(hosts[0], addresses[hosts[1]], 16509) == "timeout"
    assert tcp_probe(hosts[0], addresses[hosts[1]], 16514) == "open"

    # As at boot: the ruleset loaded from its file (with the include) is what the role wants.
    for host in hosts:
        lab_exec(host, "nft", "-f", NFT_CONF)
    second = run_playbook(playbook)
    assert second.returncode == 0, second.stdout[-20000:]
    assert recap(second.stdout) == {h: 0 for h in hosts}, second.stdout[-20000:]
    t_second = time.monotonic()

    # Live migration over TLS through both firewalls: the listener and QEMU's migration port are the role's.
    tag = marker_tag()
    playbook = tmp_path / "migrate.yml"
    playbook.write_text(MIGRATE % {"guest": GUEST, "log": LOG, "mb": MARKER_MB, "tag": tag})
    pcap = tmp_path / "tls.pcap"
    with capture_between(addresses[hosts[0]], addresses[hosts[1]], pcap):
        proc = run_playbook(playbook)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-20000:]
    # The memory went over the wire (more bytes than the marked RAM alone), none of it readable.
    data = pcap.read_bytes()
    print(f"CAPTURE {len(data)} bytes, marker seen {data.count(marker_bytes(tag))} times")
    assert len(data) > MARKER_MB * 1024 * 1024, len(data)
    assert marker_bytes(tag) not in data and b"virtnode-ram-marker" not in data
    print(re.search(r"MIGRATION [^\"\n]*", proc.stdout).group(0))
    before = heartbeats(re.search(r"heartbeat before: (heartbeat \d+)", proc.stdout).group(1))[0]
    deadline = time.monotonic() + 30
    while True:
        dest = heartbeats(lab_exec(hosts[1], "cat", LOG).stdout)
        if dest and max(dest) >= before + 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert dest and min(dest) > before and max(dest) >= before + 2, (before, dest)
    assert "virtnode-guest ready" not in lab_exec(hosts[1], "cat", LOG).stdout
    assert GUEST not in lab_exec(hosts[0], "virsh", "list", "--all", "--name").stdout
    print(f"TIMES first run {t_first - t0:.0f}s, second run {t_second - t_first:.0f}s, "
          f"migration {time.monotonic() - t_second:.0f}s")
