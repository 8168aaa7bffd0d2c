# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``vm`` module's work: bring one VM to the state and spec asked for.

:func:`converge` takes the module's options, :func:`run` does it on one
libvirt connection: create, restore or start the VM and apply what changed
(``running``/``paused``), live-migrate it (``migrate_to``), or stop, save
or remove it. Each step is a :class:`lifecycle.Lifecycle` operation, so
check mode records what would be done and hooks run as in VDSM.
"""

from __future__ import annotations

import os
import uuid

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.host import capabilities as host_caps
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import cloud_init
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.lookup import is_active, lookup

STATES = ('running', 'paused', 'shutdown', 'destroyed', 'absent', 'saved')


def recommended_domain_type(caps_xml):
    """kvm when this host can run it, else qemu (software emulation)."""
    caps = host_caps.parse_capabilities(caps_xml)
    flags = host_caps.read_cpuinfo()['flags']
    return host_caps.virtualization_info(flags, host_caps.caps_domain_types(caps))['recommended_domain_type']


def vm_view(dom, uri, name, records_dir=vm_records.RECORDS_DIR, vm_uuid=None):
    """The ``vm`` return value: status in VDSM's words, and why it went down when it is down."""
    if dom is None:
        return {'name': name, 'uuid': vm_uuid, 'status': vm_stats.DOWN, 'pause_reason': None, 'pause_code': None,
                'persistent': False, 'host': uri, 'exit': vm_stats.exit_info(vm_uuid, records_dir=records_dir)}
    try:
        view = vm_stats.domain_status(dom)
    except libvirt_conn.LibvirtError:
        return vm_view(None, uri, name, records_dir, dom.UUIDString())
    view.update(name=dom.name(), uuid=dom.UUIDString(), host=uri, exit=None)
    if view['status'] == vm_stats.DOWN:
        state, reason = dom.state()
        view['exit'] = vm_stats.exit_info(view['uuid'], state, reason, records_dir)
    return view


def refresh(conn, name):
    """The domain as it is now, or None when it is gone."""
    try:
        return lookup(conn, name)
    except VirtnodeError:
        return None


# ---------------------------------------------------------------- running / paused

def _xml(dom, *names):
    return dom.XMLDesc(constants.mask(*names))


def _create(conn, lc, params, spec):
    """Start a new VM from the spec (transient unless ``persistent``); a serial console is logged by default."""
    if spec['console_log'] is None:
        spec['console_log'] = True
    if spec.get('firmware') == 'uefi' or spec.get('tpm'):
        settle_uuid(lc, spec)
    spec['transient'] = not params['persistent']
    xml = domxml.build_xml(spec, domain_type=recommended_domain_type(conn.getCapabilities()))
    return lc.start_new(xml, bool(params['persistent']), params['state'] == 'paused')


def _start_defined(conn, lc, params, spec, dom, before, aliases):
    """A defined VM that is down: update its definition when the spec differs, then start it."""
    definition = _xml(dom, 'VIR_DOMAIN_XML_SECURE', 'VIR_DOMAIN_XML_INACTIVE')
    diffs = vm_spec.compare(spec, domxml.parse_live(definition), aliases)
    if diffs['restart'] or diffs['live']:
        if lc.act('update definition'):
            dom = conn.defineXML(domxml.updated_persistent_xml(spec, definition, before['domain_type']))
    lc.start_defined(dom, params['state'] == 'paused')
    if params['persistent'] is False and lc.act('undefine (make transient)'):
        dom.undefine()
    return dom


def _converge_definition(conn, lc, persistent, spec, dom, before, aliases):
    """The libvirt definition of a running VM: dropped, updated or created as ``persistent`` asks."""
    if dom.isPersistent():
        if persistent is False:
            if lc.act('undefine (make transient)'):
                dom.undefine()
            return
        definition = _xml(dom, 'VIR_DOMAIN_XML_SECURE', 'VIR_DOMAIN_XML_INACTIVE')
        config_diffs = vm_spec.compare(spec, domxml.parse_live(definition), aliases)
        if (config_diffs['restart'] or config_diffs['live']) and lc.act('update definition'):
            conn.defineXML(domxml.updated_persistent_xml(spec, definition, before['domain_type']))
    elif persistent:
        if lc.act('define'):
            conn.defineXML(domxml.updated_persistent_xml(spec, _xml(dom, 'VIR_DOMAIN_XML_SECURE'), before['domain_type']))


