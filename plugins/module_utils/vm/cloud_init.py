# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud-init NoCloud seed of a VM: an ISO9660 image labelled ``cidata``.

cloud-init's NoCloud datasource looks for a file system labelled ``cidata``
holding ``user-data``, ``meta-data`` and optionally ``network-config``. The
image is built on the managed host with pycdlib (Debian: python3-pycdlib,
installed by the bootstrap role), with Rock Ridge (the Linux guest's kernel
shows the real file names) and Joliet (other guests do), as ``genisoimage
-volid cidata -joliet -rock`` would.

* :func:`normalize` checks the ``cloud_init`` option and renders it as the
  exact bytes of each file, so what is compared and written is canonical.
* :func:`seed_path` is where a VM's seed lives.
* :func:`ensure_seed` makes that file hold those bytes, idempotently: an
  existing image is read back and compared file by file, never by its own
  bytes (pycdlib stamps the build time into every image, with no way to fix it).
* :func:`remove_seed` removes it when the VM or its ``cloud_init`` goes.

For whoever attaches it: the seed is a read-only CD-ROM of the VM
(``<disk type='file' device='cdrom'>`` with ``<driver type='raw'/>`` and
``<readonly/>``), on a target other than the one of the ``cdrom`` option
(:func:`spec.cdrom_device` takes ``sdc``/``hdc``). It exists on this host
only: :func:`ensure_seed` must run on a migration's destination before the
VM moves there, and it is cheap where the seed is already right. QEMU keeps
the file it opened, so a seed rewritten while the VM runs is seen at the
next start; cloud-init itself only runs its per-instance modules again when
``instance-id`` changes (it defaults to the VM's UUID: once per VM).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import stat

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

# Not the records directory (vm/records.py): that one is private to root (0700), so QEMU, which runs
# as its own user, could not reach a seed there, and records are forgotten on their own schedule.
SEED_DIR = '/var/lib/virtnode/cloud-init'
SEED_SUFFIX = '-cidata.iso'
# What cloud-init's NoCloud datasource looks for (blkid's label of the image).
VOLUME_LABEL = 'cidata'
# QEMU opens the image as its own user: the file is readable by all, its directories searchable.
SEED_MODE = 0o644
SEED_DIR_MODE = 0o755

USER_DATA = 'user-data'
META_DATA = 'meta-data'
NETWORK_CONFIG = 'network-config'
# File name in the seed -> its ISO9660 level 1 name (8.3, upper case); Rock Ridge and Joliet carry the real one.
_ISO_NAMES = {USER_DATA: 'USERDATA.;1', META_DATA: 'METADATA.;1', NETWORK_CONFIG: 'NETWORKC.;1'}
# Option key -> file name.
OPTION_FILES = {'user_data': USER_DATA, 'meta_data': META_DATA, 'network_config': NETWORK_CONFIG}
CLOUD_CONFIG_HEADER = '#cloud-config\n'

# Far more than any cloud-config needs; the seed is built in memory and read back in memory.
MAX_SEED_BYTES = 1024 ** 2
# An existing image larger than this is no seed of ours (the files plus the ISO's own structures).
MAX_IMAGE_BYTES = MAX_SEED_BYTES + 1024 ** 2
# Nesting of a user_data, meta_data or network_config mapping.
MAX_DEPTH = 64
_PVD_OFFSET = 16 * 2048
_LABEL = slice(40, 72)

# RFC 1123 host names: the VM's name is the default local-hostname only if it is one.
_HOSTNAME_RE = re.compile(r'\A(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
                          r'(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z', re.ASCII)
# Characters JSON leaves as they are but YAML 1.1 (PyYAML, cloud-init's parser) may not read back as
# written: DEL, C1 controls and U+FFFE/U+FFFF are refused as non-printable, NEL folds into a space even
# inside a quoted string; the Unicode line and paragraph separators and a BOM are line breaks or stream
# marks to some YAML readers. All are written as \u escapes, which read back the same everywhere.
_YAML_ESCAPED = re.compile('[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]')


def require_pycdlib():
    """The pycdlib module, imported only when a seed is built or read (most runs of a module need none)."""
    try:
        import pycdlib  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise VirtnodeError('python pycdlib is required on the managed host to build the cloud-init seed '
                            '(Debian: python3-pycdlib, installed by the virtnode.kvm.bootstrap role)') from err
    return pycdlib


# --------------------------------------------------------------------------
# the option

def _fail(field, why):
    return VirtnodeError('%s %s' % (field, why), {'field': field})


def _yaml_string(value, field):
    try:
        value.encode('utf-8')
    except UnicodeEncodeError as err:
        raise _fail(field, 'is not valid text: %s' % err) from err
    return _YAML_ESCAPED.sub(lambda match: '\\u%04x' % ord(match.group()), _json_string(value))


def _json_string(value):
    # ensure_ascii=False keeps other scripts readable in the seed; the only raw characters left are inside
    # string literals, so escaping some of them afterwards cannot touch JSON's own syntax.
    return json.dumps(str(value), ensure_ascii=False)


def _float(value, field):
    if not math.isfinite(value):
        raise _fail(field, 'must be a finite number, got %r' % value)
    text = float.__repr__(value)
    # PyYAML reads 1e+20 as a string: YAML 1.1 floats have a dot.
    if 'e' in text and '.' not in text:
        mantissa, exponent = text.split('e')
        text = '%s.0e%s' % (mantissa, exponent)
    return text


def _render(value, field, depth=0):
    """``value`` as indented JSON with sorted keys, written so YAML 1.1 reads the same value back.

    JSON is YAML, so the seed needs no YAML library on the host; the few
    places where YAML 1.1 reads JSON differently are written its way.
    Anything JSON cannot hold exactly is refused rather than converted
    (keys that are not strings, NaN, sets, bytes), naming where it is.
    """
    if depth > MAX_DEPTH:
        raise _fail(field, 'is nested deeper than %d levels' % MAX_DEPTH)
    pad = '  ' * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return '{}'
        for key in value:
            if not isinstance(key, str):
                raise _fail(field, 'has a key that is not a string: %r (%s)' % (key, type(key).__name__))
        items = ['%s%s: %s' % (pad, _yaml_string(key, field), _render(value[key], '%s.%s' % (field, key), depth + 1))
                 for key in sorted(value)]
        return '{\n%s\n%s}' % (',\n'.join(items), '  ' * depth)
    if isinstance(value, (list, tuple)):
        if not value:
            return '[]'
        items = ['%s%s' % (pad, _render(item, '%s[%d]' % (field, index), depth + 1)) for index, item in enumerate(value)]
        return '[\n%s\n%s]' % (',\n'.join(items), '  ' * depth)
    if isinstance(value, str):
        return _yaml_string(value, field)
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value, field)
    raise _fail(field, 'holds a value of type %s; only mappings, lists, strings, numbers, booleans and null are allowed'
                % type(value).__name__)


