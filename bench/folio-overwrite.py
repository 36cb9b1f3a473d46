#!/usr/bin/env python3
"""bench/folio-overwrite.py: what a 4 KiB overwrite costs in CPU after a file
was written in large writes, against one written in 4 KiB writes, and what
each remedy offsite could apply to its large writes costs and saves.

Run:  python3 bench/folio-overwrite.py [DIR] [REPEAT]   (DIR: a directory on
the file system to test, default /var/tmp; needs 256 MiB free; REPEAT: runs
of every case, default 3, interleaved; medians reported)

Why it exists: on the 6.18 kernel of the development VM, a file written in
1 MiB writes is cached in large folios, and each later 4 KiB buffered
overwrite walks every buffer head of its folio (`ext4_block_write_begin`):
8.1 µs of CPU per overwrite against 2.0 µs (docs/benchmarks.md, stop 15).
offsite's volume files are written exactly like this when an image is
imported or seeded in large writes, or a guest (or `qemu-img convert`)
writes large requests over NBD, and the guest then writes 4 KiB blocks.

Cases (each writes the whole file, fsyncs, then times 50,000 random 4 KiB
overwrites in CPU time; the write phase's CPU per MiB is reported too,
since a remedy that makes large writes dear is no remedy):
  1m          1 MiB pwrite calls (the hazard)
  4k          4 KiB pwrite calls (the reference)
  1m/64k      each 1 MiB buffer written as 16 pwrite calls of 64 KiB
  1m/16k      each 1 MiB buffer written as 64 pwrite calls of 16 KiB
  1m+dontneed 1 MiB pwrite calls, fsync, then POSIX_FADV_DONTNEED on the file
  1m-direct   1 MiB pwrite calls with O_DIRECT (no page cache)
"""
import mmap
import os
import random
import statistics
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
path = os.path.join(directory, f"folio-overwrite.{os.getpid()}")
size = 256 << 20
overwrites = 50_000
MIB = 1 << 20


def fill(fd, case):
    """Writes the whole file as `case` says; returns the CPU seconds."""
    if case == "1m-direct":
        buf = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT needs
        buf.write(os.urandom(MIB))
    else:
        buf = os.urandom(MIB)
    t0 = time.process_time()
    if case == "4k":
        for offset in range(0, size, 4096):
            os.pwrite(fd, buf[offset % MIB:offset % MIB + 4096], offset)
    elif case.startswith("1m/"):
        piece = int(case[3:-1]) << 10
        view = memoryview(buf)
        for offset in range(0, size, MIB):
            for at in range(0, MIB, piece):
                os.pwrite(fd, view[at:at + piece], offset + at)
    else:
        for offset in range(0, size, MIB):
            os.pwrite(fd, buf, offset)
    os.fsync(fd)
    if case == "1m+dontneed":
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
    return time.process_time() - t0


def run(case):
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags | (os.O_DIRECT if case == "1m-direct" else 0), 0o600)
    try:
        fill_cpu = fill(fd, case)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDWR)
    try:
        block = os.urandom(4096)
        offsets = [random.randrange(size // 4096) * 4096 for _ in range(overwrites)]
        t0 = time.process_time()
        for offset in offsets:
            os.pwrite(fd, block, offset)
        cpu = time.process_time() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return fill_cpu / (size / MIB) * 1e6, cpu / overwrites * 1e6


cases = ["1m", "4k", "1m/64k", "1m/16k", "1m+dontneed", "1m-direct"]
results = {c: [] for c in cases}
try:
    for r in range(repeat):
        # Rotated per repetition, so no case always runs first.
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            results[case].append(run(case))
finally:
    if os.path.exists(path):
        os.unlink(path)

base = statistics.median(o for _, o in results["4k"])
print(f"{size >> 20} MiB file in {directory}, {overwrites:,} random 4 KiB overwrites, "
      f"medians of {repeat}")
print("| written as | write phase, CPU µs per MiB | 4 KiB overwrite, CPU µs | vs 4k-written |")
print("| --- | ---: | ---: | ---: |")
for case in cases:
    w = statistics.median(x for x, _ in results[case])
    o = statistics.median(x for _, x in results[case])
    print(f"| {case} | {w:,.0f} | {o:.1f} | {o / base:.2f}x |")
