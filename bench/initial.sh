#!/usr/bin/env bash
# bench/initial.sh — initial replication throughput (issue 4) against the
# smaller of the volume file's local read bandwidth and the replication
# channel's throughput, on loopback.
#
# Run (from anywhere; needs python3, dd; root for CACHE=cold):
#
#     bash bench/initial.sh
#
# What it does, in one run on this machine:
#   1. builds an image of SIZE bytes: the first DATA bytes random
#      (/dev/urandom), the rest zeros (a hole);
#   2. two sites on 127.0.0.1 (site-a, site-b), served, paired both ways,
#      `authz add --allowed-primary site-a` on site-b; imports the image as
#      volume `v` on site-a (`volume create v --import`: zero blocks stay
#      holes), removes the image, `group create g --partner site-b --volume v
#      --rpo 24h --compress COMPRESS`;
#   3. bound (a), local read: `dd if=<v's data file> of=/dev/null bs=1M`,
#      MB/s = volume bytes / seconds (holes read as zeros, like the
#      replication's reads see them);
#   4. bound (b), channel: `offsite partner test site-b --bytes PT_BYTES
#      --json` (compression off), mb_per_s; once before and once after the
#      replication (the median of the runs is the bound);
#   5. the replication: `offsite group start g --json`, timed (it returns
#      when the first PIT is committed), CPU time of both daemons;
#      MB/s = volume bytes / seconds, also data MB/s = DATA / seconds;
#   6. ratio = replication MB/s / min(bound a, bound b); target >= 0.7.
#   With CACHE=warm (default) the volume's data file is read once (cat >
#   /dev/null) before dd and before the replication, so both read it from
#   the page cache; with CACHE=cold the page cache is dropped (`sync; echo 3
#   > /proc/sys/vm/drop_caches`) before each instead, so both read the
#   volume from disk.
# Everything it started is stopped on exit and the temp dir removed (KEEP=1
# keeps it); JSON, logs and summary.md stay in $OUT.
#
# Options (environment):
#   SIZE=8G  DATA=4G  COMPRESS=none (or zstd)  CACHE=warm (or cold)
#   PT_BYTES=2G (bytes per partner test)  RATIO_TARGET=0.7
#   PERF=0 (1: perf record -g both daemons during the replication; reports
#          in $OUT/perf-site-{a,b}.txt)
#   VERIFY=0 (1: `offsite verify g` afterwards, 0 differing blocks expected)
#   BUILD=1 (0: use $OFFSITE_SRC or target/release/offsite as it is)
#   OFFSITE_SRC=... WORKDIR=... OUT=... KEEP=0
#
# Exit status: 0 if the run completed and the ratio met RATIO_TARGET, 1 if
# not, other on error.

set -euo pipefail

SIZE=${SIZE:-8G}
DATA=${DATA:-4G}
COMPRESS=${COMPRESS:-none}
CACHE=${CACHE:-warm}
PT_BYTES=${PT_BYTES:-2G}
RATIO_TARGET=${RATIO_TARGET:-0.7}
PERF=${PERF:-0}
VERIFY=${VERIFY:-0}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need python3 dd head truncate
[[ $PERF == 0 ]] || need perf -- "apt-get install linux-perf"
[[ $CACHE == cold || $CACHE == warm ]] || die "CACHE is cold or warm, not $CACHE"
[[ $CACHE == warm ]] || [[ -w /proc/sys/vm/drop_caches ]] ||
    die "CACHE=cold drops the page cache and needs root; run as root or with CACHE=warm"

bench_init offsite-initial
bench_binary

SIZE_B=$(bytes_of "$SIZE")
DATA_B=$(bytes_of "$DATA")
((DATA_B <= SIZE_B)) || die "DATA ($DATA) exceeds SIZE ($SIZE)"

{
    machine_info
    echo "tools:   $(dd --version | head -1), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start (1/5/15-min load average)"
    echo "params:  SIZE=$SIZE DATA=$DATA COMPRESS=$COMPRESS CACHE=$CACHE PT_BYTES=$PT_BYTES"
} | tee "$OUT/env.txt" >&2

# ---------------------------------------------------------------- volume
log "image: $DATA random + $((SIZE_B - DATA_B)) bytes of zeros"
IMG=$WORK/src.img
head -c "$DATA_B" /dev/urandom >"$IMG"
truncate -s "$SIZE_B" "$IMG"

