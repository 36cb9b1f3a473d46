#!/usr/bin/env bash
# bench/idle.sh — what idle async groups cost each site (issue 17: "idle
# groups cost nothing").
#
# Run (from anywhere):
#
#     bash bench/idle.sh                 # IDLE_GROUPS=1000
#
# What it does: two sites on 127.0.0.1, paired; on site-a GROUPS volumes of
# 1 MiB, each in its own async group (`--rpo 30s`: a scheduled cycle every
# 15 s), all started and replicating; the volumes are never written. Then
# it reads both daemons' CPU time (utime + stime, /proc/PID/stat) over
# WINDOW seconds and reports CPU seconds per minute per site, per group,
# and how many PITs the idle groups committed meanwhile.
# Target: 1,000 idle groups cost each site <= 1 CPU-s per minute.
#
# Options (environment): IDLE_GROUPS=1000 WINDOW=60 SETTLE=20 (seconds after the
#   last group is replicating before the window opens) BUILD=0 (1: cargo
#   build --release first; also when there is no binary) OFFSITE_SRC=...
#   KEEP=0 OUT=...
#
# Exit status: 0 if the target was met, 1 if not.

set -euo pipefail

NGROUPS=${IDLE_GROUPS:-1000}
WINDOW=${WINDOW:-60}
SETTLE=${SETTLE:-20}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}
OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_init offsite-idle
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

{
    machine_info
    echo "tools:   offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start"
    echo "params:  IDLE_GROUPS=$NGROUPS WINDOW=$WINDOW SETTLE=$SETTLE"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

make_pair i
authorize_a "$WORK/store"
start_async_groups "$NGROUPS"
log "every group is replicating; settling ${SETTLE}s"
sleep "$SETTLE"

pits() { "$OFFSITE" group list --dir "$A" --json |
    python3 -c 'import json,sys; print(sum(g["last_pit"]["id"] for g in json.load(sys.stdin)))'; }
p0=$(pits)
a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); w0=$(now)
sleep "$WINDOW"
a1=$(cpu_ticks "$PID_A"); b1=$(cpu_ticks "$PID_B"); w1=$(now)
p1=$(pits)

python3 - "$a0" "$a1" "$b0" "$b1" "$w0" "$w1" "$CLK_TCK" "$NGROUPS" "$p0" "$p1" >"$OUT/summary.md" <<'PY'
import sys
a0, a1, b0, b1 = (int(x) for x in sys.argv[1:5])
w0, w1 = float(sys.argv[5]), float(sys.argv[6])
tck, n, p0, p1 = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
mins = (w1 - w0) / 60
rows = []
worst = 0.0
for site, t0, t1 in (("site-a (primary)", a0, a1), ("site-b (replica)", b0, b1)):
    per_min = (t1 - t0) / tck / mins
    worst = max(worst, per_min)
    rows.append(f"| {site} | {per_min:.3f} | {per_min / n * 1000:.3f} |")
print(f"{n} idle async groups (RPO 30 s), {w1 - w0:.0f} s window; PITs committed meanwhile: {p1 - p0}\n")
print("| site | CPU-s per minute | CPU-ms per group per minute |")
print("|---|---:|---:|")
print("\n".join(rows))
print(f"\ntarget (<= 1 CPU-s per minute per site for 1,000 groups, scaled: {n / 1000:.3f}): "
      + ("met" if worst <= n / 1000 else "missed"))
PY
cat "$OUT/summary.md"
grep -q ": met" "$OUT/summary.md"
