#!/usr/bin/env bash
# bench/continuous.sh — continuous replication (issue 19): what streaming
# every write to the replica costs the VM, and how far behind the replica is.
#
# Run (from anywhere; needs fio with the nbd ioengine and python3):
#
#     bash bench/continuous.sh
#
# What it does, in one run on this machine:
#   two sites on 127.0.0.1 (site-a, site-b), paired; on site-a two 1 GiB
#   volumes, each written once over NBD in 4 KiB writes (as bench/sync.sh
#   does, so the jobs overwrite): `c` in a continuous group
#   (`--mode continuous --rpo 30s --compress none`: the replica's log is
#   sealed every 30 s), `n` in no group; the group started and streaming.
#   1. For each volume in turn (order rotated per repetition), the same job
#          fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32
#              --time_based --runtime=RUNTIME
#      IOPS and p99 completion latency.
#   2. Lag at a sustained rate: fio 64 KiB random writes on `c` at
#      --rate=LAG_RATE (default 50m: 50 MiB/s) for LAG_RUNTIME seconds,
#      sampling `group status gc --json`'s continuous_lag_seconds every
#      second; p50/p99/max of the samples, and the spills counted in
#      /metrics (a spill means the replica fell more than
#      replication.continuous_queue_bytes behind).
#   Then `verify gc` (0 differing blocks expected).
# Targets: continuous >= 0.9 x no replication IOPS at QD32; p99 latency
# <= 1.5 x that of no replication; lag p99 <= 2 s at 50 MiB/s.
# Everything it started is stopped on exit (KEEP=1 keeps the temp dir).
# Results (fio JSON, lag samples, logs, summary.md) stay in $OUT.
#
# Options (environment): REPEAT=1 RUNTIME=20 LAG_RUNTIME=30 LAG_RATE=50m
#   BUILD=0 (1: cargo build --release first; also when there is no binary)
#   OFFSITE_SRC=... WORKDIR=... OUT=... KEEP=0 SETTLE=1 (sync before each
#   job, see bench/sync.sh) PERF=0 (1: `perf record -g` of both daemons
#   during the continuous QD32 job, into $OUT/perf-{a,b}.data)
#   PIN=0 (1: site-b's daemon, the replica, on CPU 1 and site-a's daemon
#   plus fio on CPU 0 — the two sites on separate cores, as on two
#   machines; the same for both volumes, so the ratios stay within one run)
#   QUEUE_BYTES= (set: site-a's replication.continuous_queue_bytes, put in
#   force by SIGHUP before the group starts; default: the site's, 64 MiB)
#
# Exit status: 0 if the run completed and every target was met, 1 if not.

set -euo pipefail

REPEAT=${REPEAT:-1}
RUNTIME=${RUNTIME:-20}
LAG_RUNTIME=${LAG_RUNTIME:-30}
LAG_RATE=${LAG_RATE:-50m}
SETTLE=${SETTLE:-1}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}
PERF=${PERF:-0}
PIN=${PIN:-0}
QUEUE_BYTES=${QUEUE_BYTES:-}
OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need fio python3 -- "apt-get install fio"
fio --enghelp 2>/dev/null | grep -qw nbd || die "fio lacks the nbd ioengine"

bench_init offsite-continuous
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

