# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A volume or image brought to the state the ``volume`` module asks for.

Creating (blank, snapshot or clone), extending and deleting volumes change
storage metadata, so they run only on the SPM of the pool the domain is
attached to; :func:`run_module` is the module's work.

Each change runs as a fenced SPM task (:func:`spm.task`): every metadata
write first checks that the SPM lease is still ours. The whole
read-check-write runs under the domain's metadata lock, so what it sees
of the volume is not a create in flight but the state of storage.

An ILLEGAL volume left by an interrupted create (or a data file without
``.meta``) is removed and created again by ``state=present``: its data
cannot be trusted to be complete (a half-done ``qemu-img convert`` is a
valid image), and nothing uses an ILLEGAL volume. An ILLEGAL volume with
children is never reported as fine: that needs an operator.

File and block domains differ only in the store of volumes each has
(:class:`volumes.FileVolumes`, :class:`block_volumes.BlockVolumes`).

``import_from`` creates the volume from an image file or URL
(:mod:`image_transfer`): the image is fetched and checked before the
domain's lock is taken, so a long download holds up no other volume change.
``export_to`` copies an existing volume to a file; it reads only, so it runs
on any host of the pool.
"""

from __future__ import annotations

import contextlib
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import block_volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain as storage
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain_lock
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import image_transfer
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import qemu_img
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import spm
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_metadata as vmd


def store_for(dom_dir, dom_md):
    """The volumes of the domain in ``dom_dir``: a :class:`block_volumes.BlockVolumes` or a :class:`volumes.FileVolumes`."""
    found = block_volumes.for_domain(dom_dir, dom_md)
    return found if found is not None else volumes.FileVolumes(dom_dir, dom_md)


def volume_view(store, img_uuid, vol_uuid):
    """The module's description of a volume, or None if it does not exist."""
    md = store.read_volume(img_uuid, vol_uuid)
    if md is None:
        return None
    return {'volume_uuid': vol_uuid, 'path': store.path(img_uuid, vol_uuid), 'format': md.volume_format,
            'allocation': md.allocation, 'capacity': md.capacity, 'parent': md.parent, 'role': md.role,
            'legality': md.legality}


def require_spm(dom_md):
    """Raise unless this host is the SPM of the pool the domain is attached to."""
    if not dom_md.pool_uuids:
        raise VirtnodeError('storage domain %s is not attached to a pool; volume changes run on the pool SPM' % dom_md.sd_uuid)
    spm.require_spm(dom_md.pool_uuids[0])


class _Writer:
    """Begins the fenced SPM task the first time a change is about to be written."""

    def __init__(self, module, dom_md, stack):
        self.module, self.dom_md, self.stack = module, dom_md, stack
        self.started = False

    def require(self, what):
        require_spm(self.dom_md)
        if self.module.check_mode or self.started:
            return
        spm_task = self.stack.enter_context(spm.task(self.dom_md.pool_uuids[0], 'volume %s' % what))
        self.stack.enter_context(volumes.fenced(spm_task.check))
        self.started = True


def _leftover(store, img_uuid, vol_uuid, before):
    """True if the volume is what an interrupted create leaves: ILLEGAL, or data without metadata."""
    if before is None:
        return store.has_data(img_uuid, vol_uuid)
    if before['legality'] == 'LEGAL':
        return False
    children = [v for v, m in store.image_volumes(img_uuid).items() if m and m.parent == vol_uuid]
    if children:
        raise VirtnodeError('volume %s is %s and has child volume(s) %s; it cannot be used or re-created'
                            % (vol_uuid, before['legality'], ', '.join(children)), {'volume_uuid': vol_uuid, 'legality': before['legality']})
    return True


def _options(params):
    """The module's options, validated: ``(sd_uuid, img_uuid, vol_uuid, parent, size, clone_from)``."""
    sd_uuid = validate.uuid_str(params['sd_uuid'], 'sd_uuid')
    img_uuid = validate.uuid_str(params['image_uuid'], 'image_uuid')
    vol_uuid = validate.uuid_str(params['volume_uuid'], 'volume_uuid') if params['volume_uuid'] else None
    parent = validate.uuid_str(params['parent_volume_uuid'], 'parent_volume_uuid') if params['parent_volume_uuid'] else None
    if params.get('parent_image_uuid'):
        validate.uuid_str(params['parent_image_uuid'], 'parent_image_uuid')
        if not parent:
            raise VirtnodeError('parent_image_uuid needs parent_volume_uuid (the template volume)',
                                {'field': 'parent_image_uuid'})
    if params.get('template') and parent:
        raise VirtnodeError('a template volume is a base: it has no parent', {'field': 'template'})
    size = None
    if params['size'] is not None:
        size = volumes.check_capacity(validate.size_bytes(params['size'], 'size'))
    if params.get('initial_size') is not None:  # a creation parameter, but bad input is refused whatever exists
        validate.size_bytes(params['initial_size'], 'initial_size', minimum=1)
    clone = params['clone_from']
    if clone:
        for key in ('image_uuid', 'volume_uuid'):
            validate.uuid_str(clone[key], 'clone_from.%s' % key)
        validate.uuid_str(clone['sd_uuid'] or sd_uuid, 'clone_from.sd_uuid')
    if clone and parent:
        raise VirtnodeError('clone_from and parent_volume_uuid are mutually exclusive')
    _transfer_options(params, clone, parent)
    return sd_uuid, img_uuid, vol_uuid, parent, size, clone


