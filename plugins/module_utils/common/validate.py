# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Input validation shared by every module.

Values checked here end up in paths under /rhev/data-center and in files
other hosts read, so the rules are strict: one canonical spelling of a UUID,
file names that cannot climb out of their directory, sizes that are whole
bytes.

Every text value is also checked for characters that split it into lines
(which metadata readers use as separators), that hide or reorder what an
administrator reads in a log, a file listing or ``virsh list`` (controls, bidi
overrides and isolates, zero-width and other invisible characters), or that
cannot be encoded at all (lone surrogates). Numbers are ASCII digits only:
``int()`` also reads Arabic-Indic or fullwidth digits, which nobody reviewing a
playbook reads as the number stored.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

# VDSM compares UUIDs as strings and uses them as file names, so only the
# canonical lowercase form is accepted: one UUID, one path.
_UUID_RE = re.compile(r'\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')

NAME_MAX_BYTES = 255

# qemu and the kernel both keep sizes in a signed 64-bit integer.
MAX_SIZE_BYTES = 2 ** 63 - 1

_UNIT_FACTORS = {
    '': 1, 'B': 1,
    'K': 1024, 'KIB': 1024,
    'M': 1024 ** 2, 'MIB': 1024 ** 2,
    'G': 1024 ** 3, 'GIB': 1024 ** 3,
    'T': 1024 ** 4, 'TIB': 1024 ** 4,
}
# ASCII only (re.ASCII): \d alone would match any script's digits, \s any space.
_SIZE_RE = re.compile(r'\A *([0-9]+(?:\.[0-9]+)?) *([A-Za-z]*) *\Z', re.ASCII)
_INT_RE = re.compile(r'\A-?[0-9]+\Z', re.ASCII)
_FLOAT_RE = re.compile(r'\A *[0-9]+(?:\.[0-9]+)? *\Z', re.ASCII)
# Longer strings cannot hold a sensible size; refusing them early keeps
# int()/Decimal() away from pathological input.
_SIZE_TEXT_MAX = 64


# Unicode general categories refused in every text value: controls (C0, C1,
# DEL; includes \n, \r, \v, \f, \x1c-\x1e, \x85 that str.splitlines() splits on),
# format characters (bidi embeddings, overrides, isolates and marks, zero-width
# characters, BOM, soft hyphen, tags), lone surrogates, private use,
# unassigned code points and non-characters, line and paragraph separators.
_REFUSED_CATEGORIES = {
    'Cc': 'a control character',
    'Cf': 'an invisible or bidirectional formatting character',
    'Cs': 'a lone surrogate',
    'Co': 'a private-use character',
    'Cn': 'an unassigned character',
    'Zl': 'a line separator',
    'Zp': 'a paragraph separator',
}


def char_problem(value, spaces=True):
    """Why ``value`` (a str) is not safe text, or None.

    ``spaces=False`` also refuses every space but ASCII ' ' (no-break,
    ideographic, figure spaces...), which make two names look alike.
    """
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        why = _REFUSED_CATEGORIES.get(category)
        if why is None and not spaces and category == 'Zs' and char != ' ':
            why = 'a space other than " "'
        if why:
            return 'must not contain %s (U+%04X at position %d)' % (why, ord(char), index)
    return None


def _shown(value):
    # ascii() escapes controls, bidi characters and surrogates, so the error message
    # prints as it is and can always be encoded.
    return ascii(value)


def _check_chars(value, what, spaces=True):
    problem = char_problem(value, spaces)
    if problem:
        raise VirtnodeError('%s %s: %s' % (what, problem, _shown(value)), {'field': what})


def uuid_str(value, what):
    """Return ``value`` if it is a canonical lowercase UUID string."""
    if not isinstance(value, str) or not _UUID_RE.match(value):
        # The message has always shown the value as given; only what cannot be printed or encoded is escaped.
        if isinstance(value, str) and any(unicodedata.category(char) not in ('Cc', 'Zs') and char_problem(char) for char in value):
            raise VirtnodeError('%s is not a valid UUID: %s' % (what, _shown(value)), {'field': what})
        raise VirtnodeError('%s is not a valid UUID: %s' % (what, value), {'field': what})
    return value


def text(value, what, max_bytes=None):
    """Return ``value`` if it is one line of printable text (at most ``max_bytes`` UTF-8 bytes)."""
    if not isinstance(value, str):
        raise VirtnodeError('%s must be a string, got %s' % (what, type(value).__name__), {'field': what})
    _check_chars(value, what)
    if max_bytes is not None and len(value.encode('utf-8')) > max_bytes:
        raise VirtnodeError('%s is longer than %d bytes: %s' % (what, max_bytes, _shown(value)), {'field': what})
    return value


