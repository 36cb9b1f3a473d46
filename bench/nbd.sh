#!/usr/bin/env bash
# bench/nbd.sh — NBD data-path benchmark: offsite vs qemu-nbd, plus idle-daemon RSS.
#
# Run (from anywhere; needs fio with the nbd engine, qemu-nbd, python3, cargo):
#
#     bash bench/nbd.sh
#
# What it does, in one run on this machine:
#   1. builds release offsite (`cargo build --release -p offsite-cli`);
#   2. creates a site in a temp dir, serves it, creates a SIZE volume `v`;
#   3. starts qemu-nbd (raw, writeback cache, aio=threads, TCP on 127.0.0.1)
#      on an identical sparse SIZE raw file in the same filesystem;
#   4. preconditions both targets (1 MiB sequential write over the whole
#      export, so reads hit data), then clears offsite's dirty map;
#   5. runs the same fio jobs (--ioengine=nbd) against both, REPEAT times,
#      alternating which target goes first:
#        randwrite  4 KiB random write,  iodepth 32
#        randread   4 KiB random read,   iodepth 32
#        seqwrite   1 MiB sequential write, iodepth 8
#      and prints medians: IOPS, MiB/s, clat p50/p99, ratio offsite/qemu-nbd;
#   6. checks offsite's dirty_bytes > 0 after the write jobs (tracking on);
#   7. measures idle-daemon RSS: fresh site, 100 sparse 100G volumes, VmRSS of
#      the serve process after creating them and after a restart (target
#      <= 64 MiB).
# Everything it started (daemons, qemu-nbd, perf) is stopped on exit and the
# temp dir removed (set KEEP=1 to keep it).
#
# Options (environment):
#   SIZE=1G        export size (fio --size, offsite --size, truncate -s)
#   RUNTIME=20     seconds per timed fio job
#   REPEAT=3       runs per job and target (alternating order); medians shown
#   RAMP=2         fio ramp_time seconds (not counted)
#   VOLUMES=100    volumes for the RSS measurement
#   VOLSIZE=100G   size of each of those volumes (sparse)
#   RSS_LIMIT_MIB=64
#   BUILD=1        0: skip cargo build, use $OFFSITE or target/release/offsite
#   OFFSITE=...    offsite binary (default: <repo>/target/release/offsite),
#                  copied into the temp dir; OFFSITE_SRC=... works too
#   WORKDIR=...    parent of the temp dir (default ${TMPDIR:-/tmp})
#   OUT=...        where fio JSON and summary.md are kept
#                  (default: a new /tmp/offsite-bench-results.XXXXXX)
#   PERF=0         1: `perf record -g` the offsite daemon during its first
#                  run of each job; reports land in $OUT/perf-<job>.txt
#   KEEP=0         1: keep the temp dir (site, raw image) after the run
#
# Exit status: 0 if the run completed and both checks (dirty_bytes > 0,
# RSS <= limit) passed; 1 if a check failed; other on error.

set -euo pipefail

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-20}
REPEAT=${REPEAT:-3}
RAMP=${RAMP:-2}
VOLUMES=${VOLUMES:-100}
VOLSIZE=${VOLSIZE:-100G}
RSS_LIMIT_MIB=${RSS_LIMIT_MIB:-64}
BUILD=${BUILD:-1}
PERF=${PERF:-0}
KEEP=${KEEP:-0}

OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need fio qemu-nbd python3
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine"

# ---------------------------------------------------------------- helpers
bench_init offsite-bench offsite-bench-results

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

dirty_bytes() {
    "$OFFSITE" volume show v --dir "$SITE" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'
}

# fio_run TARGET JOB REP URI
fio_run() {
    local target=$1 job=$2 rep=$3 uri=$4 args perf_pid=""
    case $job in
        randwrite) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
        randread)  args=(--rw=randread  --bs=4k --iodepth=32) ;;
        seqwrite)  args=(--rw=write     --bs=1M --iodepth=8) ;;
        *) die "unknown job $job" ;;
    esac
    if [[ $PERF == 1 && $target == offsite && $rep == 1 ]]; then
        perf record -g -o "$OUT/perf-$job.data" -p "$DAEMON_PID" >/dev/null 2>&1 &
        perf_pid=$!
        track "$perf_pid"
    fi
    fio --name="$job" --ioengine=nbd --uri="$uri" "${args[@]}" \
        --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --numjobs=1 --group_reporting \
        --output-format=json --output="$OUT/$target-$job-$rep.json" >/dev/null
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$OUT/perf-$job.data" --no-children --percent-limit 1 \
            --stdio -g none >"$OUT/perf-$job.txt" 2>/dev/null || true
    fi
}

