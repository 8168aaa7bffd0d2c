"""The roles in systemd mode: playbooks/host_deploy.yml (bootstrap, then node_agent) on a full
Debian 12 test host, a QEMU (TCG) virtual machine with systemd as PID 1 (tests/lab/testhost.py).

The namespace lab has no systemd, so this is where the unit files, enable, start, the restart
handlers and the agent's unit run for real. Role defaults apply (TLS listener with the role's
own CA, sanlock with its watchdog) except software emulation, which a VM without KVM needs.
Each phase's time is printed; the VM is killed by its pid file at the end, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import LAB_ID, REPO, ansible_env

sys.path.insert(0, str(REPO / "tests" / "lab"))
import testhost  # noqa: E402  tests/lab/testhost.py

NAME = f"th{LAB_ID}"
INVENTORY_HOST = f"vntesthost{LAB_ID}"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# Units a Debian 12 administrator looks at: libvirtd with its sockets (the local one and the
# TLS listener; Debian's libvirtd exits when idle, the agent's connection keeps it up),
# virtlogd (socket-activated: the socket is what is enabled), sanlock with wdmd (its watchdog),
# and the agent.
ACTIVE_ENABLED = ["libvirtd.service", "libvirtd.socket", "libvirtd-tls.socket", "virtlogd.socket",
                  "sanlock.service", "wdmd.service", "virtnode-agent.service"]
ACTIVE = ["virtlogd.service"]

# Runs on the test host with its /usr/bin/python3; prints one JSON document.
PROBE = r'''
import json, os, socket, stat, subprocess, sys, urllib.request
sys.path.insert(0, "/usr/lib/virtnode-agent")
def sh(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return {"rc": p.returncode, "out": (p.stdout + p.stderr).strip()}
def fileinfo(path):
    st = os.stat(path)
    return {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
units = json.loads(sys.argv[1])
out = {"pid1": open("/proc/1/comm").read().strip(),
       "active": {u: sh("systemctl", "is-active", u)["out"] for u in units},
       "enabled": {u: sh("systemctl", "is-enabled", u)["out"] for u in units},
       "failed": sh("systemctl", "list-units", "--failed", "--plain", "--no-legend")["out"],
       "virsh": sh("virsh", "-c", "qemu:///system", "version"),
       "unit_file": fileinfo("/etc/systemd/system/virtnode-agent.service"),
       "unit_verify": sh("systemd-analyze", "verify", "/etc/systemd/system/virtnode-agent.service"),
       "agent_show": sh("systemctl", "show", "virtnode-agent", "-p", "MainPID,NRestarts,FragmentPath,ExecMainStatus"),
       "logrotate_file": fileinfo("/etc/logrotate.d/virtnode-agent"),
       "logrotate": sh("logrotate", "-d", "/etc/logrotate.d/virtnode-agent"),
       "nft": sh("nft", "list", "chain", "inet", "filter", "input")}
from ansible_collections.virtnode.kvm.plugins.module_utils import agent_client
answer = agent_client.query("status", timeout=10, max_age=3600)
out["agent_status"] = answer if answer is None else bool(answer.get("ok"))
out["socket_is_socket"] = stat.S_ISSOCK(os.stat("/run/virtnode/agent.sock").st_mode)
out["metrics"] = urllib.request.urlopen("http://127.0.0.1:9177/metrics", timeout=10).read().decode()[:200000]
s = socket.create_connection(("127.0.0.1", 16514), timeout=10)
s.close()
out["tls_port"] = True
pid = sh("systemctl", "show", "-p", "MainPID", "--value", "sanlock")["out"]
out["sanlock_argv"] = open("/proc/%s/cmdline" % pid).read().split("\0")
out["watchdog"] = os.path.exists("/dev/watchdog")
print(json.dumps(out))
'''


def recap(output: str) -> dict:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                         "failed": int(m.group(5))} for m in RECAP.finditer(output)}


def deploy(inventory, extra_vars) -> tuple[str, dict]:
    cmd = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / "host_deploy.yml"),
           "-e", json.dumps(extra_vars)]
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=1500, check=False)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-20000:]
    return proc.stdout, recap(proc.stdout)[INVENTORY_HOST]


# About 200 module runs at ~7 s each under TCG make a first converge take ~20 min on 2 cores,
# too long for `make test`'s budget until the roles need fewer module runs: opt in.
@pytest.mark.skipif(os.environ.get("VIRTNODE_SYSTEMD_TEST") != "1",
                    reason="set VIRTNODE_SYSTEMD_TEST=1 (boots a Debian VM under TCG, ~40 min on 2 cores)")
def test_roles_in_systemd_mode_on_a_debian_vm(tmp_path):
    times = {}
    t0 = time.monotonic()
    image = testhost.build()
    times["image build (0 when cached)"] = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        host = testhost.up(NAME, testhost.default_port())
        times["boot to SSH"] = time.monotonic() - t0

        inventory = tmp_path / "inventory.yml"
        inventory.write_text(json.dumps({"all": {"hosts": {INVENTORY_HOST: {
            "ansible_host": "127.0.0.1",
            "ansible_port": host["port"],
            "ansible_user": "root",
            "ansible_ssh_private_key_file": image["key"],
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        }}}}))
        extra_vars = {"bootstrap_allow_software_emulation": True,
                      # The role's CA lives on the controller; keep this run's out of ~/.virtnode.
                      "bootstrap_pki_local_dir": str(tmp_path / "pki")}

        t0 = time.monotonic()
        out, first = deploy(inventory, extra_vars)
        times["converge"] = time.monotonic() - t0
        assert first["failed"] == 0 and first["changed"] > 0, first
        # The systemd branch ran, the lab's did not.
        assert "Restart with systemd: libvirtd" in out and "Lab service" not in out, out[-20000:]

        proc = testhost.ssh(NAME, "/usr/bin/python3", "-c", PROBE,
                            json.dumps(ACTIVE_ENABLED + ACTIVE), check=False)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        facts = json.loads(proc.stdout)
        assert facts["pid1"] == "systemd"
        assert all(facts["active"][u] == "active" for u in ACTIVE_ENABLED + ACTIVE), facts["active"]
        assert all(facts["enabled"][u] == "enabled" for u in ACTIVE_ENABLED), facts["enabled"]
        assert facts["failed"] == "", facts["failed"]
        assert facts["virsh"]["rc"] == 0 and "Running hypervisor: QEMU" in facts["virsh"]["out"], facts["virsh"]
        assert facts["tls_port"]
        # sanlock uses the watchdog (Debian's default command line says -w 0), through wdmd and softdog.
        assert "-w" in facts["sanlock_argv"] and facts["sanlock_argv"][facts["sanlock_argv"].index("-w") + 1] == "1", \
            facts["sanlock_argv"]
        assert facts["watchdog"]
        assert facts["unit_file"] == {"mode": "0o644", "uid": 0, "gid": 0}
        assert facts["unit_verify"]["rc"] == 0, facts["unit_verify"]
        assert "FragmentPath=/etc/systemd/system/virtnode-agent.service" in facts["agent_show"]["out"]
        assert "NRestarts=0" in facts["agent_show"]["out"], facts["agent_show"]
        assert facts["logrotate_file"] == {"mode": "0o644", "uid": 0, "gid": 0}
        assert facts["logrotate"]["rc"] == 0, facts["logrotate"]
        assert facts["agent_status"] is True and facts["socket_is_socket"]
        assert "virtnode_host_uptime_seconds" in facts["metrics"]
        # The host's nftables service is enabled with a drop policy: the role adds its ports.
        for port in ("49152-49215", "5900-6923", "16514"):
            assert re.search(rf'tcp dport {port} accept comment "virtnode"', facts["nft"]["out"]), facts["nft"]

        t0 = time.monotonic()
        out, second = deploy(inventory, extra_vars)
        times["idempotence"] = time.monotonic() - t0
        assert second["changed"] == 0 and second["failed"] == 0, out[-20000:]
    except BaseException:
        print(f"--- serial console of {NAME} (tail) ---\n{testhost.serial_tail(NAME, 120)}")
        raise
    finally:
        testhost.down(NAME)
        print("phase times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    assert testhost.pid_of(testhost.run_dir(NAME)) is None
