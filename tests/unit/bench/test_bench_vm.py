# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the pure parts of tests/bench/bench_vm_vs_community_libvirt.py (no lab, no Ansible run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_vm_vs_community_libvirt as bench  # noqa: E402

jinja2 = pytest.importorskip("jinja2")
etree = pytest.importorskip("lxml.etree")


def run(items_by_task, wall=10.0, changed=0):
    return {"wall": wall, "changed": changed,
            "tasks": [{"name": "t%d" % i, "seconds": sum(items), "items": items, "changed": changed}
                      for i, items in enumerate(items_by_task)]}


def test_guests_have_stable_unique_names_and_uuids():
    first, again = bench.guests(20), bench.guests(20)
    assert first == again
    assert first[0]["name"] == "bench-vm-01" and first[-1]["name"] == "bench-vm-20"
    assert len({g["uuid"] for g in first}) == 20


def test_sides_alternate():
    assert bench.side_order(0) == ("ours", "theirs")
    assert bench.side_order(1) == ("theirs", "ours")
    assert bench.side_order(2) == ("ours", "theirs")


def test_item_stats_leave_the_first_item_apart():
    stats = bench.item_stats([5.0, 1.0, 3.0, 2.0])
    assert stats == {"first": 5.0, "median": 2.0, "min": 1.0, "max": 3.0}
    assert bench.item_stats([4.0])["median"] == 4.0
    assert bench.item_stats([])["median"] is None


def test_summary_takes_medians_of_rounds_and_ratios():
    rounds = []
    for wall in (10.0, 30.0, 20.0):
        rounds.append({
            "ping": run([[1.0, 0.5, 0.5]], wall=3.0),
            "ours": {"start": run([[2.0, 1.0, 1.0]], wall=wall), "noop": run([[1.0, 0.6, 0.6]], wall=wall / 2)},
            "theirs": {"start": run([[1.0, 0.8, 0.8], [1.0, 0.8, 0.8]], wall=2 * wall),
                       "noop": run([[1.0, 0.6, 0.6], [1.0, 0.6, 0.6]], wall=wall)},
        })
    summary = bench.summarize(rounds)
    assert summary[("ours", "start", "wall")] == 20.0
    assert summary[("ratio", "start", "wall")] == pytest.approx(0.5)
    assert summary[("theirs", "start", "item")] == pytest.approx(1.6)
    assert summary[("ratio", "noop", "item")] == pytest.approx(0.5)
    assert summary[("ping", "item")] == 0.5
    assert bench.ratio(1.0, 0) is None and bench.fmt(None) == "-" and bench.fmt(1.5, "x") == "1.50x"
    for wall, result in zip((4.0, 6.0, 5.0), rounds):
        result["bulk"] = {"start": run([[wall]], wall=wall), "noop": run([[0.5]], wall=wall / 4)}
    bulk = bench.bulk_summary(rounds, summary)
    assert bulk["start"] == 5.0 and bulk[("start", "ratio")] == pytest.approx(5.0 / 40.0)
    assert bulk[("noop", "ratio")] == pytest.approx(1.25 / 20.0)


def test_template_renders_the_domain_the_vm_module_builds():
    """community.libvirt gets the same guest as virtnode.kvm.vm (its metadata element aside)."""
    from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml

    guest = bench.guests(1)[0]
    variables = {"item": guest, "bench_memory_mib": 128, "bench_workload": "idle",
                 "virtnode_lab_guest_kernel": "/guest/vmlinuz", "virtnode_lab_guest_initrd": "/guest/initrd.img",
                 "virtnode_lab_guest_cmdline": "console=ttyS0 quiet"}
    theirs = jinja2.Template((BENCH / "bench_vm_domain.xml.j2").read_text()).render(**variables)
    spec = dict.fromkeys(('uuid', 'machine', 'max_memory', 'vcpus', 'cpu_model', 'cpu_topology', 'boot_order',
                          'disks', 'cdrom', 'nics', 'graphics', 'lease', 'custom_properties', 'domain_type'))
    spec.update(name=guest["name"], uuid=guest["uuid"], memory=128 * 1024, kernel="/guest/vmlinuz",
                initrd="/guest/initrd.img", cmdline="console=ttyS0 quiet workload=idle", console_log=True)
    ours = domxml.build_xml(spec, domain_type="qemu")

    def canonical(text):
        root = etree.fromstring(text.encode(), etree.XMLParser(remove_blank_text=True))
        for elem in root.xpath("metadata"):
            root.remove(elem)
        for elem in root.iter("memory", "currentMemory"):
            if elem.get("unit") == "MiB":
                elem.set("unit", "KiB")
                elem.text = str(int(elem.text) * 1024)
        return etree.tostring(root, method="c14n")

    assert canonical(theirs) == canonical(ours)