{
    machine_info
    echo "tools:   $(fio --version), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start"
    echo "params:  REPEAT=$REPEAT RUNTIME=$RUNTIME LAG_RUNTIME=$LAG_RUNTIME LAG_RATE=$LAG_RATE SETTLE=$SETTLE PIN=$PIN QUEUE_BYTES=${QUEUE_BYTES:-default}"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

make_pair c
FIO=(fio)
if [[ $PIN == 1 ]]; then
    need taskset -- "apt-get install util-linux"
    (($(nproc) >= 2)) || die "PIN=1 needs 2 CPUs"
    taskset -a -p -c 1 "$PID_B" >/dev/null
    taskset -a -p -c 0 "$PID_A" >/dev/null
    FIO=(taskset -c 0 fio)
    log "pinned: site-b (replica) on CPU 1, site-a and fio on CPU 0"
fi
authorize_a "$WORK/store"
if [[ -n $QUEUE_BYTES ]]; then
    # `site init` writes every [replication] key with its default.
    sed -i "s/^continuous_queue_bytes = .*/continuous_queue_bytes = $(bytes_of "$QUEUE_BYTES")/" "$A/config.toml"
    grep -q "^continuous_queue_bytes = $(bytes_of "$QUEUE_BYTES")\$" "$A/config.toml" ||
        die "could not set continuous_queue_bytes in $A/config.toml"
    kill -HUP "$PID_A"
    sleep 1
    log "site-a: continuous_queue_bytes = $QUEUE_BYTES"
fi
for v in c n; do
    "$OFFSITE" volume create "$v" --size 1G --dir "$A" >/dev/null
done
for v in c n; do
    fio --name=fill --ioengine=nbd --uri="$("$OFFSITE" volume url "$v" --dir "$A")" \
        --rw=write --bs=4k --iodepth=32 --size=1G \
        --output-format=json --output="$OUT/fill-$v.json" >/dev/null
done
log "volumes filled (1 GiB each, 4k writes)"
"$OFFSITE" group create gc --partner site-b --volume c --mode continuous --rpo 30s \
    --compress none --dir "$A" >/dev/null
"$OFFSITE" group start gc --dir "$A" >/dev/null
for i in $(seq 1500); do
    st=$("$OFFSITE" group status gc --dir "$A" --json | jget sync_state)
    [[ $st == streaming ]] && break
    sleep 0.2
done
[[ $st == streaming ]] || die "group gc did not start streaming (state: $st)"
log "group gc is streaming"

declare -A URI
for v in c n; do URI[$v]=$("$OFFSITE" volume url "$v" --dir "$A"); done
targets=(c n)
for rep in $(seq "$REPEAT"); do
    for k in 0 1; do
        v=${targets[$(((k + rep - 1) % 2))]}
        [[ $SETTLE == 1 ]] && sync
        log "rep $rep volume $v: fio 4k randwrite QD32 ${RUNTIME}s"
        perfs=()
        if [[ $PERF == 1 && $v == c && $rep == 1 ]]; then
            for s in a b; do
                pid=PID_${s^^}
                perf record -g -p "${!pid}" -o "$OUT/perf-$s.data" -- sleep "$RUNTIME" \
                    >/dev/null 2>&1 &
                perfs+=($!)
            done
        fi
        c0a=$(cpu_ticks "$PID_A"); c0b=$(cpu_ticks "$PID_B")
        "${FIO[@]}" --name=randwrite --ioengine=nbd --uri="${URI[$v]}" --rw=randwrite --bs=4k \
            --iodepth=32 --time_based --runtime="$RUNTIME" \
            --output-format=json --output="$OUT/fio-$v-$rep.json" >/dev/null
        printf '{"cpu_a_s": %s, "cpu_b_s": %s}\n' \
            "$(python3 -c "print(($(cpu_ticks "$PID_A") - $c0a) / $CLK_TCK)")" \
            "$(python3 -c "print(($(cpu_ticks "$PID_B") - $c0b) / $CLK_TCK)")" \
            >"$OUT/cpu-$v-$rep.json"
        for p in "${perfs[@]}"; do wait "$p" || true; done
    done
done

API_A=$("$OFFSITE" site show --dir "$A" --json | jget api)
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode())' \
    "$API_A" >"$OUT/metrics-a-qd32.txt" || true
[[ $SETTLE == 1 ]] && sync
log "lag: fio 64k randwrite at $LAG_RATE for ${LAG_RUNTIME}s on c, sampling the lag each second"
"${FIO[@]}" --name=lag --ioengine=nbd --uri="${URI[c]}" --rw=randwrite --bs=64k --iodepth=8 \
    --rate="$LAG_RATE" --time_based --runtime="$LAG_RUNTIME" \
    --output-format=json --output="$OUT/fio-lag.json" >/dev/null &