def _transfer_options(params, clone, parent):
    """``import_from`` and ``export_to`` checked before anything is read or changed."""
    spec, export_spec = params.get('import_from'), params.get('export_to')
    if (spec is not None or export_spec is not None) and params['state'] != 'present':
        raise VirtnodeError('import_from and export_to are for state=present', {'field': 'state'})
    if spec is not None:
        if clone or parent:
            raise VirtnodeError('import_from is not used with clone_from or parent_volume_uuid', {'field': 'import_from'})
        if (spec.get('path') is None) == (spec.get('url') is None):
            raise VirtnodeError('import_from needs one of path and url', {'field': 'import_from'})
        image_transfer.parse_checksum(spec.get('checksum'))
        if spec.get('url') is not None:
            image_transfer.check_url(spec['url'])
            if spec.get('download_dir') is not None:
                image_transfer.check_local_path(spec['download_dir'], 'import_from.download_dir')
        else:
            image_transfer.check_local_path(spec['path'], 'import_from.path')
        if spec.get('format') is not None and spec['format'] not in qemu_img.IMPORT_FORMATS:
            raise VirtnodeError('import_from.format must be one of %s' % ', '.join(qemu_img.IMPORT_FORMATS),
                                {'field': 'import_from.format'})
    if export_spec is not None:
        image_transfer.check_export(export_spec)


def _clone_source_store(store, clone, sd_uuid):
    """The volume store holding the clone's source: this domain's, or another domain's of this host."""
    src_sd = validate.uuid_str(clone['sd_uuid'] or sd_uuid, 'clone_from.sd_uuid')
    if src_sd == sd_uuid:
        return store
    src_dir = storage.find_domain(src_sd)
    return store_for(src_dir, storage.read_md(src_dir))


def _initial_size(store, params, capacity):
    """``{'initial_size': bytes}`` for the store's create_volume, or ``{}``; refused where VDSM refuses it."""
    if params.get('initial_size') is None:
        return {}
    initial = validate.size_bytes(params['initial_size'], 'initial_size', minimum=1)
    if not isinstance(store, block_volumes.BlockVolumes):
        raise VirtnodeError('initial_size is for COW volumes on block storage domains; %s is a file domain'
                            % store.sd_uuid, {'field': 'initial_size'})
    if params['format'] != 'COW' or params['clone_from']:
        raise VirtnodeError('initial_size is for new COW volumes, not RAW ones or clones', {'field': 'initial_size'})
    limit = block.max_physical(capacity)
    if initial > limit:
        raise VirtnodeError('initial_size %d is more than the volume may ever take (%d bytes: its capacity x 1.1)'
                            % (initial, limit), {'field': 'initial_size'})
    return {'initial_size': initial}


def _templates(store, params, img_uuid):
    """``{'template', 'parent_image'}`` for the store's create_volume; refused where templates are not made."""
    parent_image = params.get('parent_image_uuid') or None
    wanted = {'template': bool(params.get('template')), 'parent_image': parent_image}
    if (wanted['template'] or parent_image not in (None, img_uuid)) and not store.supports_templates:
        raise VirtnodeError('templates and their thin clones are not supported on block storage domains yet (%s); '
                            'use a file domain, or clone_from for a full copy' % store.sd_uuid, {'field': 'template'})
    return wanted


