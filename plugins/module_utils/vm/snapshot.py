# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live external snapshots and live merge of storage-domain disks, and memory-state volumes.

The work is split as VDSM and its engine split it:

* the SPM creates the snapshot volume, a COW child of the disk's current top
  volume in the same image (``volume`` module, :func:`volumes.create_volume`);
* the host running the VM takes the snapshot onto it: one
  ``virDomainSnapshotCreateXML`` with DISK_ONLY|REUSE_EXT|NO_METADATA for every
  disk given (optionally the memory state to a RAW volume, and a best-effort
  filesystem freeze through the guest agent);
* live merge is a ``blockCommit`` of a volume into its parent while the VM runs.
  For the active layer it is an active commit: when the job is ready the merged
  volume is marked ILLEGAL, then the VM is pivoted to the parent. For an internal
  layer the job ends by itself and QEMU rewrites the child's backing file
  (relative names kept). Afterwards the image metadata follows the new chain, as
  VDSM's syncVolumeChain does on the host that ran the merge;
* deleting the merged volume changes the image and is the SPM's job: done here
  only when this host is the SPM of the domain's pool, otherwise reported.

The chain is always read from the live domain XML (``<source>`` and nested
``<backingStore>``), which is what makes the module idempotent.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.common.validate import uuid_str
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import constants
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import layout as sd_layout
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import domxml
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import guest_agent
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import volumes as vm_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.vm.lookup import is_active, lookup

IDS = ('domain_id', 'image_id', 'volume_id')
# Room for the save header, the domain XML and device state on top of the guest's RAM.
MEMORY_MARGIN = 32 * 1024 ** 2
POLL = 0.1


# ---------------------------------------------------------------- pure helpers

def volume_ids(ref, what):
    """``(domain_id, image_id, volume_id)`` of a ``{domain_id, image_id, volume_id}`` dict, validated."""
    if not isinstance(ref, dict):
        raise VirtnodeError('%s must be a dict with domain_id, image_id and volume_id' % what, {'field': what})
    missing = [k for k in IDS if not ref.get(k)]
    if missing:
        raise VirtnodeError('%s needs %s' % (what, ', '.join(missing)), {'field': what})
    return tuple(uuid_str(ref[k], '%s %s' % (what, k)) for k in IDS)


def ids_of_path(path):
    """``(domain_id, image_id, volume_id)`` of a path ending in ``<sd>/images/<img>/<vol>``, else None."""
    parts = os.path.normpath(path or '').split(os.sep)
    if len(parts) < 4 or parts[-3] != 'images':
        return None
    try:
        return tuple(uuid_str(p, 'path component') for p in (parts[-4], parts[-2], parts[-1]))
    except VirtnodeError:
        return None


def _source_path(elem):
    src = elem.find('source')
    if src is None:
        return None
    return src.get('file') or src.get('dev')


def disk_chains(xml_text):
    """The disks of a domain XML with their backing chains, base first.

    Each item: ``{'target', 'type', 'format', 'path', 'chain': [{'path', 'format',
    'domain_id', 'image_id', 'volume_id'}...], 'job': <mirror job or None>, 'ready': bool}``.
    The last chain entry is the active layer (the disk's own source).
    """
    root = domxml.parse_xml(xml_text)
    disks = []
    for disk in root.findall('devices/disk'):
        if disk.get('device', 'disk') != 'disk':
            continue
        target = disk.find('target')
        driver = disk.find('driver')
        chain = []
        node = disk
        fmt = driver.get('type') if driver is not None else None
        while node is not None:
            path = _source_path(node)
            if path is None:
                break
            ids = ids_of_path(path)
            entry = {'path': path, 'format': fmt}
            entry.update(dict(zip(IDS, ids)) if ids else dict.fromkeys(IDS))
            chain.insert(0, entry)
            node = node.find('backingStore')
            if node is not None:
                fmt_elem = node.find('format')
                fmt = fmt_elem.get('type') if fmt_elem is not None else None
        mirror = disk.find('mirror')
        disks.append({
            'target': target.get('dev') if target is not None else None,
            'type': disk.get('type', 'file'),
            'format': driver.get('type') if driver is not None else None,
            'path': chain[-1]['path'] if chain else None,
            'chain': chain,
            'job': mirror.get('job') if mirror is not None else None,
            'ready': mirror is not None and mirror.get('ready') == 'yes',
        })
    return disks


