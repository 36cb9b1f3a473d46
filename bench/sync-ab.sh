#!/usr/bin/env bash
# bench/sync-ab.sh — compares two offsite binaries on bench/sync.sh's sync
# QD32 job, in interleaved pairs.
#
# Run:
#
#     bash bench/sync-ab.sh OLD_BINARY NEW_BINARY [PAIRS]
#
# e.g. build and keep the old one first:
#     git stash; cargo build --release -p offsite-cli
#     cp target/release/offsite /tmp/offsite-old; git stash pop
#     cargo build --release -p offsite-cli
#     bash bench/sync-ab.sh /tmp/offsite-old target/release/offsite 5
#
# Why interleaved: on a shared machine the disk's fdatasync latency and the
# page cache's speed swing every figure by up to 2x over minutes
# (docs/benchmarks.md, stops 12 and 13), so two builds measured one after
# the other compare the machine's moods, not the builds. Each pair runs
# both binaries back to back (order alternating per pair) with
# `QDS=32 REPEAT=1 RUNTIME=$RUNTIME PIN=$PIN bash bench/sync.sh`; the
# summary gives each pair's sync QD32 IOPS and p99, the disk's fdatasync
# p50 that sync.sh measured just before each run, how many pairs NEW won,
# and the medians. A difference that does not win most pairs is noise; a
# pair whose two fdatasync figures differ a lot compares the disk's moods
# (docs/benchmarks.md, stop 14).
#
# Options (environment): RUNTIME=10 PIN=1 (as bench/sync.sh) OUT=... (the
# per-run results stay in OUT/old-N and OUT/new-N).
#
# Exit status: 0 when every run completed (whoever won).

set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: bash bench/sync-ab.sh OLD_BINARY NEW_BINARY [PAIRS]" >&2; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-5}
RUNTIME=${RUNTIME:-10}
PIN=${PIN:-1}
OUT=${OUT:-$(mktemp -d /tmp/offsite-sync-ab.XXXXXX)}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for b in "$OLD" "$NEW"; do
    [[ -x $b ]] || { echo "error: $b is not an executable offsite binary" >&2; exit 2; }
done
mkdir -p "$OUT"

run() {  # run NAME BINARY PAIR
    local out=$OUT/$1-$3
    printf '[%s] pair %s: %s (%s)\n' "$(date -u +%H:%M:%S)" "$3" "$1" "$2" >&2
    # sync.sh exits 1 when a target is missed, which is not a failed run:
    # a run failed when it left no summary.
    OUT=$out OFFSITE=$2 QDS=32 REPEAT=1 RUNTIME=$RUNTIME PIN=$PIN \
        bash "$HERE/sync.sh" >"$out.log" 2>&1 || true
    [[ -s $out/summary.md ]] || { echo "error: run $1-$3 failed; see $out.log" >&2; exit 2; }
}

for pair in $(seq "$PAIRS"); do
    if ((pair % 2)); then
        run old "$OLD" "$pair"; run new "$NEW" "$pair"
    else
        run new "$NEW" "$pair"; run old "$OLD" "$pair"
    fi
done

python3 - "$OUT" "$PAIRS" "$OLD" "$NEW" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, pairs, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def job(name, pair, volume):
    w = json.load(open(f"{out}/{name}-{pair}/fio-{volume}-qd32-1.json"))["jobs"][0]["write"]
    return w["iops"], w["clat_ns"]["percentile"]["99.000000"] / 1e3
print(f"old: {old}\nnew: {new}\n")
def fsync_p50(name, pair):
    s = json.load(open(f"{out}/{name}-{pair}/fsync.json"))["jobs"][0]["sync"]
    return s["lat_ns"]["percentile"]["50.000000"] / 1e3
print("| pair | old sync IOPS / p99 µs | new sync IOPS / p99 µs | new / old | async IOPS old, new run | fdatasync p50 µs old, new run |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
olds, news, wins = [], [], 0
for p in range(1, pairs + 1):
    (oi, op), (ni, np_) = job("old", p, "s"), job("new", p, "s")
    oa, na = job("old", p, "a")[0], job("new", p, "a")[0]
    olds.append(oi); news.append(ni); wins += ni > oi
    fo, fn = fsync_p50("old", p), fsync_p50("new", p)
    print(f"| {p} | {oi:,.0f} / {op:,.0f} | {ni:,.0f} / {np_:,.0f} | {ni / oi:.2f} | {oa:,.0f}, {na:,.0f} | {fo:,.0f}, {fn:,.0f} |")
mo, mn = statistics.median(olds), statistics.median(news)
print()
print(f"- medians: old {mo:,.0f}, new {mn:,.0f} IOPS ({mn / mo - 1:+.0%})")
print(f"- new won {wins} of {pairs} pairs")
EOF
