# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

GiB = 1024 ** 3


def test_uuid_accepts_canonical_form():
    value = '275766cb-c7d8-43d6-a663-4e52160de620'
    assert validate.uuid_str(value, 'sd') == value


@pytest.mark.parametrize('value', [
    '275766CB-C7D8-43D6-A663-4E52160DE620',
    '275766cbc7d843d6a6634e52160de620',
    '{275766cb-c7d8-43d6-a663-4e52160de620}',
    '275766cb-c7d8-43d6-a663-4e52160de62',
    '275766cb-c7d8-43d6-a663-4e52160de6200',
    '275766cb-c7d8-43d6-a663-4e52160de62g',
    ' 275766cb-c7d8-43d6-a663-4e52160de620',
    '275766cb-c7d8-43d6-a663-4e52160de620\n',
    '../../etc/passwd',
    '',
    None,
    12,
])
def test_uuid_rejects_everything_else(value):
    with pytest.raises(VirtnodeError) as info:
        validate.uuid_str(value, 'storage domain UUID')
    assert str(info.value) == 'storage domain UUID is not a valid UUID: %s' % (value,)


@pytest.mark.parametrize('value', ['disk1', 'my.disk', '_remove_me_x', 'a' * 255, 'caf\u00e9'])
def test_safe_name_accepts(value):
    assert validate.safe_name(value, 'name') == value


@pytest.mark.parametrize('value, message', [
    ('', 'must not be empty'),
    ('.', "must not be '.'"),
    ('..', "must not be '..'"),
    ('a/b', 'must not contain "/"'),
    ('/etc', 'must not contain "/"'),
    ('a\0b', 'NUL'),
    ('-rf', 'must not start with "-"'),
    ('a' * 256, 'longer than 255 bytes'),
    ('\u00e9' * 128, 'longer than 255 bytes'),
    (None, 'must be a string'),
])
def test_safe_name_rejects(value, message):
    with pytest.raises(VirtnodeError, match=message) as info:
        validate.safe_name(value, 'disk name')
    assert str(info.value).startswith('disk name ')