def _text(value, field):
    """A string given as the file's content, written as it is."""
    try:
        data = value.encode('utf-8')
    except UnicodeEncodeError as err:
        raise _fail(field, 'is not valid text: %s' % err) from err
    if b'\0' in data:
        raise _fail(field, 'must not contain a NUL character')
    return data


def _check_size(field, data):
    if len(data) > MAX_SEED_BYTES:
        raise _fail(field, 'is %d bytes; the cloud-init seed may hold at most %d bytes' % (len(data), MAX_SEED_BYTES))
    return data


def _user_data(value, field):
    if isinstance(value, str):
        return _text(value, field)
    if isinstance(value, dict):
        return (CLOUD_CONFIG_HEADER + _render(value, field) + '\n').encode('utf-8')
    raise _fail(field, 'must be a string (e.g. "#cloud-config\\n...") or a mapping (a cloud-config), got %s'
                % type(value).__name__)


def _meta_data(value, field, vm_uuid, vm_name):
    if isinstance(value, str):
        return _text(value, field)
    if not isinstance(value, dict):
        raise _fail(field, 'must be a mapping or a string, got %s' % type(value).__name__)
    # cloud-init keys its per-instance state by instance-id: the VM's UUID makes that once per VM.
    merged = {'instance-id': vm_uuid}
    if vm_name is not None and _HOSTNAME_RE.match(vm_name):
        merged['local-hostname'] = vm_name
    merged.update(value)
    # It is a directory name in the guest (/var/lib/cloud/instances/<instance-id>).
    validate.safe_name(merged['instance-id'], '%s.instance-id' % field)
    if merged.get('local-hostname') is not None:
        validate.text(merged['local-hostname'], '%s.local-hostname' % field)
    return (_render(merged, field) + '\n').encode('utf-8')