make_pair p
authorize_a "$WORK/p-store"
t0=$(now)
"$OFFSITE" volume create v --import "$IMG" --dir "$A" --json >"$OUT/volume.json"
log "import took $(elapsed "$t0" "$(now)") s"
rm -f "$IMG"
VOLFILE=$(ls "$A"/volumes/*.img)
echo "{\"allocated_bytes\": $(($(stat -c %b "$VOLFILE") * $(stat -c %B "$VOLFILE")))}" \
    >"$OUT/volfile.json"
"$OFFSITE" group create g --partner site-b --volume v --rpo 24h --compress "$COMPRESS" \
    --dir "$A" --json >"$OUT/create.json"

prepare_cache() {
    if [[ $CACHE == cold ]]; then
        drop_caches
    else
        cat "$VOLFILE" >/dev/null
    fi
}

# ---------------------------------------------------------------- bounds
run_pt() {  # run_pt TAG
    "$OFFSITE" partner test site-b --dir "$A" --bytes "$PT_BYTES" --json >"$OUT/pt-$1.json"
    log "partner test $1: $(jget mb_per_s <"$OUT/pt-$1.json") MB/s"
}

log "bound (a): dd of the volume file ($CACHE cache)"
prepare_cache
dd if="$VOLFILE" of=/dev/null bs=1M 2>"$OUT/dd.txt"
log "dd: $(tail -1 "$OUT/dd.txt")"

log "bound (b): partner test, $PT_BYTES"
run_pt before

# ---------------------------------------------------------------- replication
prepare_cache
echo "$(load_avg)" >"$OUT/load-before-start.txt"
PERF_PIDS=()
if [[ $PERF == 1 ]]; then
    for s in a b; do
        pid=PID_${s^^}
        perf record -g -o "$OUT/perf-site-$s.data" -p "${!pid}" >/dev/null 2>&1 &
        PERF_PIDS+=("$!")
        track "$!"
    done
    sleep 0.5
fi
log "group start g (initial replication of $SIZE, $COMPRESS)"
a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); t0=$(now)
"$OFFSITE" group start g --dir "$A" --json >"$OUT/start.json"
t1=$(now); a1=$(cpu_ticks "$PID_A"); b1=$(cpu_ticks "$PID_B")
for p in "${PERF_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; stop_pid "$p"; done
printf '{"wall_s": %s, "cpu_a_s": %s, "cpu_b_s": %s}\n' "$(elapsed "$t0" "$t1")" \
    "$(python3 -c "print(($a1 - $a0) / $CLK_TCK)")" \
    "$(python3 -c "print(($b1 - $b0) / $CLK_TCK)")" >"$OUT/start-time.json"
log "group start: $(cat "$OUT/start-time.json")"
"$OFFSITE" group status g --dir "$A" --json >"$OUT/status-a.json"
"$OFFSITE" group status g --dir "$B" --json >"$OUT/status-b.json" 2>&1 || true
if [[ $PERF == 1 ]]; then
    for s in a b; do
        perf report -i "$OUT/perf-site-$s.data" --no-children --percent-limit 0.5 \
            --stdio -g none >"$OUT/perf-site-$s.txt" 2>/dev/null || true
        perf report -i "$OUT/perf-site-$s.data" --children --percent-limit 2 \
            --stdio -g caller,0.5,callee --max-stack 40 >"$OUT/perf-site-$s-children.txt" 2>/dev/null || true
    done
fi

log "bound (b) again: partner test, $PT_BYTES"
run_pt after

if [[ $VERIFY == 1 ]]; then
    log "verify g"
    "$OFFSITE" verify g --dir "$A" --json >"$OUT/verify.json" 2>&1 || true
fi
stop_pair
echo "$(load_avg)" >"$OUT/load-end.txt"

# ---------------------------------------------------------------- report
export OUT SIZE_B DATA_B RATIO_TARGET VERIFY
set +e
python3 - <<'PY' | tee "$OUT/summary.md"
import json, os, re, statistics as st
e = os.environ
out = e["OUT"]
size, data, target = int(e["SIZE_B"]), int(e["DATA_B"]), float(e["RATIO_TARGET"])
load = lambda p: json.load(open(f"{out}/{p}"))
MB = 1e6
print(open(f"{out}/env.txt").read().rstrip().replace("\n", "  \n"))
print()
dd = open(f"{out}/dd.txt").read().strip().splitlines()[-1]
m = re.match(r"(\d+) bytes .* copied, ([\d.]+) s", dd)
dd_bytes, dd_s = int(m.group(1)), float(m.group(2))
dd_mbs = dd_bytes / dd_s / MB
pts = [load(f"pt-{t}.json")["mb_per_s"] for t in ("before", "after")]
pt = st.median(pts)
t = load("start-time.json")
rep = size / t["wall_s"] / MB
bound = min(dd_mbs, pt)
ratio = rep / bound
sa = load("status-a.json")
alloc = load("volfile.json")["allocated_bytes"]
print(f"Volume: {size / 2**30:g} GiB, {data / 2**30:g} GiB random then zeros "
      f"(data file allocates {alloc / 2**30:.2f} GiB). MB = 10^6 B; MB/s of volume bytes.")
print()
print("| measure | seconds | MB/s |")
print("|---|---:|---:|")
print(f"| (a) `dd` of the volume file, bs=1M | {dd_s:.2f} | {dd_mbs:,.0f} |")
print(f"| (b) `partner test --bytes` (before, after; median) | – | {pts[0]:,.0f}, {pts[1]:,.0f}; {pt:,.0f} |")
print(f"| `group start g` (initial replication, first PIT) | {t['wall_s']:.2f} | **{rep:,.0f}** "
      f"(data only: {data / t['wall_s'] / MB:,.0f}) |")
print()
print(f"CPU during the replication: site-a {t['cpu_a_s']:.2f} s, site-b {t['cpu_b_s']:.2f} s "
      f"({100 * t['cpu_a_s'] / t['wall_s']:.0f} % / {100 * t['cpu_b_s'] / t['wall_s']:.0f} % of one core)  ")
print(f"initial_bytes_sent {sa.get('initial_bytes_sent')}, last PIT {sa.get('last_pit')}  ")
print(f"load before `group start`: {open(f'{out}/load-before-start.txt').read().strip()}  ")
if e["VERIFY"] == "1" and os.path.exists(f"{out}/verify.json"):
    print(f"verify: `{open(f'{out}/verify.json').read().strip()[:300]}`  ")
ok = ratio >= target
print(f"ratio replication / min(a, b) = {rep:,.0f} / {bound:,.0f} = **{ratio:.2f}** -> "
      f"{'OK' if ok else 'FAIL'} (target >= {target})")
print(f"load at the end: {open(f'{out}/load-end.txt').read().strip()}")
raise SystemExit(0 if ok else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
