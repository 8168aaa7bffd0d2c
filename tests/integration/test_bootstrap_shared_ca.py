"""Certificates under AWX: separate jobs, one host each, that share nothing but a CA given as variables.

In AWX every job runs in a new execution environment: the controller side of one job (its home
directory, so the role's default CA directory ~/.virtnode/pki) is gone when the next job starts.
With one host per job, the role's own CA would be made anew in every job and the hosts would not
trust each other. Here each job is a separate ``ansible-runner`` run with its own private data
directory and its own fresh HOME, as AWX runs them, and the CA reaches the role only as extra
variables (``bootstrap_pki_ca_cert_content`` / ``bootstrap_pki_ca_key_content``), as a custom
credential type injects them (docs/hosts.md):

- a job given a CA key that is not the certificate's fails before anything changes on the host;
- a job bootstraps the first host, another the second (``--limit``); neither makes a CA, both
  hosts' certificates are issued by the given CA, and the CA key is in no job's output or events;
- libvirt on each host answers the other over qemu+tls;
- a new job for the first host, in a new data directory and HOME, changes nothing (the host's
  certificate is not signed again);
- a third kind of job live-migrates the tiny guest from the first host to the second over TLS.

The lab is put back as test_bootstrap_tls.py's ``tls_lab`` fixture found it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import INVENTORY, REPO, START_HEARTBEAT_GUEST, LAST_HEARTBEAT, ansible_env, heartbeats, lab_exec
# tls_lab is a fixture: two lab hosts behind a dropping firewall, put back afterwards.
from test_bootstrap_tls import GUEST, LOG, NFT_CONF, NFT_RULES, recap, tls_lab  # noqa: F401 pylint: disable=unused-import

RUNNER = Path(os.environ.get("VIRTNODE_ANSIBLE_RUNNER", REPO / ".venv" / "bin" / "ansible-runner"))

# What a job template's playbook holds: the role with the lab's settings, and nothing about a CA.
BOOTSTRAP = """
- name: Bootstrap a host with a CA given as variables
  hosts: lab
  gather_facts: false
  vars:
    bootstrap_allow_software_emulation: true
    bootstrap_install_packages: false
    bootstrap_host_uuid: "{{ virtnode_lab_host_uuid }}"
    bootstrap_sanlock_use_watchdog: false
    bootstrap_sanlock_config_file: /etc/virtnode/lab/sanlock.conf
    bootstrap_hook_points: []
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
""" + START_HEARTBEAT_GUEST + LAST_HEARTBEAT + """    - name: Migrate to the second host over TLS
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
"""

PKI_FILES = ("/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/servercert.pem", "/etc/pki/libvirt/private/serverkey.pem")


def make_ca(directory: Path, name: str) -> tuple[str, str]:
    """An organisation's CA, made once outside any job: its certificate and key as PEM text."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "30", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout", f"{name}-key.pem", "-out", f"{name}-cert.pem"],
                   cwd=directory, check=True, capture_output=True)
    return (directory / f"{name}-cert.pem").read_text(), (directory / f"{name}-key.pem").read_text()


@pytest.fixture
def job_homes():
    """The jobs' HOME directories (outside tmp_path, see runner_job), removed at the end."""
    homes: list[Path] = []
    yield homes
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)


def runner_job(tmp_path: Path, homes: list, name: str, playbook: str, extravars: dict, limit: str | None = None):
    """One AWX-like job: ansible-runner with its own private data directory and its own empty HOME.

    Returns (return code, stdout, private data dir, home, seconds).
    """
    pdd = tmp_path / f"job-{name}"
    # Short: ssh's control sockets live under ~/.ansible/cp and a socket path is at most 107 bytes.
    home = Path(tempfile.mkdtemp(prefix=f"vnjob-{name}-"))
    homes.append(home)
    (pdd / "project").mkdir(parents=True)
    (pdd / "env").mkdir()
    (pdd / "project" / "main.yml").write_text(playbook)
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    env = ansible_env()
    env["HOME"] = str(home)
    env.pop("ANSIBLE_LOCAL_TEMP", None)
    env["ANSIBLE_NOCOLOR"] = "1"
    cmd = [str(RUNNER), "run", str(pdd), "-p", "main.yml", "--inventory", str(INVENTORY), "--ident", name]
    if limit:
        cmd += ["--limit", limit]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900, check=False)
    seconds = time.monotonic() - t0
    print(f"JOB {name}: rc {proc.returncode} in {seconds:.0f}s")
    return proc.returncode, proc.stdout, pdd, home, seconds


def pem_body(pem: str) -> str:
    """The longest base64 line of a PEM block: what would show if the key leaked into some output."""
    return max((line for line in pem.splitlines() if not line.startswith("-----")), key=len)


