#!/usr/bin/env bash
# bench/journal.sh — the journal of a continuous group (issue 19): what it
# stores per byte written, how regular its checkpoints are, and how fast a
# test failover reaches any point of its history.
#
# Run (from anywhere; needs fio with the nbd ioengine and python3):
#
#     bash bench/journal.sh
#
# What it does, in one run on this machine:
#   two sites on 127.0.0.1 (site-a, site-b), paired; on site-a VOLUMES
#   (default 4) sparse volumes of SIZE (default 10G) in one continuous
#   group (`--mode continuous --rpo 30s --compress none`, one checkpoint a
#   second, a day of history), started and streaming.
#   1. Writes: one fio job per volume, 64 KiB random writes at RATE
#      (default 4m: 4 MiB/s per volume) for RUNTIME (default 300) seconds.
#   2. Space: the bytes fio wrote vs the journal's bytes (`pit list
#      --checkpoints --json` at site-b) and the replica store's growth
#      (`du` of its directory before and after, which also holds the PITs'
#      segments and the base): per byte written, and per hour at RATE.
#   3. Checkpoint spacing: the gaps between consecutive checkpoints taken
#      while fio ran (`pit list --checkpoints --all --json`): p50/p99/max.
#   4. Recovery: POINTS (default 10) times drawn at random between the
#      oldest and the newest checkpoint; for each, `failover run gj --test
#      --at TIME` at site-b, timed, then `failover stop-test gj`.
# Targets: journal bytes <= 1.1 x bytes written + index overhead (the
# journal's index files and headers, reported); checkpoint spacing p99 <=
# 1.2 s; `failover run --test --at` < 2 s wherever the point.
# (The issue's recovery target is for points within the last hour of a
# 4 x 10 GiB group: RUNTIME=3600 makes the history an hour.)
# Everything it started is stopped on exit (KEEP=1 keeps the temp dir).
# Results (fio JSON, listings, timings, logs, summary.md) stay in $OUT.
#
# Options (environment): VOLUMES=4 SIZE=10G RATE=4m RUNTIME=300 POINTS=10
#   MODE=continuous (or sync) BUILD=0 (1: cargo build --release first; also
#   when there is no binary) OFFSITE_SRC=... WORKDIR=... OUT=... KEEP=0
#
# Exit status: 0 if the run completed and every target was met, 1 if not.

set -euo pipefail

VOLUMES=${VOLUMES:-4}
SIZE=${SIZE:-10G}
RATE=${RATE:-4m}
RUNTIME=${RUNTIME:-300}
POINTS=${POINTS:-10}
MODE=${MODE:-continuous}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}
OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need fio python3 -- "apt-get install fio"
fio --enghelp 2>/dev/null | grep -qw nbd || die "fio lacks the nbd ioengine"

bench_init offsite-journal
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

