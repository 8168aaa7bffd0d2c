"""The roles in systemd mode: playbooks/host_deploy.yml (bootstrap, then node_agent) on hosts
with systemd as PID 1, where the unit files, enable, start, the restart handlers and the agent's
unit run for real.

- In every run: the lab's systemd host (tests/lab/systemd_host.py), a namespace host that boots
  this machine's Debian with systemd as PID 1. It is deployed as a management engine deploys a
  host: ansible-runner's Python API, a private data dir, events streamed. Role defaults apply
  (TLS listener with the role's own CA, firewall) except the watchdog, which a container must
  not touch, and software emulation. Then the host is rebooted (what the roles enabled has to
  come back by itself) and an administrator runs the playbook again: no change.
- Opt-in (VIRTNODE_SYSTEMD_TEST=1): a full Debian 12 QEMU (TCG) virtual machine built with
  debootstrap (tests/lab/testhost.py), where sanlock also gets its watchdog (wdmd + softdog).
  About 200 module runs at ~7 s each under TCG make its converge take ~20 min on 2 cores.
Each phase's time is printed; the hosts are removed at the end, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import ansible_runner
import pytest

from conftest import LAB_ID, REPO, ansible_env, wait_for

sys.path.insert(0, str(REPO / "tests" / "lab"))
import systemd_host  # noqa: E402  tests/lab/systemd_host.py
import testhost  # noqa: E402  tests/lab/testhost.py

NAME = f"th{LAB_ID}"
INVENTORY_HOST = f"vntesthost{LAB_ID}"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# Units a Debian 12 administrator looks at: libvirtd with its sockets (the local one and the
# TLS listener; Debian's libvirtd exits when idle, the agent's connection keeps it up),
# virtlogd (socket-activated: its service starts when libvirtd first needs it), sanlock, nftables
# and the agent; wdmd (sanlock's watchdog) runs where the watchdog is on and is masked where it is off.
ACTIVE_ENABLED = ["libvirtd.service", "libvirtd.socket", "libvirtd-tls.socket", "virtlogd.socket",
                  "sanlock.service", "nftables.service", "virtnode-agent.service"]
WDMD = "wdmd.service"

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
       "system": sh("systemctl", "is-system-running")["out"],
       "enabled": {u: sh("systemctl", "is-enabled", u)["out"] for u in units},
       "failed": sh("systemctl", "list-units", "--failed", "--plain", "--no-legend")["out"],
       "virsh": sh("virsh", "-c", "qemu:///system", "version"),
       "unit_file": fileinfo("/etc/systemd/system/virtnode-agent.service"),
       "unit_verify": sh("systemd-analyze", "verify", "/etc/systemd/system/virtnode-agent.service"),
       "agent_show": sh("systemctl", "show", "virtnode-agent", "-p", "MainPID,NRestarts,FragmentPath,ExecMainStatus"),
       "logrotate_file": fileinfo("/etc/logrotate.d/virtnode-agent"),
       "logrotate": sh("logrotate", "-d", "/etc/logrotate.d/virtnode-agent"),
       "nft": sh("nft", "list", "chain", "inet", "filter", "input")}
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import client as agent_client
answer = agent_client.query("status", timeout=10, max_age=3600)
out["agent_status"] = answer if answer is None else bool(answer.get("ok"))
out["socket_is_socket"] = stat.S_ISSOCK(os.stat("/run/virtnode/agent.sock").st_mode)
out["metrics"] = urllib.request.urlopen("http://127.0.0.1:9177/metrics", timeout=10).read().decode()[:200000]
s = socket.create_connection(("127.0.0.1", 16514), timeout=10)
s.close()
out["tls_port"] = True
pid = sh("systemctl", "show", "-p", "MainPID", "--value", "sanlock")["out"]
out["sanlock_argv"] = open("/proc/%s/cmdline" % pid).read().split("\0")
status = dict(line.split(":", 1) for line in open("/proc/%s/status" % pid) if ":" in line)
out["sanlock_groups"] = [int(g) for g in status["Groups"].split()]
out["storage_owner"] = [sh("getent", "passwd", "36")["out"], sh("getent", "group", "36")["out"]]
out["watchdog"] = os.path.exists("/dev/watchdog")
print(json.dumps(out))
'''


@contextlib.contextmanager
def phase(times: dict, name: str):
    """Time the block into ``times[name]`` (printed at the end of a test)."""
    t0 = time.monotonic()
    yield
    times[name] = time.monotonic() - t0


@contextlib.contextmanager
def host_under_test(times: dict, diagnostics, remove):
    """Run the block; on failure print the host's ``diagnostics()``; always ``remove()`` the host
    and print the phase times."""
    try:
        yield
    except BaseException:
        print(diagnostics())
        raise
    finally:
        remove()
        print("phase times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))


def recap(output: str) -> dict:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                         "failed": int(m.group(5))} for m in RECAP.finditer(output)}


def deploy(inventory, host, extra_vars) -> tuple[str, dict]:
    cmd = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / "host_deploy.yml"),
           "-e", json.dumps(extra_vars)]
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=1500, check=False)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-20000:]
    return proc.stdout, recap(proc.stdout)[host]


def second_run_changes_nothing(inventory, host, extra_vars) -> None:
    out, second = deploy(inventory, host, extra_vars)
    assert second["changed"] == 0 and second["failed"] == 0, out[-20000:]


def write_inventory(path, host, hostvars) -> None:
    path.write_text(json.dumps({"all": {"hosts": {host: hostvars}}}))


def check_converged(out: str, first: dict) -> None:
    assert first["failed"] == 0 and first["changed"] > 0, first
    # The systemd branch ran, the lab's did not.
    assert "Restart with systemd: libvirtd" in out and "Lab service" not in out, out[-20000:]


def check_host(facts: dict, watchdog: bool) -> None:
    """What an administrator checks on a deployed node; the probe's facts."""
    units = ACTIVE_ENABLED + [WDMD]
    assert facts["pid1"] == "systemd"
    assert facts["system"] == "running", (facts["system"], facts["failed"])
    assert facts["failed"] == "", facts["failed"]
    inactive = {u: facts["active"][u] for u in ACTIVE_ENABLED if facts["active"][u] != "active"}
    assert not inactive, inactive
    not_enabled = {u: facts["enabled"][u] for u in ACTIVE_ENABLED if facts["enabled"][u] != "enabled"}
    assert not not_enabled, not_enabled
    assert facts["virsh"]["rc"] == 0 and "Running hypervisor: QEMU" in facts["virsh"]["out"], facts["virsh"]
    assert facts["tls_port"]
    # Debian's default command line says -w 0; the role makes it follow the watchdog setting.
    argv = facts["sanlock_argv"]
    assert "-w" in argv and argv[argv.index("-w") + 1] == ("1" if watchdog else "0"), argv
    # Shared storage belongs to 36:36 (VDSM's vdsm:kvm); sanlock opens its lease files as a member of gid 36.
    user, group = facts["storage_owner"]
    assert user.split(":")[2:4] == ["36", "36"] and group.split(":")[2] == "36", facts["storage_owner"]
    assert 36 in facts["sanlock_groups"], facts["sanlock_groups"]
    if watchdog:
        assert facts["active"][WDMD] == "active" and facts["enabled"][WDMD] == "enabled" and facts["watchdog"]
    else:
        assert facts["active"][WDMD] == "inactive" and facts["enabled"][WDMD] == "masked", \
            {u: (facts["active"][u], facts["enabled"][u]) for u in units}
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


