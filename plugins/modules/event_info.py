#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: event_info
short_description: Read the node agent's events since a cursor
version_added: 0.1.0
description:
  - Reads the append-only event log written by the virtnode node agent (role C(virtnode.kvm.node_agent)), that is
    VM lifecycle events (started, stopped, paused with its reason, resumed, migrated, ...), storage domains
    becoming unreachable or reachable again, and the agent's own connects to libvirt.
  - Every event has a strictly increasing C(seq). Pass the RV(cursor) of one call as O(since) of the next to
    get each event exactly once.
  - Reads the file directly, so it works whether or not the agent runs. Never changes anything.
options:
  since:
    description:
      - Return events whose C(seq) is greater than this cursor. V(0) returns everything kept.
    type: int
    default: 0
  limit:
    description:
      - Return at most this many events; RV(more) tells whether more are waiting.
    type: int
    default: 1000
  events:
    description:
      - Only return these kinds of events (for example V(started), V(paused), V(storage_domain_unreachable)).
        The cursor still moves past the others.
    type: list
    elements: str
  path:
    description:
      - The event log file.
    type: path
    default: /var/lib/virtnode/events.jsonl
extends_documentation_fragment:
  - virtnode.kvm.failure
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
notes:
  - The agent keeps one rotated generation of the log; a reader that falls further behind gets RV(gap=true).
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
- name: Read every event kept
  virtnode.kvm.event_info:
  register: all_events

- name: Read what happened since the last call
  virtnode.kvm.event_info:
    since: "{{ all_events.cursor }}"
  register: new_events

- name: Only VM pauses and storage trouble, at most 10
  virtnode.kvm.event_info:
    events: [paused, storage_domain_unreachable]
    limit: 10
"""

RETURN = r"""
events:
  description: Events with C(seq) greater than O(since), oldest first.
  returned: always
  type: list
  elements: dict
  sample:
    - seq: 42
      time: 1700000000.123
      event: paused
      kind: vm
      vm: demo-guest
      uuid: 5b7e1c9a-0d11-4c0e-9d2b-3f0f8f7e6a52
      reason: ioerror
  contains:
    seq:
      description: Cursor of the event.
      type: int
      returned: always
    time:
      description: When the agent recorded it (epoch seconds).
      type: float
      returned: always
    event:
      description:
        - What happened, for example V(started), V(stopped), V(paused), V(resumed), V(migrated), V(crashed),
          V(storage_domain_unreachable), V(storage_domain_reachable), V(libvirt_connected),
          V(libvirt_disconnected), V(agent_started).
      type: str
      returned: always
    kind:
      description: V(vm), V(storage) or V(agent).
      type: str
      returned: always
    reason:
      description: libvirt's event detail for VM events (V(booted), V(destroyed), V(ioerror), ...), the error for storage events.
      type: str
      returned: when known
cursor:
  description: The value to pass as O(since) next time.
  returned: always
  type: int
  sample: 42
more:
  description: True when O(limit) cut the answer short.
  returned: always
  type: bool
  sample: false
gap:
  description: True when events after O(since) were already rotated away.
  returned: always
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import events as agent_events
from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            since=dict(type='int', default=0),
            limit=dict(type='int', default=1000),
            events=dict(type='list', elements='str'),
            path=dict(type='path', default=agent_events.EVENTS_FILE),
        ),
        supports_check_mode=True,
    )
    module_run.run(module, agent_events.event_info)


if __name__ == '__main__':
    main()
