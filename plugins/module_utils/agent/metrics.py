# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus metrics of the node agent, built from its latest snapshot.

``families(snapshot)`` is a pure function (unit tested without
prometheus_client) returning metric families; the HTTP endpoint serves them
through ``prometheus_client`` when it is installed (Debian:
python3-prometheus-client) and through the small text renderer here
otherwise. Names follow Prometheus conventions: base units (seconds, bytes),
``_total`` for counters, a ``virtnode_`` prefix, labels ``vm``/``uuid``,
``disk``, ``interface``, ``mode``, ``sd_uuid``, ``path``. Durations the agent
observes (``agent.histogram``) are exported as histograms.
"""

from __future__ import annotations

import collections
import logging
import threading
import traceback
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import server as agent_server

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import make_wsgi_app
except ImportError:
    HAS_PROMETHEUS_CLIENT = False
    PROMETHEUS_CLIENT_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PROMETHEUS_CLIENT = True
    PROMETHEUS_CLIENT_IMPORT_ERROR = None

LOG = logging.getLogger('virtnode.agent.metrics')
# Scrapers are few (Prometheus, an operator's curl): a small cap keeps a flood from costing threads.
MAX_CONNECTIONS = 8
Family = collections.namedtuple('Family', 'name kind help labels samples')

_VM_DISK = (
    ('virtnode_vm_disk_read_bytes_total', 'counter', 'Bytes read from the disk.', 'read_bytes'),
    ('virtnode_vm_disk_written_bytes_total', 'counter', 'Bytes written to the disk.', 'write_bytes'),
    ('virtnode_vm_disk_reads_total', 'counter', 'Read requests completed.', 'read_ops'),
    ('virtnode_vm_disk_writes_total', 'counter', 'Write requests completed.', 'write_ops'),
    ('virtnode_vm_disk_capacity_bytes', 'gauge', 'Virtual size of the disk.', 'capacity'),
    ('virtnode_vm_disk_allocation_bytes', 'gauge', 'Bytes allocated to the disk image.', 'allocation'),
)
_VM_NIC = (
    ('virtnode_vm_network_receive_bytes_total', 'counter', 'Bytes received by the interface.', 'rx_bytes'),
    ('virtnode_vm_network_transmit_bytes_total', 'counter', 'Bytes sent by the interface.', 'tx_bytes'),
    ('virtnode_vm_network_receive_packets_total', 'counter', 'Packets received.', 'rx_packets'),
    ('virtnode_vm_network_transmit_packets_total', 'counter', 'Packets sent.', 'tx_packets'),
    ('virtnode_vm_network_receive_errors_total', 'counter', 'Receive errors.', 'rx_errors'),
    ('virtnode_vm_network_transmit_errors_total', 'counter', 'Transmit errors.', 'tx_errors'),
    ('virtnode_vm_network_receive_drops_total', 'counter', 'Received packets dropped.', 'rx_dropped'),
    ('virtnode_vm_network_transmit_drops_total', 'counter', 'Packets to send dropped.', 'tx_dropped'),
)


def _number(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _histogram(value):
    """``(((bound, cumulative count), ...), count, sum)`` of a histogram snapshot, or None."""
    if not isinstance(value, dict):
        return None
    try:
        buckets = tuple((float(bound), float(count)) for bound, count in value['buckets'])
        return buckets, float(value['count']), float(value['sum'])
    except (KeyError, TypeError, ValueError):
        return None


class _Builder:
    def __init__(self):
        self.order = []
        self.families = {}

    def add(self, name, kind, help_text, labels, label_values, value):
        """One sample; for a histogram ``value`` is a ``Histogram.snapshot()`` (None: no sample)."""
        value = _histogram(value) if kind == 'histogram' else _number(value)
        family = self.families.get(name)
        if family is None:
            family = Family(name, kind, help_text, tuple(labels), [])
            self.families[name] = family
            self.order.append(name)
        if value is not None:
            family.samples.append((tuple(str(v) for v in label_values), value))

    def result(self):
        return [self.families[name] for name in self.order]


def _vm_families(builder, vms):
    status_counts = collections.Counter()
    for vm in vms:
        ids = (vm.get('name') or '', vm['uuid'])
        status_counts[vm['status']] += 1
        builder.add('virtnode_vm_status', 'gauge', 'VM status in VDSM terms (1 for the current one).',
                    ('vm', 'uuid', 'status'), ids + (vm['status'],), 1)
        builder.add('virtnode_vm_up', 'gauge', '1 when the VM status is Up.', ('vm', 'uuid'), ids,
                    1 if vm['status'] == 'Up' else 0)
        cpu = vm.get('cpu') or {}
        for key, name, text in (('time_ns', 'virtnode_vm_cpu_seconds_total', 'CPU time used by the VM.'),
                                ('user_ns', 'virtnode_vm_cpu_user_seconds_total', 'User CPU time of the VM.'),
                                ('system_ns', 'virtnode_vm_cpu_system_seconds_total', 'System CPU time of the VM.')):
            value = cpu.get(key)
            builder.add(name, 'counter', text, ('vm', 'uuid'), ids, None if value is None else value / 1e9)
        builder.add('virtnode_vm_vcpus', 'gauge', 'Virtual CPUs of the VM.', ('vm', 'uuid'), ids, cpu.get('vcpus'))
        memory = vm.get('memory') or {}
        for key, name, text in (('max_kib', 'virtnode_vm_memory_max_bytes', 'Maximum memory of the VM.'),
                                ('balloon_current_kib', 'virtnode_vm_memory_balloon_bytes', 'Current balloon size.'),
                                ('rss_kib', 'virtnode_vm_memory_rss_bytes', 'Resident memory of the QEMU process.')):
            value = memory.get(key)
            builder.add(name, 'gauge', text, ('vm', 'uuid'), ids, None if value is None else value * 1024)
        for disk in vm.get('disks') or []:
            for name, kind, text, key in _VM_DISK:
                builder.add(name, kind, text, ('vm', 'uuid', 'disk'), ids + (disk.get('name') or '',), disk.get(key))
        for nic in vm.get('nics') or []:
            for name, kind, text, key in _VM_NIC:
                builder.add(name, kind, text, ('vm', 'uuid', 'interface'), ids + (nic.get('name') or '',),
                            nic.get(key))
    for status in sorted(status_counts):
        builder.add('virtnode_host_vms', 'gauge', 'VMs on the host by status.', ('status',), (status,),
                    status_counts[status])


def _host_families(builder, counters):
    for mode, seconds in sorted((counters.get('cpu_seconds') or {}).items()):
        builder.add('virtnode_host_cpu_seconds_total', 'counter', 'Host CPU time by mode.', ('mode',), (mode,), seconds)
    for key, text in (('memory_total_bytes', 'Host memory (MemTotal).'),
                      ('memory_available_bytes', 'Host memory available for new work (MemAvailable).'),
                      ('swap_total_bytes', 'Host swap.'), ('swap_free_bytes', 'Free host swap.')):
        builder.add('virtnode_host_' + key, 'gauge', text, (), (), counters.get(key))
    load = counters.get('load') or {}
    for key in ('avg1', 'avg5', 'avg15'):
        builder.add('virtnode_host_load' + key[3:], 'gauge', 'Host load average over %s minute(s).' % key[3:],
                    (), (), load.get(key))
    builder.add('virtnode_host_uptime_seconds', 'gauge', 'Seconds since the host booted.', (), (),
                counters.get('uptime_seconds'))
    builder.add('virtnode_host_boot_time_seconds', 'gauge', 'Boot time of the host (epoch seconds).', (), (),
                counters.get('boot_time_seconds'))
    for ifname, values in sorted((counters.get('network') or {}).items()):
        for key, name, text in (('rx_bytes', 'virtnode_host_network_receive_bytes_total', 'Bytes received.'),
                                ('tx_bytes', 'virtnode_host_network_transmit_bytes_total', 'Bytes sent.'),
                                ('rx_errors', 'virtnode_host_network_receive_errors_total', 'Receive errors.'),
                                ('tx_errors', 'virtnode_host_network_transmit_errors_total', 'Transmit errors.')):
            builder.add(name, 'counter', text, ('interface',), (ifname,), values.get(key))


def _storage_families(builder, domains):
    for sd_uuid, status in sorted(domains.items()):
        builder.add('virtnode_storage_domain_valid', 'gauge', '1 when the storage domain metadata was read and is valid.',
                    ('sd_uuid',), (sd_uuid,), 1 if status.get('valid') else 0)
        builder.add('virtnode_storage_domain_read_delay_seconds', 'gauge',
                    'Time the last metadata read took (or has been waiting).', ('sd_uuid',), (sd_uuid,), status.get('delay'))
        builder.add('virtnode_storage_domain_last_check_age_seconds', 'gauge', 'Age of the last completed check.',
                    ('sd_uuid',), (sd_uuid,), status.get('last_check'))
        builder.add('virtnode_storage_domain_lockspace_acquired', 'gauge',
                    '1 when this host holds its host id in the domain\'s sanlock lockspace.', ('sd_uuid',), (sd_uuid,),
                    None if status.get('acquired') is None else int(bool(status.get('acquired'))))
        builder.add('virtnode_storage_domain_version', 'gauge', 'Format version of the storage domain.',
                    ('sd_uuid',), (sd_uuid,), status.get('version'))
        builder.add('virtnode_storage_domain_free_bytes', 'gauge', 'Free space of the storage domain.',
                    ('sd_uuid',), (sd_uuid,), status.get('free_bytes'))
        builder.add('virtnode_storage_domain_size_bytes', 'gauge', 'Size of the storage domain.',
                    ('sd_uuid',), (sd_uuid,), status.get('total_bytes'))


def _thin_families(builder, thin):
    """The thin monitor's counters and durations (``ThinMonitor.status()``); nothing when it is off."""
    if not thin:
        return
    builder.add('virtnode_thin_drives', 'gauge', 'Thin block drives of running VMs the agent monitors.', (), (),
                len(thin.get('drives') or []))
    builder.add('virtnode_thin_threshold_events_total', 'counter', 'Block threshold events received.', (), (),
                thin.get('threshold_events'))
    by_path = thin.get('extensions_by_path') or {}
    for path in sorted(set(by_path) | {'local', 'mailbox'}):
        builder.add('virtnode_thin_extensions_total', 'counter',
                    'Thin volume extensions done, by path (local: this host is SPM; mailbox: through the SPM).',
                    ('path',), (path,), by_path.get(path, 0))
    builder.add('virtnode_thin_extension_failures_total', 'counter', 'Thin volume extensions that failed.', (), (),
                thin.get('failures'))
    builder.add('virtnode_thin_enospc_pauses_total', 'counter', 'VM pauses on a full thin drive (ENOSPC).', (), (),
                thin.get('enospc'))
    builder.add('virtnode_thin_extension_duration_seconds', 'histogram',
                'Time from the trigger of an extension to the new size seen by libvirt.', (), (),
                thin.get('extension_seconds'))
    builder.add('virtnode_spm_mailbox_request_duration_seconds', 'histogram',
                'Time from asking the SPM for space through the mailbox to its reply.', (), (),
                thin.get('mailbox_request_seconds'))


