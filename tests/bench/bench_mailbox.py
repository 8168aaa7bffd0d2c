"""SPM mailbox round trip: request written -> reply read, on real inbox/outbox files.

Both sides run in this process on files in a temporary directory (O_DIRECT + fdatasync as on
shared storage, where the file system allows it); the extension itself is a
no-op, so the figures are the transport alone. Prints min/median/p90/max per configuration.

    PYTHONPATH=.build .venv/bin/python tests/bench/bench_mailbox.py [--requests 40] [--dir DIR]

For timing inside another benchmark: ``ExtendRequester.request`` leaves the seconds from the
request write to the reply in ``requester.last_elapsed`` (all of them in ``requester.elapsed``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from ansible_collections.virtnode.kvm.plugins.module_utils.agent import mailbox_server as ms

SD = '00112233-4455-6677-8899-aabbccddeeff'


def make_master(directory):
    dom_md = os.path.join(directory, 'dom_md')
    os.makedirs(dom_md)
    for name in ('inbox', 'outbox'):
        with open(os.path.join(dom_md, name), 'wb') as stream:
            stream.truncate(16 * 1024 * 1024)
    return directory


def run(directory, requests, parallel, poke, event_interval, poll_interval):
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        return _run(make_master(tmp), requests, parallel, poke, event_interval, poll_interval)


def _run(master, requests, parallel, poke, event_interval, poll_interval):
    server = ms.MailboxServer(master, lambda sd, vol, size: size, event_interval=event_interval).start()
    time.sleep(0.3)
    requester = ms.ExtendRequester(master, 2, poll_interval=poll_interval, poke=poke)
    try:
        def worker(number):
            for index in range(requests // parallel):
                vol = '%08x-0000-4000-8000-%012x' % (number, index)
                requester.request(SD, vol, 1024 + index, timeout=30)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(number,)) for number in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    finally:
        server.stop()
    times = sorted(requester.elapsed)
    return times, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--requests', type=int, default=40)
    parser.add_argument('--dir', default=None, help='where the mailbox files go (default: the temp directory)')
    args = parser.parse_args()
    configs = [
        ('poke, SPM looks every 0.1 s (default)', 1, True, ms.DEFAULT_EVENT_INTERVAL),
        ('poke, SPM looks every 0.5 s (VDSM)', 1, True, 0.5),
        ('no poke, full read every 2 s (VDSM without events)', 1, False, 0.1),
        ('poke, 0.1 s, 8 requests in parallel', 8, True, ms.DEFAULT_EVENT_INTERVAL),
    ]
    print('%-52s %5s %8s %8s %8s %8s %9s' % ('configuration', 'n', 'min ms', 'median', 'p90', 'max', 'req/s'))
    for name, parallel, poke, event_interval in configs:
        count = args.requests if poke else max(4, args.requests // 8)
        times, wall = run(args.dir, count, parallel, poke, event_interval, ms.DEFAULT_POLL_INTERVAL)
        p90 = times[int(len(times) * 0.9) - 1] if len(times) > 1 else times[-1]
        print('%-52s %5d %8.1f %8.1f %8.1f %8.1f %9.1f' % (
            name, len(times), times[0] * 1000, statistics.median(times) * 1000, p90 * 1000, times[-1] * 1000,
            len(times) / wall))


if __name__ == '__main__':
    main()
