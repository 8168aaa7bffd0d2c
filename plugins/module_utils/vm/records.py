# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Records a host keeps about its VMs: ``<RECORDS_DIR>/<uuid>/<kind>.json``.

``exit`` says why a VM went down (VDSM keeps exitCode/exitReason until the
VM is destroyed), ``saved`` where its memory image went. They are written
through :func:`fileio.write_json`, so a crash leaves the old record or the
new one. A record that cannot be read counts as absent: it only explains
the past and is rewritten by the next state change.
"""

from __future__ import annotations

import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio

RECORDS_DIR = '/var/lib/virtnode/vms'


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
        data = read_record(name, kind, records_dir)
        if data is not None:
            found.append((name, data))
    return found