def families(snapshot):
    """Metric families for ``snapshot`` (the agent's cache: host, vms, storage, agent)."""
    builder = _Builder()
    agent = snapshot.get('agent') or {}
    builder.add('virtnode_agent_libvirt_connected', 'gauge', '1 while the agent is connected to libvirt.', (), (),
                1 if agent.get('libvirt_connected') else 0)
    builder.add('virtnode_agent_samples_total', 'counter', 'Samples taken.', (), (), agent.get('samples'))
    builder.add('virtnode_agent_sample_errors_total', 'counter', 'VM samples that failed.', (), (),
                agent.get('sample_errors'))
    builder.add('virtnode_agent_vm_errors_total', 'counter', 'VM entries that could not be built.', (), (),
                agent.get('vm_errors'))
    builder.add('virtnode_agent_libvirt_connects_total', 'counter', 'Connections opened to libvirt.', (), (),
                agent.get('libvirt_connects'))
    builder.add('virtnode_agent_sample_duration_seconds', 'gauge', 'Duration of the last sample.', (), (),
                agent.get('sample_duration'))
    builder.add('virtnode_agent_last_sample_timestamp_seconds', 'gauge', 'When the last sample was taken.', (), (),
                agent.get('sampled_at'))
    builder.add('virtnode_agent_event_seq', 'gauge', 'Cursor of the last event recorded.', (), (), agent.get('event_seq'))
    builder.add('virtnode_agent_storage_stuck_reads', 'gauge', 'Storage reads still waiting for an answer.', (), (),
                agent.get('storage_stuck'))
    host = snapshot.get('host') or {}
    if host.get('counters'):
        _host_families(builder, host['counters'])
    _vm_families(builder, (snapshot.get('vms') or {}).get('vms') or [])
    _storage_families(builder, (snapshot.get('storage') or {}).get('domains') or {})
    _thin_families(builder, agent.get('thin'))
    return builder.result()