def _pause_or_resume(lc, dom, paused):
    state = dom.state()[0]
    if paused and state in (vm_stats.RUNNING, vm_stats.BLOCKED):
        lc.pause(dom)
    elif not paused and state in (vm_stats.PAUSED, vm_stats.PMSUSPENDED):
        lc.resume(dom)


def check_nwfilters(conn, spec):
    """Refuse a NIC filter libvirt does not know before anything is defined or started (libvirt itself finds out
    only when the VM starts)."""
    for index, nic in enumerate(spec['nics'] or ()):
        if nic.get('filter'):
            try:
                conn.nwfilterLookupByName(nic['filter']['name'])
            except libvirt_conn.LibvirtError as exc:
                raise VirtnodeError('nics[%d] filter %s is not a network filter of this host (virsh nwfilter-list): %s'
                                    % (index, nic['filter']['name'], libvirt_conn.error_text(exc)),
                                    {'field': 'nics[%d]' % index}) from exc


def settle_uuid(lc, spec):
    """The UUID of a VM libvirt does not know, for what is named after it before the domain exists (its seed,
    its UEFI variables, its TPM state): the one asked for; else the one this VM had when it went down here (its
    saved image, or its exit record: a transient VM started again is the same VM); else a new one. Set in ``spec``."""
    if not spec['uuid']:
        saved_uuid, record = lc.find_saved(None)
        if not record:
            saved_uuid = next((rec_uuid for rec_uuid, exit_record in vm_records.all_records('exit', lc.records_dir)
                               if exit_record.get('name') == spec['name']), None)
        spec['uuid'] = saved_uuid or str(uuid.uuid4())
    return spec['uuid']


def write_cloud_init_seed(lc, spec, dom):
    """Write the VM's cloud-init seed when ``cloud_init`` is given (a new VM is given its UUID now: the seed's
    instance-id and path are named after it); sets ``spec['cloud_init_seed']``. Returns whether it changed."""
    if spec['cloud_init'] is None:
        return False
    vm_uuid = dom.UUIDString() if dom is not None else settle_uuid(lc, spec)
    files = cloud_init.normalize(spec['cloud_init'], vm_uuid, spec['name'])
    path = cloud_init.seed_path(vm_uuid, lc.seed_dir)
    changed, info = cloud_init.ensure_seed(path, files, check_mode=lc.check_mode)
    if changed:
        differs = ': %s' % ', '.join(info['differs']) if info['differs'] else ''
        lc.actions.append('write cloud-init seed (%s%s)' % (info['action'], differs))
    spec['cloud_init_seed'] = path
    return changed and info['action'] != 'mode'


def ensure_running(conn, lc, params, spec, dom, result):
    """state=running/paused: create, restore, start or resume, then apply live changes."""
    check_nwfilters(conn, spec)
    seed_rewritten = write_cloud_init_seed(lc, spec, dom)
    paused = params['state'] == 'paused'
    before = domxml.parse_live(_xml(dom, 'VIR_DOMAIN_XML_SECURE')) if dom is not None else None
    aliases = domxml.machine_aliases(conn.getCapabilities())
    result['diff'] = dict(zip(('before', 'after'), vm_spec.diff_view(spec, before)))
    if dom is None:
        rec_uuid, record = lc.find_saved(spec['uuid'])
        if not record:
            dom = _create(conn, lc, params, spec)
            if dom is not None:
                # With memory hotplug, NUMA cells give the boot memory: the rest of max_memory is plugged now.
                plug = vm_spec.memory_to_plug(spec, domxml.parse_live(_xml(dom, 'VIR_DOMAIN_XML_SECURE')))
                if plug:
                    lc.apply_live(dom, [{'action': 'plug_memory', 'field': 'max_memory', 'kib': plug}], spec)
            return dom
        dom = lc.restore(rec_uuid, record, paused)
        if dom is None:
            return None
        before = domxml.parse_live(_xml(dom, 'VIR_DOMAIN_XML_SECURE'))
        result['diff']['before'] = vm_spec.diff_view(spec, before)[0]
    if not is_active(dom):
        return _start_defined(conn, lc, params, spec, dom, before, aliases)
    diffs = vm_spec.compare(spec, before, aliases)
    result['pending_restart'] = diffs['restart']
    if seed_rewritten and 'cloud_init' not in diffs['restart']:
        result['pending_restart'].append('cloud_init')  # QEMU keeps the image it opened; the guest reads it at boot
    lc.apply_live(dom, diffs['live'], spec)
    _converge_definition(conn, lc, params['persistent'], spec, dom, before, aliases)
    _pause_or_resume(lc, dom, paused)
    return dom


