# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The single exception type raised by virtnode.kvm module_utils.

Modules turn it into ``module.fail_json(msg=str(err), **err.details)`` (or
just ``msg``); the node agent logs it. Nothing else in module_utils should
leak library specific exceptions (``libvirt.libvirtError``, ``OSError`` from
a helper command, ...) to its callers.
"""

from __future__ import annotations


class VirtnodeError(Exception):
    """An operation failed; ``message`` is meant for humans.

    ``details`` is an optional dict of machine readable context (the libvirt
    error code, the path that could not be read, ...). It is copied, so the
    caller's dict is never shared.
    """

    def __init__(self, message, details=None):
        super().__init__(message)
        self.message = message
        self.details = dict(details) if details else {}

    def __str__(self):
        return self.message

    def to_dict(self):
        """Return ``{'msg': ..., 'details': {...}}`` for fail_json or JSON APIs."""
        result = {'msg': self.message}
        if self.details:
            result['details'] = dict(self.details)
        return result
