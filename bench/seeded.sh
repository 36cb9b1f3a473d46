#!/usr/bin/env bash
# bench/seeded.sh — seeded start (issue 4): a replica that already holds an
# old copy (the seed) of the primary's volume, which differs from it in 1 %
# of its 4 KiB blocks; offsite's seeded initial replication against rsync's
# delta transfer between the same two files.
#
# Run (from anywhere; needs rsync, python3; root for CACHE=cold):
#
#     bash bench/seeded.sh
#
# What it does, in one run on this machine:
#   1. builds the seed image, SIZE bytes: DATA random bytes, then zeros (a
#      hole); the primary's image is a sparse copy of it in which CHANGE_PCT %
#      of the 4 KiB blocks, picked uniformly over the whole volume (python
#      random, SEED_RNG), are overwritten with new random data (a VM that ran
#      on after the seed was taken);
#   2. two sites on 127.0.0.1 (site-a, site-b), served, paired both ways,
#      `authz add --allowed-primary site-a` on site-b; imports the primary's
#      image as volume `v` on site-a (`volume create --import`), then removes
#      the image; `group create g --partner site-b --volume v --rpo 24h
#      --compress COMPRESS`;
#   3. puts the seed on the replica's side: $WORK/seed/v.img and a
#      seed.json manifest naming it (what `group export-seed` writes); it is
#      on the replica store's file system, so offsite moves it into the
#      store (a rename) instead of copying it; a pristine copy is kept for
#      rsync's runs;
#   4. offsite: `offsite group start g --seed $WORK/seed --json`, timed (it
#      returns when the first PIT is committed: the replica loads the seed
#      into its base, both sides hash every block, the differing blocks
#      move), with CPU time of both daemons and initial_bytes_sent;
#   5. rsync, twice, each time on a fresh sparse copy of the seed (not timed):
#        rsync -I --inplace --no-whole-file --stats SRC DST
#        rsync -I --inplace --no-whole-file --stats -B 4096 SRC DST
#      with SRC = v's data file on site-a, DST = the seed copy; timed;
#   6. ratios rsync seconds / offsite seconds; targets >= 5 (default block
#      size) and >= 3 (-B 4096).
#   Cache state: with CACHE=warm (default) the inputs of each timed run (v's
#   data file, and the seed or rsync's copy of it) are read once (cat >
#   /dev/null) just before it, so all three start from the page cache; with
#   CACHE=cold `sync; echo 3 > /proc/sys/vm/drop_caches` before each
#   instead, so each reads its inputs from disk.
# Everything it started is stopped on exit and the temp dir removed (KEEP=1
# keeps it); JSON, rsync output, logs and summary.md stay in $OUT.
#
# Options (environment):
#   SIZE=8G  DATA=4G  CHANGE_PCT=1  SEED_RNG=4  COMPRESS=none (or zstd)
#   CACHE=warm (or cold)  TARGET_DEFAULT=5  TARGET_B4K=3
#   PERF=0 (1: perf record -g both daemons during the offsite run; reports in
#          $OUT/perf-site-{a,b}.txt)
#   VERIFY=0 (1: `offsite verify g` and `cmp` of rsync's result afterwards)
#   BUILD=1 (0: use $OFFSITE_SRC or target/release/offsite as it is)
#   OFFSITE_SRC=... WORKDIR=... OUT=... KEEP=0
#
# Disk: about DATA x 4 (the primary's volume, the seed, the replica's base,
# rsync's copy of the seed).
#
# Exit status: 0 if the run completed and both targets were met, 1 if not,
# other on error.

set -euo pipefail

