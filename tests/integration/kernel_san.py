"""The lab's SAN as the kernel-host block tests use it: both hosts logged in, multipath up.

Lab specifics stay here: systemd skips multipathd.service in User-mode Linux (its
ConditionVirtualization), so multipathd is started by hand, and with DM_DISABLE_UDEV=1 because
this kernel's udev never acknowledges device-mapper events (the lab's lvmlocal.conf does the
same for LVM). A real host runs both through udev and systemd.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import REPO, lab_exec

PY = "/usr/bin/python3"

# Logs in to every portal of the target, waits for each LUN's path, starts multipathd, and prints
# the multipath maps: {wwid: {"dm": "dm-N", "luns": [lun of each path], "paths": [sdX, ...]}}.
SAN_UP = r"""
import json, os, subprocess, sys, time
cfg = json.loads(sys.argv[1])
NO_DEVICES_FILE = 'devices { use_devicesfile=0 hints="none" }'  # whatever bootstrap made of the host's LVM configuration
def run(*argv, check=True, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))
    if check and proc.returncode:
        sys.exit('%s failed (%d): %s' % (' '.join(argv), proc.returncode, proc.stderr or proc.stdout))
    return proc.stdout
def sessions():
    base = '/sys/class/iscsi_session'
    names = os.listdir(base) if os.path.isdir(base) else []
    return [s for s in names if open('%s/%s/targetname' % (base, s)).read().strip() == cfg['target']]
def disks():
    found = []
    for dev in os.listdir('/sys/block'):
        real = os.path.realpath('/sys/block/%s/device' % dev)
        if dev.startswith('sd') and any('/%s/' % s in real for s in sessions()):
            found.append((dev, int(os.path.basename(real).split(':')[3])))
    return found
def maps():
    result = {}
    for dm in os.listdir('/sys/block'):
        try:
            uuid = open('/sys/block/%s/dm/uuid' % dm).read().strip()
        except OSError:
            continue
        if uuid.startswith('mpath-'):
            paths = sorted(os.listdir('/sys/block/%s/slaves' % dm))
            # A path being set up or torn down may not have its SCSI address yet: counted once it has.
            hctl = [os.path.basename(os.path.realpath('/sys/block/%s/device' % p)).split(':') for p in paths]
            luns = sorted({int(parts[3]) for parts in hctl if len(parts) == 4})
            result[uuid[6:]] = {'dm': dm, 'paths': paths, 'luns': luns}
    return result
def wait(what, probe, timeout=90):
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            sys.exit('timed out waiting for %s' % what)
        time.sleep(0.5)
run('modprobe', '-a', 'iscsi_tcp', 'dm_multipath')
run('systemctl', 'start', 'iscsid.service')
if not os.path.exists('/etc/multipath.conf'):
    # VDSM's choices: every SCSI device is multipathed, devices are named by WWID.
    with open('/etc/multipath.conf', 'w') as f:
        f.write('# virtnode test_kernel_block\ndefaults {\n    user_friendly_names no\n    find_multipaths no\n}\n')
for portal in cfg['portals']:
    run('iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', portal)
if len(sessions()) < len(cfg['portals']):
    run('iscsiadm', '-m', 'node', '-T', cfg['target'], '--login', check=False)
wait('a session per portal', lambda: len(sessions()) == len(cfg['portals']))
if len(disks()) < cfg['luns'] * len(cfg['portals']):
    run('iscsiadm', '-m', 'session', '--rescan', check=False)  # paths a test deleted come back
wait('every LUN on every portal', lambda: len(disks()) == cfg['luns'] * len(cfg['portals']))
run('udevadm', 'settle', '--timeout=60', check=False)  # multipath reads the WWIDs udev records
env = {'DM_DISABLE_UDEV': '1'}
def daemon_running():
    try:
        return os.path.exists('/proc/%d' % int(open('/run/multipathd.pid').read()))
    except (OSError, ValueError):
        return False
