# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Kept in step with plugins/module_utils/common/module.py (failure).
    DOCUMENTATION = r"""
options: {}
notes:
  - "On failure the result has C(msg) (what went wrong and, where it matters, that nothing was
    changed) and, where they apply, these keys at the top level: C(field) (the option or value at
    fault), C(path) (the file or device concerned), C(uri), C(libvirt_error), C(code) and C(domain)
    (libvirt's error and its error code and domain), C(sd_uuid), C(sp_uuid), C(owner_host_id) (the
    host holding a lease), C(unreachable) (storage mount points that did not answer), C(hook) (the hook
    script that refused), C(problems), C(plan) and
    C(rollback) (for network changes), C(output) (a helper command's output). A detail named like a
    key Ansible reserves (C(rc), C(changed), ...) is given as C(detail_<name>)."
"""
