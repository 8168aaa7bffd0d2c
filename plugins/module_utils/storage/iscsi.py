# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""iSCSI and FC storage servers, connected as VDSM's storageServer connects them.

iSCSI, one target on one or more portals (each portal is a path; dm-multipath
joins the paths of a LUN into one device):

* the portal is asked which targets it offers (a sendtargets discovery that
  saves nothing, so no record of the portal's other targets is left behind),
  and the target must be among them;
* a node record is made for exactly that target and portal (with the portal
  group tag the discovery gave), with CHAP when given and
  ``node.startup = automatic``, so open-iscsi logs in again at boot;
* then the login. Disconnecting logs out and deletes the records.

Sessions are read from sysfs (no process per question: forks are slow on some
hosts), records with ``iscsiadm -S`` (which shows the CHAP secret, so a
changed password is seen). A changed CHAP setting on a live session is
written to the record and takes effect at the next login: logging out a live
path to apply it could pause the VMs using it.

FC: there is nothing to log in to; connecting rescans the SCSI hosts of the
FC HBAs (``/sys/class/fc_host``), as VDSM's ``fc-scan`` does, and reports
the SCSI disks that appeared.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket

from ansible_collections.virtnode.kvm.plugins.module_utils.common import command
from ansible_collections.virtnode.kvm.plugins.module_utils.common import readers
from ansible_collections.virtnode.kvm.plugins.module_utils.common import scsi_sysfs
from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

ISCSIADM = 'iscsiadm'
INSTALL_HINT = 'Debian: open-iscsi'
DEFAULT_PORT = 3260
ISCSIADM_TIMEOUT = 120
# iscsiadm exit statuses (open-iscsi's iscsi_err.h).
ERR_SESSION_EXISTS = 15
ERR_NO_RECORDS = 21
ERR_LOGIN_AUTH_FAILED = 24
FC_HOST_ROOT = '/sys/class/fc_host'
SCSI_HOST_ROOT = '/sys/class/scsi_host'
HIDDEN = '********'
# RFC 3720 names: iqn.<yyyy-mm>.<reversed domain>[:<anything printable>], eui.<16 hex>, naa.<16 or 32 hex>.
_TARGET_RE = re.compile(r'\A(?:iqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.-]*(?::[A-Za-z0-9.:_-]+)?'
                        r'|eui\.[0-9A-Fa-f]{16}|naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))\Z')
_HOST_RE = re.compile(r'\A[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z')
# CHAP secrets go into iscsiadm's argument list and the record file: printable ASCII, no spaces.
_CHAP_RE = re.compile(r'\A[!-~]{1,255}\Z')
_DISCOVERED_RE = re.compile(r'\A(\S+):(\d+),(-?\d+)\s+(\S+)\s*\Z')


def validate_target(target):
    if not isinstance(target, str) or len(target) > 223 or not _TARGET_RE.match(target):
        raise VirtnodeError('target must be an iSCSI name (iqn.YYYY-MM.domain[:id], eui.<16 hex> or naa.<hex>), got %r'
                            % (target,), {'field': 'target'})
    return target


def parse_portal(portal, resolve=socket.getaddrinfo):
    """``(address, port)`` of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a host name is resolved.

    Sessions are matched by the address the kernel keeps, which is always numeric.
    """
    if not isinstance(portal, str) or not portal or len(portal) > 300:
        raise VirtnodeError('a portal must be host[:port], got %r' % (portal,), {'field': 'portals'})
    host, port = portal, DEFAULT_PORT
    match = re.match(r'\A\[([0-9A-Fa-f:.]+)\](?::(\d+))?\Z', portal)
    if match:
        host, port = match.group(1), int(match.group(2) or DEFAULT_PORT)
    elif portal.count(':') == 1:
        host, text = portal.split(':')
        if not text.isdigit():
            raise VirtnodeError('portal %r: the port must be a number' % portal, {'field': 'portals'})
        port = int(text)
    elif ':' in portal:
        raise VirtnodeError('portal %r: write an IPv6 address in brackets, [address]:port' % portal, {'field': 'portals'})
    if not 0 < port < 65536:
        raise VirtnodeError('portal %r: port %d is out of range' % (portal, port), {'field': 'portals'})
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    if not _HOST_RE.match(host):
        raise VirtnodeError('portal %r: %r is neither an address nor a host name' % (portal, host), {'field': 'portals'})
    try:
        answers = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise VirtnodeError('portal %r: cannot resolve %s: %s' % (portal, host, err), {'field': 'portals'}) from err
    return answers[0][4][0], port


def portal_text(address, port):
    """The portal as iscsiadm takes it: ``a.b.c.d:port`` or ``[v6]:port``."""
    return ('[%s]:%d' if ':' in address else '%s:%d') % (address, port)


def validate_chap(username, password):
    if (username is None) != (password is None):
        raise VirtnodeError('CHAP needs both chap_username and chap_password', {'field': 'chap_password'})
    for value, field in ((username, 'chap_username'), (password, 'chap_password')):
        if value is not None and (not isinstance(value, str) or not _CHAP_RE.match(value)):
            # The value itself is never shown: it may be a secret.
            raise VirtnodeError('%s must be 1 to 255 printable ASCII characters without spaces' % field, {'field': field})


def _run(argv, secrets=(), ok=()):
    """iscsiadm's output; an exit status in ``ok`` is returned (an int) instead of raised.

    The ``secrets`` never appear in the error's message or details.
    """
    label = ' '.join(HIDDEN if arg in secrets else arg for arg in argv)
    try:
        return command.run_checked(argv, ISCSIADM_TIMEOUT, label=label, install_hint=INSTALL_HINT)
    except VirtnodeError as err:
        rc = err.details.get('rc')
        details = dict(err.details, argv=[HIDDEN if arg in secrets else arg for arg in argv])
        if rc in ok:
            return rc
        raise VirtnodeError(err.message, details) from None


def sessions(root='/'):
    """Every iSCSI session on this host (``common.scsi_sysfs.iscsi_sessions`` entries)."""
    return scsi_sysfs.iscsi_sessions(root)


def iscsid_running(proc_root='/proc'):
    """True when an iscsid process runs (read from /proc: no process is started to ask)."""
    for pid in os.listdir(proc_root):
        if pid.isdigit() and readers.read_optional_text(os.path.join(proc_root, pid, 'comm')) == 'iscsid':
            return True
    return False


def ensure_iscsid():
    """Start iscsid when it is not running (a host whose iscsid.socket was stopped or never enabled)."""
    if not iscsid_running():
        command.run_checked(['systemctl', 'start', 'iscsid.service'], ISCSIADM_TIMEOUT)


def session_of(target, address, port, found):
    for session in found:
        if session['target'] == target and session['address'] == address and session['port'] == port:
            return session
    return None


def discover(address, port):
    """``{target: tpgt}`` offered by the portal (a discovery that saves no record).

    A target usually lists all its portals; the tag of the line naming the asked
    portal wins, any other line of the target gives one otherwise (a portal
    behind NAT is listed under its inside address).
    """
    out = _run([ISCSIADM, '-m', 'discovery', '-t', 'sendtargets', '-p', portal_text(address, port), '-o', 'nonpersistent'])
    offered = {}
    for line in out.splitlines():
        match = _DISCOVERED_RE.match(line)
        if not match:
            continue
        this_portal = match.group(1).strip('[]') == address and int(match.group(2)) == port
        if this_portal or match.group(4) not in offered:
            offered[match.group(4)] = int(match.group(3))
    return offered


def read_record(target, address, port):
    """The node record's settings (``{name: value}``) or None when there is none."""
    out = _run([ISCSIADM, '-m', 'node', '-T', target, '-p', portal_text(address, port), '-S'], ok=(ERR_NO_RECORDS,))
    if out == ERR_NO_RECORDS:
        return None
    record = {}
    for line in out.splitlines():
        name, sep, value = line.partition(' = ')
        if sep and not line.startswith('#'):
            record[name.strip()] = value.strip()
    return record


def wanted_settings(username, password):
    """The record settings this connection needs (CHAP off when no credentials are given)."""
    settings = {'node.startup': 'automatic', 'node.conn[0].startup': 'automatic'}
    if username is None:
        settings['node.session.auth.authmethod'] = 'None'
    else:
        settings.update({'node.session.auth.authmethod': 'CHAP', 'node.session.auth.username': username,
                         'node.session.auth.password': password})
    return settings


def differing(record, settings):
    """Names of ``settings`` the record does not have (empty values in iscsiadm print as <empty>)."""
    return sorted(name for name, value in settings.items()
                  if (record or {}).get(name, '<empty>').replace('<empty>', '') != value)


def _node(target, address, port, *args):
    return [ISCSIADM, '-m', 'node', '-T', target, '-p', portal_text(address, port)] + list(args)


def plan_portal(target, address, port, username, password, found_sessions):
    """What connecting this portal needs: ``{'portal', 'record': bool, 'settings': [...], 'login': bool}``."""
    record = read_record(target, address, port)
    settings = wanted_settings(username, password)
    return {'portal': portal_text(address, port), 'address': address, 'port': port,
            'record': record is None, 'settings': differing(record, settings),
            'login': session_of(target, address, port, found_sessions) is None}


def connect_portal(target, step, username, password):
    """Carry out :func:`plan_portal`'s step."""
    address, port = step['address'], step['port']
    secrets = (password,) if password else ()
    if step['record']:
        offered = discover(address, port)
        if target not in offered:
            raise VirtnodeError('portal %s does not offer target %s (it offers: %s)'
                                % (step['portal'], target, ', '.join(sorted(offered)) or 'nothing'),
                                {'field': 'target', 'portal': step['portal']})
        _run([ISCSIADM, '-m', 'node', '-T', target, '-p', '%s,%d' % (portal_text(address, port), offered[target]),
              '-o', 'new'])
    settings = wanted_settings(username, password)
    for name in step['settings']:
        _run(_node(target, address, port, '-o', 'update', '-n', name, '-v', settings[name]), secrets=secrets)
    if not step['login']:
        return
    try:
        status = _run(_node(target, address, port, '--login'), ok=(ERR_SESSION_EXISTS, ERR_LOGIN_AUTH_FAILED))
        if status == ERR_LOGIN_AUTH_FAILED:
            raise VirtnodeError('login to %s on %s was refused: CHAP authentication failed (check chap_username and '
                                'chap_password)' % (target, step['portal']), {'field': 'chap_password'})
    except VirtnodeError:
        if step['record']:
            # A record this task made for a login that failed would log in (or fail) again at every boot.
            _run(_node(target, address, port, '-o', 'delete'), ok=(ERR_NO_RECORDS,))
        raise


def disconnect_portal(target, address, port, found_sessions):
    """Log out of the portal's session and delete its record; True if there was anything to undo."""
    changed = False
    if session_of(target, address, port, found_sessions):
        _run(_node(target, address, port, '--logout'), ok=(ERR_NO_RECORDS,))
        changed = True
    if _run(_node(target, address, port, '-o', 'delete'), ok=(ERR_NO_RECORDS,)) != ERR_NO_RECORDS:
        changed = True
    return changed


def session_summary(session):
    """A session as the module returns it."""
    return {'id': session['id'], 'target': session['target'], 'address': session['address'], 'port': session['port'],
            'state': session['state'], 'disks': [{'name': d['name'], 'lun': d['lun']} for d in session['disks']]}


def _logged_in(target, parsed, found):
    return [portal_text(a, p) for a, p in parsed if session_of(target, a, p, found)]


def run_iscsi(params, check_mode, diff=False):
    """The ``storage_server`` module's work for ``type: iscsi``."""
    target = validate_target(params['target'])
    portals = params['portals']
    if not portals:
        raise VirtnodeError('an iscsi storage server needs at least one portal', {'field': 'portals'})
    username, password = params['chap_username'], params['chap_password']
    validate_chap(username, password)
    parsed = []
    for portal in portals:
        address_port = parse_portal(portal)
        if address_port not in parsed:
            parsed.append(address_port)
    found = sessions()
    result = {'target': target, 'portals': [portal_text(*p) for p in parsed]}
    if diff:
        result['diff'] = {'before': {'logged_in': _logged_in(target, parsed, found)},
                          'after': {'logged_in': [] if params['state'] == 'disconnected' else result['portals']},
                          'before_header': target, 'after_header': target}
    if params['state'] == 'disconnected':
        before = any(session_of(target, a, p, found) for a, p in parsed)
        changed = False
        if check_mode:
            changed = before or any(read_record(target, a, p) is not None for a, p in parsed)
        else:
            if before:
                ensure_iscsid()
            for address, port in parsed:
                changed = disconnect_portal(target, address, port, found) or changed
        result.update(changed=changed, connected=False, sessions=[])
        return result
    steps = [plan_portal(target, a, p, username, password, found) for a, p in parsed]
    todo = [s for s in steps if s['record'] or s['settings'] or s['login']]
    if todo and not check_mode:
        ensure_iscsid()
        for step in todo:
            connect_portal(target, step, username, password)
        found = sessions()
    warnings = ['CHAP settings of %s changed on a live session: they apply at its next login' % s['portal']
                for s in todo if s['settings'] and not s['login'] and not s['record']
                and any(name.startswith('node.session.auth') for name in s['settings'])]
    result.update(changed=bool(todo), connected=True,
                  actions=[{'portal': s['portal'], 'record_created': s['record'], 'settings': s['settings'],
                            'login': s['login']} for s in todo],
                  sessions=[session_summary(s) for s in found
                            if s['target'] == target and (s['address'], s['port']) in parsed])
    if warnings:
        result['warnings'] = warnings
    return result


def run_fcp(params, check_mode, root='/'):
    """The ``storage_server`` module's work for ``type: fcp``: rescan every FC HBA's SCSI host."""
    hosts = scsi_sysfs.fc_hosts(root)
    result = {'fc_hosts': hosts, 'connected': params['state'] == 'connected', 'changed': False}
    if params['state'] == 'disconnected':
        return result  # FC has no session to end: disconnecting changes nothing, as in VDSM
    if not hosts:
        raise VirtnodeError('this host has no Fibre Channel HBA (%s is empty)' % readers.host_path(root, FC_HOST_ROOT))
    if check_mode:
        return result  # what a rescan would find cannot be known without one
    before = set(scsi_sysfs.scsi_disk_names(root))
    for host in hosts:
        # '- - -': every channel, target and LUN of the HBA.
        with open(os.path.join(readers.host_path(root, SCSI_HOST_ROOT), host, 'scan'), 'w') as scan:
            scan.write('- - -')
    new = sorted(set(scsi_sysfs.scsi_disk_names(root)) - before)
    result.update(changed=bool(new), new_disks=new)
    return result