def _network_config(value, field):
    if isinstance(value, str):
        return _text(value, field)
    if not isinstance(value, dict):
        raise _fail(field, 'must be a mapping (network-config version 2) or a string, got %s' % type(value).__name__)
    # Without a version cloud-init ignores the file and the guest comes up with its fallback network.
    top = value['network'] if isinstance(value.get('network'), dict) else value
    version = top.get('version')
    if isinstance(version, bool) or version not in (1, 2):
        raise _fail(field, 'needs "version: 2" (network-config version 2; version 1 is also read), got %r' % (version,))
    return (_render(value, field) + '\n').encode('utf-8')


def normalize(cloud_init, vm_uuid, vm_name=None, field='cloud_init'):
    """The files of the seed, ``{file name: bytes}``, from the ``cloud_init`` option; None for no seed.

    ``cloud_init`` is ``{user_data, meta_data, network_config}`` (a key that
    is missing or None is not given):

    * ``user_data``: a string, written as it is (a ``#cloud-config``, a
      script, MIME multipart), or a mapping, written as a cloud-config:
      ``#cloud-config`` and the mapping as JSON, which is YAML and needs no
      YAML library on the host. Not given: an empty file (NoCloud needs one).
    * ``meta_data``: a mapping, with ``instance-id`` defaulting to
      ``vm_uuid`` and ``local-hostname`` to ``vm_name`` when that is a valid
      host name; or a string, written as it is (no defaults).
    * ``network_config``: a network-config (version 2) mapping, or a string;
      not given, the seed has no ``network-config`` and the guest uses its own.

    Mappings are written with sorted keys, so the same option always gives
    the same bytes and :func:`ensure_seed` sees no change.
    """
    vm_uuid = validate.uuid_str(vm_uuid, 'VM UUID')
    if cloud_init is None:
        return None
    if not isinstance(cloud_init, dict):
        raise _fail(field, 'must be a mapping of %s, got %s' % (', '.join(sorted(OPTION_FILES)), type(cloud_init).__name__))
    unknown = sorted(str(key) for key in cloud_init if key not in OPTION_FILES)
    if unknown:
        raise _fail(field, 'has unknown keys %s (allowed: %s)' % (', '.join(unknown), ', '.join(sorted(OPTION_FILES))))
    user_data = cloud_init.get('user_data')
    meta_data = cloud_init.get('meta_data')
    network_config = cloud_init.get('network_config')
    files = {
        USER_DATA: b'' if user_data is None else _check_size(field + '.user_data', _user_data(user_data, field + '.user_data')),
        META_DATA: _check_size(field + '.meta_data', _meta_data({} if meta_data is None else meta_data, field + '.meta_data',
                                                                vm_uuid, vm_name)),
    }
    if network_config is not None:
        files[NETWORK_CONFIG] = _check_size(field + '.network_config', _network_config(network_config, field + '.network_config'))
    total = sum(len(data) for data in files.values())
    if total > MAX_SEED_BYTES:
        sizes = ', '.join('%s %d' % (name, len(files[name])) for name in sorted(files))
        raise _fail(field, 'is %d bytes in all (%s); the cloud-init seed may hold at most %d bytes' % (total, sizes, MAX_SEED_BYTES))
    return files


# --------------------------------------------------------------------------
# the image

def seed_path(vm_uuid, seed_dir=SEED_DIR):
    """``<seed_dir>/<uuid>/<uuid>-cidata.iso``: a directory per VM, and a file name that still says whose it is."""
    vm_uuid = validate.uuid_str(vm_uuid, 'VM UUID')
    return os.path.join(seed_dir, vm_uuid, vm_uuid + SEED_SUFFIX)


def is_seed_path(path, seed_dir=SEED_DIR):
    """True for a path :func:`seed_path` gives (how a domain's seed drive is told from its other CD-ROM)."""
    if not path:
        return False
    directory, name = os.path.split(path)
    return os.path.dirname(directory) == seed_dir and name == os.path.basename(directory) + SEED_SUFFIX


