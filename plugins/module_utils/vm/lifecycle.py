# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM lifecycle on one libvirt connection: start, pause, shut down, save, migrate, live changes.

Every operation returns only when the VM reached the state it asked for
(or raises VirtnodeError on timeout), runs VDSM's hook points through
:mod:`hooks`, and writes the exit record :mod:`records` keeps and :mod:`stats` reads back.
``check_mode`` turns every change into a recorded intention.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import hooks as hooks_utils
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import cloud_init
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import records as vm_records
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import stats as vm_stats
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.lookup import error_code, is_no_domain

# Lifecycle.hook's ``domxml`` argument hides the module's name there.
_graphics_passwords = domxml.graphics_passwords

POLL = 0.2
MIGRATION_TRANSPORTS = ('tcp', 'tls')
# shutdown_mode -> virDomainShutdownFlags flags; with none libvirt tries the agent when it is connected, then ACPI.
SHUTDOWN_FLAGS = {'auto': (), 'acpi': ('VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN',),
                  'agent': ('VIR_DOMAIN_SHUTDOWN_GUEST_AGENT',)}
SHUTDOWN_MODES = tuple(SHUTDOWN_FLAGS)
# Where libvirt's swtpm keeps each VM's TPM state, by UUID.
SWTPM_DIR = '/var/lib/libvirt/swtpm'
SHUTDOWN_NEEDS = {'auto': 'the shutdown request (ACPI or agent)', 'acpi': 'ACPI power button events',
                  'agent': 'the guest agent shutdown'}


def default_migration_uri(host, transport='tls'):
    """libvirt URI of ``host``'s migration listener: plain TCP (16509) or TLS with certificates (16514)."""
    if transport not in MIGRATION_TRANSPORTS:
        raise VirtnodeError('unknown migration transport %r (known: %s)' % (transport, ', '.join(MIGRATION_TRANSPORTS)))
    return 'qemu+%s://%s/system' % (transport, host)


def migration_flags(persistent, options):
    """virDomainMigrateToURI3 flags: live, peer to peer, TLS for the data stream when ``options['tls']``,
    the definition moving with a persistent VM."""
    names = ['VIR_MIGRATE_LIVE', 'VIR_MIGRATE_PEER2PEER', 'VIR_MIGRATE_ABORT_ON_ERROR']
    if options.get('tls'):
        # QEMU's own stream (the guest's memory) over TLS with the hosts' certificates; without it only
        # libvirtd's control connection is encrypted and the memory crosses the network in clear.
        names.append('VIR_MIGRATE_TLS')
    if persistent:
        names += ['VIR_MIGRATE_PERSIST_DEST', 'VIR_MIGRATE_UNDEFINE_SOURCE']
    for option, name in (('unsafe', 'VIR_MIGRATE_UNSAFE'), ('auto_converge', 'VIR_MIGRATE_AUTO_CONVERGE'),
                         ('compressed', 'VIR_MIGRATE_COMPRESSED')):
        if options.get(option):
            names.append(name)
    return constants.mask(*names)


def migration_params(options):
    """virDomainMigrateToURI3 typed parameters: bandwidth and the URI of the data stream."""
    params = {}
    if options.get('bandwidth'):
        params[constants.value('VIR_MIGRATE_PARAM_BANDWIDTH')] = int(options['bandwidth'])
    if options.get('migrate_uri'):
        params[constants.value('VIR_MIGRATE_PARAM_URI')] = options['migrate_uri']
    return params


def run_vm_hook(hooks_dir, point, domxml_text, vm_name, vm_uuid=None, env=None, secrets=()):
    """Run the VM hook point ``point`` as VDSM does; return the :class:`hooks.HookResult`.

    The domain XML is in the file named by ``$_hook_domxml``; the VM's custom
    properties (``env``), ``vmId`` and ``vmName`` are in the environment.
    Console passwords of the XML and ``secrets`` never appear in the output
    kept. The one way VM hooks run: :meth:`Lifecycle.hook` and the node
    agent's ``after_vm_destroy`` (``agent/hooks.py``) both call it.
    """
    hook_env = dict(env or {})
    if vm_uuid:
        hook_env['vmId'] = vm_uuid
    hook_env['vmName'] = vm_name
    secrets = list(secrets) + _graphics_passwords(domxml_text)
    return hooks_utils.run_hook_point(hooks_dir, point, data=domxml_text, data_env='_hook_domxml', env=hook_env,
                                      secrets=secrets)