def _create(module, writer, store, sd_uuid, img_uuid, vol_uuid, parent, size, clone, actions, imported=None):
    params = module.params
    writer.require('create')
    templates = _templates(store, params, img_uuid)
    source = _clone_source_store(store, clone, sd_uuid) if clone else None
    parent_md = None
    if params.get('import_from') is not None:
        store.check_format(params['format'], params['allocation'])
        actions += ['import', 'template'] if templates['template'] else ['import']
        if not module.check_mode:
            store.create_volume(img_uuid, vol_uuid, params['format'], params['allocation'], size, None,
                                params['description'], params['disk_type'], import_source=imported, **templates)
        return
    if clone:
        if source.read_volume(clone['image_uuid'], clone['volume_uuid']) is None:
            raise VirtnodeError('clone source volume %s not found' % clone['volume_uuid'], {'field': 'clone_from'})
    elif parent:
        parent_img = templates['parent_image'] or img_uuid
        parent_md = store.read_volume(parent_img, parent)
        if parent_md is None:
            raise VirtnodeError('parent volume %s not found in image %s' % (parent, parent_img), {'field': 'parent_volume_uuid'})
        if parent_img != img_uuid and (parent_md.role != 'SHARED' or parent_md.image != parent_img):
            raise VirtnodeError('volume %s of image %s is not a template (VOLTYPE SHARED): only a template is the base '
                                'of volumes in other images' % (parent, parent_img), {'field': 'parent_image_uuid'})
        volumes.capacity_on(parent_md, size, *(('clone', 'template') if parent_img != img_uuid else ('snapshot', 'parent')))
    elif size is None:
        raise VirtnodeError('size is required to create a volume', {'field': 'size'})
    if params['format'] == 'RAW' and parent:
        raise VirtnodeError('a snapshot volume must be COW', {'field': 'format'})
    store.check_format(params['format'], params['allocation'])
    initial_size = _initial_size(store, params, size or (parent_md.capacity if parent_md else None))
    actions.append('clone' if clone else 'thin_clone' if templates['parent_image'] not in (None, img_uuid)
                   else 'snapshot' if parent else 'create')
    if templates['template']:
        actions.append('template')
    if not module.check_mode:
        if clone:
            store.create_volume(img_uuid, vol_uuid, params['format'], params['allocation'], size, parent,
                                params['description'], params['disk_type'],
                                clone_source=(source, clone['image_uuid'], clone['volume_uuid']), **templates)
        else:
            store.create_volume(img_uuid, vol_uuid, params['format'], params['allocation'], size, parent,
                                params['description'], params['disk_type'], **initial_size, **templates)


def _update(module, writer, store, img_uuid, vol_uuid, parent, size, before, actions):
    """An existing volume: check it matches the options and extend it if it should grow."""
    if module.params.get('template') and before['role'] != 'SHARED':
        raise VirtnodeError('volume %s exists as a %s volume; a template is made when its volume is created (clone_from '
                            'or import_from into a new image)' % (vol_uuid, before['role']), {'field': 'template'})
    if parent and before['parent'] != parent:
        raise VirtnodeError('volume %s exists with parent %s, not %s' % (vol_uuid, before['parent'], parent))
    if size is not None:
        # A RAW volume of a block domain is a whole number of extents: the size asked for, rounded up.
        size = store.capacity_for(before['format'], size)
    if size is not None and size < before['capacity']:
        raise VirtnodeError('volume %s is %d bytes; shrinking to %d bytes is not supported'
                            % (vol_uuid, before['capacity'], size), {'field': 'size'})
    if size is not None and size > before['capacity']:
        writer.require('extend')
        if before['role'] != 'LEAF':
            raise VirtnodeError('only the leaf volume of an image can be extended; %s is %s' % (vol_uuid, before['role']))
        actions.append('extend')
        if not module.check_mode:
            store.extend_volume(img_uuid, vol_uuid, size)


def _delete(module, writer, store, img_uuid, vol_uuid, before, actions):
    """Delete the volume (refused while it has children) or, without ``vol_uuid``, the whole image."""
    if vol_uuid is not None:
        if before is not None or store.has_data(img_uuid, vol_uuid):
            writer.require('delete')
            children = [v for v, m in store.image_volumes(img_uuid).items() if m and m.parent == vol_uuid]
            if children:
                raise VirtnodeError('volume %s has child volume(s) %s: delete them first' % (vol_uuid, ', '.join(children)))
            store.check_deletable(img_uuid, vol_uuid)
            actions.append('delete_volume')
            if not module.check_mode:
                store.delete_volume(img_uuid, vol_uuid)
    elif store.image_exists(img_uuid):
        writer.require('delete image')
        store.check_deletable(img_uuid)
        actions.append('delete_image')
        if not module.check_mode:
            store.delete_image(img_uuid)


def _export(module, store, img_uuid, vol_uuid, actions):
    """``export_to``: the volume copied to a file, unless the file is there and ``force`` is off; what was copied."""
    spec = module.params['export_to']
    dest, fmt = image_transfer.check_export(spec)
    if os.path.lexists(dest) and not spec.get('force'):
        return None
    actions.append('export')
    if module.check_mode:
        return None
    md = store.read_volume(img_uuid, vol_uuid)
    with store.readable(img_uuid, vol_uuid) as path:
        source = image_transfer.export(path, md.volume_format, dest, fmt)
    return dict(image_transfer.transfer_report(source), destination=dest, destination_format=fmt)


