# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Records a host keeps about its VMs: ``<RECORDS_DIR>/<uuid>/<kind>.json``.

``exit`` says why a VM went down (VDSM keeps exitCode/exitReason until the
VM is destroyed), ``saved`` where its memory image went. They are written
through :func:`fileio.write_json`, so a crash leaves the old record or the
new one. A record that cannot be read counts as absent: it only explains
the past and is rewritten by the next state change.

``<RECORDS_DIR>/.stopping/<uuid>.json`` is a marker, not a record: the
``vm`` module writes it just before it destroys or shuts down a run of the
VM (and then runs ``after_vm_destroy`` itself); the node agent, which runs
that hook for every other stop, takes it when libvirt reports the stop and
leaves the hook to the module. It is written *before* the stop because the
agent hears of the stop at once, before the module's exit record can exist;
it lives apart from the VM's records because ``state: absent`` removes
those right after the stop, possibly before the agent looked. It names the
run (libvirt's domain id) so that a marker left by a stop that never
happened does not hide a later run's crash.
"""

from __future__ import annotations

import os
import re
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio

RECORDS_DIR = '/var/lib/virtnode/vms'
STOPPING_DIR = '.stopping'
# The id of a run of a domain: the id attribute of the root element of its live XML.
_DOMAIN_ID_RE = re.compile(r'\A\s*<domain\b[^>]*?\sid\s*=\s*[\'"](-?\d+)[\'"]')


def record_dir(vm_uuid, records_dir=RECORDS_DIR):
    return os.path.join(records_dir, vm_uuid)


def _record_path(vm_uuid, kind, records_dir):
    return os.path.join(record_dir(vm_uuid, records_dir), '%s.json' % kind)


def write_record(vm_uuid, kind, data, records_dir=RECORDS_DIR):
    """Replace ``<records_dir>/<uuid>/<kind>.json`` with ``data``; the VM's directory is private to root."""
    fileio.write_json(_record_path(vm_uuid, kind, records_dir), data, dir_mode=0o700)


def read_record(vm_uuid, kind, records_dir=RECORDS_DIR):
    """The record, or None when there is none or it cannot be read."""
    return fileio.read_json(_record_path(vm_uuid, kind, records_dir), lenient=True)


def remove_record(vm_uuid, kind, records_dir=RECORDS_DIR):
    try:
        os.unlink(_record_path(vm_uuid, kind, records_dir))
    except OSError:
        pass


def all_records(kind, records_dir=RECORDS_DIR):
    """``[(uuid, record)]`` of every ``<kind>.json`` kept."""
    try:
        names = sorted(os.listdir(records_dir))
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith('.'):
            continue
        data = read_record(name, kind, records_dir)
        if data is not None:
            found.append((name, data))
    return found


# ---------------------------------------------------------------- the module's stop marker

def domain_run_id(xml_text):
    """libvirt's id of the run a live domain XML describes, or None (an inactive definition has none)."""
    match = _DOMAIN_ID_RE.match(xml_text or '')
    if match is None or int(match.group(1)) < 0:
        return None
    return int(match.group(1))


def stopping_path(vm_uuid, records_dir=RECORDS_DIR):
    return os.path.join(records_dir, STOPPING_DIR, '%s.json' % vm_uuid)


def mark_stopping(vm_uuid, domain_id, operation, records_dir=RECORDS_DIR):
    """The module is about to stop run ``domain_id`` of the VM, and runs ``after_vm_destroy`` itself."""
    fileio.write_json(stopping_path(vm_uuid, records_dir),
                      {'domain_id': domain_id, 'operation': operation, 'pid': os.getpid(), 'time': round(time.time(), 3)},
                      mode=0o600, dir_mode=0o700)


def clear_stopping(vm_uuid, records_dir=RECORDS_DIR):
    """The stop did not happen (or a new run starts): the next stop is not the module's."""
    try:
        os.unlink(stopping_path(vm_uuid, records_dir))
    except OSError:
        pass


def take_stopping(vm_uuid, records_dir=RECORDS_DIR):
    """The marker of ``vm_uuid`` (None when there is none), removed: a marker answers for one stop."""
    path = stopping_path(vm_uuid, records_dir)
    marker = fileio.read_json(path, lenient=True)
    clear_stopping(vm_uuid, records_dir)
    return marker if isinstance(marker, dict) else None


def stale_stopping(max_age, records_dir=RECORDS_DIR, now=None):
    """Remove the markers older than ``max_age`` seconds (no stop followed them); return their UUIDs."""
    now = time.time() if now is None else now
    directory = os.path.join(records_dir, STOPPING_DIR)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.endswith('.json'):
            continue
        vm_uuid = name[:-len('.json')]
        marker = fileio.read_json(os.path.join(directory, name), lenient=True)
        when = marker.get('time') if isinstance(marker, dict) else None
        if isinstance(when, bool) or not isinstance(when, (int, float)) or now - when > max_age:
            clear_stopping(vm_uuid, records_dir)
            removed.append(vm_uuid)
    return removed
