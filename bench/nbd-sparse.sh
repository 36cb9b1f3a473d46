#!/usr/bin/env bash
# bench/nbd-sparse.sh — copying a sparse export (issue 22): `qemu-img
# convert` of a 10 GiB volume holding 1 % data, served by offsite vs by
# qemu-nbd serving the very same image file.
#
# Run (from anywhere; needs qemu-img, qemu-io, qemu-nbd, python3):
#
#     bash bench/nbd-sparse.sh
#
# What it does, in one run on this machine:
#   one site on 127.0.0.1 (`site init`, `offsite serve`); `volume create big
#   --size SIZE`; PERCENT % of it written with qemu-io over NBD as 1 MiB
#   runs spread evenly (pattern bytes, so the data is not zero); then
#   `qemu-nbd -r -f raw -t --shared=8` on the volume's data file (read-only,
#   offsite idle meanwhile). REPEAT times, alternating which goes first:
#       qemu-img convert -f raw -O raw nbd://SERVER/EXPORT $WORK/out.raw
#   timed (wall), output removed between runs; with CACHE=cold the page
#   cache is dropped before each copy (root only), CACHE=warm (default)
#   leaves the written data cached for both. The bytes offsite served
#   (offsite_nbd_read_bytes_total) are read from /metrics around its copies.
#   The last outputs of both are compared with `qemu-img compare`.
#   Reports the median times and the ratio qemu-nbd / offsite (>= 1.0:
#   offsite at least as fast; target >= 1.0).
# Everything it started is stopped on exit and the temp dir removed (KEEP=1
# keeps it). Results (logs, summary.md) stay in $OUT.
#
# Options (environment):
#   SIZE=10G  PERCENT=1  REPEAT=3  CACHE=warm  RATIO_TARGET=1.0
#   BUILD=0 (1: cargo build --release -p offsite-cli first; also when there
#            is no release binary yet)
#   OFFSITE_SRC=... (or OFFSITE=...) WORKDIR=... OUT=... KEEP=0
#
# Exit status: 0 if the run completed and the target was met, 1 if not.

set -euo pipefail

SIZE=${SIZE:-10G}
PERCENT=${PERCENT:-1}
REPEAT=${REPEAT:-3}
CACHE=${CACHE:-warm}
RATIO_TARGET=${RATIO_TARGET:-1.0}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}

OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need qemu-img qemu-io qemu-nbd python3 curl -- "apt-get install qemu-utils curl"

bench_init offsite-nbd-sparse
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

SITE=$WORK/site
site_init "$SITE" site-a
start_daemon "$SITE" "$OUT/site.log"
"$OFFSITE" volume create big --size "$SIZE" --dir "$SITE" >/dev/null
URL=$("$OFFSITE" volume url big --dir "$SITE")
SHOW=$("$OFFSITE" site show --dir "$SITE" --json)
API=$(jget api <<<"$SHOW")


size_b=$(bytes_of "$SIZE")
runs=$((size_b * PERCENT / 100 / (1 << 20)))
stride=$((size_b / runs))
log "writing $runs x 1 MiB runs (every $stride bytes) into a $SIZE volume"
cmds=()
for ((i = 0; i < runs; i++)); do
    cmds+=(-c "write -P $((i % 251 + 1)) $((i * stride)) 1M")
done
qemu-io -f raw "${cmds[@]}" "$URL" >"$OUT/fill.log"

IMG=$(find "$SITE" -name '*.img' -size +1k -newer "$SITE/config.toml" | head -1)
[[ -n $IMG ]] || die "cannot find the volume's data file under $SITE"
QPORT=$(free_port)
qemu-nbd -r -f raw -t --shared=8 -b 127.0.0.1 -p "$QPORT" -x big "$IMG" \
    >"$OUT/qemu-nbd.log" 2>&1 &
QPID=$!
track "$QPID"
wait_listen "$QPORT" "$QPID"
QURL="nbd://127.0.0.1:$QPORT/big"

served() {  # offsite_nbd_read_bytes_total from /metrics
    curl -sf "http://$API/metrics" |
        awk '$1 == "offsite_nbd_read_bytes_total" {print $2}'
}

copy() {  # copy NAME URL -> seconds on stdout
    rm -f "$WORK/out-$1.raw"
    [[ $CACHE == cold ]] && drop_caches
    local t0 t1
    t0=$(now)
    qemu-img convert -f raw -O raw "$2" "$WORK/out-$1.raw"
    t1=$(now)
    elapsed "$t0" "$t1"
}

declare -a T_OFF T_QEMU
served_total=0
for ((r = 0; r < REPEAT; r++)); do
    for who in $( ((r % 2 == 0)) && echo "offsite qemu" || echo "qemu offsite"); do
        if [[ $who == offsite ]]; then
            b0=$(served)
            t=$(copy offsite "$URL")
            b1=$(served)
            served_total=$((b1 - b0))
            T_OFF+=("$t")
        else
            t=$(copy qemu "$QURL")
            T_QEMU+=("$t")
        fi
        log "run $((r + 1)) $who: ${t}s"
    done
done
identical=$(qemu-img compare -f raw -F raw "$WORK/out-offsite.raw" "$WORK/out-qemu.raw" 2>&1 || true)

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
m_off=$(median "${T_OFF[@]}")
m_qemu=$(median "${T_QEMU[@]}")
ratio=$(python3 -c "print(f'{$m_qemu / $m_off:.2f}')")
met=$(python3 -c "print('met' if $m_qemu / $m_off >= $RATIO_TARGET else 'NOT met')")

{
    echo "# qemu-img convert of a sparse export: offsite vs qemu-nbd"
    echo
    machine_info
    echo "offsite: $(offsite_version)"
    echo "qemu:    $(qemu-img --version | head -1)"
    echo "load:    $(load_avg)"
    echo
    echo "volume $SIZE, $runs x 1 MiB written ($PERCENT %), cache $CACHE, $REPEAT runs each (alternating)"
    echo
    echo "| server | copy times (s) | median (s) |"
    echo "| --- | --- | --- |"
    echo "| offsite | ${T_OFF[*]} | $m_off |"
    echo "| qemu-nbd | ${T_QEMU[*]} | $m_qemu |"
    echo
    echo "ratio qemu-nbd / offsite: $ratio (target >= $RATIO_TARGET: $met)"
    echo "bytes offsite served for its last copy: $served_total ($((runs << 20)) written)"
    echo "outputs: $identical"
} | tee "$OUT/summary.md"

[[ $met == met && $identical == *identical* ]]