def probe_units() -> str:
    return json.dumps(ACTIVE_ENABLED + [WDMD])


def probe_systemd_host() -> dict:
    proc = systemd_host.run_in(["/usr/bin/python3", "-c", PROBE, probe_units()])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


def agent_answers() -> bool:
    proc = systemd_host.run_in(["/usr/bin/python3", "-c", "import sys, urllib.request; "
                                "sys.exit(urllib.request.urlopen('http://127.0.0.1:9177/metrics', timeout=5).status != 200)"])
    return proc.returncode == 0


def deploy_as_an_engine(tmp_path, host, extra_vars) -> tuple[str, dict, list]:
    """host_deploy.yml as a management engine runs it: ansible-runner's Python API, a private
    data dir, events streamed while the playbook runs."""
    seen = []

    def on_event(event):
        seen.append(event)
        return True

    (tmp_path / "runner").mkdir()
    env = ansible_env()
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=str(REPO / "playbooks" / "host_deploy.yml"),
        inventory=str(tmp_path / "inventory.yml"),
        extravars=extra_vars,
        envvars={key: env[key] for key in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG", "PATH")},
        event_handler=on_event,
        quiet=True,
        timeout=900,
    )
    stdout = result.stdout.read() if result.stdout else ""
    print(stdout[-6000:])
    assert result.status == "successful" and result.rc == 0, stdout[-20000:]
    # The run's artifacts stay in the private data dir.
    assert os.path.isdir(tmp_path / "runner" / "artifacts")
    return stdout, result.stats, seen