def _check_files(files):
    if not isinstance(files, dict):
        raise VirtnodeError('the cloud-init seed files must be a mapping of file name to bytes, got %s' % type(files).__name__)
    unknown = sorted(str(name) for name in files if name not in _ISO_NAMES)
    missing = sorted(name for name in (USER_DATA, META_DATA) if name not in files)
    if unknown or missing:
        raise VirtnodeError('the cloud-init seed holds %s, %s and optionally %s; got unknown %s, missing %s'
                            % (USER_DATA, META_DATA, NETWORK_CONFIG, unknown or 'none', missing or 'none'))
    for name, data in files.items():
        if not isinstance(data, bytes):
            raise VirtnodeError('the cloud-init seed file %s must be bytes, got %s' % (name, type(data).__name__))
    total = sum(len(data) for data in files.values())
    if total > MAX_SEED_BYTES:
        raise VirtnodeError('the cloud-init seed files are %d bytes; at most %d are allowed' % (total, MAX_SEED_BYTES))


def build_image(files):
    """The bytes of an ISO9660 image labelled ``cidata`` holding ``files`` (Joliet and Rock Ridge)."""
    _check_files(files)
    pycdlib = require_pycdlib()
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge='1.09')
        for name in sorted(files):
            data = files[name]
            iso.add_fp(io.BytesIO(data), len(data), '/' + _ISO_NAMES[name], rr_name=name, joliet_path='/' + name)
        out = io.BytesIO()
        iso.write_fp(out)
    except pycdlib.pycdlibexception.PyCdlibException as err:
        raise VirtnodeError('cannot build the cloud-init seed image: %s' % err) from err
    finally:
        _close(iso)
    return out.getvalue()


def _close(iso):
    try:
        iso.close()
    except Exception:  # pylint: disable=broad-except  # an image that was never opened or is damaged
        pass


def read_image(data):
    """``{file name: bytes}`` of a seed image, or the reason it is not one (a str).

    Anything not made the way :func:`build_image` makes it (another label,
    no Rock Ridge or Joliet, a directory, a file too large) is not a seed;
    neither is a truncated or garbage file, whatever pycdlib makes of it.
    """
    if len(data) < _PVD_OFFSET + 2048 or data[_PVD_OFFSET:_PVD_OFFSET + 6] != b'\x01CD001':
        return 'not an ISO9660 image'
    label = data[_PVD_OFFSET:_PVD_OFFSET + 2048][_LABEL].rstrip(b' ')
    if label != VOLUME_LABEL.encode('ascii'):
        return 'volume label is %r, not %r' % (label.decode('latin-1'), VOLUME_LABEL)
    pycdlib = require_pycdlib()
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
        if not iso.has_rock_ridge() or not iso.has_joliet():
            return 'no Rock Ridge or Joliet names'
        found = {}
        for child in iso.list_children(rr_path='/'):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode('utf-8') if child.rock_ridge is not None else None
            if child.is_dir() or name not in _ISO_NAMES or name in found:
                return 'unexpected entry %r' % (name or child.file_identifier().decode('latin-1'))
            # pycdlib cuts the length to what the image holds; the directory record says what was written.
            length = max(child.get_data_length(), getattr(child, 'data_length', 0))
            if length > MAX_SEED_BYTES:
                return '%s is larger than a seed file may be' % name
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path='/' + name)
            if len(out.getvalue()) != length:
                return '%s is truncated' % name
            found[name] = out.getvalue()
        return found
    except Exception as err:  # pylint: disable=broad-except  # whatever a damaged image makes pycdlib raise
        return 'unreadable image: %s' % (err or type(err).__name__)
    finally:
        _close(iso)


def _read_existing(path):
    """``(exists, bytes, mode)`` of the regular file ``path``; bytes is None if it is too large. Links are refused."""
    try:
        fd = fileio.open_beneath(path, os.O_RDONLY, action='read')
    except VirtnodeError as err:
        if err.details.get('errno') == errno.ENOENT:
            return False, None, None
        raise
    try:
        st = os.fstat(fd)
        if st.st_size > MAX_IMAGE_BYTES:
            return True, None, stat.S_IMODE(st.st_mode)
        with os.fdopen(os.dup(fd), 'rb') as stream:
            data = stream.read(MAX_IMAGE_BYTES + 1)
        return True, (data if len(data) <= MAX_IMAGE_BYTES else None), stat.S_IMODE(st.st_mode)
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err), {'path': path, 'errno': err.errno}) from err
    finally:
        os.close(fd)


