# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Grafana dashboard of the node agent's metrics (dashboards/virtnode-node.json).

Fast checks without a lab: the JSON model is whole, every panel has a query,
every query names only metrics the agent's exporter writes (from a snapshot
with every part filled) and applies rate() to counters only. The integration
test tests/integration/test_agent_dashboard.py checks the same names against a
real scrape of a lab host's agent and runs promtool on it; it reuses the
parser below.
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import histogram as agent_histogram
from ansible_collections.virtnode.kvm.plugins.module_utils.agent import metrics as agent_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(REPO, 'dashboards', 'virtnode-node.json')
HOST_MATCHER = 'instance=~"$host"'
HISTOGRAM_SUFFIXES = ('_bucket', '_sum', '_count')
# PromQL words that look like names but are neither metrics nor functions.
KEYWORDS = {'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless',
            'offset', 'inf', 'nan'}
# Functions over a range vector the dashboard may use: all of them want a counter.
COUNTER_FUNCTIONS = {'rate', 'irate', 'increase'}


def load(path=DASHBOARD):
    with open(path, encoding='utf-8') as handle:
        return json.load(handle)


def panels(dashboard):
    """Every panel, those inside (collapsed) rows too."""
    for panel in dashboard.get('panels', []):
        yield panel
        yield from panel.get('panels', [])