@pytest.mark.parametrize('value, expected', [
    (0, 0),
    (4096, 4096),
    ('4096', 4096),
    ('512B', 512),
    ('10G', 10 * GiB),
    ('10g', 10 * GiB),
    ('512MiB', 512 * 1024 ** 2),
    ('1.5GiB', 3 * GiB // 2),
    ('1K', 1024),
    ('2KiB', 2048),
    ('3M', 3 * 1024 ** 2),
    ('2T', 2 * 1024 ** 4),
    ('1TiB', 1024 ** 4),
    (' 10 G ', 10 * GiB),
    ('8191T', 8191 * 1024 ** 4),
])
def test_size_bytes_accepts(value, expected):
    assert validate.size_bytes(value, 'size') == expected


@pytest.mark.parametrize('value, message', [
    (-1, 'must not be negative'),
    ('-1G', 'must not be negative'),
    (2 ** 63, 'absurdly large'),
    ('8388608T', 'absurdly large'),
    ('ten', 'is not a size'),
    ('10 GB', 'unknown unit'),
    ('10X', 'unknown unit'),
    ('1.5', 'whole number of bytes'),
    ('1.1K', 'whole number of bytes'),
    ('', 'is not a size'),
    ('1e9', 'is not a size'),
    ('9' * 100, 'is not a size'),
    (1.5, 'must be an integer or a string'),
    (True, 'boolean'),
    (None, 'must be an integer or a string'),
])
def test_size_bytes_rejects(value, message):
    with pytest.raises(VirtnodeError, match=message):
        validate.size_bytes(value, 'size')


def test_size_bytes_limits():
    with pytest.raises(VirtnodeError, match='at least 1 bytes'):
        validate.size_bytes(0, 'size', minimum=1)
    with pytest.raises(VirtnodeError, match='at most 1024 bytes'):
        validate.size_bytes('2K', 'size', maximum=1024)
    assert validate.size_bytes('1K', 'size', minimum=1, maximum=1024) == 1024
    assert validate.size_bytes(2 ** 63 - 1, 'size') == 2 ** 63 - 1


# Characters that split a value into lines, hide or reorder what an administrator reads, or
# cannot be encoded at all. Each class is tried in names, UUIDs, free text, paths and sizes.
UNSAFE_CHARS = [
    pytest.param('\n', id='LF'),
    pytest.param('\r', id='CR'),
    pytest.param('\t', id='TAB'),
    pytest.param('\x0b', id='VT'),
    pytest.param('\x0c', id='FF'),
    pytest.param('\x1b', id='ESC'),
    pytest.param('\x1c', id='FS'),
    pytest.param('\x1e', id='RS'),
    pytest.param('\x7f', id='DEL'),
    pytest.param('\x85', id='NEL'),
    pytest.param('\x9b', id='CSI'),
    pytest.param('\u2028', id='LINE-SEP'),
    pytest.param('\u2029', id='PARA-SEP'),
    pytest.param('\u202a', id='LRE'),
    pytest.param('\u202b', id='RLE'),
    pytest.param('\u202c', id='PDF'),
    pytest.param('\u202d', id='LRO'),
    pytest.param('\u202e', id='RLO'),
    pytest.param('\u2066', id='LRI'),
    pytest.param('\u2067', id='RLI'),
    pytest.param('\u2068', id='FSI'),
    pytest.param('\u2069', id='PDI'),
    pytest.param('\u200e', id='LRM'),
    pytest.param('\u200f', id='RLM'),
    pytest.param('\u061c', id='ALM'),
    pytest.param('\u200b', id='ZWSP'),
    pytest.param('\u200d', id='ZWJ'),
    pytest.param('\u2060', id='WJ'),
    pytest.param('\ufeff', id='BOM'),
    pytest.param('\u00ad', id='SOFT-HYPHEN'),
    pytest.param('\ud800', id='LONE-HIGH-SURROGATE'),
    pytest.param('\udc80', id='LONE-LOW-SURROGATE'),
    pytest.param('\ue000', id='PRIVATE-USE'),
    pytest.param('\U000e0041', id='TAG-A'),
    pytest.param('\ufffe', id='NONCHARACTER'),
]

# Spaces that look like ' ' but are not; refused in names, kept in free text.
LOOKALIKE_SPACES = [
    pytest.param('\u00a0', id='NBSP'),
    pytest.param('\u2007', id='FIGURE-SPACE'),
    pytest.param('\u3000', id='IDEOGRAPHIC-SPACE'),
]

# Digits that int(), float() and Decimal() accept but no one reads as a size.
FOREIGN_DIGITS = [
    pytest.param('\u0661\u0660', id='ARABIC-INDIC'),
    pytest.param('\u06f1\u06f0', id='EXTENDED-ARABIC-INDIC'),
    pytest.param('\u0967\u0966', id='DEVANAGARI'),
    pytest.param('\uff11\uff10', id='FULLWIDTH'),
    pytest.param('\u09e7\u09e6', id='BENGALI'),
    pytest.param('\U0001d7cf\U0001d7ce', id='MATH-BOLD'),
    pytest.param('1\u0660', id='MIXED'),
]


def _refused(func, value, what, *args, controls_shown=False):
    with pytest.raises(VirtnodeError) as info:
        func(value, what, *args)
    assert info.value.details.get('field') == what
    message = str(info.value)
    assert message.startswith(what + ' ')
    # The message itself is safe to print and to encode: the value is escaped in it
    # (a UUID's message keeps showing C0 controls as given, see test_uuid_rejects_everything_else).
    message.encode('utf-8')
    assert not any(ch in message for ch in ('\u202e\u2028' if controls_shown else '\n\r\u202e\u2028'))
    return info.value


@pytest.mark.parametrize('char', UNSAFE_CHARS + LOOKALIKE_SPACES)
@pytest.mark.parametrize('where', ['start', 'middle', 'end'])
def test_safe_name_refuses_unsafe_characters(char, where):
    value = {'start': char + 'vm1', 'middle': 'vm' + char + '1', 'end': 'vm1' + char}[where]
    err = _refused(validate.safe_name, value, 'name')
    assert 'U+%04X' % ord(char) in str(err)


@pytest.mark.parametrize('char', UNSAFE_CHARS + LOOKALIKE_SPACES)
def test_uuid_refuses_unsafe_characters_without_traceback(char):
    _refused(validate.uuid_str, '275766cb-c7d8-43d6-a663-4e52160de62' + char, 'sd_uuid', controls_shown=True)


@pytest.mark.parametrize('char', UNSAFE_CHARS)
def test_text_refuses_unsafe_characters(char):
    err = _refused(validate.text, 'a disk' + char + 'PUUID=x', 'description')
    assert 'U+%04X' % ord(char) in str(err)


@pytest.mark.parametrize('value', ['', 'a disk', 'caf\u00e9 \u65e5\u672c', 'x' * 200, 'a\u00a0b', 'emoji \U0001f600'])
def test_text_accepts(value):
    assert validate.text(value, 'description') == value


def test_text_limits_and_types():
    _refused(validate.text, None, 'description')
    _refused(validate.text, 'x' * 11, 'description', 10)
    assert validate.text('\u00e9' * 5, 'description', 10) == '\u00e9' * 5
    _refused(validate.text, '\u00e9' * 6, 'description', 10)


@pytest.mark.parametrize('char', UNSAFE_CHARS + LOOKALIKE_SPACES)
def test_abs_path_refuses_unsafe_characters(char):
    _refused(validate.abs_path, '/srv/iso/x' + char + '.iso', 'cdrom')


@pytest.mark.parametrize('value', ['relative/x', '', '/a/../etc/shadow', '/a/./b', '-o', '/a\0b', 'C:\\x', None])
def test_abs_path_refuses(value):
    _refused(validate.abs_path, value, 'path')


@pytest.mark.parametrize('value', ['/', '/srv/iso/debian 12.iso', '/dev/disk/by-id/wwn-0x5000c500a1b2c3d4', '/srv//x'])
def test_abs_path_accepts(value):
    assert validate.abs_path(value, 'path') == value


@pytest.mark.parametrize('digits', FOREIGN_DIGITS)
@pytest.mark.parametrize('unit', ['', 'G', 'MiB'])
def test_size_bytes_refuses_non_ascii_digits(digits, unit):
    err = _refused(validate.size_bytes, digits + unit, 'size')
    assert 'ASCII' in str(err) or 'is not a size' in str(err)


@pytest.mark.parametrize('value', ['1\uff27', '10\u00a0G', '10G\n', '1_0', '\u0661.5G', '1.\u0665G', '10 G\u200b', '+10', '0x10'])
def test_size_bytes_refuses_other_lookalikes(value):
    _refused(validate.size_bytes, value, 'size')


@pytest.mark.parametrize('char', UNSAFE_CHARS)
def test_size_bytes_refuses_unsafe_characters_without_traceback(char):
    _refused(validate.size_bytes, '10' + char + 'G', 'size')


@pytest.mark.parametrize('value', [digits.values[0] for digits in FOREIGN_DIGITS] + ['1_0', 'nan', 'inf', '1e1', True, '\ud800'])
def test_sample_interval_refuses_foreign_numbers(value):
    _refused(validate.sample_interval, value, 'sample_interval')


@pytest.mark.parametrize('value, expected', [(0, 0.0), (2, 2.0), (1.5, 1.5), ('3', 3.0), ('0.5', 0.5), (' 2 ', 2.0)])
def test_sample_interval_accepts(value, expected):
    assert validate.sample_interval(value) == expected


@pytest.mark.parametrize('value', [digits.values[0] for digits in FOREIGN_DIGITS] + ['1_0', ' 1\n', '+1', '0x1', '1.0', True, None, 1.5])
def test_integer_refuses_everything_but_ascii_digits(value):
    _refused(validate.integer, value, 'vlan')


@pytest.mark.parametrize('value, expected', [(5, 5), ('5', 5), ('4094', 4094), ('-3', -3)])
def test_integer_accepts(value, expected):
    assert validate.integer(value, 'vlan') == expected
