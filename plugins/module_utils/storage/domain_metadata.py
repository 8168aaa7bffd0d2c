# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage domain metadata (``<domain>/dom_md/metadata``) in VDSM's format.

On disk: one ``KEY=VALUE`` line per key, sorted by key, then a last line
``_SHA_CKSUM=<sha1 hex>``; every line ends with a newline. The checksum
("seal") covers the sorted ``KEY=VALUE`` strings concatenated without
separators, each encoded as ASCII with XML character references for
anything else. A file without a seal is trusted as it is; a wrong seal
means the file was changed behind VDSM's back and is refused.

``parse``/``serialize`` work on the raw ``{key: string}`` form so unknown
keys survive a round trip; ``DomainMetadata`` gives typed, validated access
to the keys this collection understands.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from ansible_collections.virtnode.kvm.plugins.module_utils.common import fileio
from ansible_collections.virtnode.kvm.plugins.module_utils.common import validate
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

CHECKSUM_KEY = '_SHA_CKSUM'

SDUUID = 'SDUUID'
VERSION = 'VERSION'
TYPE = 'TYPE'
CLASS = 'CLASS'
ROLE = 'ROLE'
POOL_UUID = 'POOL_UUID'
DESCRIPTION = 'DESCRIPTION'
REMOTE_PATH = 'REMOTE_PATH'
LOCKPOLICY = 'LOCKPOLICY'
IOOPTIMEOUTSEC = 'IOOPTIMEOUTSEC'
LEASERETRIES = 'LEASERETRIES'
LEASETIMESEC = 'LEASETIMESEC'
LOCKRENEWALINTERVALSEC = 'LOCKRENEWALINTERVALSEC'
ALIGNMENT = 'ALIGNMENT'
BLOCK_SIZE = 'BLOCK_SIZE'
# Keys the master domain carries for its pool.
POOL_DOMAINS = 'POOL_DOMAINS'
POOL_DESCRIPTION = 'POOL_DESCRIPTION'
POOL_SPM_ID = 'POOL_SPM_ID'
POOL_SPM_LVER = 'POOL_SPM_LVER'
MASTER_VERSION = 'MASTER_VERSION'

DOMAIN_TYPES = ('NFS', 'LOCALFS', 'POSIXFS', 'GLUSTERFS', 'CIFS', 'FCP', 'ISCSI')
DOMAIN_CLASSES = ('Data', 'Iso', 'Backup')
DOMAIN_ROLES = ('Regular', 'Master')
READABLE_VERSIONS = (4, 5)
CURRENT_VERSION = 5
# ALIGNMENT and BLOCK_SIZE exist since version 5; older domains are 1 MiB / 512 B.
FIRST_VERSION_WITH_ALIGNMENT = 5
DEFAULT_ALIGNMENT = 1024 ** 2
DEFAULT_BLOCK_SIZE = 512
SUPPORTED_ALIGNMENTS = tuple(n * 1024 ** 2 for n in (1, 2, 4, 8))
SUPPORTED_BLOCK_SIZES = (512, 4096)
# Domain types VDSM creates with 4 KiB blocks (its LocalFs and Gluster domains); NFS and POSIX: 512 only.
BLOCK_SIZE_4K_TYPES = ('LOCALFS', 'GLUSTERFS')
# VDSM's limit for a domain description.
MAX_DESCRIPTION_LENGTH = 50

# A line ends at '\n' and nowhere else, for the writer and the reader alike. Every other
# character some parser treats as a line end (str.splitlines, or bytes.splitlines for '\r')
# is refused in keys and values, and in a file, so no value can start a line of its own.
LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'
FORBIDDEN_IN_VALUES = LINE_BREAKS + '\0'
# The most a domain metadata file may hold (a pool of many domains is a few KiB).
READ_LIMIT = 1024 ** 2
DOM_MD_DIR = 'dom_md'

SPM_ID_FREE = -1
SPM_LVER_INVALID = -1