def queries(dashboard):
    """``(where, expression)`` of every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get('targets', []):
            yield 'panel %r %s' % (panel.get('title'), target.get('refId')), target.get('expr', '')
    for variable in dashboard.get('templating', {}).get('list', []):
        if variable.get('type') == 'query':
            query = variable.get('query')
            yield 'variable %s' % variable['name'], query.get('query') if isinstance(query, dict) else query


def selectors(expression):
    """``[(metric name, label matchers, followed by a range, function applied to it)]`` of a PromQL expression.

    Strings (label values), the label lists of ``by``/``without``/``on``/... clauses, ranges and Grafana
    variables are not names; an identifier followed by ``(`` is a function; ``label_values(m, label)``
    of a variable names the metric ``m``.
    """
    text = re.sub(r'^\s*label_values\((.*),\s*\w+\s*\)\s*$', r'\1', expression.strip())
    strings = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: strings.append(m.group(0)) or '"%d"' % (len(strings) - 1), text)
    text = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', ' ', text)
    found = []
    stack = []   # the function each open parenthesis belongs to
    pattern = re.compile(r'(?<![\w.$"])([a-zA-Z_:][\w:]*)(\s*\{[^}]*\})?(\s*\[[^\]]*\])?(\s*\()?|(\()|(\))')
    for match in pattern.finditer(text):
        name, labels, rng, call, opening, closing = match.groups()
        if opening:
            stack.append(None)
        elif closing:
            if stack:
                stack.pop()
        elif call:
            stack.append(name)
        elif name.lower() not in KEYWORDS:
            matchers = re.sub(r'"(\d+)"', lambda m: strings[int(m.group(1))], (labels or '').strip())
            found.append((name, matchers, bool(rng), stack[-1] if stack else None))
    return found


def names(dashboard):
    return sorted(set(name for _where, expression in queries(dashboard) for name, _m, _r, _f in selectors(expression)))


def exported_families():
    """``{sample name: (family, kind)}`` the exporter writes for a snapshot with every part filled."""
    histogram = agent_histogram.Histogram().snapshot()
    snapshot = {
        'agent': {'libvirt_connected': True, 'samples': 1, 'sample_errors': 0, 'vm_errors': 0, 'libvirt_connects': 1,
                  'sample_duration': 0.1, 'sampled_at': 1.0, 'event_seq': 1, 'storage_stuck': 0,
                  'thin': {'extensions': 0, 'failures': 0, 'enospc': 0, 'threshold_events': 0, 'drives': [],
                           'extensions_by_path': {}, 'extension_seconds': histogram,
                           'mailbox_request_seconds': histogram}},
        'host': {'counters': {'cpu_seconds': {'idle': 1.0}, 'memory_total_bytes': 1, 'memory_available_bytes': 1,
                              'swap_total_bytes': 1, 'swap_free_bytes': 1,
                              'load': {'avg1': 1, 'avg5': 1, 'avg15': 1}, 'uptime_seconds': 1,
                              'boot_time_seconds': 1, 'network': {'eth0': dict.fromkeys(
                                  ('rx_bytes', 'tx_bytes', 'rx_errors', 'tx_errors'), 1)}}},
        'vms': {'vms': [{'name': 'vm', 'uuid': 'u', 'status': 'Up',
                         'cpu': {'time_ns': 1, 'user_ns': 1, 'system_ns': 1, 'vcpus': 1},
                         'memory': {'max_kib': 1, 'balloon_current_kib': 1, 'rss_kib': 1},
                         'disks': [dict.fromkeys(('name', 'read_bytes', 'write_bytes', 'read_ops', 'write_ops',
                                                  'capacity', 'allocation'), 1)],
                         'nics': [dict.fromkeys(('name', 'rx_bytes', 'tx_bytes', 'rx_packets', 'tx_packets',
                                                 'rx_errors', 'tx_errors', 'rx_dropped', 'tx_dropped'), 1)]}]},
        'storage': {'domains': {'sd': {'valid': True, 'delay': 0.1, 'last_check': 1.0}}},
    }
    exported = {}
    for family in agent_metrics.families(snapshot):
        suffixes = HISTOGRAM_SUFFIXES if family.kind == 'histogram' else ('',)
        for suffix in suffixes:
            exported[family.name + suffix] = (family.name, family.kind)
    return exported


def problems(dashboard, exported):
    """What is wrong with the dashboard's queries against ``exported`` ({sample name: (family, kind)})."""
    wrong = []
    for where, expression in queries(dashboard):
        found = selectors(expression)
        if not found:
            wrong.append('%s: no metric in %r' % (where, expression))
        for name, matchers, is_range, function in found:
            if name not in exported:
                wrong.append('%s: %s is not exported' % (where, name))
                continue
            family, kind = exported[name]
            counter_like = kind == 'counter' or (kind in ('histogram', 'summary') and name != family)
            if is_range and (function not in COUNTER_FUNCTIONS or not counter_like):
                wrong.append('%s: %s (%s) over a range in %s()' % (where, name, kind, function))
            if not is_range and counter_like:
                wrong.append('%s: counter %s used without rate()' % (where, name))
            if where.startswith('panel') and HOST_MATCHER not in matchers:
                wrong.append('%s: %s is not filtered by the host variable' % (where, name))
    return wrong


def test_the_dashboard_is_a_grafana_model_with_datasource_and_host_variables():
    dashboard = load()
    assert dashboard['uid'] and dashboard['title'] and dashboard['schemaVersion'] >= 36
    variables = dict((v['name'], v) for v in dashboard['templating']['list'])
    assert variables['datasource']['type'] == 'datasource' and variables['datasource']['query'] == 'prometheus'
    assert variables['host']['type'] == 'query' and variables['host']['multi']
    ids = [panel['id'] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), 'panel ids repeat'


def test_every_panel_has_a_query_on_the_datasource_variable():
    dashboard = load()
    graphs = [panel for panel in panels(dashboard) if panel['type'] != 'row']
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel.get('title') and panel.get('gridPos'), panel
        assert panel['datasource']['uid'] == '${datasource}', panel['title']
        assert panel['targets'], panel['title']
        for target in panel['targets']:
            assert target['expr'].strip() and target['datasource']['uid'] == '${datasource}', panel['title']


def test_the_issues_panels_are_there():
    text = ' '.join(expression for _where, expression in queries(load()))
    for name in ('virtnode_host_cpu_seconds_total', 'virtnode_host_memory_available_bytes', 'virtnode_vm_cpu_seconds_total',
                 'virtnode_vm_memory_rss_bytes', 'virtnode_vm_disk_read_bytes_total', 'virtnode_vm_network_receive_bytes_total',
                 'virtnode_storage_domain_read_delay_seconds', 'virtnode_storage_domain_valid', 'virtnode_thin_extensions_total',
                 'virtnode_thin_extension_duration_seconds_bucket', 'virtnode_thin_enospc_pauses_total',
                 'virtnode_spm_mailbox_request_duration_seconds_bucket'):
        assert name in text, name


def test_every_query_uses_exported_metrics_rate_over_counters_only():
    wrong = problems(load(), exported_families())
    assert not wrong, '\n'.join(wrong)


def test_the_parser():
    assert selectors('1 - sum by (instance, mode) (rate(a_total{instance=~"$host", mode!="idle"}[$__rate_interval]))'
                     ' / on(instance) b offset 5m') == [
        ('a_total', '{instance=~"$host", mode!="idle"}', True, 'rate'), ('b', '', False, None)]
    assert selectors('histogram_quantile(0.99, sum by (le) (rate(h_bucket{x="a{b}"}[5m])))') == [
        ('h_bucket', '{x="a{b}"}', True, 'rate')]
    assert selectors('label_values(virtnode_vm_up{instance=~"$host"}, vm)') == [
        ('virtnode_vm_up', '{instance=~"$host"}', False, None)]
    assert selectors('time() - t_seconds') == [('t_seconds', '', False, None)]
    exported = {'c_total': ('c_total', 'counter'), 'g': ('g', 'gauge')}
    dashboard = {'panels': [{'title': 'p', 'targets': [{'refId': 'A', 'expr': 'c_total{instance=~"$host"} + g'},
                                                       {'refId': 'B', 'expr': 'max_over_time(g{instance=~"$host"}[5m])'},
                                                       {'refId': 'C', 'expr': 'missing{instance=~"$host"}'}]}]}
    assert problems(dashboard, exported) == [
        "panel 'p' A: counter c_total used without rate()", "panel 'p' A: g is not filtered by the host variable",
        "panel 'p' B: g (gauge) over a range in max_over_time()", "panel 'p' C: missing is not exported"]