if not daemon_running():
    run('multipathd', env=env)
def complete():
    found = maps()
    if len(found) == cfg['luns'] and all(len(m['paths']) == len(cfg['portals']) for m in found.values()):
        return True
    run('multipath', '-v0', check=False, env=env)  # a path udev had not finished with is added now
    return False
wait('a multipath device per LUN with every path', complete)
# An interrupted run may have left the tests' VGs active here (udev can also autoactivate them).
for vg in cfg['vgs']:
    run('vgchange', '--config', NO_DEVICES_FILE, '--activate', 'n', vg, check=False)
print(json.dumps(maps()))
"""

# Undoes SAN_UP and what the LVM test made on one host; each step runs whatever failed before.
# Phase "lvm": the VGs let go of (and, with remove_vg, removed with their PVs); phase "san": the rest.
SAN_DOWN = r"""
import json, os, subprocess, sys, time
cfg = json.loads(sys.argv[1])
def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=dict(os.environ, DM_DISABLE_UDEV='1'))
NO_DEVICES_FILE = 'devices { use_devicesfile=0 hints="none" }'
if cfg['phase'] == 'lvm':
    def dm_names():
        return [open('/sys/block/%s/dm/name' % d).read().strip() for d in os.listdir('/sys/block') if d.startswith('dm-')]
    for vg in cfg['vgs']:
        run('vgchange', '--config', NO_DEVICES_FILE, '--activate', 'n', vg)
        # Mappings of a VG another host already removed are not LVM's any more.
        for name in dm_names():
            if name.startswith(vg.replace('-', '--') + '-'):
                run('dmsetup', 'remove', name)
        if cfg.get('remove_vg'):
            pvs = run('pvs', '--config', NO_DEVICES_FILE, '--noheadings', '-o', 'pv_name', '-S', 'vg_name=' + vg).stdout.split()
            run('vgremove', '--config', NO_DEVICES_FILE, '--force', '--force', vg)
            if pvs:
                run('pvremove', '--config', NO_DEVICES_FILE, '--force', '--force', '--yes', *pvs)
    if cfg.get('remove_vg'):
        # PVs in no VG on the target's LUNs (a run killed between pvcreate and vgcreate) go too.
        for line in run('pvs', '--config', NO_DEVICES_FILE, '--noheadings', '--separator', '|', '-o', 'pv_name,vg_name').stdout.splitlines():
            name, _sep, vg = line.strip().partition('|')
            if name.startswith('/dev/mapper/') and not vg:
                proc = run('pvremove', '--config', NO_DEVICES_FILE, '--force', '--force', '--yes', name)
                print('orphan PV %s removed: %s' % (name, proc.returncode), file=sys.stderr)
    sys.exit(0)
run('multipathd', 'shutdown')
deadline = time.monotonic() + 30
while os.path.exists('/run/multipathd.pid') and time.monotonic() < deadline:
    time.sleep(0.2)
def mpath_maps():
    return [d for d in os.listdir('/sys/block') if d.startswith('dm-') and
            open('/sys/block/%s/dm/uuid' % d).read().startswith('mpath-')]
# A map a udev worker still has open is not flushed: tried again for a while.
deadline = time.monotonic() + 30
while mpath_maps() and time.monotonic() < deadline:
    run('multipath', '-F')
    if mpath_maps():
        time.sleep(0.5)
run('iscsiadm', '-m', 'node', '-T', cfg['target'], '--logout')
run('iscsiadm', '-m', 'node', '-T', cfg['target'], '-o', 'delete')
for portal in cfg['portals']:
    run('iscsiadm', '-m', 'discoverydb', '-t', 'sendtargets', '-p', portal, '-o', 'delete')
run('systemctl', 'stop', 'iscsid.service', 'iscsid.socket')
try:
    with open('/etc/multipath.conf') as f:
        ours = f.readline().startswith('# virtnode test_kernel_block')
    if ours:
        os.unlink('/etc/multipath.conf')