def _escape(value):
    return value.replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def _format_value(value):
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render_text(metric_families):
    """Prometheus text exposition format (0.0.4) of ``metric_families``."""
    lines = []
    for family in metric_families:
        lines.append('# HELP %s %s' % (family.name, family.help.replace('\\', '\\\\').replace('\n', '\\n')))
        lines.append('# TYPE %s %s' % (family.name, family.kind))
        for label_values, value in family.samples:
            pairs = ['%s="%s"' % (name, _escape(v)) for name, v in zip(family.labels, label_values)]
            if family.kind != 'histogram':
                lines.append(_sample_line(family.name, pairs, value))
                continue
            buckets, count, total = value
            for bound, cumulative in buckets:
                lines.append(_sample_line(family.name + '_bucket', pairs + ['le="%s"' % _bound(bound)], cumulative))
            lines.append(_sample_line(family.name + '_bucket', pairs + ['le="+Inf"'], count))
            lines.append(_sample_line(family.name + '_sum', pairs, total))
            lines.append(_sample_line(family.name + '_count', pairs, count))
    return '\n'.join(lines) + '\n'


def _sample_line(name, pairs, value):
    return '%s%s %s' % (name, '{%s}' % ','.join(pairs) if pairs else '', _format_value(value))


def _bound(value):
    """A bucket bound as Prometheus writes it (``0.5``, ``1.0``)."""
    return repr(float(value))