{
    machine_info
    echo "tools:   $(fio --version), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start"
    echo "params:  VOLUMES=$VOLUMES SIZE=$SIZE RATE=$RATE RUNTIME=$RUNTIME POINTS=$POINTS MODE=$MODE"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

make_pair j
STORE="$WORK/j-store"
authorize_a "$STORE"

members=()
for i in $(seq "$VOLUMES"); do
    "$OFFSITE" volume create "v$i" --size "$SIZE" --dir "$A" >/dev/null
    members+=(--volume "v$i")
done
"$OFFSITE" group create gj --partner site-b "${members[@]}" --mode "$MODE" --rpo 30s \
    --compress none --dir "$A" >/dev/null
"$OFFSITE" group start gj --dir "$A" >/dev/null
for _ in $(seq 1200); do
    st=$("$OFFSITE" group status gj --dir "$A" --json | jget sync_state)
    [[ $st == streaming || $st == in-sync ]] && break
    sleep 0.5
done
[[ $st == streaming || $st == in-sync ]] || die "group gj never streamed (sync_state $st)"
log "group gj ($MODE, $VOLUMES x $SIZE) streams"

store_bytes() { du -sb "$STORE" | cut -f1; }
before=$(store_bytes)

log "writes: fio 64k randwrite at $RATE per volume for ${RUNTIME}s on $VOLUMES volumes"
fio_pids=()
t_start=$(now)
for i in $(seq "$VOLUMES"); do
    fio --name="w$i" --ioengine=nbd --uri="$("$OFFSITE" volume url "v$i" --dir "$A")" \
        --rw=randwrite --bs=64k --rate="$RATE" --time_based --runtime="$RUNTIME" \
        --output-format=json --output="$OUT/fio-v$i.json" >/dev/null 2>&1 &
    fio_pids+=($!)
    track $!
done
for p in "${fio_pids[@]}"; do wait "$p"; done
t_end=$(now)
# The newest writes reach the replica's journal and their checkpoint.
sleep 3
after=$(store_bytes)

"$OFFSITE" pit list gj --checkpoints --all --json --dir "$B" >"$OUT/checkpoints.json"
ls -l "$STORE"/*/journal >"$OUT/journal-files.txt" 2>/dev/null || true

log "recovery: $POINTS test failovers at random points of the history"
python3 - "$OUT/checkpoints.json" "$POINTS" >"$OUT/points.txt" <<'EOF'
import json, random, sys
c = json.load(open(sys.argv[1]))["checkpoints"]
lo, hi = c[0]["time_ns"], c[-1]["time_ns"]
for _ in range(int(sys.argv[2])):
    t = random.randint(lo, hi)
    print("%d.%09d" % (t // 10**9, t % 10**9))
EOF
: >"$OUT/recovery.txt"
while read -r t; do
    at=$(date -u -d "@$t" +%Y-%m-%dT%H:%M:%S.%NZ)
    t0=$(now)
    "$OFFSITE" failover run gj --test --at "$at" --json --dir "$B" >"$OUT/test-failover.json"
    t1=$(now)
    echo "$at $(elapsed "$t0" "$t1") $(jget point <"$OUT/test-failover.json" | tr -d ' \n')" >>"$OUT/recovery.txt"
    "$OFFSITE" failover stop-test gj --dir "$B" >/dev/null
done <"$OUT/points.txt"

python3 - "$OUT" "$before" "$after" "$t_start" "$t_end" "$VOLUMES" <<'EOF' | tee "$OUT/summary.md"
import json, sys, glob, os
out, before, after, t0, t1, nvol = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
written = sum(json.load(open(f))["jobs"][0]["write"]["io_bytes"] for f in glob.glob(os.path.join(out, "fio-v*.json")))
listing = json.load(open(os.path.join(out, "checkpoints.json")))
journal = listing["bytes"]
cps = [c["time_ns"] for c in listing["checkpoints"] if t0 * 1e9 <= c["time_ns"] <= t1 * 1e9]
gaps = sorted((b - a) / 1e9 for a, b in zip(cps, cps[1:]))
def pct(xs, p):
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")
rec = [float(l.split()[1]) for l in open(os.path.join(out, "recovery.txt"))]
hours = (t1 - t0) / 3600
print(open(os.path.join(out, "header.txt")).read())
print("| measure | value | target |")
print("| --- | --- | --- |")
print(f"| bytes written by fio | {written / 2**20:.0f} MiB in {t1 - t0:.0f} s ({written / 2**30 / hours:.1f} GiB/h) | |")
print(f"| journal bytes | {journal / 2**20:.0f} MiB in {listing['files']} files = {journal / written:.3f} x written | <= 1.1 x + index |")
print(f"| replica store growth (journal + PIT segments + base) | {(after - before) / 2**20:.0f} MiB = {(after - before) / written:.3f} x written | (reported) |")
print(f"| checkpoints while writing | {len(cps)}, spacing p50 {pct(gaps, 50):.3f} s, p99 {pct(gaps, 99):.3f} s, max {gaps[-1] if gaps else float('nan'):.3f} s | p99 <= 1.2 s |")
print(f"| failover run --test --at (random points, n={len(rec)}) | median {sorted(rec)[len(rec)//2]:.2f} s, max {max(rec):.2f} s | < 2 s |")
ok = journal <= 1.1 * written + listing["files"] * 4096 and pct(gaps, 99) <= 1.2 and max(rec) < 2
print()
print("targets met" if ok else "targets NOT met")
sys.exit(0 if ok else 1)
EOF
