# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built HTML documentation shows what each module and role documents.

Runs after ``make docs`` (``make docs-test`` does both) against the HTML in
``VIRTNODE_DOCS_HTML``. A module whose EXAMPLES or RETURN does not parse, or a
page template that drops a section, still gives a page; these tests read the
pages themselves: every module's page has its examples, as written, and every
top-level key of its RETURN; every role's page has every option of every entry
point of its argument_specs; every page of docs/ is there.
"""

from __future__ import annotations

import ast
import os
import re

from html.parser import HTMLParser

import pytest
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
MODULES = os.path.join(ROOT, 'plugins', 'modules')
ROLES = os.path.join(ROOT, 'roles')
DOCS = os.path.join(ROOT, 'docs')
HTML = os.environ.get('VIRTNODE_DOCS_HTML', os.path.join(ROOT, '.build', 'docs-site', 'html'))
PAGES = os.path.join(HTML, 'collections', 'virtnode', 'kvm')


class Sections(HTMLParser):
    """Text and element ids of each ``<section id=...>`` of a page, nested sections included."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.text = {}
        self.ids = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'section':
            self.stack.append(attrs.get('id') or '')
            self.text.setdefault(self.stack[-1], [])
            self.ids.setdefault(self.stack[-1], set())
        elif 'id' in attrs:
            for section in self.stack:
                self.ids[section].add(attrs['id'])

    def handle_endtag(self, tag):
        if tag == 'section' and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for section in self.stack:
            self.text[section].append(data)


def _page(name):
    path = os.path.join(PAGES, name)
    assert os.path.isfile(path), '%s is missing: run make docs first' % path
    parser = Sections()
    with open(path, encoding='utf-8') as stream:
        parser.feed(stream.read())
    return parser


def _words(text):
    return ' '.join(text.split())


def _module_doc(name):
    """EXAMPLES (text) and RETURN (parsed) of a module, read without importing it."""
    with open(os.path.join(MODULES, name + '.py'), encoding='utf-8') as stream:
        tree = ast.parse(stream.read())
    doc = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ('EXAMPLES', 'RETURN') and isinstance(node.value, ast.Constant):
                doc[node.targets[0].id] = node.value.value
    return doc.get('EXAMPLES', ''), yaml.safe_load(doc.get('RETURN') or '') or {}


MODULE_NAMES = sorted(name[:-3] for name in os.listdir(MODULES) if name.endswith('.py') and name != '__init__.py')
ROLE_NAMES = sorted(name for name in os.listdir(ROLES) if os.path.isfile(os.path.join(ROLES, name, 'meta', 'argument_specs.yml')))


def test_every_module_and_role_is_found():
    assert MODULE_NAMES, 'no module in %s' % MODULES
    assert ROLE_NAMES, 'no role with argument_specs in %s' % ROLES


@pytest.mark.parametrize('module', MODULE_NAMES)
def test_module_page_shows_its_examples(module):
    examples, _return = _module_doc(module)
    assert examples.strip(), 'module %s has no EXAMPLES' % module
    page = _page('%s_module.html' % module)
    assert 'examples' in page.text, 'the page of %s has no Examples section' % module
    shown = _words(''.join(page.text['examples']))
    missing = [line.strip() for line in examples.splitlines() if line.strip() and _words(line) not in shown]
    assert missing == [], 'the Examples section of %s lacks these lines of EXAMPLES: %s' % (module, missing[:5])
    assert 'virtnode.kvm.%s' % module in shown


@pytest.mark.parametrize('module', MODULE_NAMES)
def test_module_page_shows_every_return_value(module):
    _examples, returns = _module_doc(module)
    assert returns, 'module %s documents no RETURN' % module
    page = _page('%s_module.html' % module)
    assert 'return-values' in page.text, 'the page of %s has no Return Values section' % module
    ids = page.ids['return-values']
    text = _words(''.join(page.text['return-values']))
    missing = [key for key in returns if 'return-%s' % key not in ids or not re.search(r'\b%s\b' % re.escape(key), text)]
    assert missing == [], 'the Return Values section of %s lacks %s' % (module, missing)


@pytest.mark.parametrize('role', ROLE_NAMES)
def test_role_page_shows_every_option(role):
    with open(os.path.join(ROLES, role, 'meta', 'argument_specs.yml'), encoding='utf-8') as stream:
        specs = yaml.safe_load(stream)['argument_specs']
    page = _page('%s_role.html' % role)
    ids = set().union(*page.ids.values())
    missing = ['%s: %s' % (entry, option)
               for entry, spec in sorted(specs.items())
               for option in sorted(spec.get('options') or {})
               if 'parameter-%s--%s' % (entry, option) not in ids]
    assert missing == [], 'the page of role %s lacks these options: %s' % (role, missing)


@pytest.mark.parametrize('page', sorted(name[:-3] for name in os.listdir(DOCS) if name.endswith('.md')))
def test_docs_page_is_built(page):
    path = os.path.join(HTML, 'docs', page + '.html')
    assert os.path.isfile(path), 'docs/%s.md has no page in the site (%s)' % (page, path)


def test_inventory_plugin_page_shows_its_examples_and_options():
    with open(os.path.join(ROOT, 'plugins', 'inventory', 'vms.py'), encoding='utf-8') as stream:
        tree = ast.parse(stream.read())
    doc = dict((node.targets[0].id, node.value.value) for node in tree.body
               if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
               and node.targets[0].id in ('DOCUMENTATION', 'EXAMPLES'))
    page = _page('vms_inventory.html')
    shown = _words(''.join(page.text['examples']))
    missing = [line.strip() for line in doc['EXAMPLES'].splitlines() if line.strip() and _words(line) not in shown]
    assert missing == [], 'the Examples section of the vms inventory lacks: %s' % missing[:5]
    ids = set().union(*page.ids.values())
    options = yaml.safe_load(doc['DOCUMENTATION'])['options']
    assert [name for name in options if 'parameter-%s' % name not in ids] == []
