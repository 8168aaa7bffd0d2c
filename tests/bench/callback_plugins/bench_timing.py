# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback of tests/bench/bench_vm_vs_community_libvirt.py: task and loop item times as JSON.

Enabled by the benchmark only (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED);
writes to the file named by BENCH_TIMING_FILE when the play ends. An item's
time is the gap between its result's arrival and the previous one's (the
first item counts from the task start), as loop items run one after another.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_timing
type: aggregate
short_description: Task and loop item times for the vm benchmark
description: Writes each task's start, end, item arrival times and changed count to E(BENCH_TIMING_FILE).
requirements: [enabled in ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timing'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.tasks = []
        self.current = None

    def _close(self, now):
        if self.current is not None and 'end' not in self.current:
            self.current['end'] = now

    def v2_playbook_on_task_start(self, task, is_conditional):
        now = time.monotonic()
        self._close(now)
        self.current = {'name': task.get_name(), 'start': now, 'items': [], 'changed': 0, 'failed': 0, 'results': 0}
        self.tasks.append(self.current)

    def _item(self, result, status):
        if self.current is None:
            return
        self.current['items'].append(time.monotonic())
        self.current['results'] += 1
        if status == 'failed':
            self.current['failed'] += 1
        elif result._result.get('changed'):
            self.current['changed'] += 1

    def v2_runner_item_on_ok(self, result):
        self._item(result, 'ok')

    def v2_runner_item_on_failed(self, result):
        self._item(result, 'failed')

    def v2_runner_item_on_skipped(self, result):
        self._item(result, 'skipped')

    def _task(self, result, status):
        if self.current is None or 'results' in result._result:
            return
        self._item(result, status)

    def v2_runner_on_ok(self, result):
        self._task(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._task(result, 'failed')

    def v2_runner_on_unreachable(self, result):
        self._task(result, 'failed')

    def v2_playbook_on_stats(self, stats):
        now = time.monotonic()
        self._close(now)
        path = os.environ.get('BENCH_TIMING_FILE')
        if not path:
            return
        tasks = []
        for task in self.tasks:
            marks = [task['start']] + task['items']
            tasks.append({'name': task['name'], 'seconds': task['end'] - task['start'],
                          'items': [round(b - a, 4) for a, b in zip(marks, marks[1:])],
                          'changed': task['changed'], 'failed': task['failed'], 'results': task['results']})
        with open(path, 'w') as handle:
            json.dump({'tasks': tasks, 'play_seconds': now - self.started}, handle)
