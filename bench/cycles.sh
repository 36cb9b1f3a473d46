#!/usr/bin/env bash
# bench/cycles.sh — replication cycles (issue 4): primary write IOPS while
# delta cycles run, and the cost of a delta cycle vs volume size.
#
# Run (from anywhere; needs fio with the nbd ioengine, qemu-io, python3):
#
#     bash bench/cycles.sh
#
# What it does, in one run on this machine:
#   A. two sites on 127.0.0.1 (site-a, site-b), served and paired both ways;
#      `authz add --allowed-primary site-a` on site-b; on site-a two 1 GiB
#      volumes `v` and `u`, each filled with a 1 MiB sequential fio write;
#      `group create g --partner site-b --volume v --rpo 60s --keep 4`
#      (cycles then run every 30 s on their own) and `group start g`.
#      Then REPEAT_A times, alternating the order, the same fio job
#        --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 --time_based
#        --runtime=RUNTIME_A
#      against `v` (in the group; `offsite sync g` is also called in the
#      background at ~20 s and ~45 s, and once more after the job, so that
#      what it left dirty is shipped before the next job) and against `u`
#      (in no group).
#      PITs committed during the grouped run: `pit list g` polled every 2 s
#      (union of PIT ids, so retention with --keep 4 cannot hide any) plus
#      the list before/after. Reports IOPS, p50/p99 clat and the ratio
#      grouped / ungrouped (target >= 0.8).
#   B. for each of a 10 GiB and a 1 TiB sparse volume, on a fresh site pair
#      each: group (rpo 24h, so only `sync` cycles run; the replica refuses
#      a group whose volumes exceed its free space), timed `group start`
#      (initial replication; for 1 TiB limited to INIT_LIMIT s, after which
#      that pair is dropped and 100 GiB is measured instead), then REPEAT_B
#      times: 10 x 1 MiB qemu-io writes at scattered offsets (10 MiB dirty),
#      and `offsite sync g --json` timed (wall), with the CPU time
#      (utime+stime, /proc/PID/stat) of site-a's `offsite serve` before and
#      after. Target: cycle < 1 s, CPU not growing with volume size.
# Everything it started is stopped on exit and the temp dir removed (KEEP=1
# keeps it). Results (fio JSON, sync JSON, logs, summary.md) stay in $OUT.
#
# Options (environment):
#   PARTS="A B" (which parts to run)
#   PERF=0 (1: perf record -g both daemons during the first grouped fio job
#          of part A; reports in $OUT/perf-a-site-{a,b}.txt)
#   REPEAT_A=1  RUNTIME_A=65  SYNC_AT="20 45"  RATIO_TARGET=0.8
#   REPEAT_B=3  INIT_LIMIT=180  BIG=1T  FALLBACK=100G  SMALL=10G
#   BUILD=0 (1: cargo build --release -p offsite-cli first; also when there
#            is no binary yet)
#   OFFSITE_SRC=... (or OFFSITE=...) WORKDIR=... OUT=... KEEP=0
#
# Exit status: 0 if the run completed and both targets were met, 1 if not.

set -euo pipefail

PARTS=${PARTS:-A B}
PERF=${PERF:-0}
REPEAT_A=${REPEAT_A:-1}
RUNTIME_A=${RUNTIME_A:-65}
SYNC_AT=${SYNC_AT:-20 45}
RATIO_TARGET=${RATIO_TARGET:-0.8}
REPEAT_B=${REPEAT_B:-3}
INIT_LIMIT=${INIT_LIMIT:-180}
SMALL=${SMALL:-10G}
BIG=${BIG:-1T}
FALLBACK=${FALLBACK:-100G}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}

OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need fio qemu-io python3 timeout -- "apt-get install fio qemu-utils"
fio --enghelp 2>/dev/null | grep -qw nbd || die "fio lacks the nbd ioengine"
[[ $PERF == 0 ]] || need perf -- "apt-get install linux-perf"

bench_init offsite-cycles
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

fill() {  # fill URI TAG
    fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 \
        --output-format=json --output="$OUT/fill-$2.json" >/dev/null
}

