# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of the migration PKI, with the openssl command line tool.

``pki_check.py ca`` reads ``{"cert": PEM, "key": PEM}`` on standard input (the key never
goes to a file or a command line) and prints ``{"ok": bool, "msg": "..."}``: whether the
certificate is a CA certificate (basicConstraints CA:TRUE, and keyCertSign when it has a
keyUsage), still valid, and the key is its private key. Runs on the controller.

``pki_check.py host '{"ca": path, "cert": path, "key": path, "names": [...], "renew_days": N}'``
prints ``{"valid": bool, "reason": "..."}``: whether the certificate at ``cert`` was issued
by the CA at ``ca``, is for the key at ``key``, carries exactly ``names`` as subjectAltName
(``DNS:name`` or ``IP:address``) and stays valid for ``renew_days`` more days. Runs on the
host; a certificate that is not valid is signed again.
"""

from __future__ import annotations

import json
import subprocess
import sys


class CheckError(Exception):
    pass


def openssl(*args, stdin=None):
    """Output of ``openssl args``; CheckError with openssl's message when it fails."""
    try:
        proc = subprocess.run(('openssl',) + args, input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CheckError('cannot run openssl: %s' % exc) from exc
    if proc.returncode != 0:
        raise CheckError((proc.stderr or proc.stdout).strip().splitlines()[0] if (proc.stderr or proc.stdout).strip()
                         else 'openssl %s failed' % args[0])
    return proc.stdout


def extension(cert_args, name, stdin=None):
    """The value of an X.509v3 extension, '' when the certificate has none."""
    out = openssl('x509', '-noout', '-ext', name, *cert_args, stdin=stdin)
    return ' '.join(line.strip() for line in out.splitlines()[1:])


def check_ca(cert, key):
    """'' when ``cert`` is a valid CA certificate and ``key`` its key, else what is wrong."""
    if not cert.strip() or not key.strip():
        return 'the CA certificate and the CA key must both be given'
    try:
        cert_pub = openssl('x509', '-noout', '-pubkey', stdin=cert)
    except CheckError as exc:
        return 'the CA certificate is not a PEM certificate: %s' % exc
    try:
        key_pub = openssl('pkey', '-pubout', '-passin', 'pass:', stdin=key)
    except CheckError as exc:
        return 'the CA key is not an unencrypted PEM private key: %s' % exc
    constraints = extension((), 'basicConstraints', stdin=cert)
    if 'CA:TRUE' not in constraints:
        return 'the CA certificate is not a CA certificate (basicConstraints %s)' % (constraints or 'missing')
    usage = extension((), 'keyUsage', stdin=cert)
    if usage and 'Certificate Sign' not in usage:
        return 'the CA certificate may not sign certificates (keyUsage %s)' % usage
    try:
        openssl('x509', '-noout', '-checkend', '0', stdin=cert)
    except CheckError:
        return 'the CA certificate has expired'
    if cert_pub.strip() != key_pub.strip():
        return 'the CA key is not the key of the CA certificate'
    return ''


def san_names(cert_path):
    """The certificate's subjectAltName entries as ``DNS:name`` / ``IP:address``."""
    value = extension(('-in', cert_path), 'subjectAltName')
    names = []
    for entry in value.split(','):
        entry = entry.strip()
        if entry.startswith('IP Address:'):
            entry = 'IP:' + entry[len('IP Address:'):]
        if entry:
            names.append(entry)
    return names


def check_host(ca, cert, key, names, renew_days):
    """'' when the host certificate needs no new signature, else why it does."""
    try:
        openssl('x509', '-noout', '-in', cert)
    except CheckError:
        return 'no certificate'
    try:
        openssl('verify', '-partial_chain', '-CAfile', ca, cert)
    except CheckError:
        return 'not issued by the CA'
    try:
        same_key = openssl('x509', '-noout', '-pubkey', '-in', cert).strip() == openssl('pkey', '-pubout', '-in', key).strip()
    except CheckError:
        return 'no readable host key'
    if not same_key:
        return 'not for the host key'
    try:
        openssl('x509', '-noout', '-checkend', str(int(renew_days) * 86400), '-in', cert)
    except CheckError:
        return 'expires within %s days' % renew_days
    have = san_names(cert)
    if sorted(set(have)) != sorted(set(names)):
        return 'names %s, wanted %s' % (', '.join(have), ', '.join(names))
    return ''


def main(argv):
    if len(argv) == 2 and argv[1] == 'ca':
        given = json.load(sys.stdin)
        msg = check_ca(given.get('cert') or '', given.get('key') or '')
        print(json.dumps({'ok': not msg, 'msg': msg or 'the CA certificate and key belong together'}))
        return 0
    if len(argv) == 3 and argv[1] == 'host':
        args = json.loads(argv[2])
        reason = check_host(args['ca'], args['cert'], args['key'], args['names'], args.get('renew_days', 30))
        print(json.dumps({'valid': not reason, 'reason': reason or 'valid'}))
        return 0
    print(json.dumps({'failed': True, 'msg': 'usage: pki_check.py ca < {"cert": ..., "key": ...} | host JSON'}))
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))
