# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Kept in step with LIBVIRT_ARGUMENT_SPEC in plugins/module_utils/libvirt/connection.py.
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI used on the managed host.
      - The default is the local system QEMU/KVM driver, which is what a
        virtualization node runs. C(test:///default) selects libvirt's
        built-in test driver.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (Debian package C(python3-libvirt)) on the managed host
"""