except OSError:
    pass
for leftover in ('/etc/multipath/wwids', '/etc/multipath/bindings'):
    try:
        os.unlink(leftover)
    except OSError:
        pass
try:
    os.rmdir('/etc/multipath')  # only when empty
except OSError:
    pass
left = [d for d in os.listdir('/sys/block') if d.startswith(('sd', 'dm-'))]
print(json.dumps({'left': left}))
"""


# Takes every path of one LUN away on this host, as a cut cable or a zoning mistake would, and has
# multipathd fail the map's I/O at once rather than queue it for no_path_retry's checks (80 s with
# VDSM's settings). Asked once the map has lost its paths: multipathd reloads the map then, queueing.
LOSE_LUN = r"""
import json, os, subprocess, sys, time
guid = sys.argv[1]
env = dict(os.environ, DM_DISABLE_UDEV='1')
dm = next((d for d in os.listdir('/sys/block') if d.startswith('dm-') and
           open('/sys/block/%s/dm/uuid' % d).read().strip() == 'mpath-' + guid), None)
if dm is None:
    sys.exit('no multipath map for %s' % guid)
paths = sorted(os.listdir('/sys/block/%s/slaves' % dm))
for path in paths:
    with open('/sys/block/%s/device/delete' % path, 'w') as f:
        f.write('1')
deadline = time.monotonic() + 60
while True:
    subprocess.run(['multipathd', 'disablequeueing', 'map', guid], capture_output=True, env=env)
    table = subprocess.run(['dmsetup', 'table', guid], capture_output=True, text=True, env=env).stdout
    if not os.listdir('/sys/block/%s/slaves' % dm) and 'queue_if_no_path' not in table:
        break
    if time.monotonic() > deadline:
        sys.exit('the map of %s still has paths or queues: %s %s' % (guid, os.listdir('/sys/block/%s/slaves' % dm), table))
    time.sleep(0.5)
print(json.dumps(paths))
"""


def lose_lun(host: str, guid: str) -> list:
    """Delete every SCSI path of LUN ``guid`` on ``host`` (:func:`lun_back` brings them back); the paths."""
    proc = lab_exec(host, PY, "-c", LOSE_LUN, guid, check=False, timeout=120)
    assert proc.returncode == 0, f"{host}: cannot take LUN {guid} away: {proc.stderr}{proc.stdout}"
    return json.loads(proc.stdout)


def lun_back(san: dict, host: str):
    """Rescan the iSCSI sessions on ``host`` until every LUN has all its paths in multipath again."""
    (up,) = on_hosts([(host, (PY, "-c", SAN_UP, json.dumps(dict(san["cfg"], vgs=[]))))])
    assert up.returncode == 0, f"{host}: the paths did not come back: {up.stderr}{up.stdout}"
    lab_exec(host, "env", "DM_DISABLE_UDEV=1", "multipathd", "restorequeueing", "maps", check=False)


def on_hosts(calls):
    """Run ``[(host, argv), ...]`` at the same time; their CompletedProcess, in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: lab_exec(call[0], *call[1], check=False, timeout=300), calls))


def install_code(hosts: list, code: str):
    """This collection's module_utils in each host's private ``code`` directory.

    Sent over SSH as a tarball: a kernel host reads the machine's files through hostfs under an
    overlay, which can keep serving a file's old contents after the collection is rebuilt.
    """
    collections = Path(os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build")))
    plugins = "ansible_collections/virtnode/kvm/plugins"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        tar.add(collections / plugins / "module_utils", arcname=f"{plugins}/module_utils",
                filter=lambda info: None if info.name.endswith(".pyc") else info)

    def send(host):
        return subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "exec", host, "--", "sh", "-c",
                               f"rm -rf {code} && mkdir -p {code} && tar -xzf - -C {code}"],
                              input=data.getvalue(), capture_output=True, timeout=120, check=False)
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        for host, proc in zip(hosts, pool.map(send, hosts)):
            assert proc.returncode == 0, f"{host}: cannot install the code: {proc.stderr.decode(errors='replace')}"


