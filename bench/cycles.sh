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
#      background at ~20 s and ~45 s) and against `u` (in no group).
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
#   REPEAT_A=1  RUNTIME_A=65  SYNC_AT="20 45"  RATIO_TARGET=0.8
#   REPEAT_B=3  INIT_LIMIT=180  BIG=1T  FALLBACK=100G  SMALL=10G
#   BUILD=0 (1: cargo build --release -p offsite-cli first)
#   OFFSITE=... WORKDIR=... OUT=... KEEP=0
#
# Exit status: 0 if the run completed and both targets were met, 1 if not.

set -euo pipefail

PARTS=${PARTS:-A B}
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

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OFFSITE_SRC=${OFFSITE:-$REPO/target/release/offsite}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in fio qemu-io python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install fio qemu-utils)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "fio lacks the nbd ioengine"

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d "${WORKDIR:-${TMPDIR:-/tmp}}/offsite-cycles.XXXXXX")
WORK=$(cd "$WORK" && pwd -P)
OUT=${OUT:-$(mktemp -d /tmp/offsite-cycles-results.XXXXXX)}
mkdir -p "$OUT"
PIDS=()

stop_pid() {  # SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ $KEEP == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
if [[ $BUILD == 1 || ! -x $OFFSITE_SRC ]]; then
    (cd "$REPO" && cargo build --release -p offsite-cli) >&2
fi
OFFSITE=$WORK/offsite
cp "$OFFSITE_SRC" "$OFFSITE"
CLK_TCK=$(getconf CLK_TCK)

start_daemon() {  # start_daemon DIR LOG -> sets DAEMON_PID, waits until ready
    local dir=$1 logf=$2 i
    "$OFFSITE" serve --dir "$dir" >>"$logf" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    for i in $(seq 300); do
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$logf" >&2; die "offsite serve exited"; }
        "$OFFSITE" site show --dir "$dir" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "offsite serve did not become ready in 30 s"
}

jget() {  # jget KEY < json   (top-level key)
    python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print("" if v is None else v)' "$1"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime
now() { date +%s.%N; }
elapsed() { python3 -c "print($2 - $1)"; }

# make_pair NAME -> site dirs $WORK/NAME-a, $WORK/NAME-b served and paired,
# site-b authorizing site-a; sets A B PID_A PID_B
make_pair() {
    local name=$1 fp_a fp_b listen_a listen_b show
    A=$WORK/$name-a
    B=$WORK/$name-b
    "$OFFSITE" site init --dir "$A" --name site-a \
        --api 127.0.0.1:0 --nbd 127.0.0.1:0 --listen 127.0.0.1:0 >/dev/null
    "$OFFSITE" site init --dir "$B" --name site-b \
        --api 127.0.0.1:0 --nbd 127.0.0.1:0 --listen 127.0.0.1:0 >/dev/null
    start_daemon "$A" "$OUT/$name-a.log"
    PID_A=$DAEMON_PID
    start_daemon "$B" "$OUT/$name-b.log"
    PID_B=$DAEMON_PID
    show=$("$OFFSITE" site show --dir "$A" --json)
    fp_a=$(jget fingerprint <<<"$show")
    listen_a=$(jget listen <<<"$show")
    show=$("$OFFSITE" site show --dir "$B" --json)
    fp_b=$(jget fingerprint <<<"$show")
    listen_b=$(jget listen <<<"$show")
    "$OFFSITE" partner add site-b --address "$listen_b" --fingerprint "$fp_b" --dir "$A" >/dev/null
    "$OFFSITE" partner add site-a --address "$listen_a" --fingerprint "$fp_a" --dir "$B" >/dev/null
    mkdir -p "$WORK/$name-store"
    "$OFFSITE" authz add --allowed-primary site-a --storage-location "$WORK/$name-store" \
        --dir "$B" >/dev/null
}

stop_pair() { stop_pid "$PID_B"; stop_pid "$PID_A"; }

fill() {  # fill URI
    fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 \
        --output-format=json --output="$OUT/fill-$2.json" >/dev/null
}

# ---------------------------------------------------------------- header
{
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "fs:      $(df -T "$WORK" | awk 'NR==2 {print $2" ("$1")"}')"
    echo "tools:   $(fio --version), $(qemu-io --version | head -1), offsite $("$OFFSITE" --version | awk '{print $2}') @ $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) at the start"
    echo "params:  REPEAT_A=$REPEAT_A RUNTIME_A=$RUNTIME_A SYNC_AT='$SYNC_AT' REPEAT_B=$REPEAT_B INIT_LIMIT=$INIT_LIMIT SMALL=$SMALL BIG=$BIG FALLBACK=$FALLBACK"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

# ---------------------------------------------------------------- part A
if [[ " $PARTS " == *" A "* ]]; then
log "A: site pair, two 1 GiB volumes, fill"
make_pair a
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
        PIDS+=("$poll")
        for s in $SYNC_AT; do
            (sleep "$s"; "$OFFSITE" sync g --dir "$A" --json \
                >"$OUT/a-sync-$rep-$s.json" 2>&1 || true) &
            spids+=($!)
            PIDS+=("$!")
        done
    fi
    log "A: rep $rep fio 4k randwrite, $target, ${RUNTIME_A}s"
    fio --name=randwrite --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
        --iodepth=32 --time_based --runtime="$RUNTIME_A" \
        --output-format=json --output="$OUT/a-$target-$rep.json" >/dev/null
    if [[ $target == grouped ]]; then
        for s in "${spids[@]}"; do wait "$s" 2>/dev/null || true; stop_pid "$s"; done
        stop_pid "$poll"
        "$OFFSITE" pit list g --dir "$A" --json >"$OUT/a-pits-after-$rep.json"
        "$OFFSITE" group status g --dir "$A" --json >"$OUT/a-status-$rep.json" 2>&1 || true
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
    "$OFFSITE" volume create v --size "$size" --dir "$A" >/dev/null
    uri=$("$OFFSITE" volume url v --dir "$A")
    bytes=$(python3 -c "
s='$size'; m={'K':1<<10,'M':1<<20,'G':1<<30,'T':1<<40}
print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
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
    PIDS+=("$spid")
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
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) at the end" >"$OUT/load-end.txt"

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
    print(f"PITs committed during each grouped run: {', '.join(map(str, pits))}")
    a_ok = ratio >= target and min(pits) >= 2
    print(f"ratio grouped / ungrouped {ratio:.2f} -> {'OK' if ratio >= target else 'FAIL'} (target >= {target})")
    print()

print(f"B. Delta cycle with 10 MiB dirty (10 x 1 MiB scattered), `offsite sync g --json`, {rb} cycles per size:")
print()
print("| volume | initial replication s (CPU s site-a) | sync wall s (median, max) | CPU s site-a per sync (median, max) |")
print("|---|---:|---:|---:|")
b_ok = True
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
            print(f"sync {tag} {r}: `{open(p).read().strip()[:300]}`  ")
print()
print(f"cycle < 1 s: {'OK' if b_ok else 'FAIL'}")
print(open(f"{out}/load-end.txt").read().strip())
raise SystemExit(0 if a_ok and b_ok else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
