# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pack module_utils packages of this collection, and an entry script, into one tar (runs on the controller).

The layout is the one the node agent is installed with: the packages under
``ansible_collections/virtnode/kvm/plugins/module_utils/``, the entry script
at the top, which puts its own directory on ``sys.path``. One archive is one
transfer and one unpacking on the host, where a copy per file costs a module
run each (seconds apiece on a slow host). The archive is deterministic (names
sorted, fixed owner and time), so unpacking it again changes nothing when
the code did not change.

    payload_archive.py OUTPUT MODULE_UTILS_DIR PACKAGES ENTRY_SCRIPT
"""

from __future__ import annotations

import io
import os
import sys
import tarfile

PREFIX = 'ansible_collections/virtnode/kvm/plugins/module_utils'
MTIME = 1577836800  # fixed: the archive depends on the code only


def add(tar, name, data=None, mode=0o644):
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = 'root'
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))


def build(module_utils, packages, entry):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.GNU_FORMAT) as tar:
        parts = PREFIX.split('/')
        for depth in range(1, len(parts) + 1):
            add(tar, '/'.join(parts[:depth]))
        for package in sorted(packages):
            add(tar, '%s/%s' % (PREFIX, package))
            directory = os.path.join(module_utils, package)
            for name in sorted(os.listdir(directory)):
                if name.endswith('.py'):
                    with open(os.path.join(directory, name), 'rb') as handle:
                        add(tar, '%s/%s/%s' % (PREFIX, package, name), handle.read())
        with open(entry, 'rb') as handle:
            add(tar, os.path.basename(entry), handle.read())
    return buffer.getvalue()


def main(argv):
    output, module_utils, packages, entry = argv
    data = build(module_utils, [p for p in packages.split(',') if p], entry)
    try:
        with open(output, 'rb') as handle:
            if handle.read() == data:
                return 0
    except OSError:
        pass
    with open(output, 'wb') as handle:
        handle.write(data)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
