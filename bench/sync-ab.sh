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
# `QDS=$QDS REPEAT=1 RUNTIME=$RUNTIME PIN=$PIN bash bench/sync.sh`; the
# summary gives each pair's sync QD32 IOPS and p99, sync / async IOPS of
# the same run, the daemons' CPU per sync write (primary + replica), the
# disk's fdatasync p50 that sync.sh measured just before each run, and
# with QDS="32 1" the latency a sync write adds at QD1 against fdatasync
# p50 + the bare loopback TCP round trip; how many pairs NEW won, and the
# medians. A difference that does not win most pairs is noise; a
# pair whose two fdatasync figures differ a lot compares the disk's moods
# (docs/benchmarks.md, stop 14).
#
# Options (environment): RUNTIME=10 PIN=1 QDS=32 (as bench/sync.sh; "32 1"
# adds the QD1 jobs) OUT=... (the per-run results stay in OUT/old-N and
# OUT/new-N).
#
# Exit status: 0 when every run completed (whoever won).

set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: bash bench/sync-ab.sh OLD_BINARY NEW_BINARY [PAIRS]" >&2; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-5}
RUNTIME=${RUNTIME:-10}
PIN=${PIN:-1}
QDS=${QDS:-32}
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
    OUT=$out OFFSITE=$2 QDS=$QDS REPEAT=1 RUNTIME=$RUNTIME PIN=$PIN \
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

python3 - "$OUT" "$PAIRS" "$OLD" "$NEW" "$QDS" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, pairs, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
qd1 = "1" in sys.argv[5].split()
def job(name, pair, volume, qd=32):
    w = json.load(open(f"{out}/{name}-{pair}/fio-{volume}-qd{qd}-1.json"))["jobs"][0]["write"]
    p = w["clat_ns"]["percentile"]
    return w["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3, w["total_ios"]
def cpu(name, pair, volume, qd=32):
    c = json.load(open(f"{out}/{name}-{pair}/cpu-{volume}-qd{qd}-1.json"))
    n = max(job(name, pair, volume, qd)[3], 1)
    return c["cpu_a_s"] * 1e6 / n, c["cpu_b_s"] * 1e6 / n
def fsync_p50(name, pair):
    s = json.load(open(f"{out}/{name}-{pair}/fsync.json"))["jobs"][0]["sync"]
    return s["lat_ns"]["percentile"]["50.000000"] / 1e3
def tcp_rtt(name, pair):
    for line in open(f"{out}/{name}-{pair}/summary.md"):
        if "bare loopback TCP round trip of" in line:
            return float(line.split("round trip of ")[1].split()[0].replace(",", ""))
    return float("nan")
print(f"old: {old}\nnew: {new}\n")
head = "| pair | run | sync QD32 IOPS / p99 µs | sync / async | CPU µs per sync write (primary + replica) | fdatasync p50 µs |"
if qd1:
    head += " QD1 added p50 µs | fdatasync p50 + TCP RTT µs |"
print(head)
print("| ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if qd1 else ""))
rows = {"old": [], "new": []}
wins = 0
for p in range(1, pairs + 1):
    for name in ("old", "new"):
        si, _, sp99, _ = job(name, p, "s")
        ratio = si / job(name, p, "a")[0]
        ca, cb = cpu(name, p, "s")
        fs = fsync_p50(name, p)
        line = f"| {p} | {name} | {si:,.0f} / {sp99:,.0f} | {ratio:.2f} | {ca:.1f} + {cb:.1f} | {fs:,.0f} |"
        row = [si, ratio, ca, cb]
        if qd1:
            added = job(name, p, "s", 1)[1] - job(name, p, "n", 1)[1]
            bound = fs + tcp_rtt(name, p)
            line += f" {added:,.0f} | {bound:,.0f} |"
            row += [added, bound]
        rows[name].append(row)
        print(line)
    wins += rows["new"][-1][0] > rows["old"][-1][0]
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
print()
for name in ("old", "new"):
    text = (f"- {name}: median sync QD32 {med(name, 0):,.0f} IOPS, sync / async {med(name, 1):.2f}x, "
            f"CPU per sync write {med(name, 2):.1f} + {med(name, 3):.1f} µs")
    if qd1:
        text += f", QD1 added p50 {med(name, 4):,.0f} µs against {med(name, 5):,.0f} µs"
    print(text)
print(f"- new / old sync QD32 IOPS: {med('new', 0) / med('old', 0) - 1:+.0%}; new won {wins} of {pairs} pairs")
EOF
