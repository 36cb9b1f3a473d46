#!/usr/bin/env bash
# bench/nbd-tls.sh — NBD over TLS (issue 22): fio 4 KiB random read and
# write at queue depth 32 against offsite and against qemu-nbd, both with
# TLS (x509, client certificates verified) on identical images.
#
# Run (from anywhere; needs fio with the nbd engine, qemu-nbd, openssl,
# setpriv, python3):
#
#     bash bench/nbd-tls.sh
#
# What it does, in one run on this machine:
#   1. makes a CA, a server and a client certificate in QEMU's layout
#      (crates/nbd/tests/pki.sh);
#   2. creates a site whose config.toml has `[nbd_tls] mode = "required"`
#      with those server credentials, serves it, creates a SIZE volume `v`;
#   3. starts qemu-nbd (raw, writeback cache, aio=threads, 127.0.0.1) on a
#      sparse SIZE raw file in the same filesystem, with
#      `--object tls-creds-x509,endpoint=server,dir=...` (verify-peer on);
#   4. preconditions both (1 MiB sequential write over the whole export);
#   5. runs fio (--ioengine=nbd, `nbds://` URIs) against both, REPEAT times,
#      alternating which goes first:
#        randread   4 KiB random read,  iodepth 32
#        randwrite  4 KiB random write, iodepth 32
#      and prints medians: IOPS, MiB/s, clat p50/p99 and the ratio
#      offsite / qemu-nbd (target >= 1.0 for both jobs).
# fio's libnbd reads the client certificate from $HOME/.pki/libnbd only when
# not root (root gets /etc/pki/libnbd, which we leave alone), and refuses
# `tls-certificates=` in a URI unless the program allows local files, which
# fio does not: so fio runs as `nobody` with HOME in the work directory.
# Everything it started is stopped on exit and the temp dir removed (KEEP=1
# keeps it). Results (fio JSON, logs, summary.md) stay in $OUT.
#
# Options (environment):
#   SIZE=1G  RUNTIME=20  REPEAT=3  RAMP=2  RATIO_TARGET=1.0
#   BUILD=0 (1: cargo build --release -p offsite-cli first; also when there
#            is no release binary yet)
#   OFFSITE_SRC=... (or OFFSITE=...) WORKDIR=... OUT=... KEEP=0
#   FIO_USER=nobody  FIO_GROUP=nogroup
#
# Exit status: 0 if the run completed and the target was met, 1 if not.

set -euo pipefail

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-20}
REPEAT=${REPEAT:-3}
RAMP=${RAMP:-2}
RATIO_TARGET=${RATIO_TARGET:-1.0}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}
FIO_USER=${FIO_USER:-nobody}
FIO_GROUP=${FIO_GROUP:-nogroup}

OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need fio qemu-nbd openssl setpriv python3 -- "apt-get install fio qemu-utils openssl util-linux"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine"

bench_init offsite-nbd-tls
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

# fio runs as $FIO_USER: it must reach the client credentials.
chmod 755 "$WORK"
PKI=$WORK/pki
mkdir -p "$PKI"
(cd "$PKI" && sh "$BENCH_REPO/crates/nbd/tests/pki.sh") >"$OUT/pki.log" 2>&1 ||
    { cat "$OUT/pki.log" >&2; die "making the certificates failed"; }
FIO_HOME=$WORK/fio-home
mkdir -p "$FIO_HOME/.pki"
cp -r "$PKI/client" "$FIO_HOME/.pki/libnbd"
chmod -R a+rX "$FIO_HOME"

{
    machine_info
    echo "tools:   $(fio --version), $(qemu-nbd --version | head -1), offsite $(offsite_version)"
    echo "tls:     x509 (EC P-256 certificates, client certificates verified), TLS 1.3"
    echo "load:    $(load_avg) at the start"
    echo "params:  SIZE=$SIZE RUNTIME=$RUNTIME RAMP=$RAMP REPEAT=$REPEAT"
} | tee "$OUT/env.txt" >&2

# ---------------------------------------------------------------- targets
SITE=$WORK/site
site_init "$SITE" bench-tls
cat >>"$SITE/config.toml" <<EOF