def abs_path(value, what):
    """Return ``value`` if it is a normalized absolute path of safe characters (no ``..``, ``.``)."""
    if not isinstance(value, str):
        raise VirtnodeError('%s must be a string, got %s' % (what, type(value).__name__), {'field': what})
    if not value.startswith('/'):
        raise VirtnodeError('%s must be an absolute path: %s' % (what, _shown(value)), {'field': what})
    if '\0' in value:
        raise VirtnodeError('%s must not contain a NUL character: %s' % (what, _shown(value)), {'field': what})
    _check_chars(value, what, spaces=False)
    if any(part in ('.', '..') for part in value.split('/')):
        raise VirtnodeError('%s must not contain "." or ".." components: %s' % (what, value), {'field': what})
    return value


def safe_name(value, what):
    """Return ``value`` if it can be used as one path component."""
    if not isinstance(value, str):
        raise VirtnodeError('%s must be a string, got %s' % (what, type(value).__name__), {'field': what})
    if not value:
        raise VirtnodeError('%s must not be empty' % what, {'field': what})
    if value in ('.', '..'):
        raise VirtnodeError('%s must not be %r' % (what, value), {'field': what})
    if '/' in value:
        raise VirtnodeError('%s must not contain "/": %s' % (what, value), {'field': what})
    if '\0' in value:
        raise VirtnodeError('%s must not contain a NUL character: %s' % (what, _shown(value)), {'field': what})
    _check_chars(value, what, spaces=False)
    if value.startswith('-'):
        # A leading dash turns the name into an option for the commands it is passed to.
        raise VirtnodeError('%s must not start with "-": %s' % (what, value), {'field': what})
    if len(value.encode('utf-8')) > NAME_MAX_BYTES:
        raise VirtnodeError('%s is longer than %d bytes: %s' % (what, NAME_MAX_BYTES, value), {'field': what})
    return value


def _parse_size_text(value, what):
    match = _SIZE_RE.match(value) if len(value) <= _SIZE_TEXT_MAX else None
    if not match:
        ascii_hint = '' if value.isascii() else '; digits and units are ASCII only'
        raise VirtnodeError('%s is not a size: %s (use e.g. 4096, 512MiB, 10G, 1.5GiB%s)' % (what, _shown(value), ascii_hint),
                            {'field': what})
    number, unit = match.groups()
    factor = _UNIT_FACTORS.get(unit.upper())
    if factor is None:
        raise VirtnodeError('%s has an unknown unit %r in %r (units: B, K/KiB, M/MiB, G/GiB, T/TiB; all powers of 1024)'
                            % (what, unit, value), {'field': what})
    try:
        exact = Decimal(number) * factor
    except InvalidOperation as err:
        raise VirtnodeError('%s is not a size: %r' % (what, value), {'field': what}) from err
    if exact != exact.to_integral_value():
        raise VirtnodeError('%s is not a whole number of bytes: %r' % (what, value), {'field': what})
    return int(exact)


def size_bytes(value, what, minimum=0, maximum=None):
    """Return ``value`` (an int or a string such as ``10G``) as a number of bytes."""
    if isinstance(value, bool):
        raise VirtnodeError('%s must be a size, got a boolean' % what, {'field': what})
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        if value.strip(' ').startswith('-'):
            raise VirtnodeError('%s must not be negative: %s' % (what, _shown(value)), {'field': what})
        size = _parse_size_text(value, what)
    else:
        raise VirtnodeError('%s must be an integer or a string like 10G, got %s' % (what, type(value).__name__),
                            {'field': what})
    if size < 0:
        raise VirtnodeError('%s must not be negative: %s' % (what, value), {'field': what})
    if size > MAX_SIZE_BYTES:
        raise VirtnodeError('%s is absurdly large: %s (limit is 2**63-1 bytes)' % (what, value), {'field': what})
    if size < minimum:
        raise VirtnodeError('%s must be at least %d bytes, got %s' % (what, minimum, value), {'field': what})
    if maximum is not None and size > maximum:
        raise VirtnodeError('%s must be at most %d bytes, got %s' % (what, maximum, value), {'field': what})
    return size


# Two samples further apart than this make a module run wait too long for a rate.
MAX_SAMPLE_INTERVAL = 60.0


def sample_interval(value, what='sample_interval'):
    """``value`` as a float number of seconds from 0 to MAX_SAMPLE_INTERVAL (0: one sample, no rates)."""
    # float() also reads other scripts' digits, '1_0', 'nan' and '1e1': text must be plain ASCII decimals.
    if isinstance(value, bool) or (isinstance(value, str) and not _FLOAT_RE.match(value)):
        raise VirtnodeError('%s must be a number of seconds, got %s' % (what, _shown(value)), {'field': what})
    try:
        interval = float(value)
    except (TypeError, ValueError) as exc:
        raise VirtnodeError('%s must be a number of seconds, got %r' % (what, value), {'field': what}) from exc
    if not 0 <= interval <= MAX_SAMPLE_INTERVAL:
        raise VirtnodeError('%s must be between 0 and %g seconds, got %g' % (what, MAX_SAMPLE_INTERVAL, interval),
                            {'field': what})
    return interval


def integer(value, what):
    """``value`` (an int, or a string of ASCII digits with an optional '-') as an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # int() also reads other scripts' digits, surrounding whitespace and '1_0'.
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    raise VirtnodeError('%s must be an integer, got %s' % (what, _shown(value)), {'field': what})
