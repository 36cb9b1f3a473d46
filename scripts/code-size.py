#!/usr/bin/env python3
"""Sizes issue 18 tracks: the longest non-test source files and functions.

Usage: scripts/code-size.py [--top N]

Heuristic, formatted code only (rustfmt output): a function starts at a
line `fn NAME` and ends at the first line after it that closes the brace at
the same indentation. Test modules (`tests.rs`, `#[cfg(test)] mod tests`)
and crates' tests/ directories are skipped.
"""
import os
import re
import sys

top = 10
if "--top" in sys.argv:
    top = int(sys.argv[sys.argv.index("--top") + 1])

FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
files, fns = [], []
for root, _, names in os.walk("crates"):
    if "/tests" in root or "/target" in root or "/src" not in root + "/":
        continue
    for n in names:
        if not n.endswith(".rs") or n == "tests.rs":
            continue
        path = os.path.join(root, n)
        lines = open(path, encoding="utf-8").read().split("\n")
        # Cut a trailing `#[cfg(test)] mod tests { ... }`.
        for i, line in enumerate(lines):
            if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and lines[i + 1].startswith("mod "):
                lines = lines[:i]
                break
        files.append((len(lines), path))
        for i, line in enumerate(lines):
            m = FN.match(line)
            if not m or line.rstrip().endswith(";"):
                continue
            indent = m.group(1)
            for j in range(i + 1, len(lines)):
                if lines[j] == indent + "}":
                    fns.append((j - i + 1, f"{path}:{i + 1} {m.group(7)}"))
                    break
files.sort(reverse=True)
fns.sort(reverse=True)
print(f"files over 1200 lines: {sum(1 for n, _ in files if n > 1200)}")
for n, p in files[:top]:
    print(f"  {n:6} {p}")
print(f"functions over 120 lines: {sum(1 for n, _ in fns if n > 120)}")
for n, p in fns[:top]:
    print(f"  {n:6} {p}")