[nbd_tls]
mode = "required"
x509_dir = "$PKI/server"
EOF
start_daemon "$SITE" "$OUT/serve.log"
"$OFFSITE" volume create v --size "$SIZE" --dir "$SITE" >/dev/null
OFFSITE_URI=$("$OFFSITE" volume url v --dir "$SITE")
[[ $OFFSITE_URI == nbds://* ]] || die "volume url is not nbds:// with TLS required: $OFFSITE_URI"

RAW=$WORK/qemu.raw
truncate -s "$SIZE" "$RAW"
QPORT=$(free_port)
qemu-nbd -f raw -x v -b 127.0.0.1 -p "$QPORT" --persistent --shared=8 \
    --cache=writeback --aio=threads \
    --object "tls-creds-x509,id=tls0,endpoint=server,dir=$PKI/server" --tls-creds tls0 \
    "$RAW" >"$OUT/qemu-nbd.log" 2>&1 &
QEMU_PID=$!
track "$QEMU_PID"
wait_listen "$QPORT" "$QEMU_PID"
QEMU_URI=nbds://127.0.0.1:$QPORT/v
log "offsite:  $OFFSITE_URI"
log "qemu-nbd: $QEMU_URI"

# fio_as_user ARGS... — fio as $FIO_USER with the client credentials; its
# JSON goes to stdout (after the nbd engine's "connected" line).
fio_as_user() {
    setpriv --reuid="$FIO_USER" --regid="$FIO_GROUP" --clear-groups \
        env HOME="$FIO_HOME" fio --ioengine=nbd --output-format=json "$@" 2>>"$OUT/fio.log"
}

log "preconditioning: 1 MiB sequential fill of $SIZE on both"
fio_as_user --name=fill --uri="$OFFSITE_URI" --rw=write --bs=1M --iodepth=8 \
    --size="$SIZE" >"$OUT/fill-offsite.json"
fio_as_user --name=fill --uri="$QEMU_URI" --rw=write --bs=1M --iodepth=8 \
    --size="$SIZE" >"$OUT/fill-qemu.json"

# ---------------------------------------------------------------- fio runs
for rep in $(seq "$REPEAT"); do
    for job in randread randwrite; do
        if ((rep % 2)); then order=(offsite qemu); else order=(qemu offsite); fi
        for target in "${order[@]}"; do
            log "rep $rep/$REPEAT $job on $target (${RUNTIME}s)"
            if [[ $target == offsite ]]; then uri=$OFFSITE_URI; else uri=$QEMU_URI; fi
            fio_as_user --name="$job" --uri="$uri" --rw="$job" --bs=4k --iodepth=32 \
                --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --numjobs=1 --group_reporting >"$OUT/$target-$job-$rep.json"
        done
    done
done

# ---------------------------------------------------------------- report
export OUT REPEAT RATIO_TARGET
set +e
python3 - <<'PY' | tee "$OUT/summary.md"
import json, os, statistics as st

out, rep = os.environ["OUT"], int(os.environ["REPEAT"])
target = float(os.environ["RATIO_TARGET"])
jobs = [("randread", "read", "4 KiB randread, qd32"),
        ("randwrite", "write", "4 KiB randwrite, qd32")]

def load(who, job, ddir):
    rows = []
    for r in range(1, rep + 1):
        with open(f"{out}/{who}-{job}-{r}.json") as f:
            # fio's nbd engine prints "fio: connected to NBD server" first.
            text = f.read()
            d = json.loads(text[text.index("{"):])["jobs"][0][ddir]
        pct = d["clat_ns"]["percentile"]
        rows.append(dict(iops=d["iops"], mib=d["bw"] / 1024,
                         p50=pct["50.000000"] / 1000, p99=pct["99.000000"] / 1000))
    return rows

def med(rows, k):
    return st.median(r[k] for r in rows)

print(open(f"{out}/env.txt").read().rstrip().replace("\n", "  \n"))
print()
print(f"Medians of {rep} runs per job and target, both with TLS "
      "(clat in µs; ratio = offsite / qemu-nbd, IOPS):")
print()
print("| job | offsite IOPS | qemu-nbd IOPS | ratio | offsite MiB/s | qemu-nbd MiB/s "
      "| offsite p50 / p99 µs | qemu-nbd p50 / p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
spread, met = [], True
for job, ddir, label in jobs:
    o, q = load("offsite", job, ddir), load("qemu", job, ddir)
    oi, qi = med(o, "iops"), med(q, "iops")
    met = met and oi / qi >= target
    print(f"| {label} | {oi:,.0f} | {qi:,.0f} | **{oi / qi:.2f}** | {med(o, 'mib'):,.0f} "
          f"| {med(q, 'mib'):,.0f} | {med(o, 'p50'):,.0f} / {med(o, 'p99'):,.0f} "
          f"| {med(q, 'p50'):,.0f} / {med(q, 'p99'):,.0f} |")
    spread.append(f"{job}: offsite " + ", ".join(f"{r['iops']:,.0f}" for r in o)
                  + " | qemu-nbd " + ", ".join(f"{r['iops']:,.0f}" for r in q))
print()
print("Per-run IOPS (in run order):  ")
print("  \n".join(spread))
print()
print(f"target (ratio >= {target} for both jobs): {'met' if met else 'NOT met'}")
raise SystemExit(0 if met else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