SIZE=${SIZE:-8G}
DATA=${DATA:-4G}
CHANGE_PCT=${CHANGE_PCT:-1}
SEED_RNG=${SEED_RNG:-4}
COMPRESS=${COMPRESS:-none}
CACHE=${CACHE:-warm}
TARGET_DEFAULT=${TARGET_DEFAULT:-5}
TARGET_B4K=${TARGET_B4K:-3}
PERF=${PERF:-0}
VERIFY=${VERIFY:-0}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need rsync -- "apt-get install rsync"
need python3 head truncate cp cmp
[[ $PERF == 0 ]] || need perf -- "apt-get install linux-perf"
[[ $CACHE == cold || $CACHE == warm ]] || die "CACHE is cold or warm, not $CACHE"
[[ $CACHE == warm ]] || [[ -w /proc/sys/vm/drop_caches ]] ||
    die "CACHE=cold drops the page cache and needs root; run as root or with CACHE=warm"

bench_init offsite-seeded
bench_binary

SIZE_B=$(bytes_of "$SIZE")
DATA_B=$(bytes_of "$DATA")
((DATA_B <= SIZE_B && SIZE_B % 4096 == 0)) || die "need DATA <= SIZE and SIZE a multiple of 4 KiB"

{
    machine_info
    echo "tools:   $(rsync --version | head -1 | sed 's/  */ /g'), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start (1/5/15-min load average)"
    echo "params:  SIZE=$SIZE DATA=$DATA CHANGE_PCT=$CHANGE_PCT SEED_RNG=$SEED_RNG COMPRESS=$COMPRESS CACHE=$CACHE"
} | tee "$OUT/env.txt" >&2

# ---------------------------------------------------------------- images
mkdir -p "$WORK/seed"
SEED_IMG=$WORK/seed/v.img
PRIM_IMG=$WORK/primary.img
log "seed image: $DATA random, then zeros up to $SIZE"
head -c "$DATA_B" /dev/urandom >"$SEED_IMG"
truncate -s "$SIZE_B" "$SEED_IMG"
cp --sparse=always "$SEED_IMG" "$PRIM_IMG"
# offsite moves a seed on its store's file system into the store (no
# copy); rsync's runs each start from a fresh copy of this pristine one.
SEED_KEEP=$WORK/seed-pristine.img
cp --sparse=always "$SEED_IMG" "$SEED_KEEP"
log "primary image: the seed with $CHANGE_PCT % of its 4 KiB blocks rewritten"
python3 - "$PRIM_IMG" "$SIZE_B" "$CHANGE_PCT" "$SEED_RNG" "$DATA_B" >"$OUT/changes.json" <<'PY'
import json, os, random, sys
path, size, pct, rng, data = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bs = 4096
n = size // bs
k = round(n * pct / 100)
r = random.Random(rng)
blocks = sorted(r.sample(range(n), k))
fd = os.open(path, os.O_WRONLY)
for b in blocks:
    os.pwrite(fd, r.randbytes(bs), b * bs)
os.fsync(fd)
os.close(fd)
in_data = sum(1 for b in blocks if b * bs < data)
print(json.dumps({"blocks": n, "changed": k, "changed_in_data": in_data,
                  "changed_in_zeros": k - in_data, "changed_bytes": k * bs}))
PY
log "changes: $(cat "$OUT/changes.json")"