def forget_storage_owner():
    """Make the host's /etc (an overlay of the machine's, where lab-up made the 36:36 ids) a fresh
    Debian's again: no uid or gid 36, and a sanlock running without that group, so the role has to
    create the ids and restart sanlock."""
    proc = systemd_host.run_in(["/bin/sh", "-ec",
                                'group=$(getent group 36 | cut -d: -f1); '
                                'if [ -n "$group" ]; then gpasswd -d sanlock "$group" >/dev/null || true; fi; '
                                'if getent passwd 36 >/dev/null; then userdel "$(getent passwd 36 | cut -d: -f1)"; fi; '
                                # userdel may already have removed the user's primary group.
                                'if getent group 36 >/dev/null; then groupdel "$group"; fi; '
                                'systemctl restart sanlock; '
                                'pid=$(systemctl show -p MainPID --value sanlock); grep ^Groups: /proc/$pid/status'])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert 36 not in [int(gid) for gid in proc.stdout.split(":", 1)[-1].split()], proc.stdout


def test_host_deploy_by_an_engine_in_systemd_mode(tmp_path):
    """A fresh systemd host deployed by an engine, rebooted, and deployed again."""
    times = {}
    inventory = tmp_path / "inventory.yml"
    extra_vars = {"bootstrap_allow_software_emulation": True,
                  # A container shares the machine's kernel: a watchdog there would reboot the machine.
                  "bootstrap_sanlock_use_watchdog": False,
                  # The role's CA lives on the controller; keep this run's out of ~/.virtnode.
                  "bootstrap_pki_local_dir": str(tmp_path / "pki")}
    host = systemd_host.NAME
    with host_under_test(times, lambda: f"--- {host} ---\n{systemd_host.journal(120)}", systemd_host.down):
        with phase(times, "boot"):
            booted = systemd_host.up()
        # Debian enables wdmd, which fails without a watchdog device; nothing else may fail.
        assert booted["failed_units"] in ([], ["wdmd.service"]), booted
        write_inventory(inventory, host, systemd_host.inventory_vars())
        forget_storage_owner()

        with phase(times, "converge (ansible-runner)"):
            out, stats, events = deploy_as_an_engine(tmp_path, host, extra_vars)
        assert not stats.get("failures") and not stats.get("dark"), stats
        check_converged(out, {"failed": 0, "changed": stats.get("changed", {}).get(host, 0)})
        # The events carry what an engine shows: roles, tasks, hosts, the closing stats.
        ok = [e for e in events if e.get("event") == "runner_on_ok"]
        assert {"bootstrap", "node_agent"} <= {e["event_data"].get("role") for e in ok}
        tasks = {(e["event_data"].get("role"), e["event_data"].get("task")) for e in ok}
        assert ("bootstrap", "Write the host UUID") in tasks
        assert ("node_agent", "Write the agent's configuration") in tasks
        assert {e["event_data"].get("host") for e in ok} == {host}
        assert any(e.get("event") == "playbook_on_stats" for e in events)
        check_host(probe_systemd_host(), watchdog=False)

        # What the roles enabled starts at boot, in the right order, without Ansible.
        with phase(times, "reboot"):
            rebooted = systemd_host.reboot()
        assert rebooted["state"] == "running", rebooted
        wait_for("the agent's answer after the reboot", agent_answers, timeout=60, step=1)
        check_host(probe_systemd_host(), watchdog=False)

        # An administrator's second run, after the reboot: nothing to change.
        with phase(times, "idempotence (ansible-playbook)"):
            second_run_changes_nothing(inventory, host, extra_vars)
    assert systemd_host.init_pid() is None


@pytest.mark.skipif(os.environ.get("VIRTNODE_SYSTEMD_TEST") != "1",
                    reason="set VIRTNODE_SYSTEMD_TEST=1 (boots a Debian VM under TCG, ~40 min on 2 cores)")
def test_roles_in_systemd_mode_on_a_debian_vm(tmp_path):
    times = {}
    with phase(times, "image build (0 when cached)"):
        image = testhost.build()
    with host_under_test(times, lambda: f"--- serial console of {NAME} (tail) ---\n{testhost.serial_tail(NAME, 120)}",
                         lambda: testhost.down(NAME)):
        with phase(times, "boot to SSH"):
            host = testhost.up(NAME, testhost.default_port())

        inventory = tmp_path / "inventory.yml"
        write_inventory(inventory, INVENTORY_HOST, {
            "ansible_host": "127.0.0.1",
            "ansible_port": host["port"],
            "ansible_user": "root",
            "ansible_ssh_private_key_file": image["key"],
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        })
        extra_vars = {"bootstrap_allow_software_emulation": True,
                      "bootstrap_pki_local_dir": str(tmp_path / "pki")}

        with phase(times, "converge"):
            out, first = deploy(inventory, INVENTORY_HOST, extra_vars)
        check_converged(out, first)

        proc = testhost.ssh(NAME, "/usr/bin/python3", "-c", PROBE, probe_units(), check=False)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        check_host(json.loads(proc.stdout), watchdog=True)

        with phase(times, "idempotence"):
            second_run_changes_nothing(inventory, INVENTORY_HOST, extra_vars)
    assert testhost.pid_of(testhost.run_dir(NAME)) is None
