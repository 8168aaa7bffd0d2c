# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/bootstrap/files/pki_check.py with certificates the openssl tool makes in a temporary directory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / 'roles' / 'bootstrap' / 'files' / 'pki_check.py'


@pytest.fixture(scope='module')
def pki_check():
    spec = importlib.util.spec_from_file_location('pki_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openssl(*args, cwd):
    subprocess.run(('openssl',) + args, cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name, *extensions):
    """A self-signed certificate ``name``-cert.pem with key ``name``-key.pem (EC keys: fast)."""
    ext = []
    for value in extensions:
        ext += ['-addext', value]
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
            '-subj', '/CN=%s' % name, *ext, '-keyout', '%s-key.pem' % name, '-out', '%s-cert.pem' % name, cwd=directory)
    return (directory / ('%s-cert.pem' % name)).read_text(), (directory / ('%s-key.pem' % name)).read_text()


def sign_host(directory, ca, host, names, days=100):
    """``host``-key.pem and ``host``-cert.pem signed by ``ca`` for ``names``."""
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', '%s-key.pem' % host, cwd=directory)
    openssl('req', '-new', '-key', '%s-key.pem' % host, '-subj', '/CN=%s' % host, '-out', '%s.csr' % host, cwd=directory)
    (directory / ('%s.ext' % host)).write_text('basicConstraints = CA:FALSE\nsubjectAltName = %s\n' % ', '.join(names))
    openssl('x509', '-req', '-in', '%s.csr' % host, '-CA', '%s-cert.pem' % ca, '-CAkey', '%s-key.pem' % ca,
            '-CAcreateserial', '-days', str(days), '-extfile', '%s.ext' % host, '-out', '%s-cert.pem' % host, cwd=directory)


CA_EXT = ('basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign')


def test_a_ca_and_its_key_pass(pki_check, tmp_path):
    cert, key = make_ca(tmp_path, 'ca', *CA_EXT)
    assert pki_check.check_ca(cert, key) == ''


def test_a_key_of_another_certificate_is_refused(pki_check, tmp_path):
    cert, _key = make_ca(tmp_path, 'ca', *CA_EXT)
    _other, other_key = make_ca(tmp_path, 'other', *CA_EXT)
    assert pki_check.check_ca(cert, other_key) == 'the CA key is not the key of the CA certificate'


def test_a_certificate_that_is_not_a_ca_is_refused(pki_check, tmp_path):
    cert, key = make_ca(tmp_path, 'leaf', 'basicConstraints=critical,CA:FALSE')
    assert pki_check.check_ca(cert, key).startswith('the CA certificate is not a CA certificate (basicConstraints')


def test_a_ca_that_may_not_sign_certificates_is_refused(pki_check, tmp_path):
    cert, key = make_ca(tmp_path, 'ca', 'basicConstraints=critical,CA:TRUE', 'keyUsage=critical,digitalSignature')
    assert pki_check.check_ca(cert, key).startswith('the CA certificate may not sign certificates')


@pytest.mark.parametrize('cert, key, wanted', [
    ('', 'KEY', 'must both be given'),
    ('not a certificate', None, 'the CA certificate is not a PEM certificate'),
    (None, 'not a key', 'the CA key is not an unencrypted PEM private key'),
])
def test_missing_or_unreadable_parts_are_refused(pki_check, tmp_path, cert, key, wanted):
    good_cert, good_key = make_ca(tmp_path, 'ca', *CA_EXT)
    msg = pki_check.check_ca(good_cert if cert is None else cert, good_key if key is None else key)
    assert wanted in msg


def test_an_encrypted_key_is_refused_without_prompting(pki_check, tmp_path):
    cert, _key = make_ca(tmp_path, 'ca', *CA_EXT)
    openssl('pkey', '-in', 'ca-key.pem', '-aes256', '-passout', 'pass:secret', '-out', 'enc.pem', cwd=tmp_path)
    msg = pki_check.check_ca(cert, (tmp_path / 'enc.pem').read_text())
    assert msg.startswith('the CA key is not an unencrypted PEM private key'), msg


def test_the_ca_check_reads_the_key_on_stdin_and_answers_json(tmp_path):
    cert, key = make_ca(tmp_path, 'ca', *CA_EXT)
    _other, other_key = make_ca(tmp_path, 'other', *CA_EXT)
    for given, ok in ((key, True), (other_key, False)):
        proc = subprocess.run(['python3', str(SCRIPT), 'ca'], input=json.dumps({'cert': cert, 'key': given}),
                              capture_output=True, text=True, check=True)
        assert json.loads(proc.stdout)['ok'] is ok, proc.stdout
        assert 'PRIVATE KEY' not in proc.stdout + proc.stderr


NAMES = ['DNS:vnhost1', 'IP:10.251.0.11']


def host_check(pki_check, directory, ca='ca', host='host', names=None, renew_days=30):
    return pki_check.check_host(str(directory / ('%s-cert.pem' % ca)), str(directory / ('%s-cert.pem' % host)),
                                str(directory / ('%s-key.pem' % host)), NAMES if names is None else names, renew_days)


def test_a_host_certificate_of_the_ca_for_the_key_and_names_is_kept(pki_check, tmp_path):
    make_ca(tmp_path, 'ca', *CA_EXT)
    sign_host(tmp_path, 'ca', 'host', NAMES)
    assert host_check(pki_check, tmp_path) == ''
    assert host_check(pki_check, tmp_path, names=list(reversed(NAMES))) == ''


def test_a_host_certificate_is_signed_again_when(pki_check, tmp_path):
    make_ca(tmp_path, 'ca', *CA_EXT)
    make_ca(tmp_path, 'other', *CA_EXT)
    sign_host(tmp_path, 'ca', 'host', NAMES, days=10)
    assert host_check(pki_check, tmp_path, ca='other') == 'not issued by the CA'
    assert host_check(pki_check, tmp_path, names=NAMES + ['DNS:more'], renew_days=5).startswith(
        'names DNS:vnhost1, IP:10.251.0.11, wanted')
    assert host_check(pki_check, tmp_path, renew_days=30) == 'expires within 30 days'
    assert host_check(pki_check, tmp_path, renew_days=5) == ''
    assert host_check(pki_check, tmp_path, host='missing') == 'no certificate'
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'host-key.pem', cwd=tmp_path)
    assert host_check(pki_check, tmp_path, renew_days=5) == 'not for the host key'
