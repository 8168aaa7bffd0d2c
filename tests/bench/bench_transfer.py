"""Disk image transfers on a local file domain: import, export, template and thin clone (not a test).

    make bench-transfer [BENCH_TRANSFER_ARGS='--size-mib 1024 --rounds 5']

A local (``LOCALFS``) domain is made in a private directory of ``--dir`` (default /var/tmp, a real
disk: the copies use O_DIRECT). A test image of ``--size-mib`` with half of it written is built
once per format; then, ``--rounds`` times, each step is timed through the collection's own storage
code:
- import of the image into a new COW volume (probe, checks, qemu-img convert), per format;
- export of that volume to a qcow2 file (checked chain flattened, written under a temporary name,
  synced, renamed);
- a template made from the volume (a full copy marked SHARED), then a thin clone of it in another
  image (hard links and a qcow2 on top).
The median and slowest time of each step, and the copy rate of the imports, are printed. The
figures depend on the disk and the machine's load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def collection_path(collections):
    sys.path.insert(0, collections)
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import domain  # noqa: E402  pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import image_transfer  # noqa: E402  pylint: disable=import-outside-toplevel
    from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volumes  # noqa: E402  pylint: disable=import-outside-toplevel
    return domain, image_transfer, volumes


def make_image(work, fmt, size_mib):
    """An image of ``fmt`` whose first half holds data (pseudo-random, so nothing compresses it away)."""
    raw = os.path.join(work, 'data.bin')
    if not os.path.exists(raw):
        with open(raw, 'wb') as stream:
            stream.truncate(size_mib * MIB)
            stream.seek(0)
            for _chunk in range(size_mib // 2):
                stream.write(os.urandom(MIB))
    path = os.path.join(work, 'source.%s' % fmt)
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', fmt, raw, path], check=True)
    return path


def timed(func):
    started = time.monotonic()
    func()
    return time.monotonic() - started


def report(name, values, size_mib=None):
    median = statistics.median(values)
    rate = '  %7.1f MiB/s of data' % (size_mib / 2 / median) if size_mib else ''
    print('%-28s median %7.3f s   slowest %7.3f s%s' % (name, median, max(values), rate))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--collections', default=str(REPO / '.build'))
    parser.add_argument('--dir', default='/var/tmp')
    parser.add_argument('--size-mib', type=int, default=256)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--formats', default='qcow2,vmdk,vdi,vhdx,raw')
    args = parser.parse_args(argv)
    domain, image_transfer, volumes = collection_path(args.collections)
    work = tempfile.mkdtemp(prefix='virtnode-bench-transfer-', dir=args.dir)
    try:
        sd, mount = str(uuid.uuid4()), os.path.join(work, 'mnt', 'local')
        os.makedirs(mount)
        dom_dir = domain.create_domain(mount, sd, 'LOCALFS', 'Data', 'bench', work, 5, 10)
        md = domain.read_md(dom_dir)
        sources = dict((fmt, make_image(work, fmt, args.size_mib)) for fmt in args.formats.split(','))
        times = dict(('import %s' % fmt, []) for fmt in sources)
        times.update({'export to qcow2': [], 'template (full copy)': [], 'thin clone of the template': []})
        for _round in range(args.rounds):
            for fmt, path in sources.items():
                img, vol = str(uuid.uuid4()), str(uuid.uuid4())

                def do_import(img=img, vol=vol, path=path):
                    with image_transfer.import_source({'path': path}) as source:
                        volumes.create_volume(dom_dir, md, img, vol, 'COW', 'SPARSE', import_source=source)

                times['import %s' % fmt].append(timed(do_import))
            dest = os.path.join(work, 'export.qcow2')
            times['export to qcow2'].append(timed(lambda img=img, vol=vol: image_transfer.export(
                volumes.paths(dom_dir, img, vol)[0], 'COW', dest, 'qcow2')))
            tpl_img, tpl = str(uuid.uuid4()), str(uuid.uuid4())
            times['template (full copy)'].append(timed(lambda img=img, vol=vol: volumes.create_volume(
                dom_dir, md, tpl_img, tpl, 'COW', 'SPARSE', clone_source=(dom_dir, img, vol), template=True)))
            times['thin clone of the template'].append(timed(lambda: volumes.create_volume(
                dom_dir, md, str(uuid.uuid4()), str(uuid.uuid4()), 'COW', 'SPARSE', parent_uuid=tpl,
                parent_image=tpl_img)))
        print('image %d MiB (half written), %d rounds, in %s' % (args.size_mib, args.rounds, args.dir))
        for name, values in times.items():
            report(name, values, args.size_mib if name.startswith(('import', 'export', 'template')) else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