# ---------------------------------------------------------------- migration

def migration_options(params):
    """The module's migration options as :meth:`Lifecycle.migrate` takes them."""
    options = dict(params['migrate_options'] or {})
    options['unsafe'] = params['migrate_unsafe']
    options['migrate_uri'] = options.pop('data_uri', None)
    # The transport says how the memory travels too, whatever URI names the destination.
    options['tls'] = params['migrate_transport'] == 'tls'
    return options


def migrate(conn, lc, params, dom, result):
    """Live-migrate the VM to ``migrate_to``/``migrate_uri``; nothing to do when it already runs there."""
    dest_uri = params['migrate_uri'] or vm_lifecycle.default_migration_uri(params['migrate_to'], params['migrate_transport'])
    options = migration_options(params)
    result['migration'] = {'destination_uri': dest_uri, 'duration_s': 0, 'migrate_uri': options['migrate_uri']}
    with libvirt_conn.connect(dest_uri) as dconn:
        remote = lookup(dconn, params['name'])
        remote_active = is_active(remote)
        if dom is None or not is_active(dom):
            if remote_active:
                result['vm'] = vm_view(remote, dest_uri, params['name'])
                return
            raise VirtnodeError('VM %s runs neither here nor on %s' % (params['name'], dest_uri))
        if remote_active:
            raise VirtnodeError('a VM named %s already runs on %s' % (params['name'], dest_uri))
        vm_uuid, dom_xml = dom.UUIDString(), dom.XMLDesc(0)
        live = domxml.parse_live(dom_xml)
        block_disks = [d['path'] for d in live['disks'] if vm_volumes.is_block_volume_path(d['path'])]
        if live['cloud_init_seed']:
            # The seed is a file of this host: the destination's QEMU could not open it.
            lc.eject(dom, live['cloud_init_seed_drive'], 'cloud-init seed (it stays on this host)')
        try:
            result['migration'] = lc.migrate(dom, dest_uri, options)
        except VirtnodeError as err:
            if block_disks:
                # The destination's QEMU opens the volumes' links there: VDSM prepares the images first, and so must
                # the playbook.
                raise VirtnodeError('%s (disks on block storage domains must be prepared on the destination first: '
                                    'virtnode.kvm.volume state=prepared there, for each disk\'s top volume)' % err.message,
                                    err.details) from err
            raise
        if not lc.check_mode:
            remote = lookup(dconn, params['name'])
            result['vm'] = vm_view(remote, dest_uri, params['name'])
            result['migration']['stats'] = vm_stats.completed_migration(
                remote, constants.value('VIR_DOMAIN_JOB_STATS_COMPLETED')) if remote is not None else None
    # As VDSM tears the images down on the source once the VM runs on the destination.
    lc.release_block_volumes(vm_uuid, dom_xml)


# ---------------------------------------------------------------- stopped, saved, absent

def save(lc, params, spec, dom, vm_uuid, active):
    """state=saved: hibernate a running VM to a file or a storage volume."""
    if active and params['saved_volume']:
        # Imported here: it pulls in the storage layer, which other states never need.
        from ansible_collections.virtnode.kvm.plugins.module_utils.vm import snapshot as vm_snapshot  # pylint: disable=import-outside-toplevel
        target = vm_snapshot.memory_volume(params['saved_volume'], vm_snapshot.memory_needed(dom.XMLDesc(0)),
                                           'saved_volume')
        lc.save(dom, target['path'], volume=dict((k, target[k]) for k in vm_snapshot.IDS))
        if not lc.check_mode:
            vm_snapshot.restore_volume_size(target)
    elif active:
        lc.save(dom, params['save_path'] or os.path.join(vm_records.record_dir(vm_uuid), 'saved.img'))
    elif not lc.find_saved(vm_uuid)[1]:
        raise VirtnodeError('VM %s is not running and has no saved image' % spec['name'])


def stop_or_remove(lc, params, spec, dom, vm_uuid):
    """state=shutdown/destroyed/absent/saved of a VM libvirt knows."""
    state = params['state']
    active = is_active(dom)
    persistent = bool(dom.isPersistent())
    dom_xml = dom.XMLDesc(0)
    if state == 'shutdown' and active:
        lc.shutdown(dom, params['timeout'], params['force'], params.get('shutdown_mode') or 'auto')
    elif state == 'destroyed' and active:
        lc.destroy(dom)
    elif state == 'absent':
        if active:
            lc.destroy(dom)
        if persistent:
            lc.undefine(dom)
    # A VM that is gone (removed, or transient and stopped) gives its block volumes back.
    if state == 'absent' or (state in ('shutdown', 'destroyed') and active and not persistent):
        lc.release_block_volumes(vm_uuid, dom_xml)
    if state == 'absent':
        lc.forget(vm_uuid)
    elif state == 'saved':
        save(lc, params, spec, dom, vm_uuid, active)