def ensure_seed(path, files, check_mode=False):
    """Make ``path`` the seed image holding exactly ``files``; ``(changed, info)``.

    An existing image is read back: the same files with the same bytes is no
    change (only a wrong mode is set right). Anything else, including a
    truncated or garbage file, is replaced by a new image written through
    :func:`fileio.write_atomic` (temp file in the same directory, fsync,
    rename), mode 0644 in a directory created 0755, so QEMU can read it and
    a crash leaves the old seed or the new one. A link at ``path`` is refused.
    ``info`` is ``{path, files, action, reason, differs}``: ``action`` one of
    ``created``, ``replaced``, ``mode``, ``unchanged``. Check mode writes nothing.
    """
    path = validate.abs_path(path, 'cloud-init seed path')
    _check_files(files)
    require_pycdlib()
    info = {'path': path, 'files': sorted(files), 'action': 'unchanged', 'reason': None, 'differs': []}
    exists, existing, mode = _read_existing(path)
    if not exists:
        info.update(action='created', reason='no seed yet')
    else:
        found = read_image(existing) if existing is not None else 'larger than any seed'
        if isinstance(found, str):
            info.update(action='replaced', reason=found)
        elif found != files:
            info.update(action='replaced', reason='content differs',
                        differs=sorted(name for name in set(found) | set(files) if found.get(name) != files.get(name)))
        elif mode != SEED_MODE:
            info.update(action='mode', reason='mode is %04o' % mode)
    if info['action'] == 'unchanged':
        return False, info
    if check_mode:
        return True, info
    if info['action'] == 'mode':
        try:
            fileio.set_mode_owner(path, SEED_MODE)
        except OSError as err:
            raise VirtnodeError('cannot set the mode of %s: %s' % (path, err.strerror or err), {'path': path}) from err
        return True, info
    image = build_image(files)
    directory = os.path.dirname(path)
    try:
        fileio.make_dirs(directory, SEED_DIR_MODE)
    except OSError as err:
        raise VirtnodeError('cannot create %s: %s' % (directory, err.strerror or err), {'path': directory}) from err
    fileio.write_atomic(path, image, mode=SEED_MODE)
    return True, info


def remove_seed(path, check_mode=False):
    """Remove the seed image ``path`` (the VM is gone, or no longer has ``cloud_init``); ``(changed, info)``.

    Temp files a crashed write left beside it go too, and so does the VM's
    directory once empty (only the one :func:`seed_path` names, never
    another). Anything at ``path`` but a regular file is refused.
    """
    path = validate.abs_path(path, 'cloud-init seed path')
    directory, name = os.path.split(path)
    info = {'path': path, 'action': 'absent'}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise VirtnodeError('cannot read %s: %s' % (path, err.strerror or err), {'path': path, 'errno': err.errno}) from err
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise VirtnodeError('refusing to remove %s: it is not a regular file (mode %o)' % (path, st.st_mode), {'path': path})
    try:
        leftovers = sorted(entry for entry in os.listdir(directory)
                           if entry.startswith('%s%s.' % (fileio.TEMP_PREFIX, name)) and entry.endswith(fileio.OWN_TEMP_SUFFIX))
    except FileNotFoundError:
        leftovers = []
    except OSError as err:
        raise VirtnodeError('cannot list %s: %s' % (directory, err.strerror or err), {'path': directory}) from err
    if st is None and not leftovers:
        return False, info
    info['action'] = 'removed' if st is not None else 'cleaned'
    if check_mode:
        return True, info
    try:
        for entry in ([name] if st is not None else []) + leftovers:
            try:
                os.unlink(os.path.join(directory, entry))
            except FileNotFoundError:
                pass
        fileio.fsync_directory(directory)
    except OSError as err:
        raise VirtnodeError('cannot remove %s: %s' % (path, err.strerror or err), {'path': path, 'errno': err.errno}) from err
    if os.path.basename(directory) + SEED_SUFFIX == name:
        try:
            os.rmdir(directory)
        except OSError:
            pass  # not empty: whatever else is there is not ours to remove
    return True, info