@contextlib.contextmanager
def _import_source(module, store, dom_md, img_uuid, vol_uuid):
    """The checked image ``import_from`` names (None when there is nothing to import), fetched before the
    domain's lock is taken. In check mode a local image is still checked; a URL is not fetched."""
    spec = module.params.get('import_from')
    before = volume_view(store, img_uuid, vol_uuid) if spec else None
    if spec is None or (before is not None and before['legality'] == 'LEGAL') or (module.check_mode and spec.get('url')):
        yield None
        return
    require_spm(dom_md)  # fail fast: no download for a change this host may not make
    with image_transfer.import_source(spec, spec.get('download_dir')) as source:
        yield source


def _prepare(module, store, img_uuid, vol_uuid):
    """``state=prepared``: VDSM's prepareImage on this host, for a VM about to run here (a migration's destination).

    On a block domain the volume and its parents are checked LEGAL, activated and linked (see
    :meth:`block_volumes.BlockVolumes.prepare`); a file domain's chain is only checked, the mount serves it,
    unless ``block_device`` asks for the volume as the vm module's ``type: block`` disks see it (a loop device
    linked under :data:`block.LOOP_LINK_ROOT`). No SPM is needed: nothing on storage changes.
    """
    if store.read_volume(img_uuid, vol_uuid) is None:
        raise VirtnodeError('volume %s of image %s not found on storage domain %s' % (vol_uuid, img_uuid, module.params['sd_uuid']),
                            {'field': 'volume_uuid'})
    actions = []
    if isinstance(store, block_volumes.BlockVolumes):
        if not store.is_prepared(img_uuid, vol_uuid):
            actions.append('prepare')
        store.prepare(img_uuid, vol_uuid, activate=bool(actions) and not module.check_mode)
    else:
        vmd.legal_chain(store.dom_dir, img_uuid, vol_uuid)
        if module.params.get('block_device'):
            loop = block.LoopBackend()
            sd_uuid = module.params['sd_uuid']
            if not loop.is_active(sd_uuid, img_uuid, vol_uuid):
                actions.append('present as a block device')
                if not module.check_mode:
                    loop.activate(sd_uuid, img_uuid, vol_uuid)
    view = volume_view(store, img_uuid, vol_uuid)
    result = {'changed': bool(actions), 'actions': actions, 'volume': view, 'chain': store.chain_info(img_uuid)}
    if module._diff:
        result['diff'] = {'before': {'prepared': not actions}, 'after': {'prepared': True}}
    return result


def run_module(module):
    """The work of the ``volume`` module."""
    sd_uuid, img_uuid, vol_uuid, parent, size, clone = _options(module.params)
    dom_dir = storage.find_domain(sd_uuid)
    dom_md = storage.read_md(dom_dir)
    store = store_for(dom_dir, dom_md)
    actions = []
    if module.params['state'] in ('present', 'prepared') and vol_uuid is None:
        raise VirtnodeError('volume_uuid is required for state=%s' % module.params['state'], {'field': 'volume_uuid'})
    if module.params['state'] == 'prepared':
        return _prepare(module, store, img_uuid, vol_uuid)
    if module.params.get('block_device'):
        raise VirtnodeError('block_device is for state=prepared', {'field': 'block_device'})
    imported = exported = None
    with contextlib.ExitStack() as stack:
        import_source = stack.enter_context(_import_source(module, store, dom_md, img_uuid, vol_uuid))
        stack.enter_context(domain_lock.dir_lock(dom_dir))
        writer = _Writer(module, dom_md, stack)
        before = volume_view(store, img_uuid, vol_uuid) if vol_uuid else None
        if module.params['state'] == 'present':
            if _leftover(store, img_uuid, vol_uuid, before):
                writer.require('create')
                actions.append('remove_leftover')
                if not module.check_mode:
                    store.delete_volume(img_uuid, vol_uuid)
                before = None
            if before is None:
                _create(module, writer, store, sd_uuid, img_uuid, vol_uuid, parent, size, clone, actions, import_source)
                if import_source is not None and not module.check_mode:
                    imported = image_transfer.transfer_report(import_source, store.read_volume(img_uuid, vol_uuid).capacity)
            else:
                _update(module, writer, store, img_uuid, vol_uuid, parent, size, before, actions)
            if module.params.get('export_to') is not None:
                exported = _export(module, store, img_uuid, vol_uuid, actions)
        else:
            _delete(module, writer, store, img_uuid, vol_uuid, before, actions)

    after = volume_view(store, img_uuid, vol_uuid) if vol_uuid else None
    result = {'changed': bool(actions), 'actions': actions, 'volume': after, 'chain': store.chain_info(img_uuid),
              'imported': imported, 'exported': exported}
    if module._diff:
        result['diff'] = {'before': before or {}, 'after': (after or {}) if not module.check_mode else {'actions': actions}}
    return result
