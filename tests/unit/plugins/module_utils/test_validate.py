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