FIO_PID=$!
track "$FIO_PID"
: >"$OUT/lag-samples.txt"
while kill -0 "$FIO_PID" 2>/dev/null; do
    t0=$(now)
    "$OFFSITE" group status gc --dir "$A" --json >"$OUT/lag-status.json" || true
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s.get("continuous_lag_seconds"), s.get("sync_state"))' \
        "$OUT/lag-status.json" >>"$OUT/lag-samples.txt" || true
    python3 -c "import time; time.sleep(max(0.0, 1.0 - ($(now) - $t0)))"
done
wait "$FIO_PID" || true
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode())' \
    "$API_A" >"$OUT/metrics-a.txt" || true
"$OFFSITE" verify gc --dir "$A" --json >"$OUT/gc-verify.json" || true
stop_pair

python3 - "$OUT" "$REPEAT" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, repeat = sys.argv[1], int(sys.argv[2])
def job(v, rep):
    w = json.load(open(f"{out}/fio-{v}-{rep}.json"))["jobs"][0]["write"]
    p = w["clat_ns"]["percentile"]
    return w["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3
names = {"c": "continuous group", "n": "no replication"}
res = {}
print("| fio 4k randwrite QD32 | IOPS | p50 µs | p99 µs | CPU µs per write (site-a + site-b daemons) |")
print("| --- | ---: | ---: | ---: | ---: |")
for v in "cn":
    runs = [job(v, r) for r in range(1, repeat + 1)]
    res[v] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
    cpu = [json.load(open(f"{out}/cpu-{v}-{r}.json")) for r in range(1, repeat + 1)]
    writes = sum(json.load(open(f"{out}/fio-{v}-{r}.json"))["jobs"][0]["write"]["total_ios"] for r in range(1, repeat + 1))
    per = [sum(c[k] for c in cpu) * 1e6 / max(writes, 1) for k in ("cpu_a_s", "cpu_b_s")]
    print(f"| {names[v]} | {res[v][0]:,.0f} | {res[v][1]:,.0f} | {res[v][2]:,.0f} | {per[0]:.1f} + {per[1]:.1f} |")
iops_ratio = res["c"][0] / res["n"][0]
p99_ratio = res["c"][2] / res["n"][2]
samples, states = [], {}
for line in open(f"{out}/lag-samples.txt"):
    lag, state = line.split()
    states[state] = states.get(state, 0) + 1
    if lag != "None":
        samples.append(float(lag))
samples.sort()
def pct(p):
    return samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))] if samples else float("nan")
lw = json.load(open(f"{out}/fio-lag.json"))["jobs"][0]["write"]
rate = lw["bw_bytes"] / 1e6
def spills_in(name):
    for line in open(f"{out}/{name}"):
        if line.startswith('offsite_group_continuous_spills_total{group="gc"}'):
            return int(float(line.split()[-1]))
    return 0
qd32_spills = spills_in("metrics-a-qd32.txt")
spills = spills_in("metrics-a.txt") - qd32_spills
verify = json.load(open(f"{out}/gc-verify.json"))
lag_p99 = pct(99)
print()
print(f"- continuous / no replication IOPS at QD32: **{iops_ratio:.2f}x** (target >= 0.9)")
print(f"- continuous / no replication p99 latency at QD32: **{p99_ratio:.2f}x** (target <= 1.5)")
print(f"- spills during the QD32 jobs: {qd32_spills} (each followed by a resynchronization while the job writes: rounds from the tracker, then a cut)")
print(f"- lag at {rate:,.1f} MB/s of 64 KiB writes ({len(samples)} samples, one a second; states {states}): "
      f"p50 {pct(50):.2f} s, **p99 {lag_p99:.2f} s** (target <= 2), max {samples[-1] if samples else float('nan'):.2f} s; spills: {spills}")
print(f"- verify of the continuous group after the runs: {verify.get('differing_blocks')} differing blocks of {verify.get('blocks_compared')}")
ok = iops_ratio >= 0.9 and p99_ratio <= 1.5 and samples and lag_p99 <= 2.0 and verify.get("differing_blocks") == 0
print(f"- targets met: {'yes' if ok else 'no'}")
sys.exit(0 if ok else 1)
EOF