def _filter_text(nwfilter):
    if nwfilter is None:
        return 'as is'
    return nwfilter['name'] if nwfilter else 'none'


def start_error(name, xml, exc):
    """The error for a start libvirt refused. A VM lease held elsewhere (libvirt's sanlock lock manager refuses it
    while the lease's holder lives) is told apart, with ``lease_busy``, for callers that wait until it is free."""
    text = libvirt_conn.error_text(exc)
    lease = domxml.parse_live(xml).get('lease') if error_code(exc) == constants.value('VIR_ERR_RESOURCE_BUSY') else None
    if lease:
        return VirtnodeError('cannot start VM %s: its lease %s (storage domain %s) is held by another host, where the '
                             'VM runs or ran until sanlock declares that host dead: %s'
                             % (name, lease['lease_id'], lease['sd_id'], text),
                             {'lease_busy': True, 'libvirt_error': text})
    return VirtnodeError('cannot start VM %s: %s' % (name, text), {'libvirt_error': text})


class Lifecycle(object):
    """Operations on one VM; ``actions`` records what was (or in check mode would be) done."""

    def __init__(self, conn, name, hooks_dir=hooks_utils.DEFAULT_HOOKS_DIR, check_mode=False, timeout=120,
                 records_dir=vm_records.RECORDS_DIR, env=None, sleep=time.sleep, clock=time.monotonic,
                 seed_dir=cloud_init.SEED_DIR, nvram_dir=vm_spec.NVRAM_DIR, swtpm_dir=SWTPM_DIR):
        self.conn = conn
        self.seed_dir = seed_dir
        self.nvram_dir = nvram_dir
        self.swtpm_dir = swtpm_dir
        self.name = name
        self.hooks_dir = hooks_dir
        self.check_mode = check_mode
        self.timeout = timeout
        self.records_dir = records_dir
        self.env = dict(env or {})
        # Secrets hooks may print (the console password asked for): kept out of the results.
        self.secrets = []
        self.actions = []
        self.warnings = []
        self.hook_results = []
        self.sleep = sleep
        self.clock = clock

    # ---------------------------------------------------------------- helpers

    def act(self, action):
        self.actions.append(action)
        return not self.check_mode

    def hook(self, point, domxml='', vm_uuid=None, fail=True):
        # The domain XML hooks get can hold console passwords (VIR_DOMAIN_XML_SECURE): never returned.
        result = run_vm_hook(self.hooks_dir, point, domxml, self.name, vm_uuid, self.env, self.secrets)
        if result.scripts:
            self.hook_results.append(result.to_dict())
        if result.failed:
            if fail:
                raise VirtnodeError(result.message(), {'hook': result.to_dict()})
            self.warnings.append(result.message())
        return result.data

    def wait(self, dom, done, what, timeout=None):
        """Poll until ``done(state, reason)``; raise on timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = self.clock() + timeout
        while True:
            try:
                state, reason = dom.state()
            except libvirt_conn.LibvirtError as exc:
                if is_no_domain(exc):
                    state, reason = vm_stats.SHUTOFF, 0
                else:
                    raise
            if done(state, reason):
                return state, reason
            if self.clock() >= deadline:
                raise VirtnodeError('%s: VM %s did not %s within %gs (status %s)'
                                    % (what, self.name, what, timeout, vm_stats.vdsm_status(state, reason)),
                                    {'status': vm_stats.vdsm_status(state, reason)})
            self.sleep(POLL)

    def write_exit(self, vm_uuid, code, message=None):
        if not self.check_mode and vm_uuid:
            vm_records.write_record(vm_uuid, 'exit', vm_stats.exit_record(code, message, name=self.name), self.records_dir)

    def _stopping(self, vm_uuid, xml, operation):
        """Say, before stopping this run, that this module runs after_vm_destroy for it (records.py)."""
        vm_records.mark_stopping(vm_uuid, vm_records.domain_run_id(xml), operation, self.records_dir)

    # ---------------------------------------------------------------- start

    def start_new(self, xml, persistent, paused=False):
        """Create (transient) or define and start (persistent) a domain from ``xml``; return it."""
        if not self.act('start'):
            return None
        xml = self.hook('before_vm_start', xml)
        flags = constants.value('VIR_DOMAIN_START_PAUSED') if paused else 0
        if persistent:
            try:
                dom = self.conn.defineXML(xml)
            except libvirt_conn.LibvirtError as exc:
                raise start_error(self.name, xml, exc) from exc
            try:
                dom.createWithFlags(flags)
            except libvirt_conn.LibvirtError as exc:
                # A VM that could not start leaves no definition behind: the host is as before the call.
                try:
                    dom.undefineFlags(constants.mask('VIR_DOMAIN_UNDEFINE_NVRAM'))
                except libvirt_conn.LibvirtError:
                    pass
                raise start_error(self.name, xml, exc) from exc
        else:
            try:
                dom = self.conn.createXML(xml, flags)
            except libvirt_conn.LibvirtError as exc:
                raise start_error(self.name, xml, exc) from exc
        vm_records.remove_record(dom.UUIDString(), 'exit', self.records_dir)
        vm_records.clear_stopping(dom.UUIDString(), self.records_dir)
        self._after_start(dom, paused)
        return dom

    def start_defined(self, dom, paused=False):
        if not self.act('start'):
            return
        xml = dom.XMLDesc(constants.value('VIR_DOMAIN_XML_SECURE'))
        new_xml = self.hook('before_vm_start', xml, dom.UUIDString())
        if new_xml != xml:
            dom = self.conn.defineXML(new_xml)
        try:
            dom.createWithFlags(constants.value('VIR_DOMAIN_START_PAUSED') if paused else 0)
        except libvirt_conn.LibvirtError as exc:
            raise start_error(self.name, new_xml, exc) from exc
        vm_records.remove_record(dom.UUIDString(), 'exit', self.records_dir)
        vm_records.clear_stopping(dom.UUIDString(), self.records_dir)
        self._after_start(dom, paused)

    def _after_start(self, dom, paused):
        want = (vm_stats.PAUSED,) if paused else (vm_stats.RUNNING, vm_stats.BLOCKED)
        self.wait(dom, lambda s, r: s in want or s in (vm_stats.SHUTOFF, vm_stats.CRASHED), 'start')
        state, reason = dom.state()
        if state in (vm_stats.SHUTOFF, vm_stats.CRASHED):
            raise VirtnodeError('VM %s went down right after start (%s)' % (self.name, vm_stats._name(vm_stats.SHUTOFF_REASONS, reason)))
        self.hook('after_vm_start', dom.XMLDesc(0), dom.UUIDString(), fail=False)

    # ---------------------------------------------------------------- saved images

    def find_saved(self, vm_uuid=None):
        """``(uuid, record)`` of a saved image of this VM, or (None, None)."""
        for rec_uuid, record in vm_records.all_records('saved', self.records_dir):
            if (vm_uuid and rec_uuid == vm_uuid) or (not vm_uuid and record.get('name') == self.name):
                if os.path.exists(record.get('path', '')):
                    return rec_uuid, record
        return None, None

    def restore(self, rec_uuid, record, paused=False):
        if not self.act('restore'):
            return None
        path = record['path']
        try:
            xml = self.conn.saveImageGetXMLDesc(path, constants.value('VIR_DOMAIN_XML_SECURE'))
        except libvirt_conn.LibvirtError as exc:
            raise VirtnodeError('cannot read saved image %s: %s' % (path, libvirt_conn.error_text(exc)))
        new_xml = self.hook('before_vm_dehibernate', xml, rec_uuid)
        flags = constants.value('VIR_DOMAIN_SAVE_PAUSED') if paused and hasattr(libvirt_conn.libvirt, 'VIR_DOMAIN_SAVE_PAUSED') else 0
        try:
            self.conn.restoreFlags(path, new_xml if new_xml != xml else None, flags)
        except libvirt_conn.LibvirtError as exc:
            raise VirtnodeError('cannot restore VM %s from %s: %s' % (self.name, path, libvirt_conn.error_text(exc)))
        dom = self.conn.lookupByUUIDString(rec_uuid)
        want = (vm_stats.PAUSED,) if paused else (vm_stats.RUNNING, vm_stats.BLOCKED)
        self.wait(dom, lambda s, r: s in want, 'restore')
        vm_records.remove_record(rec_uuid, 'saved', self.records_dir)
        vm_records.remove_record(rec_uuid, 'exit', self.records_dir)
        vm_records.clear_stopping(rec_uuid, self.records_dir)
        if record.get('owned', True):
            try:
                os.unlink(path)
            except OSError:
                pass
        self.hook('after_vm_dehibernate', dom.XMLDesc(0), rec_uuid, fail=False)
        return dom

    def save(self, dom, path, volume=None):
        """Hibernate to ``path``; ``volume`` ({domain_id, image_id, volume_id}) is recorded when it is a storage volume."""
        vm_uuid = dom.UUIDString()
        if not self.act('save'):
            return
        self.hook('before_vm_hibernate', dom.XMLDesc(constants.value('VIR_DOMAIN_XML_SECURE')), vm_uuid)
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as err:
            raise VirtnodeError('cannot create %s: %s' % (directory, err.strerror or err))
        persistent = bool(dom.isPersistent())
        try:
            dom.save(path)
        except libvirt_conn.LibvirtError as exc:
            raise VirtnodeError('cannot save VM %s to %s: %s' % (self.name, path, libvirt_conn.error_text(exc)))
        record = {'name': self.name, 'path': path, 'persistent': persistent, 'time': round(time.time(), 3),
                  'owned': volume is None and path.startswith(vm_records.record_dir(vm_uuid, self.records_dir))}
        if volume is not None:
            record['volume'] = dict(volume)
        vm_records.write_record(vm_uuid, 'saved', record, self.records_dir)
        self.write_exit(vm_uuid, vm_stats.EXIT_SAVE_STATE_SUCCEEDED)
        self.hook('after_vm_hibernate', '', vm_uuid, fail=False)

    # ---------------------------------------------------------------- pause / resume

    def pause(self, dom):
        if not self.act('pause'):
            return
        self.hook('before_vm_pause', dom.XMLDesc(0), dom.UUIDString())
        dom.suspend()
        self.wait(dom, lambda s, r: s == vm_stats.PAUSED, 'pause')
        self.hook('after_vm_pause', dom.XMLDesc(0), dom.UUIDString(), fail=False)

    def resume(self, dom):
        if not self.act('resume'):
            return
        self.hook('before_vm_cont', dom.XMLDesc(0), dom.UUIDString())
        dom.resume()
        self.wait(dom, lambda s, r: s in (vm_stats.RUNNING, vm_stats.BLOCKED), 'resume')
        self.hook('after_vm_cont', dom.XMLDesc(0), dom.UUIDString(), fail=False)

    # ---------------------------------------------------------------- stop

    def destroy(self, dom, reason=vm_stats.EXIT_ADMIN_SHUTDOWN, message=None):
        vm_uuid = dom.UUIDString()
        if not self.act('destroy'):
            return
        xml = dom.XMLDesc(0)
        self.hook('before_vm_destroy', xml, vm_uuid)
        self._stopping(vm_uuid, xml, 'destroy')
        try:
            try:
                dom.destroy()
            except libvirt_conn.LibvirtError as exc:
                if not is_no_domain(exc):
                    raise
            self.wait(dom, lambda s, r: s in (vm_stats.SHUTOFF, vm_stats.CRASHED), 'stop')
        except (VirtnodeError, libvirt_conn.LibvirtError):
            # Still running: its stop, when it comes, is not this module's (the node agent runs the hook).
            vm_records.clear_stopping(vm_uuid, self.records_dir)
            raise
        self.write_exit(vm_uuid, reason, message)
        self.hook('after_vm_destroy', xml, vm_uuid, fail=False)

    def shutdown(self, dom, timeout, force, mode='auto'):
        """Ask the guest to power off: through its agent, ACPI, or (``auto``) the agent when it is connected
        and ACPI otherwise, as libvirt decides; after ``timeout`` seconds destroy when ``force``, else fail."""
        vm_uuid = dom.UUIDString()
        if not self.act('shutdown (%s)' % mode if mode != 'auto' else 'shutdown'):
            if force:
                self.actions.append('destroy (when the guest ignores the shutdown request)')
            return
        xml = dom.XMLDesc(0)
        self._stopping(vm_uuid, xml, 'shutdown')
        try:
            dom.shutdownFlags(constants.mask(*SHUTDOWN_FLAGS[mode]))
        except libvirt_conn.LibvirtError as exc:
            vm_records.clear_stopping(vm_uuid, self.records_dir)
            if mode != 'agent':
                raise
            # An agent that does not answer fails at once: say so rather than wait for the timeout.
            raise VirtnodeError('VM %s: the guest agent did not take the shutdown request (%s); use '
                                'shutdown_mode=acpi or auto' % (self.name, libvirt_conn.error_text(exc)),
                                {'mode': mode})
        try:
            self.wait(dom, lambda s, r: s in (vm_stats.SHUTOFF, vm_stats.CRASHED), 'shut down', timeout)
        except VirtnodeError as err:
            vm_records.clear_stopping(vm_uuid, self.records_dir)
            if not force:
                raise VirtnodeError('%s; the guest may not handle %s: set force=true to destroy it'
                                    % (err.message, SHUTDOWN_NEEDS[mode]), err.details)
            self.warnings.append('VM %s ignored the shutdown request for %gs and was destroyed' % (self.name, timeout))
            self.destroy(dom, vm_stats.EXIT_ADMIN_SHUTDOWN, 'Admin shut down (forced after %gs)' % timeout)
            return
        self.write_exit(vm_uuid, vm_stats.EXIT_ADMIN_SHUTDOWN)
        self.hook('after_vm_destroy', xml, vm_uuid, fail=False)

    def undefine(self, dom):
        if not self.act('undefine'):
            return
        flags = constants.mask('VIR_DOMAIN_UNDEFINE_MANAGED_SAVE', 'VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA',
                               'VIR_DOMAIN_UNDEFINE_NVRAM')
        dom.undefineFlags(flags)

    def release_block_volumes(self, vm_uuid, dom_xml):
        """Deactivate the block-presented volumes of a removed VM (VDSM tears a VM's images down
        with it), except those another VM on this host still uses. Returns their paths."""
        paths = [d['path'] for d in domxml.parse_live(dom_xml)['disks'] if vm_volumes.is_block_volume_path(d['path'])]
        if not paths:
            return []
        in_use = set()
        for other in self.conn.listAllDomains(0):
            if other.UUIDString() == vm_uuid:
                continue  # still listed in check mode
            in_use.update(d['path'] for d in domxml.parse_live(other.XMLDesc(0))['disks'])
        released = []
        for path in paths:
            if path in in_use or not os.path.lexists(path):
                continue
            released.append(path)
            if self.act('deactivate block volume %s' % path):
                vm_volumes.release_block_volume(path)
        return released

    def _forget_firmware_state(self, vm_uuid):
        """A transient VM's UEFI variables and TPM state, which libvirt keeps by its UUID after it stops (a
        persistent VM's go with its undefine)."""
        tpm_dir = os.path.join(self.swtpm_dir, vm_uuid)
        nvram = os.path.join(self.nvram_dir, os.path.basename(vm_spec.nvram_path(vm_uuid)))
        if os.path.exists(nvram) and self.act('remove UEFI variables'):
            os.unlink(nvram)
        if os.path.isdir(tpm_dir) and self.act('remove TPM state'):
            shutil.rmtree(tpm_dir)

    def forget(self, vm_uuid):
        """Drop every record of a VM (exit reason, saved image we own) and its cloud-init seed."""
        if not vm_uuid:
            return False
        if self.seed_dir and os.path.exists(cloud_init.seed_path(vm_uuid, self.seed_dir)):
            if self.act('remove cloud-init seed'):
                cloud_init.remove_seed(cloud_init.seed_path(vm_uuid, self.seed_dir))
        self._forget_firmware_state(vm_uuid)
        directory = vm_records.record_dir(vm_uuid, self.records_dir)
        if not os.path.isdir(directory):
            return False
        if not self.act('forget records'):
            return True
        saved = vm_records.read_record(vm_uuid, 'saved', self.records_dir)
        if saved and saved.get('owned') and os.path.exists(saved.get('path', '')):
            os.unlink(saved['path'])
        for name in os.listdir(directory):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        try:
            os.rmdir(directory)
        except OSError:
            pass
        return True

    # ---------------------------------------------------------------- live changes

    def apply_live(self, dom, actions, spec):
        """Apply compare()'s live actions to a running or paused domain."""
        live_flags = constants.value('VIR_DOMAIN_AFFECT_LIVE')
        for item in actions:
            kind = item['action']
            vm_uuid = dom.UUIDString()
            if kind == 'plug_memory':
                if self.act('plug a %d MiB DIMM' % (item['kib'] // 1024)):
                    # Into the definition too: it adds the DIMM's memory to the persistent VM's total.
                    flags = live_flags | (constants.value('VIR_DOMAIN_AFFECT_CONFIG') if dom.isPersistent() else 0)
                    dom.attachDeviceFlags(domxml.to_text(domxml.dimm_element(item['kib'])), flags)
            elif kind == 'set_memory':
                if self.act('set balloon target to %d KiB' % item['kib']):
                    dom.setMemoryFlags(item['kib'], live_flags)
            elif kind == 'attach_disk':
                disk = dict(item['disk'])
                if disk.get('target_auto'):
                    disk['target'] = None
                    vm_spec.assign_targets([disk], item['taken'])
                if disk['bus'] == 'scsi' and not domxml.parse_live(dom.XMLDesc(0))['scsi_controller'] and \
                        self.act('hotplug a virtio-scsi controller'):
                    # Else libvirt would add its default emulated controller for the disk.
                    dom.attachDeviceFlags(domxml.to_text(domxml.scsi_controller_element()), live_flags)
                if self.act('hotplug disk %s as %s' % (disk['path'], disk['target'])):
                    xml = domxml.to_text(domxml.disk_element(disk))
                    xml = self.hook('before_disk_hotplug', xml, vm_uuid)
                    dom.attachDeviceFlags(xml, live_flags)
                    self.hook('after_disk_hotplug', xml, vm_uuid, fail=False)
            elif kind == 'detach_disk':
                disk = item['disk']
                if self.act('hotunplug disk %s (%s)' % (disk['path'], disk['target'])):
                    xml = self._device_xml(dom, 'disk', lambda e: e.find('target') is not None
                                           and e.find('target').get('dev') == disk['target'])
                    self.hook('before_disk_hotunplug', xml, vm_uuid)
                    dom.detachDeviceFlags(xml, live_flags)
                    self._wait_device_gone(dom, 'disk', disk['target'])
                    self.hook('after_disk_hotunplug', xml, vm_uuid, fail=False)
            elif kind == 'attach_nic':
                nic = item['nic']
                if self.act('hotplug nic on %s %s' % (nic['source_type'], nic['source'])):
                    xml = domxml.to_text(domxml.nic_element(nic))
                    xml = self.hook('before_nic_hotplug', xml, vm_uuid)
                    dom.attachDeviceFlags(xml, live_flags)
                    self.hook('after_nic_hotplug', xml, vm_uuid, fail=False)
            elif kind == 'detach_nic':
                nic = item['nic']
                if self.act('hotunplug nic %s' % nic['mac']):
                    xml = self._device_xml(dom, 'interface', lambda e: e.find('mac') is not None
                                           and e.find('mac').get('address').lower() == nic['mac'])
                    self.hook('before_nic_hotunplug', xml, vm_uuid)
                    dom.detachDeviceFlags(xml, live_flags)
                    self._wait_device_gone(dom, 'interface', nic['mac'])
                    self.hook('after_nic_hotunplug', xml, vm_uuid, fail=False)
            elif kind == 'change_cd':
                if self.act('change cd to %s' % (item['path'] or 'empty')):
                    live = domxml.parse_live(dom.XMLDesc(0))
                    self._change_media(dom, item['path'], (live.get('cdrom_bus') or 'ide', live['cdrom_target']),
                                       live_flags)
            elif kind == 'set_ticket':
                graphics = item['graphics']
                if self.act('set %s ticket' % graphics['type']):
                    dom.updateDeviceFlags(domxml.to_text(domxml.graphics_element(graphics)),
                                          live_flags)
            elif kind == 'set_vcpus':
                if self.act('set vCPUs to %d' % item['count']):
                    dom.setVcpusFlags(item['count'], live_flags)
            elif kind == 'pin_vcpu':
                if self.act('pin vCPU %d to CPU(s) %s' % (item['vcpu'], ','.join(map(str, item['cpus'])))):
                    dom.pinVcpuFlags(item['vcpu'], self._cpumap(dom, item['cpus']), live_flags)
            elif kind == 'pin_emulator':
                if self.act('pin emulator threads to CPU(s) %s' % ','.join(map(str, item['cpus']))):
                    dom.pinEmulator(self._cpumap(dom, item['cpus']), live_flags)
            elif kind == 'set_iotune':
                if self.act('set I/O limits of disk %s' % item['target']):
                    dom.setBlockIoTune(item['target'], dict(item['iotune']), live_flags)
            elif kind == 'update_nic':
                nic = item['nic']
                if self.act('update nic %s (%s %s, link %s, filter %s)'
                            % (item['mac'], nic['source_type'], nic['source'], nic.get('link_state') or 'as is',
                               _filter_text(nic.get('filter')))):
                    dom.updateDeviceFlags(self._updated_nic_xml(dom, item['mac'], nic), live_flags)
            elif kind == 'set_metadata':
                self.act('update custom properties')
        if not self.check_mode and any(item['action'] in ('set_memory', 'set_metadata') for item in actions):
            self.set_metadata(dom, spec, live_flags)

    def set_metadata(self, dom, spec, flags):
        """Store the balloon target, machine and custom properties (the spec's, else the domain's own)."""
        live = domxml.parse_live(dom.XMLDesc(0))
        merged = {'memory': spec['memory'] if spec['memory'] is not None else live['balloon_target'],
                  'machine': spec['machine'] or live['requested_machine'],
                  'custom_properties': (spec['custom_properties'] if spec['custom_properties'] is not None
                                        else live['custom_properties'])}
        meta = domxml.to_text(domxml.metadata_element(merged, namespaced=False))
        dom.setMetadata(constants.value('VIR_DOMAIN_METADATA_ELEMENT'), meta, domxml.METADATA_PREFIX, domxml.METADATA_NS, flags)

    @staticmethod
    def _change_media(dom, path, drive, flags):
        """Put ``path`` (None: nothing) into the CD-ROM ``drive`` (bus, target), forced as a guest lock is."""
        elem = domxml.cdrom_element(path, None, drive)
        dom.updateDeviceFlags(domxml.to_text(elem), flags | constants.value('VIR_DOMAIN_DEVICE_MODIFY_FORCE'))

    def eject(self, dom, drive, what):
        """Empty the running VM's CD-ROM ``drive`` (bus, target)."""
        if self.act('eject %s from %s' % (what, drive[1])):
            self._change_media(dom, None, drive, constants.value('VIR_DOMAIN_AFFECT_LIVE'))

    @staticmethod
    def _cpumap(dom, cpus):
        """libvirt's map of the host's CPUs with ``cpus`` set."""
        count = dom.connect().getCPUMap()[0]
        return tuple(cpu in cpus for cpu in range(count))

    def _updated_nic_xml(self, dom, mac, nic):
        """The running NIC's own element (model, addresses, target kept) with the spec's source and link state."""
        root = domxml.parse_xml(self._device_xml(dom, 'interface', lambda e: e.find('mac') is not None
                                                 and e.find('mac').get('address').lower() == mac))
        root.set('type', nic['source_type'])
        source = root.find('source')
        for attr in list(source.attrib):
            del source.attrib[attr]
        source.set(nic['source_type'], nic['source'])
        if nic.get('link_state'):
            link = root.find('link')
            if link is None:
                link = domxml.etree.SubElement(root, 'link')
            link.set('state', nic['link_state'])
        if nic.get('filter') is not None:
            for old in root.findall('filterref'):
                root.remove(old)
            if nic['filter']:
                root.append(domxml.filterref_element(nic['filter']))
        return domxml.to_text(root)

    def _device_xml(self, dom, tag, match):
        root = domxml.parse_xml(dom.XMLDesc(0))
        for elem in root.findall('devices/%s' % tag):
            if match(elem):
                return domxml.to_text(elem)
        raise VirtnodeError('device not found in VM %s' % self.name)

    def _wait_device_gone(self, dom, tag, ident):
        deadline = self.clock() + min(self.timeout, 30)
        while self.clock() < deadline:
            live = domxml.parse_live(dom.XMLDesc(0))
            items = live['disks'] if tag == 'disk' else live['nics']
            key = 'target' if tag == 'disk' else 'mac'
            if not any(i[key] == ident for i in items):
                return
            self.sleep(POLL)
        raise VirtnodeError('VM %s did not release %s %s within %ds (does the guest handle hot-unplug?)'
                            % (self.name, tag, ident, min(self.timeout, 30)))

    # ---------------------------------------------------------------- migration

    def migrate(self, dom, dest_uri, options):
        """Live-migrate ``dom`` to ``dest_uri`` (peer to peer); returns the migration result dict."""
        vm_uuid = dom.UUIDString()
        result = {'destination_uri': dest_uri, 'duration_s': None, 'migrate_uri': options.get('migrate_uri')}
        if not self.act('migrate to %s' % dest_uri):
            return result
        flags = migration_flags(bool(dom.isPersistent()), options)
        params = migration_params(options)
        self.hook('before_vm_migrate_source', dom.XMLDesc(constants.value('VIR_DOMAIN_XML_SECURE')), vm_uuid)
        outcome = {}

        def run():
            try:
                dom.migrateToURI3(dest_uri, params, flags)
            except Exception as exc:  # pylint: disable=broad-except
                outcome['error'] = exc

        start = self.clock()
        worker = threading.Thread(target=run, name='virtnode-migrate')
        worker.daemon = True
        worker.start()
        timeout = options.get('timeout') or 300
        aborted, result['progress'] = self._watch_migration(dom, worker, options, start, timeout)
        result['duration_s'] = round(self.clock() - start, 2)
        if aborted:
            raise VirtnodeError('migration of %s to %s did not finish within %gs and was aborted; the VM keeps running here'
                                % (self.name, dest_uri, timeout), {'migration': result})
        if 'error' in outcome:
            exc = outcome['error']
            text = libvirt_conn.error_text(exc) if isinstance(exc, libvirt_conn.LibvirtError) else str(exc)
            raise VirtnodeError('migration of %s to %s failed: %s; the VM keeps running here' % (self.name, dest_uri, text),
                                {'migration': result})
        self.write_exit(vm_uuid, vm_stats.EXIT_MIGRATION_SUCCEEDED)
        self.hook('after_vm_migrate_source', '', vm_uuid, fail=False)
        return result

    def _watch_migration(self, dom, worker, options, start, timeout):
        """While ``worker`` migrates: set the maximum downtime once the job exists, follow the
        progress, abort the job after ``timeout``. Returns (aborted, last progress seen)."""
        downtime_set = not options.get('max_downtime_ms')
        aborted = False
        last_progress = None
        while worker.is_alive():
            worker.join(POLL)
            if not worker.is_alive():
                break
            if not downtime_set:
                try:
                    dom.migrateSetMaxDowntime(int(options['max_downtime_ms']), 0)
                    downtime_set = True
                except libvirt_conn.LibvirtError:
                    pass
            # Only samples of the running job: once it is aborted (or before it starts) libvirt hands out an
            # empty job, which would hide what was sent.
            progress = None if aborted else vm_stats.migration_progress(dom)
            if progress and progress.get('elapsed_ms'):
                last_progress = progress
            if not aborted and self.clock() - start > timeout:
                aborted = True
                try:
                    dom.abortJob()
                except libvirt_conn.LibvirtError:
                    pass
        worker.join()
        return aborted, last_progress
