"""bootstrap's block storage set-up on a kernel host (its own /etc): VDSM's multipath.conf.

The role's block_storage tasks write /etc/multipath.conf; multipath-tools itself (``multipath
-t``, the configuration it would run with) shows VDSM's settings; a second run changes nothing;
a new no_path_retry rewrites the file; a file marked ``# VDSM PRIVATE`` is left alone.
Services are not managed here (systemd skips multipathd under User-mode Linux; the block tests
start it by hand), packages are the machine's.
"""

from __future__ import annotations

import json
import time

from conftest import lab_exec, run_playbook

CONF = "/etc/multipath.conf"
SAVED = "/etc/multipath.conf.virtnode-test-saved"


def play(tmp_path, host: str, name: str, extra_vars: dict) -> dict:
    """The role's block_storage tasks on ``host``; how many tasks changed something (from the recap)."""
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(json.dumps([{
        "name": name, "hosts": host, "gather_facts": False,
        "vars": dict({"bootstrap_install_packages": False}, **extra_vars),
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