def settle_unknown(lc, params, spec, vm_uuid):
    """A VM libvirt does not know: only a saved image or records of it can be left."""
    state = params['state']
    if state == 'saved' and not lc.find_saved(vm_uuid)[1]:
        raise VirtnodeError('VM %s does not exist and has no saved image' % spec['name'])
    if state == 'absent':
        rec_uuid = vm_uuid or lc.find_saved()[0]
        for candidate in [rec_uuid] + [u for u, r in vm_records.all_records('exit') if r.get('name') == spec['name']]:
            lc.forget(candidate)


# ---------------------------------------------------------------- the module's run

def run(module, conn, spec):
    """Bring the VM of ``spec`` to ``module.params['state']`` on ``conn``; returns the module result."""
    params = module.params
    state = params['state']
    lc = vm_lifecycle.Lifecycle(conn, spec['name'], hooks_dir=params['hooks_dir'], check_mode=module.check_mode,
                                timeout=params['timeout'])
    result = {'changed': False, 'pending_restart': [], 'actions': lc.actions, 'hooks': lc.hook_results}
    dom = lookup(conn, spec['name'], spec['uuid'])
    vm_uuid = dom.UUIDString() if dom is not None else spec['uuid']
    # Hooks see the custom properties asked for, else the ones the VM already has (those that are
    # safe as environment variables: the metadata may have been edited outside this module).
    env = spec['custom_properties'] or {}
    if dom is not None and not env:
        live = domxml.parse_live(dom.XMLDesc(0))
        env = live['custom_properties']
        if live['refused_custom_properties']:
            lc.warnings.append('custom properties of VM %s not given to hooks (not usable as environment variables): %s'
                               % (spec['name'], ', '.join(sorted(repr(n) for n in live['refused_custom_properties']))))
    lc.env = env
    graphics = spec.get('graphics') or {}
    lc.secrets = [graphics['password']] if graphics.get('password') else []
    uri = params['uri']
    before_status = vm_view(dom, uri, spec['name'])['status'] if dom is not None else 'absent'
    try:
        if params['migrate_to'] or params['migrate_uri']:
            migrate(conn, lc, params, dom, result)
        elif state in ('running', 'paused'):
            dom = ensure_running(conn, lc, params, spec, dom, result) or dom
        elif dom is None:
            settle_unknown(lc, params, spec, vm_uuid)
        else:
            stop_or_remove(lc, params, spec, dom, vm_uuid)
    finally:
        result['warnings'] = lc.warnings
    if 'vm' not in result:
        current = refresh(conn, spec['name'])
        result['vm'] = vm_view(current, uri, spec['name'], vm_uuid=(current.UUIDString() if current else vm_uuid))
    result['changed'] = bool(lc.actions)
    if state not in ('running', 'paused') or params['migrate_to']:
        target = {'absent': 'absent', 'running': vm_stats.UP}.get(state, vm_stats.DOWN)
        result['diff'] = {'before': {'status': before_status},
                          'after': {'status': target if lc.actions else before_status}}
    return result


def converge(module):
    """The ``vm`` module: validate its options, then :func:`run` on its libvirt connection."""
    libvirt_conn.require_libvirt(module)
    return converge_on(module, None)


def converge_on(module, conn):
    """:func:`converge` on ``conn``, an open libvirt connection (None: one opened for this VM)."""
    params = module.params
    if params['migrate_to'] and params['state'] != 'running':
        raise VirtnodeError('migrate_to needs state=running', {'field': 'migrate_to'})
    spec = vm_volumes.normalize_on_host(params, check_mode=module.check_mode)
    # Hooks run as root with the custom properties in their environment: no PATH, LD_PRELOAD, ...
    hooks_utils.check_env(spec['custom_properties'])
    if conn is None:
        with libvirt_conn.connect(params['uri']) as own:
            result = run(module, own, spec)
    else:
        result = run(module, conn, spec)
    for warning in result.pop('warnings', []):
        module.warn(warning)
    if not module._diff:  # pylint: disable=protected-access
        result.pop('diff', None)
    return result