class SnapshotCollector:
    """A prometheus_client collector reading the agent's latest snapshot."""

    def __init__(self, get_snapshot):
        self.get_snapshot = get_snapshot

    def collect(self):
        for family in families(self.get_snapshot()):
            if family.kind == 'histogram':
                metric = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
                for label_values, (buckets, count, total) in family.samples:
                    metric.add_metric(list(label_values), [(_bound(bound), cumulative) for bound, cumulative in buckets]
                                      + [('+Inf', count)], total)
                yield metric
                continue
            if family.kind == 'counter':
                metric = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
            for label_values, value in family.samples:
                metric.add_metric(list(label_values), value)
            yield metric


class _QuietHandler(WSGIRequestHandler):
    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        LOG.debug('metrics: ' + format, *args)


class _Server(agent_server.BoundedThreadingMixIn, WSGIServer):
    # Threaded and bounded: an idle client (a bare TCP connect) must not hold scrapes or a stopping agent.
    busy_reply = (b'HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n'
                  b'Connection: close\r\n\r\nbusy\n')


def _fallback_app(get_snapshot):
    def app(environ, start_response):
        if environ.get('PATH_INFO', '/') not in ('/', '/metrics'):
            start_response('404 Not Found', [('Content-Type', 'text/plain')])
            return [b'not found\n']
        body = render_text(families(get_snapshot())).encode('utf-8')
        start_response('200 OK', [('Content-Type', 'text/plain; version=0.0.4; charset=utf-8'),
                                  ('Content-Length', str(len(body)))])
        return [body]
    return app


def serve(address, port, get_snapshot, max_connections=MAX_CONNECTIONS, connection_timeout=agent_server.CONNECTION_TIMEOUT):
    """Start the metrics HTTP endpoint in a daemon thread; returns the server (``shutdown()`` and
    ``server_close()`` stop it without waiting for the clients still connected)."""
    if HAS_PROMETHEUS_CLIENT:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(get_snapshot))
        app = make_wsgi_app(registry)
    else:
        LOG.warning('prometheus_client is not installed; serving metrics with the built-in renderer')
        app = _fallback_app(get_snapshot)
    server = _Server((address, port), _QuietHandler, max_connections=max_connections,
                     connection_timeout=connection_timeout)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name='metrics-http', daemon=True)
    thread.start()
    return server
