# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cumulative histograms of durations, kept by the agent for its Prometheus metrics.

The agent's parts observe durations here without prometheus_client (which
is optional on a host); ``snapshot()`` is plain JSON (the ``status`` query
shows it) and ``agent.metrics`` exports it as a Prometheus histogram.
"""

from __future__ import annotations

import threading

# Seconds: from a local extension (about 0.1 s) to a mailbox request waiting for a slow SPM (60 s).
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Counts of observations at or below each bound, their number and their sum."""

    def __init__(self, buckets=DURATION_BUCKETS):
        self.bounds = tuple(sorted(float(bound) for bound in buckets))
        self._counts = [0] * len(self.bounds)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value):
        value = float(value)
        with self._lock:
            self._count += 1
            self._sum += value
            for index, bound in enumerate(self.bounds):
                if value <= bound:
                    self._counts[index] += 1

    def snapshot(self):
        """``{'buckets': [[bound, cumulative count], ...], 'count': n, 'sum': s}``; +Inf is ``count``."""
        with self._lock:
            return {'buckets': [[bound, count] for bound, count in zip(self.bounds, self._counts)],
                    'count': self._count, 'sum': round(self._sum, 6)}
