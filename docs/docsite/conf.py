# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx configuration of the collection's HTML documentation (``make docs``).

The source tree Sphinx reads is assembled in the build directory: the module and
role pages antsibull-docs writes under ``collections/``, the Markdown pages of
``docs/`` under ``docs/`` (read with myst-parser), and ``index.rst`` from here.
Nothing is fetched, and ``make docs`` runs Sphinx with ``-W -n`` so a broken
reference or a missing page fails the build.

The pages antsibull-docs writes refer to a few sections of Ansible's own
documentation by label (the common return values, action plugins, configuration
settings). Community builds resolve them with Ansible's intersphinx inventory,
downloaded at build time; here a small inventory of just those labels is written
into the build directory, so they become links to docs.ansible.com and any other
unresolved label is still an error.
"""

from __future__ import annotations

import os
import zlib

from pygments.lexers.special import TextLexer

project = 'virtnode.kvm'
copyright = 'virtnode.kvm contributors'  # pylint: disable=redefined-builtin
title = 'virtnode.kvm documentation'
html_short_title = 'virtnode.kvm'

extensions = ['sphinx_antsibull_ext', 'myst_parser']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'

# Links between the Markdown pages and to their headings (``spm.md#the-mailbox-...``)
# resolve like GitHub renders them.
myst_heading_anchors = 6

pygments_style = 'ansible'
highlight_language = 'YAML+Jinja'

html_theme = 'sphinx_ansible_theme'
html_show_sphinx = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False
display_version = False

# Every internal reference must resolve (sphinx-build -n).
nitpicky = True
default_role = 'any'

extensions.append('sphinx.ext.intersphinx')
ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/devel/'
# label: (page and anchor under ANSIBLE_DOCS, title)
ANSIBLE_LABELS = {
    'action_plugins': ('plugins/action.html#action-plugins', 'Action plugins'),
    'ansible_configuration_settings': ('reference_appendices/config.html#ansible-configuration-settings',
                                       'Ansible Configuration Settings'),
    'common_return_values': ('reference_appendices/common_return_values.html#common-return-values',
                             'Return Values'),
}


# ansible-core's own settings that a plugin's cache options name as environment variables (the
# inventory_cache fragment of the vms inventory plugin); the collection's own are on its own page.
ANSIBLE_ENVVARS = ('ANSIBLE_CACHE_PLUGIN', 'ANSIBLE_CACHE_PLUGIN_CONNECTION', 'ANSIBLE_CACHE_PLUGIN_PREFIX',
                   'ANSIBLE_CACHE_PLUGIN_TIMEOUT')


def write_ansible_inventory(app, config):
    """Write the inventory of ANSIBLE_LABELS and ANSIBLE_ENVVARS (Sphinx inventory format 2) and map it."""
    lines = ''.join('%s std:label -1 %s %s\n' % (label, uri, name) for label, (uri, name) in sorted(ANSIBLE_LABELS.items()))
    lines += ''.join('%s std:envvar 1 reference_appendices/config.html#envvar-%s -\n' % (name, name)
                     for name in ANSIBLE_ENVVARS)
    path = os.path.join(app.doctreedir, 'ansible_devel.inv')
    os.makedirs(app.doctreedir, exist_ok=True)
    with open(path, 'wb') as inv:
        inv.write(b'# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n'
                  b'# The remainder of this file is compressed using zlib.\n')
        inv.write(zlib.compress(lines.encode('utf-8')))
    config.intersphinx_mapping = {'ansible_devel': (ANSIBLE_DOCS, path)}


def setup(app):
    """Map Ansible's labels offline; show the architecture page's Mermaid diagram as text."""
    app.connect('config-inited', write_ansible_inventory, priority=500)
    app.add_lexer('mermaid', TextLexer)