def find_disk(disks, domain_id, image_id):
    """The disk whose active layer is a volume of image ``image_id`` on ``domain_id``, or None."""
    for disk in disks:
        if disk['chain'] and disk['chain'][-1]['domain_id'] == domain_id and disk['chain'][-1]['image_id'] == image_id:
            return disk
    return None


def chain_ids(disk):
    return [entry['volume_id'] for entry in disk['chain']]


def snapshot_xml(entries, targets, memory_path=None, description=None):
    """``<domainsnapshot>`` XML: an external snapshot of ``entries`` ({target, path, type}), no snapshot of other ``targets``."""
    domxml.require_lxml()
    etree = domxml.etree
    root = etree.Element('domainsnapshot')
    if description:
        etree.SubElement(root, 'description').text = description
    disks_elem = etree.SubElement(root, 'disks')
    wanted = {e['target']: e for e in entries}
    for target in targets:
        entry = wanted.get(target)
        if entry is None:
            etree.SubElement(disks_elem, 'disk', name=target, snapshot='no')
            continue
        kind = entry.get('type') or 'file'
        elem = etree.SubElement(disks_elem, 'disk', name=target, snapshot='external', type=kind)
        etree.SubElement(elem, 'source', **{'dev' if kind == 'block' else 'file': entry['path']})
        etree.SubElement(elem, 'driver', type='qcow2')
    if memory_path:
        etree.SubElement(root, 'memory', snapshot='external', file=memory_path)
    else:
        etree.SubElement(root, 'memory', snapshot='no')
    return etree.tostring(root, encoding='unicode')


def snapshot_flags(with_memory):
    flags = constants.mask('VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT', 'VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA')
    if with_memory:
        return flags | constants.value('VIR_DOMAIN_SNAPSHOT_CREATE_LIVE')
    return flags | constants.value('VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY')


def memory_needed(xml_text):
    """Bytes a memory-state volume needs for this domain: its (maximum) memory plus a margin."""
    root = domxml.parse_xml(xml_text)
    kib = domxml.to_kib(root.find('memory')) or 0
    return kib * 1024 + MEMORY_MARGIN


# ---------------------------------------------------------------- storage side

def _block_volumes(domain_id):
    """The :class:`block_volumes.BlockVolumes` of a block domain this host has joined (its host directory exists),
    or None for a file domain."""
    dom_dir = sd_layout.block_domain_dir(domain_id)
    if not os.path.isdir(dom_dir):
        return None
    return block_volumes.for_domain(dom_dir)


def locate(ids, what):
    """``(path, dom_dir, VolumeMetadata)`` of a volume, or a clear error.

    A file domain's volume must be prepared on this host (mounted); a block domain's is read from its slot,
    and ``path`` is its link in the image directory, made by :func:`present_block_volume`.
    """
    domain_id, image_id, volume_id = ids
    store = _block_volumes(domain_id)
    if store is not None:
        md = store.read_volume(image_id, volume_id)
        if md is None:
            raise VirtnodeError('%s: unknown volume %s (image %s, domain %s): not on that block domain'
                                % (what, volume_id, image_id, domain_id), {'field': what, 'volume_id': volume_id})
        return store.path(image_id, volume_id), store.dom_dir, md
    try:
        path = vm_volumes.resolve_volume(domain_id, image_id, volume_id)
    except VirtnodeError:
        raise VirtnodeError('%s: unknown volume %s (image %s, domain %s): not found on this host'
                            % (what, volume_id, image_id, domain_id), {'field': what, 'volume_id': volume_id}) from None
    dom_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    md = volumes.read_volume(dom_dir, image_id, volume_id)
    if md is None:
        raise VirtnodeError('%s: volume %s has no metadata (%s.meta)' % (what, volume_id, path),
                            {'field': what, 'volume_id': volume_id})
    return path, dom_dir, md