make_pair p
authorize_a "$WORK/p-store"
t0=$(now)
"$OFFSITE" volume create v --import "$PRIM_IMG" --dir "$A" --json >"$OUT/volume.json"
log "import took $(elapsed "$t0" "$(now)") s"
rm -f "$PRIM_IMG"
VOLFILE=$(ls "$A"/volumes/*.img)
"$OFFSITE" group create g --partner site-b --volume v --rpo 24h --compress "$COMPRESS" \
    --dir "$A" --json >"$OUT/create.json"
python3 - "$WORK/seed/seed.json" "$SIZE_B" <<'PY'
import datetime, json, sys
json.dump({
    "format_version": 1, "group": "g", "primary": "site-a",
    "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "volumes": [{"name": "v", "size_bytes": int(sys.argv[2]), "block_size": 4096, "file": "v.img"}],
}, open(sys.argv[1], "w"), indent=2)
PY

prepare_cache() {  # prepare_cache FILE...: the inputs of the next timed run
    if [[ $CACHE == cold ]]; then
        drop_caches
    else
        cat "$@" >/dev/null
    fi
}

# ---------------------------------------------------------------- offsite
prepare_cache "$VOLFILE" "$SEED_IMG"
echo "$(load_avg)" >"$OUT/load-offsite.txt"
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
progress_poll() {  # progress_poll FILE: "time percent" of the start, every 0.5 s
    local p
    while :; do
        p=$("$OFFSITE" group status g --dir "$A" --json 2>/dev/null |
            grep -o '"initial_progress_percent": *[0-9.]*' | grep -o '[0-9.]*$') || p=""
        echo "$(now) ${p:-none}" >>"$1"
        sleep 0.5
    done
}
log "offsite: group start g --seed $WORK/seed"
a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); t0=$(now)
progress_poll "$OUT/progress.txt" &
POLL=$!
track "$POLL"
"$OFFSITE" group start g --seed "$WORK/seed" --dir "$A" --json >"$OUT/start.json"
t1=$(now); a1=$(cpu_ticks "$PID_A"); b1=$(cpu_ticks "$PID_B")
stop_pid "$POLL"
echo "$t0" >"$OUT/t0.txt"
for p in "${PERF_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; stop_pid "$p"; done
printf '{"wall_s": %s, "cpu_a_s": %s, "cpu_b_s": %s}\n' "$(elapsed "$t0" "$t1")" \
    "$(python3 -c "print(($a1 - $a0) / $CLK_TCK)")" \
    "$(python3 -c "print(($b1 - $b0) / $CLK_TCK)")" >"$OUT/offsite-time.json"
log "offsite: $(cat "$OUT/offsite-time.json")"
"$OFFSITE" group status g --dir "$A" --json >"$OUT/status-a.json"
if [[ $PERF == 1 ]]; then
    for s in a b; do
        perf report -i "$OUT/perf-site-$s.data" --no-children --percent-limit 0.5 \
            --stdio -g none >"$OUT/perf-site-$s.txt" 2>/dev/null || true
    done
fi
if [[ $VERIFY == 1 ]]; then
    log "verify g"
    "$OFFSITE" verify g --dir "$A" --json >"$OUT/verify.json" 2>&1 || true
fi
stop_pair
# The replica's store is no longer needed: free its disk space for rsync.
rm -rf "$WORK/p-store" "$B"

# ---------------------------------------------------------------- rsync
run_rsync() {  # run_rsync TAG [ARGS...]
    local tag=$1 dst=$WORK/rsync-dst.img t0 t1 rc=0
    shift
    rm -f "$dst"
    cp --sparse=always "$SEED_KEEP" "$dst"
    prepare_cache "$VOLFILE" "$dst"
    echo "$(load_avg)" >"$OUT/load-$tag.txt"
    log "rsync $tag: rsync -I --inplace --no-whole-file --stats $* SRC DST"
    t0=$(now)
    rsync -I --inplace --no-whole-file --stats "$@" "$VOLFILE" "$dst" >"$OUT/$tag.txt" 2>&1 || rc=$?
    t1=$(now)
    printf '{"wall_s": %s, "rc": %s}\n' "$(elapsed "$t0" "$t1")" "$rc" >"$OUT/$tag-time.json"
    log "rsync $tag: $(cat "$OUT/$tag-time.json")"
    if [[ $VERIFY == 1 ]]; then
        if cmp -s "$VOLFILE" "$dst"; then echo same; else echo DIFFERENT; fi >"$OUT/$tag-cmp.txt"
    fi
    rm -f "$dst"
}
run_rsync rsync-default
run_rsync rsync-b4096 -B 4096
echo "$(load_avg)" >"$OUT/load-end.txt"

# ---------------------------------------------------------------- report
export OUT SIZE_B TARGET_DEFAULT TARGET_B4K VERIFY
set +e
python3 - <<'PY' | tee "$OUT/summary.md"
import json, os, re
e = os.environ
out, size = e["OUT"], int(e["SIZE_B"])
load = lambda p: json.load(open(f"{out}/{p}"))
text = lambda p: open(f"{out}/{p}").read().strip()
print(text("env.txt").replace("\n", "  \n"))
print()
ch = load("changes.json")
print(f"Volume {size / 2**30:g} GiB; {ch['changed']:,} of {ch['blocks']:,} 4 KiB blocks differ "
      f"between the primary's volume and the seed ({ch['changed_in_data']:,} in the random half, "
      f"{ch['changed_in_zeros']:,} in the zero half; {ch['changed_bytes'] / 2**20:.1f} MiB).")
print()
o = load("offsite-time.json")
sa = load("status-a.json")
def rs(tag):
    t = load(f"{tag}-time.json")
    s = text(f"{tag}.txt")
    lit = re.search(r"Literal data: ([\d,]+)", s)
    mat = re.search(r"Matched data: ([\d,]+)", s)
    num = lambda m: int(m.group(1).replace(",", "")) if m else None
    cmpf = f"{out}/{tag}-cmp.txt"
    return dict(wall=t["wall_s"], rc=t["rc"], lit=num(lit), mat=num(mat),
                cmp=open(cmpf).read().strip() if os.path.exists(cmpf) else None)
rd, rb = rs("rsync-default"), rs("rsync-b4096")
# The replica loads the seed before the first hashes are compared; progress
# moves only with the comparison, so its first move ends the seed load.
t0 = float(text("t0.txt"))
moved = [float(l.split()[0]) - t0 for l in text("progress.txt").splitlines()
         if len(l.split()) == 2 and l.split()[1] not in ("none", "0", "0.0")]
if moved:
    print(f"offsite phases (group status polled every 0.5 s): the replica loaded the seed and the first "
          f"{64} MiB step was compared after ~{moved[0]:.1f} s; the comparison of the rest took "
          f"~{o['wall_s'] - moved[0]:.1f} s.")
    print()
print("| run | seconds | literal / sent bytes | CPU s | load (1/5/15) before |")
print("|---|---:|---:|---:|---|")
print(f"| offsite `group start g --seed` | {o['wall_s']:.2f} | {sa.get('initial_bytes_sent', 0):,} "
      f"| site-a {o['cpu_a_s']:.2f}, site-b {o['cpu_b_s']:.2f} | {text('load-offsite.txt')} |")
for name, r, tag in (("rsync (default block size)", rd, "rsync-default"), ("rsync -B 4096", rb, "rsync-b4096")):
    lit = f"{r['lit']:,}" if r["lit"] is not None else "?"
    print(f"| {name}{' (exit ' + str(r['rc']) + ')' if r['rc'] else ''} | {r['wall']:.2f} | {lit} | – | {text('load-' + tag + '.txt')} |")
print()
if e["VERIFY"] == "1":
    if os.path.exists(f"{out}/verify.json"):
        v = load("verify.json") if text("verify.json").startswith("{") else {}
        print(f"offsite verify: differing_blocks {v.get('differing_blocks', text('verify.json')[:200])}  ")
    print(f"rsync results vs the primary's volume (cmp): default {rd['cmp']}, -B 4096 {rb['cmp']}  ")
td, tb = float(e["TARGET_DEFAULT"]), float(e["TARGET_B4K"])
xd, xb = rd["wall"] / o["wall_s"], rb["wall"] / o["wall_s"]
okd, okb = xd >= td and rd["rc"] == 0, xb >= tb and rb["rc"] == 0
print(f"rsync default / offsite = **{xd:.2f}x** -> {'OK' if okd else 'FAIL'} (target >= {td:g})  ")
print(f"rsync -B 4096 / offsite = **{xb:.2f}x** -> {'OK' if okb else 'FAIL'} (target >= {tb:g})  ")
print(f"load at the end: {text('load-end.txt')}")
raise SystemExit(0 if okd and okb else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