# ---------------------------------------------------------------- header
{
    machine_info
    echo "tools:   $(fio --version), $(qemu-io --version | head -1), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start"
    echo "params:  PARTS='$PARTS' REPEAT_A=$REPEAT_A RUNTIME_A=$RUNTIME_A SYNC_AT='$SYNC_AT' REPEAT_B=$REPEAT_B INIT_LIMIT=$INIT_LIMIT SMALL=$SMALL BIG=$BIG FALLBACK=$FALLBACK"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

# ---------------------------------------------------------------- part A
if [[ " $PARTS " == *" A "* ]]; then
log "A: site pair, two 1 GiB volumes, fill"
make_pair a
authorize_a "$WORK/a-store"
"$OFFSITE" volume create v --size 1G --dir "$A" >/dev/null
"$OFFSITE" volume create u --size 1G --dir "$A" >/dev/null
URI_V=$("$OFFSITE" volume url v --dir "$A")
URI_U=$("$OFFSITE" volume url u --dir "$A")
fill "$URI_V" v
fill "$URI_U" u
"$OFFSITE" group create g --partner site-b --volume v --rpo 60s --keep 4 --dir "$A" \
    --json >"$OUT/a-create.json"
t0=$(now)
"$OFFSITE" group start g --dir "$A" --json >"$OUT/a-start.json"
log "A: group start (initial replication of 1 GiB) took $(elapsed "$t0" "$(now)") s"

pit_poll() {  # pit_poll FILE: append `pit list g --json` every 2 s
    while :; do
        "$OFFSITE" pit list g --dir "$A" --json 2>/dev/null | tr -d '\n' >>"$1" || true
        echo >>"$1"
        sleep 2
    done
}

fio_a() {  # fio_a TARGET REP URI
    local target=$1 rep=$2 uri=$3 poll="" s spids=()
    if [[ $target == grouped ]]; then
        "$OFFSITE" pit list g --dir "$A" --json >"$OUT/a-pits-before-$rep.json"
        pit_poll "$OUT/a-pits-poll-$rep.jsonl" &
        poll=$!
        track "$poll"
        for s in $SYNC_AT; do
            (sleep "$s"; "$OFFSITE" sync g --dir "$A" --json \
                >"$OUT/a-sync-$rep-$s.json" 2>&1 || true) &
            spids+=($!)
            track "$!"
        done
    fi
    local perf=() p c0a c0b
    if [[ $PERF == 1 && $target == grouped && $rep == 1 ]]; then
        for p in "$PID_A" "$PID_B"; do
            perf record -g -o "$OUT/perf-a-$p.data" -p "$p" >/dev/null 2>&1 &
            perf+=("$!")
            track "$!"
        done
    fi
    log "A: rep $rep fio 4k randwrite, $target, ${RUNTIME_A}s"
    c0a=$(cpu_ticks "$PID_A"); c0b=$(cpu_ticks "$PID_B")
    fio --name=randwrite --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
        --iodepth=32 --time_based --runtime="$RUNTIME_A" \
        --output-format=json --output="$OUT/a-$target-$rep.json" >/dev/null
    printf '{"cpu_a_s": %s, "cpu_b_s": %s, "load": "%s"}\n' \
        "$(python3 -c "print(($(cpu_ticks "$PID_A") - $c0a) / $CLK_TCK)")" \
        "$(python3 -c "print(($(cpu_ticks "$PID_B") - $c0b) / $CLK_TCK)")" \
        "$(load_avg)" >"$OUT/a-$target-$rep.cpu.json"
    for p in "${perf[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; stop_pid "$p"; done
    if ((${#perf[@]})); then
        for p in "$PID_A" "$PID_B"; do
            perf report -i "$OUT/perf-a-$p.data" --no-children --percent-limit 0.5 \
                --stdio -g none >"$OUT/perf-a-$([[ $p == "$PID_A" ]] && echo site-a || echo site-b).txt" 2>/dev/null || true
        done
    fi
    if [[ $target == grouped ]]; then
        for s in "${spids[@]}"; do wait "$s" 2>/dev/null || true; stop_pid "$s"; done
        stop_pid "$poll"
        "$OFFSITE" pit list g --dir "$A" --json >"$OUT/a-pits-after-$rep.json"
        "$OFFSITE" group status g --dir "$A" --json >"$OUT/a-status-$rep.json" 2>&1 || true
        # Ship what the grouped run left dirty now, so that no cycle of `v`
        # falls into the ungrouped run and lowers its baseline.
        log "A: rep $rep flush: sync g"
        "$OFFSITE" sync g --dir "$A" --json >"$OUT/a-flush-$rep.json" 2>&1 ||
            log "A: flush sync failed: $(cat "$OUT/a-flush-$rep.json")"
    fi
}

for rep in $(seq "$REPEAT_A"); do
    if ((rep % 2)); then
        fio_a grouped "$rep" "$URI_V"; fio_a ungrouped "$rep" "$URI_U"
    else
        fio_a ungrouped "$rep" "$URI_U"; fio_a grouped "$rep" "$URI_V"
    fi
done
stop_pair
fi

# ---------------------------------------------------------------- part B
# run_b TAG SIZE LIMIT: fresh pair, sparse volume, initial replication,
# REPEAT_B x (10 MiB dirty, timed sync). Returns 1 if the initial
# replication did not finish within LIMIT s.
run_b() {
    local tag=$1 size=$2 limit=$3 uri t0 t1 c0 c1 r i off bytes spid
    log "B: $tag, $size sparse volume: fresh site pair"
    make_pair "b-$tag"
    authorize_a "$WORK/b-$tag-store"
    "$OFFSITE" volume create v --size "$size" --dir "$A" >/dev/null
    uri=$("$OFFSITE" volume url v --dir "$A")
    bytes=$(bytes_of "$size")
    if ! "$OFFSITE" group create g --partner site-b --volume v --rpo 24h --dir "$A" \
        >/dev/null 2>"$OUT/b-$tag-create.err"; then
        log "B: $tag group create failed: $(cat "$OUT/b-$tag-create.err")"
        printf '{"tag": "%s", "size": "%s", "bytes": %s, "rc": -1, "wall_s": 0, "cpu_a_s": 0}\n' \
            "$tag" "$size" "$bytes" >"$OUT/b-$tag-init.json"
        stop_pair
        return 1
    fi
    c0=$(cpu_ticks "$PID_A"); t0=$(now)
    timeout "$limit" "$OFFSITE" group start g --dir "$A" --json >"$OUT/b-$tag-start.json" 2>&1 &
    spid=$!
    track "$spid"
    if wait "$spid"; then r=0; else r=$?; fi
    t1=$(now); c1=$(cpu_ticks "$PID_A")
    stop_pid "$spid"
    printf '{"tag": "%s", "size": "%s", "bytes": %s, "rc": %s, "wall_s": %s, "cpu_a_s": %s}\n' \
        "$tag" "$size" "$bytes" "$r" "$(elapsed "$t0" "$t1")" \
        "$(python3 -c "print(($c1 - $c0) / $CLK_TCK)")" >"$OUT/b-$tag-init.json"
    if ((r != 0)); then
        log "B: $tag initial replication did not finish in $limit s (rc $r)"
        "$OFFSITE" group status g --dir "$A" --json >"$OUT/b-$tag-status.json" 2>&1 || true
        stop_pair
        return 1
    fi
    log "B: $tag initial replication $(elapsed "$t0" "$t1") s"
    for rep in $(seq "$REPEAT_B"); do
        for i in $(seq 0 9); do   # 10 x 1 MiB, spread over the volume
            off=$(( bytes / 10 * i / 1048576 * 1048576 + (rep * 37 + i * 11) % 64 * 1048576 ))
            qemu-io -f raw "$uri" -c "write -P $((0x10 + rep)) $off 1M" >/dev/null
        done
        sleep 0.5
        c0=$(cpu_ticks "$PID_A"); t0=$(now)
        "$OFFSITE" sync g --dir "$A" --json >"$OUT/b-$tag-sync-$rep.json"
        t1=$(now); c1=$(cpu_ticks "$PID_A")
        printf '{"wall_s": %s, "cpu_a_s": %s}\n' "$(elapsed "$t0" "$t1")" \
            "$(python3 -c "print(($c1 - $c0) / $CLK_TCK)")" >"$OUT/b-$tag-sync-$rep.cpu.json"
        log "B: $tag sync $rep: $(cat "$OUT/b-$tag-sync-$rep.cpu.json")"
    done
    stop_pair
}

if [[ " $PARTS " == *" B "* ]]; then
    run_b small "$SMALL" 3600
    run_b big "$BIG" "$INIT_LIMIT" || run_b fallback "$FALLBACK" 3600 ||
        log "B: $FALLBACK could not be measured either"
fi
echo "load:    $(load_avg) at the end" >"$OUT/load-end.txt"

# ---------------------------------------------------------------- report
set +e
python3 - "$OUT" "$REPEAT_A" "$REPEAT_B" "$RATIO_TARGET" <<'PY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys
out, ra, rb, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
med = statistics.median
load = lambda p: json.load(open(p))
print(open(f"{out}/header.txt").read().strip().replace("\n", "  \n"))
print()

def fio(p):
    w = load(p)["jobs"][0]["write"]
    pc = w["clat_ns"]["percentile"]
    return w["iops"], pc["50.000000"] / 1000, pc["99.000000"] / 1000

def pit_ids(doc):
    items = doc if isinstance(doc, list) else next((v for v in doc.values() if isinstance(v, list)), [])
    ids = set()
    for it in items:
        if isinstance(it, dict):
            ids.add(str(it.get("id", it.get("seq", it.get("created_at", json.dumps(it, sort_keys=True))))))
        else:
            ids.add(str(it))
    return ids

a_ok = True
rows = {"grouped": [], "ungrouped": []}
if os.path.exists(f"{out}/a-grouped-1.json"):
    pits = []
    for r in range(1, ra + 1):
        for t in rows:
            rows[t].append(fio(f"{out}/a-{t}-{r}.json"))
        before = pit_ids(load(f"{out}/a-pits-before-{r}.json"))
        seen = set(pit_ids(load(f"{out}/a-pits-after-{r}.json")))
        for line in open(f"{out}/a-pits-poll-{r}.jsonl"):
            line = line.strip()
            if line:
                try:
                    seen |= pit_ids(json.loads(line))
                except ValueError:
                    pass
        pits.append(len(seen - before))
    g = [med(x[i] for x in rows["grouped"]) for i in range(3)]
    u = [med(x[i] for x in rows["ungrouped"]) for i in range(3)]
    ratio = g[0] / u[0]
    print(f"A. 4 KiB randwrite, iodepth 32, fio nbd, 1 GiB volume on site-a, medians of {ra}:")
    print()
    print("| volume | IOPS | clat p50 µs | clat p99 µs |")
    print("|---|---:|---:|---:|")
    print(f"| `v` in group g (rpo 60s, cycles every 30 s + 2 `sync`) | {g[0]:,.0f} | {g[1]:,.0f} | {g[2]:,.0f} |")
    print(f"| `u` in no group | {u[0]:,.0f} | {u[1]:,.0f} | {u[2]:,.0f} |")
    print()
    print("Per-run IOPS grouped / ungrouped: " + ", ".join(
        f"{a[0]:,.0f} / {b[0]:,.0f}" for a, b in zip(rows["grouped"], rows["ungrouped"])))
    cpu = lambda t, r: load(f"{out}/a-{t}-{r}.cpu.json") if os.path.exists(f"{out}/a-{t}-{r}.cpu.json") else None
    print("CPU s of site-a / site-b daemons during each job (load average at its end), grouped | ungrouped: " + "; ".join(
        " | ".join(f"{c['cpu_a_s']:.1f} / {c['cpu_b_s']:.1f} ({c['load']})" if c else "?" for c in (cpu("grouped", r), cpu("ungrouped", r)))
        for r in range(1, ra + 1)) + "  ")
    print(f"PITs committed during each grouped run: {', '.join(map(str, pits))}")
    a_ok = ratio >= target and min(pits) >= 2
    print(f"ratio grouped / ungrouped {ratio:.2f} -> {'OK' if ratio >= target else 'FAIL'} (target >= {target})")
    print()

b_ok = True
if not glob.glob(f"{out}/b-*-init.json"):
    print(open(f"{out}/load-end.txt").read().strip())
    raise SystemExit(0 if a_ok else 1)
print(f"B. Delta cycle with 10 MiB dirty (10 x 1 MiB scattered), `offsite sync g --json`, {rb} cycles per size:")
print()
print("| volume | initial replication s (CPU s site-a) | sync wall s (median, max) | CPU s site-a per sync (median, max) |")
print("|---|---:|---:|---:|")
cpus = {}
for tag in ("small", "big", "fallback"):
    ip = f"{out}/b-{tag}-init.json"
    if not os.path.exists(ip):
        continue
    i = load(ip)
    if i["rc"] == -1:
        err = open(f"{out}/b-{tag}-create.err").read().strip().replace("|", "/")
        print(f"| {i['size']} sparse | `group create` refused: {err} | – | – |")
        continue
    if i["rc"] != 0:
        print(f"| {i['size']} sparse | did not finish in {i['wall_s']:.0f} s ({i['cpu_a_s']:.1f} CPU s) — not measured | – | – |")
        continue
    s = [load(f"{out}/b-{tag}-sync-{r}.cpu.json") for r in range(1, rb + 1)]
    w = [x["wall_s"] for x in s]; c = [x["cpu_a_s"] for x in s]
    cpus[tag] = med(c)
    b_ok &= max(w) < 1.0
    print(f"| {i['size']} sparse | {i['wall_s']:.1f} ({i['cpu_a_s']:.1f}) | {med(w):.3f}, {max(w):.3f} | {med(c):.2f}, {max(c):.2f} |")
print()
for tag in ("small", "big", "fallback"):
    for r in range(1, rb + 1):
        p = f"{out}/b-{tag}-sync-{r}.json"
        if os.path.exists(p):
            print(f"sync {tag} {r}: `{' '.join(open(p).read().split())[:300]}`  ")
print()
print(f"cycle < 1 s: {'OK' if b_ok else 'FAIL'}")
print(open(f"{out}/load-end.txt").read().strip())
raise SystemExit(0 if a_ok and b_ok else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
