"""A regular file whose reads hang or fail, mounted over a path (FUSE, no library needed).

Test tooling: a dead NFS server makes ``read()`` of a regular file block, and
a failing disk makes it return EIO. Neither can be had on the lab's local
storage, and a FIFO or a link is not the same (the code refuses both before
reading). This mounts a one-file FUSE file system directly over an existing
file (``rootmode`` of a regular file), with the size of the file it covers:

    python3 faulty_file.py hang PATH    # every read blocks until this process ends
    python3 faulty_file.py eio PATH     # every read fails with EIO

It returns once the mount is in place and keeps serving in the background;
``kill`` the pid it prints, then ``umount PATH``. When it ends, reads that
were blocked fail (ENOTCONN), as a hard NFS mount's do when it is forced off.
"""
import ctypes
import errno
import os
import signal
import struct
import sys

FUSE_LOOKUP, FUSE_GETATTR, FUSE_OPEN, FUSE_READ = 1, 3, 14, 15
FUSE_RELEASE, FUSE_FLUSH, FUSE_INIT, FUSE_INTERRUPT, FUSE_DESTROY = 18, 25, 26, 36, 38
FUSE_FORGET, FUSE_BATCH_FORGET = 2, 42
NO_REPLY = (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT)
IN_HEADER = struct.Struct('<IIQQIIII')    # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct('<IiQ')        # len, error, unique
ATTR = struct.Struct('<QQQQQQIIIIIIIIII')  # ino size blocks a/m/ctime nsecs mode nlink uid gid rdev blksize flags
MS_NOSUID, MS_NODEV = 2, 4
FOPEN_DIRECT_IO = 1                       # no page cache: every read reaches this process


def reply(fd, unique, payload=b'', error=0):
    os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)


def attr(st):
    return ATTR.pack(1, st.st_size, (st.st_size + 511) // 512, int(st.st_atime), int(st.st_mtime),
                     int(st.st_ctime), 0, 0, 0, st.st_mode, 1, st.st_uid, st.st_gid, 0, 4096, 0)


def serve(fd, mode, st):
    while True:
        try:
            request = os.read(fd, 1 << 18)
        except OSError as err:
            if err.errno in (errno.ENODEV, errno.EBADF):
                return  # unmounted
            if err.errno == errno.EINTR:
                continue
            raise
        opcode, unique = IN_HEADER.unpack_from(request)[1:3]
        body = request[IN_HEADER.size:]
        if opcode in NO_REPLY:
            continue
        if opcode == FUSE_INIT:
            readahead = struct.unpack_from('<IIII', body)[2]
            # Protocol 7.19 (a 24-byte answer): enough for a one-file system on any kernel since 3.x.
            reply(fd, unique, struct.pack('<IIIIHHI', 7, 19, readahead, 0, 16, 12, 1 << 17))
        elif opcode == FUSE_GETATTR:
            reply(fd, unique, struct.pack('<QII', 0, 0, 0) + attr(st))
        elif opcode == FUSE_OPEN:
            reply(fd, unique, struct.pack('<QII', 1, FOPEN_DIRECT_IO, 0))
        elif opcode == FUSE_READ:
            if mode == 'eio':
                reply(fd, unique, error=errno.EIO)
            # hang: never answered
        elif opcode in (FUSE_RELEASE, FUSE_FLUSH):
            reply(fd, unique)
        elif opcode == FUSE_DESTROY:
            reply(fd, unique)
            return
        elif opcode == FUSE_LOOKUP:
            reply(fd, unique, error=errno.ENOENT)
        else:
            reply(fd, unique, error=errno.ENOSYS)


def main(argv):
    if len(argv) != 3 or argv[1] not in ('hang', 'eio'):
        sys.exit('usage: faulty_file.py hang|eio PATH')
    mode, path = argv[1], os.path.abspath(argv[2])
    st = os.stat(path)
    fd = os.open('/dev/fuse', os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    options = 'fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other' % (fd, st.st_mode & 0o170000)
    if libc.mount(b'faulty_file', path.encode(), b'fuse.faulty_file', MS_NOSUID | MS_NODEV, options.encode()) != 0:
        err = ctypes.get_errno()
        sys.exit('mount over %s failed: %s' % (path, os.strerror(err)))
    pid = os.fork()
    if pid:
        print(pid)
        return
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(fd, mode, st)
    os._exit(0)


if __name__ == '__main__':
    main(sys.argv)