@contextlib.contextmanager
def san_session(kernel_hosts: dict, kernel_vars: dict, vgs: list, code: str):
    """Both kernel hosts logged in to the lab's iSCSI target on both portals, with dm-multipath.

    ``vgs`` are the volume groups the tests make: removed with their PVs before the tests (an
    interrupted run's), and after them let go of on the second host, then removed on the first.
    """
    hosts = list(kernel_hosts)[:2]
    cfg = {"target": kernel_vars["virtnode_lab_iscsi_target"], "portals": kernel_vars["virtnode_lab_iscsi_portals"],
           "luns": kernel_vars["virtnode_lab_iscsi_luns"], "lun_size": kernel_vars["virtnode_lab_iscsi_lun_size"],
           "vgs": list(vgs)}
    started = time.monotonic()
    install_code(hosts, code)
    up = on_hosts([(h, (PY, "-c", SAN_UP, json.dumps(cfg))) for h in hosts])
    try:
        for host, proc in zip(hosts, up):
            assert proc.returncode == 0, f"{host}: iSCSI/multipath setup failed: {proc.stderr}{proc.stdout}"
        maps = [json.loads(proc.stdout.strip().splitlines()[-1]) for proc in up]
        # What an interrupted run left of the tests' VGs goes first.
        lab_exec(hosts[0], PY, "-c", SAN_DOWN, json.dumps(dict(cfg, phase="lvm", remove_vg=True)), check=False, timeout=300)
        print(f"san up on {', '.join(hosts)}: {time.monotonic() - started:.1f}s")
        yield {"hosts": hosts, "maps": dict(zip(hosts, maps)), "cfg": cfg}
    finally:
        teardown(hosts, cfg, code)


def power_on_again(san: dict, host: str, code: str):
    """Boot a kernel host a test crashed and log it in again, as :func:`san_session` left it (its /run is new)."""
    boot = subprocess.run(["python3", str(REPO / "tests/lab/lab.py"), "reboot", host], capture_output=True, text=True,
                          timeout=400, check=False)
    assert boot.returncode == 0, f"{host}: cannot boot again: {boot.stdout}{boot.stderr}"
    print(boot.stdout.strip())
    install_code([host], code)
    (up,) = on_hosts([(host, (PY, "-c", SAN_UP, json.dumps(san["cfg"])))])
    assert up.returncode == 0, f"{host}: iSCSI/multipath setup failed after the boot: {up.stderr}{up.stdout}"


def teardown(hosts: list, cfg: dict, code: str):
    # The second host lets go of the VGs before the first removes them; then both leave the target.
    first, second = hosts
    lab_exec(second, PY, "-c", SAN_DOWN, json.dumps(dict(cfg, phase="lvm")), check=False, timeout=300)
    lab_exec(first, PY, "-c", SAN_DOWN, json.dumps(dict(cfg, phase="lvm", remove_vg=True)), check=False, timeout=300)
    downs = on_hosts([(h, (PY, "-c", SAN_DOWN, json.dumps(dict(cfg, phase="san")))) for h in hosts])
    for host, proc in zip(hosts, downs):
        lab_exec(host, "rm", "-rf", code, check=False)
        left = json.loads(proc.stdout)["left"] if proc.returncode == 0 else proc.stderr
        assert not left, f"{host}: left after teardown: {left}"


def lun_guid(san: dict, lun: int) -> str:
    """The GUID (WWID) of the target's LUN number ``lun``: the same on both hosts."""
    return next(w for w, dev in san["maps"][san["hosts"][0]].items() if dev["luns"] == [lun])
