# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host statistics of a virtualization node (what VDSM's getVdsStats reports).

CPU and memory usage, NIC byte rates and error counts, load, uptime: read
from /proc and /sys, with rates over a sampling interval. The node agent
samples with the same readers and shapes its cache the same way.
"""

from __future__ import annotations

import os
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.readers import host_path, list_dir, read_int, read_optional_text
from ansible_collections.virtnode.kvm.plugins.module_utils.host.readers import available_kib, mib, read_meminfo


def read_proc_stat(root='/'):
    """Aggregate CPU jiffies and boot time from /proc/stat."""
    result = {'cpu': None, 'btime': None}
    for line in (read_optional_text(host_path(root, '/proc/stat')) or '').splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            if fields[0] == 'cpu':
                result['cpu'] = [int(v) for v in fields[1:]]
            elif fields[0] == 'btime':
                result['btime'] = int(fields[1])
        except (ValueError, IndexError):
            continue
    return result


def cpu_percentages(first_sample, last_sample):
    """user/system/idle/iowait/steal percentages between two /proc/stat ``cpu`` rows."""
    empty = {'user': None, 'system': None, 'idle': None, 'iowait': None, 'steal': None}
    if not first_sample or not last_sample:
        return empty
    first, last = first_sample, last_sample
    width = min(len(first), len(last), 8)
    first = list(first[:width]) + [0] * (8 - width)
    last = list(last[:width]) + [0] * (8 - width)
    delta = [b - a for a, b in zip(first, last)]
    total = sum(delta)
    if total <= 0 or any(d < 0 for d in delta):
        return empty
    user, nice, system, idle, iowait, irq, softirq, steal = delta

    def pct(value):
        return round(100.0 * value / total, 2)

    return {
        'user': pct(user + nice),
        'system': pct(system + irq + softirq),
        'idle': pct(idle + iowait),
        'iowait': pct(iowait),
        'steal': pct(steal),
    }


_NET_COUNTERS = ('rx_bytes', 'tx_bytes', 'rx_errors', 'tx_errors', 'rx_dropped', 'tx_dropped')


def read_net_counters(root='/'):
    """``{ifname: {counter: value}}`` from /sys/class/net/*/statistics."""
    netdir = host_path(root, '/sys/class/net')
    counters = {}
    for name in list_dir(netdir):
        statdir = os.path.join(netdir, name, 'statistics')
        if not os.path.isdir(statdir):
            continue
        counters[name] = {key: read_int(os.path.join(statdir, key)) for key in _NET_COUNTERS}
    return counters


def _delta(first, last):
    if first is None or last is None or last < first:
        return None
    return last - first


def net_rates(first, last, elapsed):
    """Per interface counters, byte rates and error/drop increases."""
    result = []
    for name in sorted(last):
        now = last[name]
        before = first.get(name) if first else None
        entry = {'name': name}
        entry.update(now)
        for key in ('rx_bytes', 'tx_bytes'):
            delta = _delta(before[key], now[key]) if before and elapsed else None
            entry[key + '_per_sec'] = None if delta is None else round(delta / elapsed, 1)
        for key in ('rx_errors', 'tx_errors', 'rx_dropped', 'tx_dropped'):
            entry[key + '_delta'] = _delta(before[key], now[key]) if before and elapsed else None
        result.append(entry)
    return result


def read_loadavg(root='/'):
    """1, 5 and 15 minute load averages."""
    fields = (read_optional_text(host_path(root, '/proc/loadavg')) or '').split()
    try:
        return {'avg1': float(fields[0]), 'avg5': float(fields[1]), 'avg15': float(fields[2])}
    except (IndexError, ValueError):
        return {'avg1': None, 'avg5': None, 'avg15': None}


def read_uptime(root='/'):
    """Seconds since boot, from /proc/uptime."""
    fields = (read_optional_text(host_path(root, '/proc/uptime')) or '').split()
    try:
        return float(fields[0])
    except (IndexError, ValueError):
        return None


def memory_usage(meminfo):
    """Used/free memory and swap (MiB) as VDSM's host stats report them."""
    total = meminfo.get('MemTotal')
    available = available_kib(meminfo)
    used = total - available if total is not None and available is not None else None
    swap_total, swap_free = meminfo.get('SwapTotal'), meminfo.get('SwapFree')
    swap_used = swap_total - swap_free if swap_total is not None and swap_free is not None else None
    return {
        'memory': {
            'used_mib': mib(used),
            'free_mib': mib(available),
            'used_percent': round(100.0 * used / total, 2) if used is not None and total else None,
        },
        'swap': {
            'total_mib': mib(swap_total),
            'free_mib': mib(swap_free),
            'used_mib': mib(swap_used),
        },
    }


def stats_info(root='/', sample_interval=1.0, sleep=None, clock=None):
    """The ``stats`` section, sampled over ``sample_interval`` seconds (0: no rates)."""
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    interval = validate.sample_interval(sample_interval)
    first_cpu = first_net = None
    start = clock()
    if interval > 0:
        first_cpu = read_proc_stat(root)['cpu']
        first_net = read_net_counters(root)
        sleep(interval)
    proc_stat = read_proc_stat(root)
    last_net = read_net_counters(root)
    elapsed = clock() - start if interval > 0 else 0
    stats = {
        'sample_interval': interval,
        'timestamp': round(time.time(), 3),
        'cpu': cpu_percentages(first_cpu, proc_stat['cpu']),
        'cpu_load': read_loadavg(root),
    }
    stats.update(memory_usage(read_meminfo(root)))
    stats['network'] = net_rates(first_net, last_net, elapsed if elapsed > 0 else None)
    stats['uptime_seconds'] = read_uptime(root)
    stats['boot_time'] = proc_stat['btime']
    return stats