# fio_fill URI — precondition: write every byte once, 1 MiB sequential.
fio_fill() {
    fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 \
        --size="$SIZE" --output-format=json --output="$OUT/fill-$2.json" >/dev/null
}

# ---------------------------------------------------------------- build
bench_binary

{
    machine_info
    echo "tools:   $(fio --version), $(qemu-nbd --version | head -1), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start"
    echo "params:  SIZE=$SIZE RUNTIME=$RUNTIME RAMP=$RAMP REPEAT=$REPEAT"
} | tee "$OUT/env.txt" >&2

# ---------------------------------------------------------------- targets
SITE=$WORK/site
log "creating site in $SITE"
"$OFFSITE" site init --dir "$SITE" --name bench \
    --api 127.0.0.1:0 --nbd 127.0.0.1:0 --listen 127.0.0.1:0 >/dev/null
start_daemon "$SITE" "$WORK/serve.log"
BENCH_DAEMON_PID=$DAEMON_PID
"$OFFSITE" volume create v --size "$SIZE" --dir "$SITE" >/dev/null
OFFSITE_URI=$("$OFFSITE" volume url v --dir "$SITE")

RAW=$WORK/qemu.raw
truncate -s "$SIZE" "$RAW"
QPORT=$(free_port)
qemu-nbd -f raw -x v -b 127.0.0.1 -p "$QPORT" --persistent --shared=8 \
    --cache=writeback --aio=threads "$RAW" >"$WORK/qemu-nbd.log" 2>&1 &
QEMU_PID=$!
track "$QEMU_PID"
for i in $(seq 100); do
    kill -0 "$QEMU_PID" 2>/dev/null || { cat "$WORK/qemu-nbd.log" >&2; die "qemu-nbd exited"; }
    ss -Hltn "sport = :$QPORT" | grep -q . && break
    sleep 0.1
done
QEMU_URI=nbd://127.0.0.1:$QPORT/v
log "offsite:  $OFFSITE_URI (pid $BENCH_DAEMON_PID)"
log "qemu-nbd: $QEMU_URI (pid $QEMU_PID)"

log "preconditioning: 1 MiB sequential fill of $SIZE on both"
fio_fill "$OFFSITE_URI" offsite
fio_fill "$QEMU_URI" qemu
"$OFFSITE" volume clear-dirty v --dir "$SITE" >/dev/null
DIRTY_AFTER_CLEAR=$(dirty_bytes)

# ---------------------------------------------------------------- fio runs
DAEMON_PID=$BENCH_DAEMON_PID
DIRTY_AFTER_RANDWRITE=""
for rep in $(seq "$REPEAT"); do
    for job in randwrite randread seqwrite; do
        if ((rep % 2)); then order=(offsite qemu); else order=(qemu offsite); fi
        for target in "${order[@]}"; do
            log "rep $rep/$REPEAT $job on $target (${RUNTIME}s)"
            if [[ $target == offsite ]]; then uri=$OFFSITE_URI; else uri=$QEMU_URI; fi
            fio_run "$target" "$job" "$rep" "$uri"
            if [[ $target == offsite && $job == randwrite && -z $DIRTY_AFTER_RANDWRITE ]]; then
                DIRTY_AFTER_RANDWRITE=$(dirty_bytes)
            fi
        done
    done
done
DIRTY_FINAL=$(dirty_bytes)
BENCH_RSS=$(rss_kib "$BENCH_DAEMON_PID")
BENCH_HWM=$(hwm_kib "$BENCH_DAEMON_PID")
QEMU_HWM=$(hwm_kib "$QEMU_PID")

# the data-path daemon and qemu-nbd are no longer needed
stop_pid "$QEMU_PID"
stop_pid "$BENCH_DAEMON_PID"

# ---------------------------------------------------------------- idle RSS
SITE2=$WORK/site-rss
log "RSS: fresh site with $VOLUMES volumes of $VOLSIZE"
"$OFFSITE" site init --dir "$SITE2" --name bench-rss \
    --api 127.0.0.1:0 --nbd 127.0.0.1:0 --listen 127.0.0.1:0 >/dev/null
start_daemon "$SITE2" "$WORK/serve-rss.log"
RSS_EMPTY=$(rss_kib "$DAEMON_PID")
for i in $(seq -f '%03g' 1 "$VOLUMES"); do
    "$OFFSITE" volume create "v$i" --size "$VOLSIZE" --dir "$SITE2" >/dev/null
