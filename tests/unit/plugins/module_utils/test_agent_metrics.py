# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import histogram as agent_histogram
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import metrics as agent_metrics


def _histogram(*values):
    histogram = agent_histogram.Histogram()
    for value in values:
        histogram.observe(value)
    return histogram.snapshot()


THIN = {'extensions': 3, 'failures': 1, 'enospc': 2, 'threshold_events': 4, 'drives': [{'drive': 'vda'}],
        'extensions_by_path': {'local': 3, 'mailbox': 0}, 'extension_seconds': _histogram(0.08, 0.2, 7),
        'mailbox_request_seconds': _histogram()}
SNAPSHOT = {
    'agent': {'libvirt_connected': True, 'samples': 3, 'sample_errors': 0, 'vm_errors': 1, 'thin': THIN},
    'host': {'counters': {'cpu_seconds': {'user': 10.5, 'idle': 100.0}, 'memory_total_bytes': 2048,
                          'memory_available_bytes': 1024, 'load': {'avg1': 0.5, 'avg5': 0.25, 'avg15': None},
                          'network': {'eth0': {'rx_bytes': 10, 'tx_bytes': 20}}}},
    'vms': {'vms': [
        {'name': 'a"b', 'uuid': 'u1', 'status': 'Up', 'cpu': {'time_ns': 2500000000, 'vcpus': 1},
         'memory': {'max_kib': 1024}, 'disks': [{'name': 'vda', 'read_bytes': 5}],
         'nics': [{'name': 'vnet0', 'rx_bytes': 7}]},
        {'name': 'down', 'uuid': 'u2', 'status': 'Down', 'cpu': None, 'memory': None, 'disks': [], 'nics': []},
    ]},
    'storage': {'domains': {'sd1': {'valid': False, 'delay': 5.0, 'last_check': 1.0},
                            'sd2': {'valid': True, 'delay': 0.001, 'last_check': 2.0, 'acquired': True, 'version': 5,
                                    'free_bytes': 1 << 30, 'total_bytes': 4 << 30}}},
}


def test_families_and_text():
    text = agent_metrics.render_text(agent_metrics.families(SNAPSHOT))
    assert 'virtnode_vm_cpu_seconds_total{vm="a\\"b",uuid="u1"} 2.5' in text
    assert 'virtnode_vm_memory_max_bytes{vm="a\\"b",uuid="u1"} 1048576' in text
    assert 'virtnode_vm_disk_read_bytes_total{vm="a\\"b",uuid="u1",disk="vda"} 5' in text
    assert 'virtnode_vm_network_receive_bytes_total{vm="a\\"b",uuid="u1",interface="vnet0"} 7' in text
    assert 'virtnode_vm_up{vm="down",uuid="u2"} 0' in text
    assert 'virtnode_host_vms{status="Up"} 1' in text
    assert 'virtnode_host_memory_available_bytes 1024' in text
    assert 'virtnode_host_cpu_seconds_total{mode="user"} 10.5' in text
    assert 'virtnode_storage_domain_valid{sd_uuid="sd1"} 0' in text
    assert 'virtnode_storage_domain_lockspace_acquired{sd_uuid="sd2"} 1' in text
    assert 'virtnode_storage_domain_version{sd_uuid="sd2"} 5' in text
    assert 'virtnode_storage_domain_free_bytes{sd_uuid="sd2"} 1073741824' in text
    assert 'virtnode_storage_domain_size_bytes{sd_uuid="sd2"} 4294967296' in text
    assert 'virtnode_storage_domain_lockspace_acquired{sd_uuid="sd1"}' not in text
    assert 'virtnode_agent_libvirt_connected 1' in text
    assert '# TYPE virtnode_vm_cpu_seconds_total counter' in text
    # Missing values are left out, never reported as 0.
    assert '\nvirtnode_host_load15 ' not in text
    for line in text.splitlines():
        if not line.startswith('#'):
            assert re.match(r'^[a-z_0-9]+(\{.*\})? -?[0-9.e+]+$', line), line


def test_counters_end_in_total():
    for family in agent_metrics.families(SNAPSHOT):
        assert family.name.startswith('virtnode_')
        assert (family.kind == 'counter') == family.name.endswith('_total'), family.name


def test_empty_snapshot():
    text = agent_metrics.render_text(agent_metrics.families({}))
    assert 'virtnode_agent_libvirt_connected 0' in text


def test_histogram_counts_each_value_in_every_bucket_at_or_above_it():
    snapshot = _histogram(0.025, 0.07, 100)
    buckets = dict((bound, count) for bound, count in snapshot['buckets'])
    assert (buckets[0.025], buckets[0.05], buckets[0.1], buckets[60.0]) == (1, 1, 2, 2)
    assert snapshot['count'] == 3 and snapshot['sum'] == 100.095


def test_thin_and_mailbox_families():
    text = agent_metrics.render_text(agent_metrics.families(SNAPSHOT))
    assert 'virtnode_thin_extensions_total{path="local"} 3' in text
    assert 'virtnode_thin_extensions_total{path="mailbox"} 0' in text
    assert 'virtnode_thin_enospc_pauses_total 2' in text
    assert 'virtnode_thin_extension_failures_total 1' in text
    assert 'virtnode_thin_drives 1' in text
    assert '# TYPE virtnode_thin_extension_duration_seconds histogram' in text
    assert 'virtnode_thin_extension_duration_seconds_bucket{le="0.1"} 1' in text
    assert 'virtnode_thin_extension_duration_seconds_bucket{le="1.0"} 2' in text
    assert 'virtnode_thin_extension_duration_seconds_bucket{le="+Inf"} 3' in text
    assert 'virtnode_thin_extension_duration_seconds_count 3' in text
    assert 'virtnode_spm_mailbox_request_duration_seconds_count 0' in text
    # The thin monitor off: no thin series at all, rather than zeros that look like a quiet monitor.
    assert 'virtnode_thin_' not in agent_metrics.render_text(agent_metrics.families({'agent': {'thin': None}}))


@pytest.mark.skipif(not shutil.which('promtool'), reason='promtool (Debian: prometheus) is not installed')
def test_promtool_finds_no_problem():
    text = agent_metrics.render_text(agent_metrics.families(SNAPSHOT))
    proc = subprocess.run(['promtool', 'check', 'metrics'], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