def present_block_volume(ids, activate=True):
    """A block domain's volume and its parents active and linked on this host (VDSM's prepareImage); no-op for a
    file domain's volume. ``activate=False`` (check mode) only checks the chain."""
    store = _block_volumes(ids[0])
    if store is not None:
        store.prepare(ids[1], ids[2], activate=activate)


def _size_of(path):
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        with open(path, 'rb') as handle:
            return handle.seek(0, os.SEEK_END), 'block'
    return st.st_size, 'file'


def memory_volume(ref, needed, what='memory volume'):
    """Check a RAW storage-domain volume can take a memory state of ``needed`` bytes.

    Returns ``{'path', 'type', 'capacity', 'needed', domain_id, image_id, volume_id}``; raises before anything is written.
    """
    ids = volume_ids(ref, what)
    path, dom_dir, md = locate(ids, what)
    if md.volume_format != 'RAW':
        raise VirtnodeError('%s %s is %s; a memory state needs a RAW volume' % (what, ids[2], md.volume_format), {'field': what})
    if md.legality != 'LEGAL':
        raise VirtnodeError('%s %s is %s' % (what, ids[2], md.legality), {'field': what})
    if sd_layout.is_block_domain_dir(dom_dir):
        present_block_volume(ids)
    try:
        size, kind = _size_of(path)
    except OSError as err:
        raise VirtnodeError('%s %s cannot be used: %s' % (what, path, err.strerror or err), {'field': what}) from err
    capacity = md.capacity if kind == 'file' else min(md.capacity, size)
    if capacity < needed:
        raise VirtnodeError('%s %s is too small: %d bytes, the VM needs %d (its memory plus %d MiB)'
                            % (what, ids[2], capacity, needed, MEMORY_MARGIN // 1024 ** 2),
                            {'field': what, 'capacity': capacity, 'needed': needed})
    info = dict(zip(IDS, ids))
    info.update(path=path, type=kind, capacity=capacity, needed=needed)
    return info


def restore_volume_size(info):
    """libvirt truncates a file it saves memory to; give a file volume its capacity back (sparse)."""
    if info['type'] != 'file':
        return
    try:
        if os.stat(info['path']).st_size < info['capacity']:
            os.truncate(info['path'], info['capacity'])
    except OSError as err:
        raise VirtnodeError('cannot restore the size of volume %s: %s' % (info['path'], err.strerror or err)) from err


def this_host_is_spm(dom_dir):
    """Whether this host is the SPM of the pool of the domain at ``dom_dir`` (may change images)."""
    try:
        md = storage.read_md(dom_dir)
        if not md.pool_uuids:
            return False, md
        return spm.status(md.pool_uuids[0])['spm_status'] == spm.SPM, md
    except (VirtnodeError, OSError):
        return False, None


# ---------------------------------------------------------------- the operation

class SnapshotRun(object):
    """One vm_snapshot task: plan, then (unless check mode) act; ``result`` collects the outcome."""

    def __init__(self, conn, dom, check_mode=False, timeout=300, sleep=time.sleep, clock=time.monotonic):
        self.conn = conn
        self.dom = dom
        self.check_mode = check_mode
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.actions = []
        self.pending_delete = []
        self.deleted = []

    def disks(self):
        return disk_chains(self.dom.XMLDesc(0))

    def _disk_for(self, disks, ids, what):
        disk = find_disk(disks, ids[0], ids[1])
        if disk is None:
            raise VirtnodeError('%s: image %s of domain %s is not a disk of the VM' % (what, ids[1], ids[0]),
                                {'field': what, 'image_id': ids[1]})
        return disk

    # ------------------------------------------------------------ present

    def plan_present(self, refs):
        """``[(disk, ids, path)]`` of volumes to snapshot onto; validates everything first."""
        disks = self.disks()
        plan, seen = [], set()
        for index, ref in enumerate(refs):
            what = 'volumes[%d]' % index
            ids = volume_ids(ref, what)
            disk = self._disk_for(disks, ids, what)
            if ids[2] in chain_ids(disk):
                continue
            if disk['target'] in seen:
                raise VirtnodeError('%s: two new volumes for disk %s in one snapshot' % (what, disk['target']), {'field': what})
            top = disk['chain'][-1]['volume_id']
            path, _dom_dir, md = locate(ids, what)
            if md.parent != top:
                raise VirtnodeError('%s: volume %s is not a child of the current top volume %s of disk %s (its parent is %s);'
                                    ' create it with parent_volume_uuid=%s on the SPM'
                                    % (what, ids[2], top, disk['target'], md.parent, top),
                                    {'field': what, 'top': top, 'parent': md.parent})
            if md.volume_format != 'COW':
                raise VirtnodeError('%s: volume %s is %s; a snapshot volume must be COW' % (what, ids[2], md.volume_format),
                                    {'field': what})
            if md.legality != 'LEGAL':
                raise VirtnodeError('%s: volume %s is %s' % (what, ids[2], md.legality), {'field': what})
            present_block_volume(ids, activate=not self.check_mode)
            seen.add(disk['target'])
            plan.append((disk, ids, path))
        return disks, plan

    def snapshot(self, disks, plan, memory=None, freeze=True, description=None):
        """Take one external snapshot of every planned disk; returns the freeze report."""
        report = {'requested': bool(freeze), 'frozen': False, 'filesystems': None, 'message': None}
        targets = [d['target'] for d in disks]
        entries = [{'target': disk['target'], 'path': path, 'type': 'block' if _is_block(path) else 'file'}
                   for disk, _ids, path in plan]
        self.actions.append('snapshot %s' % ', '.join('%s onto %s' % (disk['target'], ids[2]) for disk, ids, _p in plan))
        if memory:
            self.actions.append('save memory to %s' % memory['volume_id'])
        if self.check_mode:
            return report
        xml = snapshot_xml(entries, targets, memory['path'] if memory else None, description)
        frozen = False
        if freeze:
            if guest_agent.is_connected(self.dom.XMLDesc(0)):
                try:
                    report['filesystems'] = self.dom.fsFreeze()
                    frozen = True
                    report['frozen'] = True
                except libvirt_conn.LibvirtError as exc:
                    report['message'] = 'freeze failed, snapshot taken without it: %s' % libvirt_conn.error_text(exc)
            else:
                report['message'] = 'no connected guest agent: snapshot taken without freezing the guest file systems'
        try:
            self.dom.snapshotCreateXML(xml, snapshot_flags(bool(memory)))
        except libvirt_conn.LibvirtError as exc:
            raise VirtnodeError('cannot snapshot VM %s: %s' % (self.dom.name(), libvirt_conn.error_text(exc))) from exc
        finally:
            if frozen:
                try:
                    self.dom.fsThaw()
                except libvirt_conn.LibvirtError as exc:
                    report['message'] = 'thaw failed: %s' % libvirt_conn.error_text(exc)
        if memory:
            restore_volume_size(memory)
        return report

    # ------------------------------------------------------------ absent

    def plan_absent(self, refs):
        """``[(ids, disk or None)]``: volumes still in a live chain, checked; others already merged away."""
        disks = self.disks()
        plan = []
        for index, ref in enumerate(refs):
            what = 'volumes[%d]' % index
            ids = volume_ids(ref, what)
            disk = self._disk_for(disks, ids, what)
            chain = chain_ids(disk)
            if ids[2] not in chain:
                plan.append((ids, None))
                continue
            if chain.index(ids[2]) == 0:
                raise VirtnodeError('%s: volume %s is the base of disk %s: only a volume with a parent can be merged away'
                                    % (what, ids[2], disk['target']), {'field': what})
            if disk['job']:
                raise VirtnodeError('%s: disk %s already runs a block job (%s)' % (what, disk['target'], disk['job']),
                                    {'field': what})
            plan.append((ids, disk))
        return plan

    def merge(self, ids, delete_merged=True):
        """Live-merge volume ``ids`` into its parent (re-reading the chain first), then sync metadata."""
        disk = self._disk_for(self.disks(), ids, 'volume')
        chain = chain_ids(disk)
        if ids[2] not in chain:
            self.cleanup_merged(ids, delete_merged)
            return
        position = chain.index(ids[2])
        active = position == len(chain) - 1
        base, top = disk['chain'][position - 1], disk['chain'][position]
        kind = 'active' if active else 'internal'
        self.actions.append('%s commit %s into %s on %s' % (kind, ids[2], base['volume_id'], disk['target']))
        dom_dir = os.path.dirname(os.path.dirname(os.path.dirname(top['path'])))
        domain_md = storage.read_md(dom_dir) if sd_layout.is_block_domain_dir(dom_dir) else None
        if domain_md is not None:
            _require_spm_for_block_merge(dom_dir, domain_md, ids)
        if self.check_mode:
            self._plan_delete(ids, dom_dir, delete_merged)
            return
        with _chain_writer(dom_dir, domain_md, 'live merge of %s' % ids[2]) as sync_chain:
            old_top = chain[-1]
            if domain_md is not None:
                grown = block_volumes.for_domain(dom_dir, domain_md).grow_for_commit(ids[1], base['volume_id'], ids[2])
                if grown:
                    self.actions.append('extend %s to %d MiB' % (base['volume_id'], grown // 1024 ** 2))
            flags = constants.value('VIR_DOMAIN_BLOCK_COMMIT_RELATIVE')
            if active:
                flags |= constants.value('VIR_DOMAIN_BLOCK_COMMIT_ACTIVE')
            try:
                self.dom.blockCommit(disk['target'], base['path'], top['path'], 0, flags)
            except libvirt_conn.LibvirtError as exc:
                raise VirtnodeError('cannot start merging %s into %s: %s' % (ids[2], base['volume_id'], libvirt_conn.error_text(exc)))
            if active:
                self._wait(disk['target'], lambda d: d['ready'], 'become ready to pivot')
                # As VDSM: the old leaf is ILLEGAL before the pivot, so an interrupted merge leaves it safe to delete.
                sync_chain(ids[1], old_top, chain[:-1])
                try:
                    self.dom.blockJobAbort(disk['target'], constants.value('VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT'))
                except libvirt_conn.LibvirtError as exc:
                    raise VirtnodeError('merge of %s: pivot to %s failed: %s; the VM still uses %s (marked ILLEGAL)'
                                        % (ids[2], base['volume_id'], libvirt_conn.error_text(exc), ids[2]))
            self._wait(disk['target'], lambda d: not d['job'] and ids[2] not in chain_ids(d), 'finish')
            after = chain_ids(self._disk_for(self.disks(), ids, 'volume'))
            sync_chain(ids[1], old_top, after)
        self.cleanup_merged(ids, delete_merged)

    def _plan_delete(self, ids, dom_dir, delete_merged):
        is_spm, _md = this_host_is_spm(dom_dir)
        ref = dict(zip(IDS, ids))
        if delete_merged and is_spm:
            self.actions.append('delete volume %s' % ids[2])
            self.deleted.append(ref)
        else:
            self.pending_delete.append(ref)
        return is_spm

    def cleanup_merged(self, ids, delete_merged):
        """A merged-away volume still on storage: delete it on the SPM, report it elsewhere."""
        try:
            _path, dom_dir, md = locate(ids, 'volume')
        except VirtnodeError:
            return
        if md.legality != 'ILLEGAL':
            return
        is_spm = self._plan_delete(ids, dom_dir, delete_merged)
        if delete_merged and is_spm and not self.check_mode:
            domain_md = storage.read_md(dom_dir)
            store = block_volumes.for_domain(dom_dir, domain_md)
            if store is None:
                volumes.delete_volume(dom_dir, domain_md, ids[1], ids[2])
                return
            with _chain_writer(dom_dir, domain_md, 'delete merged volume %s' % ids[2]):
                store.delete_volume(ids[1], ids[2])

    def _wait(self, target, done, what):
        deadline = self.clock() + self.timeout
        idle = 0
        while True:
            disk = next((d for d in self.disks() if d['target'] == target), None)
            if disk is None:
                raise VirtnodeError('disk %s disappeared from VM %s during the merge' % (target, self.dom.name()))
            if done(disk):
                return disk
            # A job that is gone without reaching the state asked for failed (QEMU reports why in the libvirt log).
            idle = idle + 1 if not disk['job'] and not self.dom.blockJobInfo(target, 0) else 0
            if idle > 10:
                raise VirtnodeError('the block job on %s of VM %s ended before it could %s (see the libvirt log)'
                                    % (target, self.dom.name(), what), {'target': target})
            if self.clock() >= deadline:
                try:
                    self.dom.blockJobAbort(target, 0)
                except libvirt_conn.LibvirtError:
                    pass
                raise VirtnodeError('the merge on %s of VM %s did not %s within %ss and was cancelled; the chain is unchanged'
                                    % (target, self.dom.name(), what, self.timeout), {'target': target})
            self.sleep(POLL)


def _require_spm_for_block_merge(dom_dir, domain_md, ids):
    """A merge into a block domain's volume grows the base LV and changes LV tags: VG metadata, the SPM's."""
    is_spm, _md = this_host_is_spm(dom_dir)
    if not is_spm:
        raise VirtnodeError('merging volume %s of block storage domain %s runs on the SPM of its pool only (the base '
                            'LV is extended and LV tags change first, which only the SPM may do): run the VM on the SPM '
                            'host for the merge, or merge it after shutting the VM down with virtnode.kvm.volume on the SPM'
                            % (ids[2], domain_md.sd_uuid), {'field': 'volumes', 'volume_id': ids[2]})


@contextlib.contextmanager
def _chain_writer(dom_dir, domain_md, what):
    """``sync_chain(img, old_top, actual_chain)`` for the body: on a block domain inside a fenced SPM task (every
    slot or LV change checks the SPM lease first), on a file domain the plain metadata writer."""
    if domain_md is None:
        file_md = storage.read_md(dom_dir)
        yield lambda img, old_top, actual: volumes.sync_volume_chain(dom_dir, file_md, img, old_top, actual)
        return
    store = block_volumes.for_domain(dom_dir, domain_md)
    with spm.task(domain_md.pool_uuids[0], what) as task, volumes.fenced(task.check):
        yield store.sync_volume_chain


def _is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def chains_view(disks, only_images=None):
    """``[{target, domain_id, image_id, chain}]`` of the storage-domain disks (of ``only_images`` when given)."""
    view = []
    for disk in disks:
        if not disk['chain'] or not disk['chain'][-1]['image_id']:
            continue
        key = (disk['chain'][-1]['domain_id'], disk['chain'][-1]['image_id'])
        if only_images is not None and key not in only_images:
            continue
        view.append({'target': disk['target'], 'domain_id': key[0], 'image_id': key[1], 'chain': chain_ids(disk)})
    return view


# ---------------------------------------------------------------- the vm_snapshot module's run

def expected_chains(before, plan_ids, state):
    """The chains after adding (present) or merging away (absent) the planned volumes: check mode's answer."""
    after = []
    wanted = {}
    for ids in plan_ids:
        wanted.setdefault((ids[0], ids[1]), []).append(ids[2])
    for disk in before:
        chain = list(disk['chain'])
        for vol in wanted.get((disk['domain_id'], disk['image_id']), []):
            if state == 'present' and vol not in chain:
                chain.append(vol)
            elif state == 'absent' and vol in chain:
                chain.remove(vol)
        after.append(chain)
    return after


def _take_snapshot(job, params, dom, result):
    """state=present: snapshot the disks not yet on their volume (and the memory when asked); returns what was done."""
    disks, plan = job.plan_present(params['volumes'])
    memory = None
    if params['memory_volume']:
        memory = memory_volume(params['memory_volume'], memory_needed(dom.XMLDesc(0)), 'memory_volume') if plan else None
        result['memory'] = dict((k, memory[k]) for k in ('domain_id', 'image_id', 'volume_id', 'capacity', 'needed')) \
            if memory else None
    if plan:
        result['freeze'] = job.snapshot(disks, plan, memory, params['freeze'], params['description'])
    return [ids for _disk, ids, _path in plan]


def _merge(job, params):
    """state=absent: merge the volumes still in a chain; returns what was done."""
    plan = job.plan_absent(params['volumes'])
    for ids, _disk in plan:
        job.merge(ids, params['delete_merged'])
    return [ids for ids, disk in plan if disk is not None]


def _chains_result(job, before, images, done_ids, state, check_mode):
    """Every disk's chain before and after (predicted in check mode)."""
    if check_mode:
        after = expected_chains(before, done_ids, state)
    else:
        now = dict(((c['domain_id'], c['image_id']), c['chain']) for c in chains_view(job.disks(), images))
        after = [now.get((c['domain_id'], c['image_id']), []) for c in before]
    chains = []
    for disk, chain_after in zip(before, after):
        view = dict((k, disk[k]) for k in ('target', 'domain_id', 'image_id'))
        view.update(before=disk['chain'], after=chain_after)
        chains.append(view)
    return chains


def run(module, conn):
    """Take the live snapshot onto, or merge away, the volumes of ``module.params``; returns the module result."""
    params = module.params
    refs = params['volumes']
    if not refs:
        raise VirtnodeError('volumes must name at least one volume', {'field': 'volumes'})
    ids_list = [volume_ids(ref, 'volumes[%d]' % i) for i, ref in enumerate(refs)]
    if params['memory_volume'] and params['state'] != 'present':
        raise VirtnodeError('memory_volume needs state=present', {'field': 'memory_volume'})
    dom = lookup(conn, params['name'])
    if not is_active(dom):
        raise VirtnodeError('VM %s is not running on this host: a live snapshot or merge needs a running VM' % params['name'],
                            {'name': params['name']})
    job = SnapshotRun(conn, dom, check_mode=module.check_mode, timeout=params['timeout'])
    images = set((ids[0], ids[1]) for ids in ids_list)
    before = chains_view(job.disks(), images)
    result = {'changed': False, 'actions': job.actions, 'deleted': job.deleted, 'pending_delete': job.pending_delete,
              'duration_s': 0}
    start = time.monotonic()
    if params['state'] == 'present':
        done_ids = _take_snapshot(job, params, dom, result)
    else:
        done_ids = _merge(job, params)
    if job.actions:
        result['duration_s'] = round(time.monotonic() - start, 2)
    result['chains'] = _chains_result(job, before, images, done_ids, params['state'], module.check_mode)
    result['changed'] = bool(job.actions)
    result['diff'] = {'before': {'chains': dict((c['target'], c['before']) for c in result['chains'])},
                      'after': {'chains': dict((c['target'], c['after']) for c in result['chains'])}}
    return result


def converge(module):
    """The ``vm_snapshot`` module: :func:`run` on its libvirt connection."""
    libvirt_conn.require_libvirt(module)
    with libvirt_conn.connect(module.params['uri']) as conn:
        result = run(module, conn)
    if not module._diff:  # pylint: disable=protected-access
        result.pop('diff', None)
    return result
