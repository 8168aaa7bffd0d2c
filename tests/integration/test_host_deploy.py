"""playbooks/host_deploy.yml driven as a management engine drives it: ansible-runner's
Python API, a private data dir, events streamed while the playbook runs."""

from __future__ import annotations

import os

import ansible_runner

from conftest import INVENTORY, REPO, ansible_env

LAB_VARS = {
    "virtnode_deploy_hosts": "lab",
    "bootstrap_allow_software_emulation": True,
    "bootstrap_libvirt_listen": "tcp",
    "bootstrap_libvirt_auth_tcp": "none",
    "bootstrap_host_uuid": "{{ virtnode_lab_host_uuid }}",
    "bootstrap_sanlock_use_watchdog": False,
    "bootstrap_sanlock_config_file": "/etc/virtnode/lab/sanlock.conf",
    "node_agent_interval": 2,
    "node_agent_storage_interval": 2,
    "node_agent_storage_timeout": 2,
}


def test_host_deploy_with_ansible_runner(tmp_path):
    seen = []

    def on_event(event):
        seen.append(event)
        return True

    (tmp_path / "runner").mkdir()
    env = ansible_env()
    envvars = {key: env[key] for key in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG", "PATH")}
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=str(REPO / "playbooks" / "host_deploy.yml"),
        inventory=str(INVENTORY),
        extravars=LAB_VARS,
        envvars=envvars,
        event_handler=on_event,
        quiet=True,
        timeout=900,
    )
    stdout = result.stdout.read() if result.stdout else ""
    assert result.status == "successful" and result.rc == 0, stdout[-20000:]
    ok = [e for e in seen if e.get("event") == "runner_on_ok"]
    roles = {e["event_data"].get("role") for e in ok}
    assert {"bootstrap", "node_agent"} <= roles, roles
    tasks = {(e["event_data"].get("role"), e["event_data"].get("task")) for e in ok}
    assert ("bootstrap", "Write the host UUID") in tasks
    assert ("node_agent", "Write the agent's configuration") in tasks
    hosts = {e["event_data"].get("host") for e in ok}
    assert {"vnhost1", "vnhost2"} <= hosts
    # The events carry what an engine shows; the run's artifacts stay in the private data dir.
    assert any(e.get("event") == "playbook_on_stats" for e in seen)
    assert os.path.isdir(tmp_path / "runner" / "artifacts")
    stats = result.stats
    assert not stats.get("failures") and not stats.get("dark")
