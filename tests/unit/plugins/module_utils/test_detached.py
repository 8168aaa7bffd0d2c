# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.common import detached


def _write_marker(path, fd):
    # Runs in the detached grandchild: proves it ran, and that only the kept fd survived.
    open_fds = sorted(int(n) for n in os.listdir('/proc/self/fd'))
    with open(path, 'w') as handle:
        handle.write('%d %d %s' % (os.getpid(), os.getsid(0), ','.join(map(str, open_fds))))
    os.write(fd, b'kept')
    os.close(fd)


def test_spawn_detached_runs_in_its_own_session_with_only_kept_fds(tmp_path):
    marker = tmp_path / 'marker'
    read_fd, write_fd = os.pipe()
    pid = detached.spawn_detached(_write_marker, str(marker), write_fd, keep_fds=(write_fd,))
    os.close(write_fd)
    assert os.read(read_fd, 16) == b'kept'
    os.close(read_fd)
    deadline = time.monotonic() + 5
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, 'the detached process never ran'
        time.sleep(0.01)
    child_pid, session, fds = marker.read_text().split(' ')
    assert int(child_pid) == pid
    # A new session (led by the intermediate child, so no terminal can be acquired).
    assert int(session) not in (os.getsid(0), pid)
    # 0-2 (/dev/null), the kept pipe end, and the fd listdir opened.
    assert len(fds.split(',')) <= 5


def test_process_start_time_tells_live_from_gone():
    assert detached.process_start_time(os.getpid()) is not None
    assert detached.process_start_time(2 ** 22 + 12345) is None
    assert detached.process_start_time(None) is None
