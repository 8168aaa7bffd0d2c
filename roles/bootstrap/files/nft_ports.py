# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find the host's nftables input chains, or open TCP ports in them.

Argument: one JSON object.

``{"action": "chains", "force": bool}`` prints ``{"chains": [...], "changed": false}``:
the base chains of type filter on the input hook (families inet, ip, ip6) of
the running ruleset whose policy is drop, i.e. where a port that no rule
accepts is closed. With ``force``, every such base chain when none drops.

``{"action": "open", "chains": [...], "ports": ["16514", "49152-49215"],
"comment": "virtnode", "check": bool}`` makes the rules carrying ``comment``
in each chain exactly one ``tcp dport <port> accept`` per port, inserted at
the chain's start, in one nft transaction; other rules are never touched.
Prints ``{"changed": bool, "msg": "..."}``; with ``check`` nothing is changed.
"""

from __future__ import annotations

import json
import subprocess
import sys

FAMILIES = ('inet', 'ip', 'ip6')


def fail(msg):
    raise SystemExit(json.dumps({'failed': True, 'msg': msg}))


def nft(args, stdin=None):
    try:
        proc = subprocess.run(['nft'] + args, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    except OSError as exc:
        fail('cannot run nft: %s' % exc)
    if proc.returncode != 0:
        fail('nft %s failed (%d): %s' % (' '.join(args), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def objects(text, kind):
    return [item[kind] for item in json.loads(text or '{}').get('nftables', []) if kind in item]


def input_chains(force):
    chains = [c for c in objects(nft(['-j', 'list', 'chains']), 'chain')
              if c.get('family') in FAMILIES and c.get('hook') == 'input' and c.get('type') == 'filter']
    dropping = [c for c in chains if c.get('policy') == 'drop']
    chosen = dropping or (chains if force else [])
    return [{'family': c['family'], 'table': c['table'], 'name': c['name']} for c in chosen]


def port_of(rule):
    """'16514' or '49152-49215' for a rule ``tcp dport <port> accept``, else None."""
    exprs = rule.get('expr') or []
    if len(exprs) != 2 or 'accept' not in exprs[1]:
        return None
    match = exprs[0].get('match') or {}
    payload = (match.get('left') or {}).get('payload') or {}
    if payload.get('protocol') != 'tcp' or payload.get('field') != 'dport' or match.get('op') not in ('==', 'in'):
        return None
    right = match.get('right')
    if isinstance(right, dict) and 'range' in right:
        return '%s-%s' % tuple(right['range'])
    return str(right)


def rule_line(verb, chain, port, comment):
    return '%s rule %s %s %s tcp dport %s accept comment "%s"' % (
        verb, chain['family'], chain['table'], chain['name'], port, comment)


def open_ports(chains, ports, comment, check):
    commands, done = [], []
    for chain in chains:
        listing = nft(['-j', '-a', 'list', 'chain', chain['family'], chain['table'], chain['name']])
        ours = [r for r in objects(listing, 'rule') if r.get('comment') == comment]
        if sorted(port_of(r) or '' for r in ours) == sorted(ports):
            continue
        done.append('%s %s %s' % (chain['family'], chain['table'], chain['name']))
        commands += ['delete rule %s %s %s handle %d' % (chain['family'], chain['table'], chain['name'], r['handle'])
                     for r in ours]
        # Inserted in reverse, so the chain lists them in the given order, before its own rules.
        commands += [rule_line('insert', chain, port, comment) for port in reversed(ports)]
    if commands and not check:
        nft(['-f', '-'], stdin='\n'.join(commands) + '\n')
    if not done:
        return {'changed': False, 'msg': 'ports already open'}
    return {'changed': True, 'msg': 'opened %s in %s' % (', '.join(ports), '; '.join(done))}


def main():
    spec = json.loads(sys.argv[1])
    if spec['action'] == 'chains':
        result = {'changed': False, 'chains': input_chains(bool(spec.get('force')))}
    elif spec['action'] == 'open':
        result = open_ports(spec['chains'], [str(p) for p in spec['ports']], spec.get('comment') or 'virtnode',
                            bool(spec.get('check')))
    else:
        fail('unknown action %r' % spec['action'])
    print(json.dumps(result))


if __name__ == '__main__':
    main()
