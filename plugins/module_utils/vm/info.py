# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``vm_info`` module's work: status and statistics of the VMs of this host.

Read only: it imports what reads libvirt and the VM records, never the
lifecycle or storage code, so the module ships light. The node agent's
cache answers when it runs (its client is passed in: the agent sits above
this package).
"""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import guest_agent
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.lookup import lookup

DEFAULT_SAMPLE_INTERVAL = 1.0


def gather(conn, name, interval):
    """Entries of the VMs libvirt knows (one or all), plus exited transient VMs with a record."""
    if name:
        dom = lookup(conn, name)
        if dom is None:
            return with_exit_records([], name)
        return vm_stats.collect(conn, [dom], interval, libvirt_module=libvirt_conn.libvirt)
    return with_exit_records(vm_stats.collect(conn, None, interval, libvirt_module=libvirt_conn.libvirt), None)


def with_exit_records(entries, name):
    """Add the VMs that went down and are known only by their exit record."""
    known = set(e['uuid'] for e in entries)
    names = set(e['name'] for e in entries)
    for vm_uuid, record in vm_records.all_records('exit'):
        if vm_uuid not in known and record.get('name') not in names and (not name or record.get('name') == name):
            entries.append(vm_stats.exited_entry(vm_uuid, record))
            names.add(record.get('name'))
    return sorted(entries, key=lambda e: (e['name'] or '', e['uuid']))


def _from_agent(params, agent_query):
    """The agent's cached answer, when asked for the defaults on the local system libvirt and the agent runs."""
    if params['source'] != 'auto' or params['sample_interval'] is not None or params['uri'] != libvirt_conn.DEFAULT_URI:
        return None
    cached = agent_query('vms')
    if cached is None:
        return None
    name = params['name']
    vms = with_exit_records([vm for vm in cached['data']['vms'] if not name or vm.get('name') == name], name)
    return {'changed': False, 'vms': vms, 'sample_interval': float(cached.get('interval') or 0), 'source': 'agent'}


def add_guest_info(conn, vms):
    """Each running VM's ``guest``: what its guest agent reports (one agent round trip per VM whose agent is
    connected; libvirt bounds each by its agent timeout). Down VMs get None."""
    for vm in vms:
        vm['guest'] = None
        if vm.get('status') in (None, 'Down'):
            continue
        dom = lookup(conn, vm['name'], vm['uuid'])
        if dom is not None and dom.isActive():
            vm['guest'] = guest_agent.guest_info(dom)
    return vms


def report(module, agent_query):
    """The ``vm_info`` result; ``agent_query(kind)`` asks the node agent (None when it does not run)."""
    params = module.params
    interval = validate.sample_interval(DEFAULT_SAMPLE_INTERVAL if params['sample_interval'] is None
                                        else params['sample_interval'])
    result = _from_agent(params, agent_query)
    if result is None or params.get('guest_info'):
        libvirt_conn.require_libvirt(module)
    if result is None:
        with libvirt_conn.connect(params['uri']) as conn:
            vms = gather(conn, params['name'], interval)
        result = {'changed': False, 'vms': vms, 'sample_interval': interval, 'source': 'libvirt'}
    if params.get('guest_info'):
        # Agent calls need a read-write connection, as every libvirt call that reaches into the guest.
        with libvirt_conn.connect(params['uri']) as conn:
            add_guest_info(conn, result['vms'])
    return result