DEFAULT_IO_OP_TIMEOUT_SEC = 10
DEFAULT_LEASE_RETRIES = 3
DEFAULT_LEASE_TIME_SEC = 60
DEFAULT_LOCK_RENEWAL_INTERVAL_SEC = 5


def _seal_bytes(key, value):
    return ('%s=%s' % (key, value)).encode('ascii', 'xmlcharrefreplace')


def checksum(pairs):
    """Return VDSM's seal (SHA-1 hex) for the ``{key: value}`` pairs."""
    digest = hashlib.sha1()
    for key in sorted(pairs):
        digest.update(_seal_bytes(key, pairs[key]))
    return digest.hexdigest()


def parse(text):
    """Return the raw ``{key: value}`` dict of metadata ``text``, seal checked.

    Lines end at ``\n`` only; a line holding any other line break character
    or NUL is refused, as is a key given twice. Lines without ``=`` are
    skipped as VDSM does. Keys are stripped and values kept as written, as
    VDSM reads them: the seal covers each value exactly as it is on disk.
    """
    pairs = {}
    declared = None
    for number, line in enumerate(text.split('\n'), 1):
        odd = sorted(set(char for char in line if char in FORBIDDEN_IN_VALUES))
        if odd:
            # Another parser would split this line where this one does not: refuse rather than guess.
            raise VirtnodeError('metadata line %d holds a line break or NUL character (%s): %r'
                                % (number, ', '.join(repr(char) for char in odd), line), {'line': number})
        if '=' not in line:
            continue
        key, value = line.split('=', 1)
        key = key.strip()
        if key in pairs or (key == CHECKSUM_KEY and declared is not None):
            raise VirtnodeError('metadata has %s twice (line %d)' % (key, number), {'field': key, 'line': number})
        if key == CHECKSUM_KEY:
            declared = value
        else:
            pairs[key] = value
    if pairs and declared is not None:
        computed = checksum(pairs)
        if declared != computed:
            raise VirtnodeError('metadata seal is broken: the file declares %s but its content hashes to %s'
                                % (declared, computed), {'declared': declared, 'computed': computed})
    return pairs


