# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where things are on a host: the places VDSM defined and the collection's own.

The storage layout (``storage/layout.py``) builds every domain path from
these roots; the host facts, the VM spec and the agent's storage monitor
read the same constants instead of spelling the paths again.
"""

from __future__ import annotations

import os

# VDSM's roots: storage connections are mounted below MOUNT_ROOT, pools link their domains below DATA_CENTER_ROOT.
DATA_CENTER_ROOT = '/rhev/data-center'
MOUNT_ROOT = os.path.join(DATA_CENTER_ROOT, 'mnt')

# The host's sanlock host id, written by the bootstrap role (bootstrap_sanlock_host_id); storage_pool's default.
HOST_ID_FILE = '/etc/virtnode/host_id'
