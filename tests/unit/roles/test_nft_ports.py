# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/bootstrap/files/nft_ports.py against a fake ``nft`` that answers as nft 1.0's JSON output does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / 'roles' / 'bootstrap' / 'files' / 'nft_ports.py'


@pytest.fixture
def nft_ports():
    spec = importlib.util.spec_from_file_location('nft_ports', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listing(*items):
    return json.dumps({'nftables': [{'metainfo': {'version': '1.0.6'}}] + list(items)})


def chain(family, table, name, hook, policy='accept', kind='filter'):
    return {'chain': {'family': family, 'table': table, 'name': name, 'handle': 1, 'type': kind, 'hook': hook,
                      'prio': 0, 'policy': policy}}


def rule(handle, port, comment='virtnode', family='inet', table='filter', name='input'):
    right = {'range': [int(p) for p in port.split('-')]} if '-' in port else int(port)
    item = {'family': family, 'table': table, 'chain': name, 'handle': handle,
            'expr': [{'match': {'op': '==', 'left': {'payload': {'protocol': 'tcp', 'field': 'dport'}}, 'right': right}},
                     {'accept': None}]}
    if comment:
        item['comment'] = comment
    return {'rule': item}


class FakeNft:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, args, stdin=None):
        self.calls.append((args, stdin))
        return self.answers.get(' '.join(args), '')


CHAINS = listing(chain('inet', 'filter', 'input', 'input', 'drop'), chain('inet', 'filter', 'forward', 'forward', 'drop'),
                 chain('ip', 'nat', 'PREROUTING', 'prerouting', kind='nat'), chain('ip', 'filter', 'INPUT', 'input'))
INPUT = {'family': 'inet', 'table': 'filter', 'name': 'input'}
PORTS = ['16514', '49152-49215', '5900-6923']


def test_chains_that_drop_are_the_firewall(nft_ports, monkeypatch):
    monkeypatch.setattr(nft_ports, 'nft', FakeNft({'-j list chains': CHAINS}))
    assert nft_ports.input_chains(force=False) == [INPUT]


def test_no_dropping_chain_is_no_firewall_unless_forced(nft_ports, monkeypatch):
    open_only = listing(chain('inet', 'filter', 'input', 'input'), chain('ip', 'filter', 'INPUT', 'input'))
    monkeypatch.setattr(nft_ports, 'nft', FakeNft({'-j list chains': open_only}))
    assert nft_ports.input_chains(force=False) == []
    assert nft_ports.input_chains(force=True) == [INPUT, {'family': 'ip', 'table': 'filter', 'name': 'INPUT'}]


def test_opens_missing_ports_in_one_transaction(nft_ports, monkeypatch):
    fake = FakeNft({'-j -a list chain inet filter input': listing(rule(4, '22', comment=None))})
    monkeypatch.setattr(nft_ports, 'nft', fake)
    result = nft_ports.open_ports([INPUT], PORTS, 'virtnode', check=False)
    assert result['changed'] is True
    args, stdin = fake.calls[-1]
    assert args == ['-f', '-']
    assert stdin.splitlines() == ['insert rule inet filter input tcp dport %s accept comment "virtnode"' % p
                                  for p in reversed(PORTS)]


def test_open_ports_are_left_alone(nft_ports, monkeypatch):
    rules = listing(rule(7, '16514'), rule(8, '49152-49215'), rule(9, '5900-6923'), rule(4, '22', comment=None))
    fake = FakeNft({'-j -a list chain inet filter input': rules})
    monkeypatch.setattr(nft_ports, 'nft', fake)
    assert nft_ports.open_ports([INPUT], PORTS, 'virtnode', check=False) == {'changed': False, 'msg': 'ports already open'}
    assert len(fake.calls) == 1


def test_changed_ports_replace_only_the_own_rules(nft_ports, monkeypatch):
    # The listener went from tcp to tls: 16509 closes, 16514 opens; the SSH rule stays.
    rules = listing(rule(7, '16509'), rule(8, '49152-49215'), rule(9, '5900-6923'), rule(4, '22', comment=None))
    fake = FakeNft({'-j -a list chain inet filter input': rules})
    monkeypatch.setattr(nft_ports, 'nft', fake)
    assert nft_ports.open_ports([INPUT], PORTS, 'virtnode', check=False)['changed'] is True
    lines = fake.calls[-1][1].splitlines()
    assert lines[:3] == ['delete rule inet filter input handle %d' % h for h in (7, 8, 9)]
    assert len(lines) == 6 and not any('handle 4' in line for line in lines)


def test_check_mode_changes_nothing(nft_ports, monkeypatch):
    fake = FakeNft({'-j -a list chain inet filter input': listing()})
    monkeypatch.setattr(nft_ports, 'nft', fake)
    assert nft_ports.open_ports([INPUT], PORTS, 'virtnode', check=True)['changed'] is True
    assert [args for args, _stdin in fake.calls] == [['-j', '-a', 'list', 'chain', 'inet', 'filter', 'input']]