def _line_value(key, value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise VirtnodeError('metadata value of %s must be a string or an integer, got %r' % (key, value), {'field': key})
    text = str(value)
    if any(char in text for char in FORBIDDEN_IN_VALUES):
        raise VirtnodeError('metadata value of %s must be a single line without line, record or paragraph '
                            'separators or NUL: %r' % (key, text), {'field': key})
    # Written as given, as VDSM writes it: a value read from a domain survives a rewrite unchanged.
    return text


def serialize(pairs):
    """Return the file content (bytes) for the raw ``{key: value}`` dict."""
    lines = {}
    for key, value in pairs.items():
        if not isinstance(key, str) or not key or '=' in key or key != key.strip() or any(c in key for c in FORBIDDEN_IN_VALUES):
            raise VirtnodeError('invalid metadata key: %r' % (key,))
        if key == CHECKSUM_KEY:
            raise VirtnodeError('%s is computed on write and cannot be set' % CHECKSUM_KEY)
        lines[key] = _line_value(key, value)
    body = ''.join('%s=%s\n' % (key, lines[key]) for key in sorted(lines))
    return ('%s%s=%s\n' % (body, CHECKSUM_KEY, checksum(lines))).encode('utf-8')


def with_changes(pairs, changes):
    """A copy of the raw ``pairs`` with ``{key: value or None}`` applied (None removes the key)."""
    new = dict(pairs)
    for key, value in changes.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = str(value)
    return new


def _int_field(pairs, key):
    if key not in pairs:
        raise VirtnodeError('domain metadata lacks %s' % key, {'field': key})
    try:
        return int(pairs[key])
    except ValueError as err:
        raise VirtnodeError('domain metadata %s is not an integer: %r' % (key, pairs[key]), {'field': key}) from err


def _lease_param(pairs, key, default):
    # VDSM falls back to the default for a lease parameter it cannot parse.
    try:
        return int(pairs.get(key, default))
    except ValueError:
        return default


def _choice(key, value, choices):
    if value not in choices:
        raise VirtnodeError('domain metadata %s must be one of %s, got %r' % (key, ', '.join(map(str, choices)), value), {'field': key})


def _decode_pool_domains(text):
    domains = {}
    for entry in filter(None, text.split(',')):
        sd_uuid, sep, status = entry.partition(':')
        if not sep:
            raise VirtnodeError('%s entry is not <uuid>:<status>: %r' % (POOL_DOMAINS, entry), {'field': POOL_DOMAINS})
        domains[sd_uuid.strip("'")] = status.strip("'").capitalize()
    return domains


_TYPED_KEYS = frozenset((
    SDUUID, VERSION, TYPE, CLASS, ROLE, POOL_UUID, DESCRIPTION, REMOTE_PATH, LOCKPOLICY, IOOPTIMEOUTSEC, LEASERETRIES,
    LEASETIMESEC, LOCKRENEWALINTERVALSEC, ALIGNMENT, BLOCK_SIZE, POOL_DOMAINS, POOL_DESCRIPTION, POOL_SPM_ID,
    POOL_SPM_LVER, MASTER_VERSION,
))


@dataclasses.dataclass
class DomainMetadata:
    """Typed view of a domain's metadata; ``extra`` keeps keys not modelled here.

    The pool fields are ``None`` unless the domain is (or was) a pool's
    master domain.
    """

    sd_uuid: str
    version: int
    sd_type: str
    domain_class: str
    description: str = ''
    role: str = 'Regular'
    pool_uuids: list = dataclasses.field(default_factory=list)
    remote_path: str | None = None
    lock_policy: str = ''
    io_op_timeout_sec: int = DEFAULT_IO_OP_TIMEOUT_SEC
    lease_retries: int = DEFAULT_LEASE_RETRIES
    lease_time_sec: int = DEFAULT_LEASE_TIME_SEC
    lock_renewal_interval_sec: int = DEFAULT_LOCK_RENEWAL_INTERVAL_SEC
    alignment: int = DEFAULT_ALIGNMENT
    block_size: int = DEFAULT_BLOCK_SIZE
    pool_domains: dict | None = None
    pool_description: str | None = None
    pool_spm_id: int | None = None
    pool_spm_lver: int | None = None
    master_version: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, pairs):
        """Build from the raw dict that ``parse`` returns; raises VirtnodeError if invalid."""
        version = _int_field(pairs, VERSION)
        if version not in READABLE_VERSIONS:
            raise VirtnodeError('unsupported storage domain version %d (supported: %s)'
                                % (version, ', '.join(map(str, READABLE_VERSIONS))), {'field': VERSION})
        if SDUUID not in pairs:
            raise VirtnodeError('domain metadata lacks %s' % SDUUID, {'field': SDUUID})
        # Older domains lack both keys and mean the defaults; if one is there anyway it must be the default.
        alignment, block_size = (
            _int_field(pairs, key) if version >= FIRST_VERSION_WITH_ALIGNMENT or key in pairs else default
            for key, default in ((ALIGNMENT, DEFAULT_ALIGNMENT), (BLOCK_SIZE, DEFAULT_BLOCK_SIZE)))
        optional_int = {key: _int_field(pairs, key) if key in pairs else None
                        for key in (POOL_SPM_ID, POOL_SPM_LVER, MASTER_VERSION)}
        metadata = cls(
            sd_uuid=pairs[SDUUID],
            version=version,
            sd_type=pairs.get(TYPE, ''),
            domain_class=pairs.get(CLASS, ''),
            description=pairs.get(DESCRIPTION, ''),
            role=pairs.get(ROLE, ''),
            pool_uuids=[uuid for uuid in pairs.get(POOL_UUID, '').split(',') if uuid],
            remote_path=pairs.get(REMOTE_PATH),
            lock_policy=pairs.get(LOCKPOLICY, ''),
            io_op_timeout_sec=_lease_param(pairs, IOOPTIMEOUTSEC, DEFAULT_IO_OP_TIMEOUT_SEC),
            lease_retries=_lease_param(pairs, LEASERETRIES, DEFAULT_LEASE_RETRIES),
            lease_time_sec=_lease_param(pairs, LEASETIMESEC, DEFAULT_LEASE_TIME_SEC),
            lock_renewal_interval_sec=_lease_param(pairs, LOCKRENEWALINTERVALSEC, DEFAULT_LOCK_RENEWAL_INTERVAL_SEC),
            alignment=alignment,
            block_size=block_size,
            pool_domains=_decode_pool_domains(pairs[POOL_DOMAINS]) if POOL_DOMAINS in pairs else None,
            pool_description=pairs.get(POOL_DESCRIPTION),
            pool_spm_id=optional_int[POOL_SPM_ID],
            pool_spm_lver=optional_int[POOL_SPM_LVER],
            master_version=optional_int[MASTER_VERSION],
            extra={key: value for key, value in pairs.items() if key not in _TYPED_KEYS},
        )
        metadata.validate()
        return metadata

    def validate(self):
        """Raise VirtnodeError naming the first field that VDSM would not accept."""
        validate.uuid_str(self.sd_uuid, SDUUID)
        if self.version not in READABLE_VERSIONS:
            raise VirtnodeError('unsupported storage domain version %r' % (self.version,), {'field': VERSION})
        _choice(TYPE, self.sd_type, DOMAIN_TYPES)
        _choice(CLASS, self.domain_class, DOMAIN_CLASSES)
        _choice(ROLE, self.role, DOMAIN_ROLES)
        for pool_uuid in self.pool_uuids:
            validate.uuid_str(pool_uuid, POOL_UUID)
        if self.version >= FIRST_VERSION_WITH_ALIGNMENT:
            _choice(ALIGNMENT, self.alignment, SUPPORTED_ALIGNMENTS)
            _choice(BLOCK_SIZE, self.block_size, SUPPORTED_BLOCK_SIZES)
        elif (self.alignment, self.block_size) != (DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE):
            raise VirtnodeError('storage domain version %d supports only alignment %d and block size %d'
                                % (self.version, DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE), {'field': ALIGNMENT})
        for key, value in ((DESCRIPTION, self.description), (POOL_DESCRIPTION, self.pool_description),
                           (REMOTE_PATH, self.remote_path), (LOCKPOLICY, self.lock_policy)):
            if value is not None and (not isinstance(value, str) or any(char in value for char in FORBIDDEN_IN_VALUES)):
                raise VirtnodeError('domain %s must be a single line of text without line, record or paragraph '
                                    'separators or NUL: %r' % (key, value), {'field': key})
        for key in self.extra:
            if not isinstance(key, str) or not key or '=' in key or any(char in key for char in FORBIDDEN_IN_VALUES):
                raise VirtnodeError('invalid metadata key: %r' % (key,), {'field': key})
        for sd_uuid, status in (self.pool_domains or {}).items():
            validate.uuid_str(sd_uuid, POOL_DOMAINS)
            if not status:
                raise VirtnodeError('%s has no status for %s' % (POOL_DOMAINS, sd_uuid), {'field': POOL_DOMAINS})

    def to_dict(self):
        """Return the raw ``{key: string}`` dict for ``serialize``; validates first."""
        self.validate()
        pairs = dict(self.extra)
        pairs.update({
            SDUUID: self.sd_uuid,
            VERSION: str(self.version),
            TYPE: self.sd_type,
            CLASS: self.domain_class,
            DESCRIPTION: self.description,
            ROLE: self.role,
            POOL_UUID: ','.join(self.pool_uuids),
            LOCKPOLICY: self.lock_policy,
            IOOPTIMEOUTSEC: str(self.io_op_timeout_sec),
            LEASERETRIES: str(self.lease_retries),
            LEASETIMESEC: str(self.lease_time_sec),
            LOCKRENEWALINTERVALSEC: str(self.lock_renewal_interval_sec),
        })
        if self.version >= FIRST_VERSION_WITH_ALIGNMENT:
            pairs[ALIGNMENT] = str(self.alignment)
            pairs[BLOCK_SIZE] = str(self.block_size)
        optional = {
            REMOTE_PATH: self.remote_path,
            POOL_DOMAINS: None if self.pool_domains is None else ','.join('%s:%s' % item for item in self.pool_domains.items()),
            POOL_DESCRIPTION: self.pool_description,
            POOL_SPM_ID: self.pool_spm_id,
            POOL_SPM_LVER: self.pool_spm_lver,
            MASTER_VERSION: self.master_version,
        }
        pairs.update((key, str(value)) for key, value in optional.items() if value is not None)
        return pairs


