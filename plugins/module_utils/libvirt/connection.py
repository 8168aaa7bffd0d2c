# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt connection wrapper shared by every virtnode.kvm module and the node agent.

Rules kept here so that callers do not have to think about them:

* ``import libvirt`` is optional: this file imports fine without the bindings
  (``HAS_LIBVIRT`` / ``LIBVIRT_IMPORT_ERROR`` tell what happened), so modules
  can report a clean "missing library" error instead of a traceback.
* :func:`connect` opens one connection, yields it and always closes it. It
  registers no global state (no error handler, no event loop).
* ``libvirt.libvirtError`` never escapes: it is turned into
  :class:`~ansible_collections.virtnode.kvm.plugins.module_utils.common.errors.VirtnodeError`
  with a message naming the URI and libvirt's own error text.
"""

from __future__ import annotations

import contextlib
import traceback

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

try:
    import libvirt
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

    class LibvirtError(Exception):
        """Stand-in for ``libvirt.libvirtError`` when the bindings are missing."""

else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
    LibvirtError = libvirt.libvirtError


DEFAULT_URI = 'qemu:///system'
LIBVIRT_REQUIREMENT = 'libvirt-python (Debian: python3-libvirt)'

# Module options shared by every module that talks to libvirt. Documented by
# the virtnode.kvm.libvirt doc fragment: change both together.
LIBVIRT_ARGUMENT_SPEC = dict(
    uri=dict(type='str', default=DEFAULT_URI),
)

# virErrorNumber values that mean "could not reach the daemon at all".
# Looked up by name so a fake or old binding without them still works.
_UNREACHABLE_ERRORS = ('VIR_ERR_SYSTEM_ERROR', 'VIR_ERR_NO_CONNECT', 'VIR_ERR_RPC')


def require_libvirt(module):
    """Fail ``module`` with the standard missing-library message unless libvirt imports."""
    if HAS_LIBVIRT:
        return
    # Imported here so the node agent can use this file without ansible's
    # module runtime.
    from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
    module.fail_json(msg=missing_required_lib(LIBVIRT_REQUIREMENT), exception=LIBVIRT_IMPORT_ERROR)


def libvirt_argument_spec(**extra):
    """A fresh copy of ``LIBVIRT_ARGUMENT_SPEC`` updated with a module's own options."""
    spec = {name: dict(opts) for name, opts in LIBVIRT_ARGUMENT_SPEC.items()}
    spec.update(extra)
    return spec


def format_version(number):
    """Turn libvirt's packed ``major * 1000000 + minor * 1000 + micro`` into ``'M.m.u'``."""
    if number is None:
        return None
    try:
        number = int(number)
    except (TypeError, ValueError):
        return None
    if number < 0:
        return None
    return '%d.%d.%d' % (number // 1000000, (number // 1000) % 1000, number % 1000)


def library_version():
    """Version of the libvirt client library as ``'M.m.u'`` (None without bindings)."""
    if not HAS_LIBVIRT:
        return None
    try:
        return format_version(libvirt.getVersion())
    except LibvirtError:
        return None


def error_text(exc):
    """libvirt's own message for ``exc`` (falls back to ``str(exc)``)."""
    getter = getattr(exc, 'get_error_message', None)
    text = getter() if callable(getter) else None
    return text or str(exc) or exc.__class__.__name__


def error_details(exc, uri):
    """Machine readable context of a libvirt error, for ``VirtnodeError.details``."""
    details = {'uri': uri, 'libvirt_error': error_text(exc)}
    for key, name in (('code', 'get_error_code'), ('domain', 'get_error_domain')):
        getter = getattr(exc, name, None)
        if callable(getter):
            details[key] = getter()
    return details


def as_error(exc, uri):
    """The VirtnodeError of a libvirt error met on the connection to ``uri``."""
    return VirtnodeError('libvirt error on %s: %s' % (uri, error_text(exc)), details=error_details(exc, uri))


def _unreachable(exc):
    getter = getattr(exc, 'get_error_code', None)
    code = getter() if callable(getter) else None
    codes = set()
    for name in _UNREACHABLE_ERRORS:
        value = getattr(libvirt, name, None)
        if value is not None:
            codes.add(value)
    text = error_text(exc).lower()
    return code in codes and ('socket' in text or 'failed to connect' in text)


def _connect_message(uri, exc):
    message = 'cannot connect to libvirt at %s: %s' % (uri, error_text(exc))
    if _unreachable(exc):
        message += ' (is libvirtd running?)'
    return message


@contextlib.contextmanager
def connect(uri=DEFAULT_URI, readonly=False):
    """Open a libvirt connection to ``uri``; close it when the block ends.

    Any ``libvirt.libvirtError`` raised while opening the connection or inside
    the ``with`` block is re-raised as ``VirtnodeError``. Other exceptions
    pass through untouched.

    Example::

        with connect('qemu:///system', readonly=True) as conn:
            xml = conn.getCapabilities()
    """
    uri = uri or DEFAULT_URI
    if not HAS_LIBVIRT:
        raise VirtnodeError(
            'the libvirt python bindings are not installed; %s is required' % LIBVIRT_REQUIREMENT,
            details={'uri': uri, 'import_error': LIBVIRT_IMPORT_ERROR},
        )
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except LibvirtError as exc:
        raise VirtnodeError(_connect_message(uri, exc), details=error_details(exc, uri)) from exc
    if conn is None:
        # Very old bindings returned None instead of raising.
        raise VirtnodeError('cannot connect to libvirt at %s' % uri, details={'uri': uri})
    try:
        yield conn
    except LibvirtError as exc:
        raise as_error(exc, uri) from exc
    finally:
        try:
            conn.close()
        except LibvirtError:
            pass