done
sleep 2
RSS_CREATED=$(rss_kib "$DAEMON_PID")
stop_pid "$DAEMON_PID"
log "RSS: restarting the daemon"
start_daemon "$SITE2" "$WORK/serve-rss.log"
NVOL=$("$OFFSITE" volume list --dir "$SITE2" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("volumes",d) if isinstance(d,dict) else d; print(len(d))')
sleep 2
RSS_RESTART=$(rss_kib "$DAEMON_PID")
stop_pid "$DAEMON_PID"

# ---------------------------------------------------------------- report
export OUT REPEAT DIRTY_AFTER_CLEAR DIRTY_AFTER_RANDWRITE DIRTY_FINAL \
    BENCH_RSS BENCH_HWM QEMU_HWM RSS_EMPTY RSS_CREATED RSS_RESTART RSS_LIMIT_MIB \
    VOLUMES VOLSIZE NVOL
set +e
python3 - <<'PY' | tee "$OUT/summary.md"
import json, os, statistics as st

out, rep = os.environ["OUT"], int(os.environ["REPEAT"])
jobs = [("randwrite", "write", "4 KiB randwrite, qd32"),
        ("randread", "read", "4 KiB randread, qd32"),
        ("seqwrite", "write", "1 MiB seq write, qd8")]

def load(target, job, ddir):
    rows = []
    for r in range(1, rep + 1):
        with open(f"{out}/{target}-{job}-{r}.json") as f:
            d = json.load(f)["jobs"][0][ddir]
        pct = d["clat_ns"]["percentile"]
        rows.append(dict(iops=d["iops"], mib=d["bw"] / 1024,
                         p50=pct["50.000000"] / 1000, p99=pct["99.000000"] / 1000))
    return rows

def med(rows, k):
    return st.median(r[k] for r in rows)

print(open(f"{out}/env.txt").read().rstrip().replace("\n", "  \n"))
print()
print(f"Medians of {rep} runs per job and target (clat in µs; ratio = offsite / qemu-nbd, IOPS):")
print()
print("| job | offsite IOPS | qemu-nbd IOPS | ratio | offsite MiB/s | qemu-nbd MiB/s "
      "| offsite p50 / p99 µs | qemu-nbd p50 / p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
spread = []
for job, ddir, label in jobs:
    o, q = load("offsite", job, ddir), load("qemu", job, ddir)
    oi, qi = med(o, "iops"), med(q, "iops")
    print(f"| {label} | {oi:,.0f} | {qi:,.0f} | **{oi / qi:.2f}** | {med(o, 'mib'):,.0f} "
          f"| {med(q, 'mib'):,.0f} | {med(o, 'p50'):,.0f} / {med(o, 'p99'):,.0f} "
          f"| {med(q, 'p50'):,.0f} / {med(q, 'p99'):,.0f} |")
    spread.append(f"{job}: offsite " + ", ".join(f"{r['iops']:,.0f}" for r in o)
                  + " | qemu-nbd " + ", ".join(f"{r['iops']:,.0f}" for r in q))
print()
print("Per-run IOPS (in run order):  ")
print("  \n".join(spread))
print()

e = os.environ
dirty_ok = int(e["DIRTY_AFTER_RANDWRITE"] or 0) > 0 and int(e["DIRTY_FINAL"]) > 0
print(f"dirty_bytes: {e['DIRTY_AFTER_CLEAR']} after clear-dirty, "
      f"{e['DIRTY_AFTER_RANDWRITE']} after the first randwrite, {e['DIRTY_FINAL']} at the end "
      f"-> {'OK' if dirty_ok else 'FAIL'} (tracking on)  ")
kib = lambda k: f"{int(k) / 1024:.1f} MiB"
print(f"bench daemon after the runs: VmRSS {kib(e['BENCH_RSS'])}, VmHWM {kib(e['BENCH_HWM'])}; "
      f"qemu-nbd VmHWM {kib(e['QEMU_HWM'])}  ")
lim = int(e["RSS_LIMIT_MIB"]) * 1024
worst = max(int(e["RSS_CREATED"]), int(e["RSS_RESTART"]))
rss_ok = worst <= lim and int(e["NVOL"]) == int(e["VOLUMES"])
print(f"idle RSS, {e['VOLUMES']} volumes of {e['VOLSIZE']} (sparse): "
      f"{kib(e['RSS_EMPTY'])} with none, {kib(e['RSS_CREATED'])} after creating them, "
      f"{kib(e['RSS_RESTART'])} after a restart ({e['NVOL']} volumes listed) "
      f"-> {'OK' if rss_ok else 'FAIL'} (limit {e['RSS_LIMIT_MIB']} MiB)")
raise SystemExit(0 if dirty_ok and rss_ok else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