def check_new_block_size(sd_type, block_size, alignment):
    """Refuse a block size and alignment VDSM would not create a domain of this type with.

    VDSM creates NFS and POSIX domains with 512-byte blocks only (its probe of
    such storage reports 512) and refuses other sizes; local and GlusterFS
    domains may use 4 KiB. sanlock supports 512-byte sectors only with 1 MiB
    alignment.
    """
    if block_size == 4096 and sd_type not in BLOCK_SIZE_4K_TYPES:
        raise VirtnodeError('block size 4096 is not supported on %s domains (VDSM creates and reads them with 512 only); '
                            '4096 is for %s domains' % (sd_type, ' and '.join(BLOCK_SIZE_4K_TYPES)),
                            {'field': 'block_size'})
    if block_size == 512 and alignment != DEFAULT_ALIGNMENT:
        raise VirtnodeError('alignment %d needs block size 4096: with 512-byte blocks sanlock supports only %d'
                            % (alignment, DEFAULT_ALIGNMENT), {'field': 'alignment'})


def new_domain_metadata(sd_uuid, sd_type, domain_class, description, remote_path, version=CURRENT_VERSION,
                        block_size=DEFAULT_BLOCK_SIZE, alignment=DEFAULT_ALIGNMENT):
    """Return the raw metadata dict VDSM writes for a freshly created file domain."""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise VirtnodeError('domain description must be a string of at most %d characters: %r'
                            % (MAX_DESCRIPTION_LENGTH, description), {'field': DESCRIPTION})
    check_new_block_size(sd_type, block_size, alignment)
    return DomainMetadata(
        sd_uuid=sd_uuid,
        version=version,
        sd_type=sd_type,
        domain_class=domain_class,
        description=description,
        remote_path=remote_path,
        alignment=alignment,
        block_size=block_size,
    ).to_dict()


def domain_root(path):
    """The domain directory of a ``<dom>/dom_md/<file>`` path, else None.

    Nothing below it is followed if it is a link, so the path cannot leave its domain.
    """
    md_dir = os.path.dirname(path)
    return os.path.dirname(md_dir) if os.path.basename(md_dir) == DOM_MD_DIR else None


def read_domain_metadata(path, timeout=None, root=None):
    """Return the raw metadata dict stored at ``path`` (seal checked).

    The file is read without following links below its domain directory
    (``root``, by default found from the path), bounded in size and time.
    """
    text = fileio.read_text(path, timeout, READ_LIMIT, root or domain_root(path))
    try:
        return parse(text)
    except VirtnodeError as err:
        raise VirtnodeError('%s: %s' % (path, err.message), dict(err.details, path=path)) from err


def write_domain_metadata(path, pairs, root=None):
    """Replace the metadata file at ``path`` with the raw dict ``pairs``.

    The content is checked by reading it back as this module would, so
    nothing lands on disk that a later read would refuse.
    """
    data = serialize(pairs)
    DomainMetadata.from_dict(parse(data.decode('utf-8')))
    fileio.write_atomic(path, data, root=root or domain_root(path), owner=fileio.STORAGE_OWNER)
