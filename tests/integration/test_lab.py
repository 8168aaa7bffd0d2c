"""The lab itself: hosts are distinct machines that see each other and the shared storage."""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET

from conftest import LAB, lab_exec


def test_hosts_have_own_identity(lab_hosts):
    seen_uuids = set()
    for name in lab_hosts:
        assert lab_exec(name, "hostname").stdout.strip() == name
        caps = ET.fromstring(lab_exec(name, "virsh", "-c", "qemu:///system", "capabilities").stdout)
        seen_uuids.add(str(uuid.UUID(caps.findtext("host/uuid"))))
        assert lab_exec(name, "cat", "/etc/machine-id").stdout.strip() == uuid.UUID(lab_hosts[name]["virtnode_lab_host_uuid"]).hex
    assert len(seen_uuids) == len(lab_hosts), "every lab host needs its own libvirt host UUID"


def test_daemons_answer(lab_hosts):
    for name in lab_hosts:
        assert "qemu" in lab_exec(name, "virsh", "-c", "qemu:///system", "capabilities").stdout
        lab_exec(name, "sanlock", "client", "status")


def test_hosts_reach_each_other_over_libvirt_tcp(lab_hosts):
    names = list(lab_hosts)
    for src in names:
        for dst in names:
            if src != dst:
                out = lab_exec(src, "virsh", "-c", f"qemu+tcp://{dst}/system", "hostname").stdout
                assert out.strip() == dst


def test_shared_storage_is_shared(lab_hosts):
    shared = LAB / "shared"
    names = list(lab_hosts)
    marker = shared / f"probe-{os.getpid()}"
    lab_exec(names[0], "sh", "-c", f"echo from-{names[0]} > {marker}")
    try:
        for name in names[1:]:
            assert lab_exec(name, "cat", str(marker)).stdout.strip() == f"from-{names[0]}"
    finally:
        marker.unlink()
