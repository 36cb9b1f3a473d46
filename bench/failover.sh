#!/usr/bin/env bash
# bench/failover.sh — how long failover takes, against volume size (issue 5:
# "well under a second regardless of volume size"), and what reverse moves.
#
# Run (from anywhere; needs qemu-io and python3):
#
#     bash bench/failover.sh
#
# What it does, for each size in SIZES (default "10G 1T"), on a fresh pair
# of sites on 127.0.0.1 (site-b authorizes site-a and site-a site-b):
#   1. a sparse volume of that size with 64 MiB of data written by qemu-io
#      (at 0 and at the middle), a group (rpo 24h, keep 3), `group start`;
#   2. `failover run g --test` at site-b, then `failover stop-test g`;
#   3. `failover prepare g` at site-a, `failover run g` at site-b;
#   4. 16 MiB written at site-b through NBD, `reverse g` at site-b;
#   5. failback: 8 MiB more at site-b, `failover prepare g` at site-b,
#      `failover run g` and `reverse g` at site-a. site-b's store from
#      before the failover holds a named PIT (`planned-failover`), so it
#      takes the replica's role back: that reverse reads the data ranges of
#      site-b's volume and store once and commits what differs.
# Each command is timed (wall, from the CLI) and its own `duration_ms`
# recorded; reverse also reports bytes_transferred. The summary table
# (summary.md in $OUT) puts the sizes side by side.
#
# Options (environment): SIZES="10G 1T" BUILD=1 KEEP=0 OFFSITE_SRC=... OUT=...
#
# Exit status: 0 if every run completed.

set -euo pipefail
SIZES=${SIZES:-10G 1T}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need qemu-io python3 -- "apt-get install qemu-utils python3"
bench_init offsite-failover
bench_binary

ms_of() {  # ms_of T0 T1 -> integer milliseconds
    python3 -c "print(int(($2 - $1) * 1000))"
}

timed() {  # timed NAME OUTFILE CMD... -> prints wall ms, JSON to OUTFILE
    local t0 t1
    t0=$(now)
    "${@:3}" >"$2"
    t1=$(now)
    ms_of "$t0" "$t1"
}

rows=()
for size in $SIZES; do
    log "size $size: sites"
    make_pair "p$size"
    authorize_a "$WORK/p$size-store-b"
    mkdir -p "$WORK/p$size-store-a"
    "$OFFSITE" authz add --allowed-primary site-b --storage-location "$WORK/p$size-store-a" \
        --dir "$A" >/dev/null
    "$OFFSITE" volume create v --size "$size" --dir "$A" >/dev/null
    url=$("$OFFSITE" volume url v --dir "$A")
    half=$(( $(bytes_of "$size") / 2 ))
    qemu-io -f raw -c "write -P 0x11 0 32M" -c "write -P 0x12 $half 32M" "$url" >/dev/null
    "$OFFSITE" group create g --partner site-b --volume v --mode async --rpo 24h --keep 3 \
        --dir "$A" >/dev/null
    log "size $size: initial replication"
    init_ms=$(timed start "$OUT/$size-start.json" "$OFFSITE" group start g --dir "$A" --json)

    log "size $size: test failover"
    test_ms=$(timed test "$OUT/$size-test.json" "$OFFSITE" failover run g --test --dir "$B" --json)
    stop_ms=$(timed stop "$OUT/$size-stop-test.json" "$OFFSITE" failover stop-test g --dir "$B" --json)

    log "size $size: planned failover"
    prep_ms=$(timed prepare "$OUT/$size-prepare.json" "$OFFSITE" failover prepare g --dir "$A" --json)
    run_ms=$(timed run "$OUT/$size-run.json" "$OFFSITE" failover run g --dir "$B" --json)
    burl=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["volumes"][0]["url"])' \
        "$OUT/$size-run.json")
    qemu-io -f raw -c "write -P 0x21 64M 16M" "$burl" >/dev/null

    log "size $size: reverse"
    rev_ms=$(timed reverse "$OUT/$size-reverse.json" "$OFFSITE" reverse g --dir "$B" --json)
    moved=$(jget bytes_transferred <"$OUT/$size-reverse.json")
    d_test=$(jget duration_ms <"$OUT/$size-test.json")
    d_run=$(jget duration_ms <"$OUT/$size-run.json")

    log "size $size: failback"
    qemu-io -f raw -c "write -P 0x31 96M 8M" "$burl" >/dev/null
    "$OFFSITE" failover prepare g --dir "$B" --json >"$OUT/$size-prepare-back.json"
    "$OFFSITE" failover run g --dir "$A" --json >"$OUT/$size-run-back.json"
    back_ms=$(timed failback "$OUT/$size-failback.json" "$OFFSITE" reverse g --dir "$A" --json)
    back_moved=$(jget bytes_transferred <"$OUT/$size-failback.json")
    named=$("$OFFSITE" pit list g --dir "$A" --json |
        python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["name"]))')
    rows+=("| $size | $init_ms | $test_ms ($d_test) | $stop_ms | $prep_ms | $run_ms ($d_run) | $rev_ms | $moved | $back_ms | $back_moved | $named |")
    stop_pair
done

{
    echo "# failover timings ($(offsite_version))"
    echo
    machine_info
    echo "- load average at the end: $(load_avg)"
    echo
    echo "Wall ms of each CLI command (in parentheses: the daemon's own duration_ms)."
    echo
    echo "| volume | group start | failover run --test | stop-test | failover prepare | failover run | reverse | reverse bytes | failback reverse | failback bytes | named PITs after |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} | tee "$OUT/summary.md"
log "results in $OUT"
