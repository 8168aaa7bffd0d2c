"""The dashboard's queries against a real scrape of a lab host's agent, and promtool on that scrape.

The node_agent role is applied to the first lab host only (idempotent, as in
test_agent.py); a guest with a disk and a NIC and a storage domain give the
VM and storage series samples. The scrape must pass ``promtool check metrics``
(Debian's prometheus package, installed by ``make deps``) with no problem
reported, and every metric each query of dashboards/virtnode-node.json names
must have samples in it, of the right type: rate() over counters and
histogram buckets, sums and counts, gauges as they are.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, lab_exec, lab_vars, run_playbook, wait_for

HOST = "vnhost1"
GUEST = "dashboard-guest"
SD_UUID = "0d5a7b1c-2e3f-4a5b-9c6d-7e8f9a0b1c2d"
MOUNT_DIR = "/rhev/data-center/mnt/dashboard-test"
DISK = f"/run/{GUEST}.img"
PY = "/usr/bin/python3"
AGENT_PATH = "/usr/lib/virtnode-agent"
METADATA_WRITER = (
    "import sys; sys.path.insert(0, %r)\n"
    "from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_metadata as sd_metadata\n"
    "pairs = sd_metadata.new_domain_metadata(sys.argv[1], 'POSIXFS', 'Data', 'dashboard test', 'server:/dash')\n"
    "open(sys.argv[2], 'wb').write(sd_metadata.serialize(pairs))\n" % AGENT_PATH
)
SCRAPE = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9177/metrics', timeout=10)"
          ".read().decode(), end='')")


@functools.lru_cache(maxsize=None)
def parser():
    """The unit test's dashboard query parser (tests/unit/test_dashboard.py); it imports the collection's
    metrics code, which `make collection` puts under .build."""
    if str(REPO / ".build") not in sys.path:
        sys.path.insert(0, str(REPO / ".build"))
    spec = importlib.util.spec_from_file_location("dashboard_queries", REPO / "tests" / "unit" / "test_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def virsh(*args: str, check: bool = True):
    return lab_exec(HOST, "virsh", "-c", "qemu:///system", *args, check=check)


def scrape() -> str:
    return lab_exec(HOST, PY, "-c", SCRAPE).stdout


def families(text: str) -> dict:
    """``{sample name: (family, type)}`` of the samples of a scrape (histogram parts by their family)."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split()
            types[name] = kind
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        family = name
        if name not in types:
            family = next((name[:-len(s)] for s in ("_bucket", "_sum", "_count") if name.endswith(s)), name)
        found[name] = (family, types.get(family, "untyped"))
    return found


@pytest.fixture(scope="module")
def agent_with_everything(lab_hosts, inventory):
    """The agent on HOST with a running guest (disk and NIC) and a valid storage domain."""
    proc = run_playbook(REPO / "molecule" / "node_agent" / "converge.yml", "--limit", HOST)
    assert proc.returncode == 0, proc.stdout[-20000:]
    settings = lab_vars(inventory)
    dom_md = f"{MOUNT_DIR}/{SD_UUID}/dom_md"
    lab_exec(HOST, "mkdir", "-p", dom_md)
    lab_exec(HOST, PY, "-c", METADATA_WRITER, SD_UUID, f"{dom_md}/metadata")
    xml = f"""<domain type='qemu'>
  <name>{GUEST}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{settings['virtnode_lab_guest_kernel']}</kernel>
    <initrd>{settings['virtnode_lab_guest_initrd']}</initrd>
    <cmdline>{settings['virtnode_lab_guest_cmdline']} workload=heartbeat</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{DISK}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""
    virsh("destroy", GUEST, check=False)
    lab_exec(HOST, "sh", "-c", f"truncate -s 64M {DISK} && cat > /run/{GUEST}.xml <<'EOF'\n{xml}EOF\n")
    virsh("create", f"/run/{GUEST}.xml")
    yield
    virsh("destroy", GUEST, check=False)
    lab_exec(HOST, "rm", "-rf", MOUNT_DIR, DISK, f"/run/{GUEST}.xml", check=False)


def full_scrape() -> str:
    """A scrape once the guest's disk and NIC and the storage domain are in it."""
    wanted = ('virtnode_vm_disk_reads_total{', 'virtnode_vm_network_receive_bytes_total{',
              f'virtnode_storage_domain_valid{{sd_uuid="{SD_UUID}"}} 1', 'virtnode_vm_memory_rss_bytes{')

    def probe():
        text = scrape()
        return text if all(w in text for w in wanted) else None
    return wait_for("the guest and the storage domain in the agent's metrics", probe, timeout=60, step=1)


def test_promtool_finds_no_problem_in_a_real_scrape(agent_with_everything):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make deps` installs Debian's prometheus package"
    text = full_scrape()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_every_dashboard_query_uses_metrics_of_a_real_scrape(agent_with_everything):
    queries = parser()
    exported = families(full_scrape())
    dashboard = queries.load(str(REPO / "dashboards" / "virtnode-node.json"))
    # Every name a query uses has samples in the scrape (not only a TYPE line), of the right type.
    wrong = queries.problems(dashboard, exported)
    assert not wrong, "\n".join(wrong)
    assert len(queries.names(dashboard)) >= 40