def leaked(pdd: Path, secret: str) -> list[str]:
    """Files of a job's artifacts (output, events, command line) holding ``secret``."""
    return [str(path) for path in (pdd / "artifacts").rglob("*") if path.is_file()
            and secret in path.read_text(errors="replace")]


def controller_copies() -> set[Path]:
    """The role's private directories for a given CA on the controller (removed at the end of each run)."""
    return set(Path(tempfile.gettempdir()).glob("virtnode-pki.*"))


def pki_digest(host: str) -> str:
    out = lab_exec(host, "sh", "-c", "sha256sum " + " ".join(PKI_FILES) + " 2>&1; true").stdout
    return hashlib.sha256(out.encode()).hexdigest()


def test_jobs_with_one_host_each_share_a_ca_given_as_variables(tls_lab, lab_hosts, tmp_path, job_homes):
    hosts = tls_lab
    ca_cert, ca_key = make_ca(tmp_path, "org-ca")
    _other_cert, other_key = make_ca(tmp_path, "other-ca")
    playbook = BOOTSTRAP % {"conf": NFT_CONF, "rules": NFT_RULES}
    given = {"bootstrap_pki_ca_cert_content": ca_cert, "bootstrap_pki_ca_key_content": ca_key}
    times = {}
    copies_before = controller_copies()

    # A key that is not the CA certificate's: a clear failure, the host's certificates untouched.
    before = pki_digest(hosts[0])
    rc, out, pdd, _home, times["mismatched CA"] = runner_job(
        tmp_path, job_homes, "mismatch", playbook, {**given, "bootstrap_pki_ca_key_content": other_key}, limit=hosts[0])
    assert rc != 0, out[-5000:]
    assert "the CA key is not the key of the CA certificate" in out, out[-5000:]
    assert pki_digest(hosts[0]) == before
    assert not leaked(pdd, pem_body(other_key))

    # One job per host, nothing shared but the extra variables.
    for host in hosts:
        rc, out, pdd, home, times[f"bootstrap {host}"] = runner_job(tmp_path, job_homes, f"deploy-{host}", playbook, given,
                                                                    limit=host)
        assert rc == 0, out[-20000:]
        assert set(recap(out)) == {host} and recap(out)[host] > 0, recap(out)
        assert not (home / ".virtnode" / "pki" / "ca-key.pem").exists(), "the job made a CA of its own"
        assert not leaked(pdd, pem_body(ca_key)), "the CA key is in the job's artifacts"
        assert pem_body(ca_key) not in out
        # No copy of the CA key is left behind on the controller.
        assert controller_copies() <= copies_before, controller_copies() - copies_before

    (tmp_path / "org-ca.pem").write_text(ca_cert)
    for host in hosts:
        assert lab_exec(host, "cat", "/etc/pki/CA/cacert.pem").stdout.strip() == ca_cert.strip()
        lab_exec(host, "openssl", "verify", "-CAfile", "/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/servercert.pem")
        lab_exec(host, "openssl", "verify", "-CAfile", "/etc/pki/libvirt-migrate/ca-cert.pem",
                 "/etc/pki/libvirt-migrate/server-cert.pem")
    addresses = {h: lab_hosts[h]["ansible_host"] for h in hosts}
    for src, dest in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
        for name in (dest, addresses[dest]):
            answer = lab_exec(src, "virsh", "-c", f"qemu+tls://{name}/system", "hostname").stdout.strip()
            assert answer == dest, (src, name, answer)

    # The next job for the first host, in a new environment: nothing changes, the certificate stays.
    cert_before = lab_exec(hosts[0], "cat", "/etc/pki/libvirt/servercert.pem").stdout
    rc, out, _pdd, _home, times[f"again {hosts[0]}"] = runner_job(tmp_path, job_homes, "again", playbook, given, limit=hosts[0])
    assert rc == 0, out[-20000:]
    assert recap(out) == {hosts[0]: 0}, out[-20000:]
    assert lab_exec(hosts[0], "cat", "/etc/pki/libvirt/servercert.pem").stdout == cert_before

    # A migration job: the guest goes from the first host to the second over qemu+tls.
    rc, out, _pdd, _home, times["migration"] = runner_job(tmp_path, job_homes, "migrate", MIGRATE % {"guest": GUEST, "log": LOG}, {})
    assert rc == 0, out[-20000:]
    print(re.search(r"MIGRATION [^\"\n]*", out).group(0))
    last = heartbeats(re.search(r"heartbeat before: (heartbeat \d+)", out).group(1))[0]
    deadline = time.monotonic() + 30
    while True:
        dest = heartbeats(lab_exec(hosts[1], "cat", LOG).stdout)
        if dest and max(dest) >= last + 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert dest and min(dest) > last and max(dest) >= last + 2, (last, dest)
    assert GUEST not in lab_exec(hosts[0], "virsh", "list", "--all", "--name").stdout
    print("TIMES " + json.dumps({k: round(v) for k, v in times.items()}))
