#!/usr/bin/env python3
"""bench/folio-overwrite.py: what a 4 KiB overwrite costs in CPU after a file
was written in large writes, against one written in 4 KiB writes.

Run:  python3 bench/folio-overwrite.py [DIR]   (DIR: a directory on the file
system to test, default /var/tmp; needs 256 MiB free)

Why it exists: on the 6.18 kernel of the development VM, a file written in
1 MiB writes is cached in large folios, and each later 4 KiB buffered
overwrite walks every buffer head of its folio (`ext4_block_write_begin`):
8.1 µs of CPU per overwrite against 2.0 µs (docs/benchmarks.md, stop 15).
offsite's volume files are written exactly like this when an image is
imported or seeded in large writes and the guest then writes 4 KiB blocks.
"""
import os
import random
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
path = os.path.join(directory, f"folio-overwrite.{os.getpid()}")
size = 256 << 20
overwrites = 50_000
try:
    for write_size in (1 << 20, 4096):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        data = os.urandom(write_size)
        for offset in range(0, size, write_size):
            os.pwrite(fd, data, offset)
        os.fsync(fd)
        block = os.urandom(4096)
        offsets = [random.randrange(size // 4096) * 4096 for _ in range(overwrites)]
        t0 = time.process_time()
        for offset in offsets:
            os.pwrite(fd, block, offset)
        cpu = time.process_time() - t0
        os.close(fd)
        os.unlink(path)
        print(f"file written in {write_size} B writes: a random 4 KiB overwrite "
              f"costs {cpu / overwrites * 1e6:.1f} µs of CPU")
finally:
    if os.path.exists(path):
        os.unlink(path)
