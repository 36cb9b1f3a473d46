#!/usr/bin/env bash
# bench/s3.sh — a replica in a real S3 store (issue 21): offsite against a
# standard S3 client (rclone) on the same 3-node Garage cluster.
#
# Run (from anywhere; needs garage 2.5.0 in PATH or ~/.cargo/bin, rclone
# (`apt-get install rclone`), python3 with libnbd (/usr/bin/python3)):
#
#     bash bench/s3.sh
#
# What it does, in one run on this machine:
#   1. the peer, on a 3-node Garage cluster of its own (the test kit's
#      `garage-cluster`, crates/testkit/src/bin/garage-cluster.rs, on
#      loopback): `rclone copyto` of SIZE random bytes into the bucket (S3
#      provider Other, path style, rclone's default multipart concurrency),
#      timed, then `rclone cat` of them to /dev/null and `rclone copyto`
#      into a local file (fsynced; the download hydration is held
#      against: both end with the bytes in local files), timed, then READS
#      ranged GETs of 4 KiB and 256 KiB as offsite's S3 client makes them
#      (crates/objects/examples/get-latency.rs: the latency floor under a
#      cold read, with no daemon running); the cluster is
#      then stopped and its directory deleted (Garage frees deleted blocks
#      only after 10 minutes, and one disk holds every byte three times);
#   2. offsite, on a fresh cluster: site-a and site-b on loopback, site-b's
#      `[object_store]` pointing at all three Garage nodes and `authz add
#      --storage-location s3://BUCKET/replicas`; VOLUMES volumes of VOL_SIZE
#      on site-a, SIZE random bytes in all (each volume's share at its
#      start, the rest never written), `group create g --encrypt`
#      (ENCRYPT=1, the default), then `group start g` + the first `sync`
#      timed: initial replication MB/s against rclone's upload (target ≥ 0.5);
#   3. recovery from the bucket: `failover run g --test` at site-b timed
#      (target < 5 s whatever the size), then READS random cold 4 KiB reads
#      of the test clones over NBD (spread over the volumes' data), each
#      timed (p50/p99; target p99 ≤ 50 ms), then `failover stop-test`;
#   4. the disaster: site-a stopped, `failover run g --force` at site-b
#      timed (target < 5 s), then hydration timed until `volume show`
#      reports every promoted volume local: MB/s of data against rclone's
#      download (target ≥ 0.5);
#   5. delta cycles: DELTA of 64 KiB writes at random offsets of a volume
#      of SMALL_SIZE, then of one of BIG_SIZE (both sparse), `sync` timed
#      with the daemons' CPU per cycle (target < 2 s, and flat in the
#      volume's size: the two CPU figures compared).
# Everything it started is stopped on exit; results and logs stay in $OUT.
#
# Options (environment):
#   SIZE=8G  VOLUMES=4  VOL_SIZE=10G  READS=200  DELTA=10M  BIG_SIZE=1T
#   SMALL_SIZE=10G
#   ENCRYPT=1  BUILD=1 (0: use $OFFSITE_SRC or target/release/offsite as it is)
#   OFFSITE_SRC=... WORKDIR=... OUT=... KEEP=0
#   GARAGE_NODELAY=1 (the default): Garage's nodes run with Nagle's
#     algorithm off (bench/garage-nodelay.c, an LD_PRELOAD shim built here
#     with cc), as docs/operations.md tells operators to run it: Garage 2.5
#     never sets TCP_NODELAY, and one ranged GET in ten then waits ~60 ms
#     for its quorum's RPC. Both clusters, so rclone and offsite meet the
#     same store. 0: Garage as shipped
#   QUICKACK_ROUTE=1: for the run, the loopback route acknowledges at once
#     (`ip route change ... quickack 1`, root; restored on exit); measured:
#     it does not take out Garage's stalls (GARAGE_NODELAY does)
#   PERF=1: `perf record --call-graph dwarf` of site-b during the cold reads and during
#     hydration ($OUT/cold.perf, $OUT/hydration.perf, with a report of each)
# Disk: about 4 × SIZE free (3 × SIZE in Garage, SIZE at site-a, SIZE
# hydrated at site-b, not all at once).

set -euo pipefail

SIZE=${SIZE:-8G}
VOLUMES=${VOLUMES:-4}
VOL_SIZE=${VOL_SIZE:-10G}
READS=${READS:-200}
DELTA=${DELTA:-10M}
BIG_SIZE=${BIG_SIZE:-1T}
SMALL_SIZE=${SMALL_SIZE:-10G}
ENCRYPT=${ENCRYPT:-1}
KEEP=${KEEP:-0}
BUILD=${BUILD:-1}

QUICKACK_ROUTE=${QUICKACK_ROUTE:-0}
GARAGE_NODELAY=${GARAGE_NODELAY:-1}
PERF=${PERF:-0}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PATH=$PATH:$HOME/.cargo/bin
need garage rclone python3 -- "garage: cargo install --locked garage --version 2.5.0; rclone: apt-get install rclone"
bench_init offsite-s3
bench_binary
LO_ROUTE=$(ip route show table local 127.0.0.0/8 | head -n 1)
if [[ $QUICKACK_ROUTE == 1 ]]; then
    [[ -n $LO_ROUTE ]] || die "no local route for 127.0.0.0/8 to change"
    # Back as it was when the run ends, however it ends.
    restore_route() { ip route replace $LO_ROUTE table local; }
    trap 'restore_route; bench_cleanup' EXIT
    ip route change $LO_ROUTE table local quickack 1
    log "loopback route: $(ip route show table local 127.0.0.0/8 | head -n 1)"
fi
# perf_start NAME: records site-b until perf_stop; PERF_PID.
perf_start() {
    [[ $PERF == 1 ]] || return 0
    perf record -F 499 --call-graph dwarf,16384 -p "$PID_B" -o "$OUT/$1.perf" 2>"$OUT/$1.perf.log" &
    PERF_PID=$!
    PERF_NAME=$1
    sleep 0.5
}
perf_stop() {
    [[ $PERF == 1 ]] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    perf report -i "$OUT/$PERF_NAME.perf" --no-children --sort sym --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -40 >"$OUT/$PERF_NAME.report" || true
    log "perf of site-b ($PERF_NAME): $OUT/$PERF_NAME.report"
}
log "offsite $(offsite_version); $(machine_info | tr '\n' ' ')"

# A cluster, kept running while its stdin stays open.
(cd "$BENCH_REPO" && cargo build -q -p offsite-testkit --bin garage-cluster &&
    cargo build -q --release -p offsite-objects --example get-latency) 2>"$OUT/garage-build.log" ||
    die "building garage-cluster or the get-latency probe failed: see $OUT/garage-build.log"
GARAGE_PRELOAD=
if [[ $GARAGE_NODELAY == 1 ]]; then
    GARAGE_PRELOAD=$WORK/garage-nodelay.so
    cc -shared -fPIC -O2 -o "$GARAGE_PRELOAD" "$BENCH_REPO/bench/garage-nodelay.c" -ldl ||
        die "building bench/garage-nodelay.c failed (cc from build-essential)"
fi
start_cluster() {  # start_cluster NAME -> CLUSTER ENDPOINTS BUCKET KEY_ID SECRET REGION
    # The nodes inherit the preload (the cluster's starter gets it too, harmlessly).
    coproc GARAGE { env ${GARAGE_PRELOAD:+LD_PRELOAD=$GARAGE_PRELOAD} "$BENCH_REPO/target/debug/garage-cluster" 2>"$OUT/garage-$1.log"; }
    track "$GARAGE_PID"
    read -r CLUSTER <&"${GARAGE[0]}" || die "garage-cluster printed nothing: see $OUT/garage-$1.log"
    echo "$CLUSTER" >"$OUT/cluster-$1.json"
    read -r -a ENDPOINTS <<<"$(g endpoints)"
    BUCKET=$(g bucket)
    KEY_ID=$(g access_key_id)
    SECRET=$(g secret_access_key)
    REGION=$(g region)
    log "garage ($1): ${ENDPOINTS[*]} bucket $BUCKET"
}
stop_cluster() {  # closes its stdin: the cluster stops and deletes its directory
    local pid=$GARAGE_PID
    eval "exec ${GARAGE[1]}>&-"
    wait "$pid" 2>/dev/null || true
}
g() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(" ".join(v) if isinstance(v,list) else v)' "$CLUSTER" "$1"; }
BYTES=$(bytes_of "$SIZE")
VOL_BYTES=$(bytes_of "$VOL_SIZE")
SHARE=$(( BYTES / VOLUMES / 4096 * 4096 ))
(( SHARE <= VOL_BYTES )) || die "SIZE=$SIZE does not fit $VOLUMES volumes of $VOL_SIZE"
BYTES=$(( SHARE * VOLUMES ))
mbps() { python3 -c "print(round($1 / 1e6 / $2, 1))"; }

# 1. The peer.
start_cluster peer
IMG=$WORK/image.raw
log "writing $BYTES random bytes"
head -c "$BYTES" /dev/urandom >"$IMG"
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other \
    RCLONE_CONFIG_G_ENDPOINT=${ENDPOINTS[0]} RCLONE_CONFIG_G_REGION=$REGION \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$KEY_ID RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$SECRET \
    RCLONE_CONFIG_G_FORCE_PATH_STYLE=true
# rclone's S3 client fails to start when AWS_CA_BUNDLE is set (its custom
# transport cannot take a CA bundle); Garage here is plain HTTP.
rclone() { env -u AWS_CA_BUNDLE rclone "$@"; }
t0=$(now)
rclone copyto "$IMG" "g:$BUCKET/peer/image.raw" 2>>"$OUT/rclone.log"
t1=$(now)
UP_S=$(elapsed "$t0" "$t1")
t0=$(now)
rclone cat "g:$BUCKET/peer/image.raw" 2>>"$OUT/rclone.log" >/dev/null
t1=$(now)
CAT_S=$(elapsed "$t0" "$t1")
# The download hydration is held against: the same bytes into a local
# file on the volumes' file system, made durable (what hydration does:
# the data ends in the volume files, fsynced). `rclone cat` to /dev/null
# above is the network alone.
t0=$(now)
rclone copyto "g:$BUCKET/peer/image.raw" "$WORK/download.raw" 2>>"$OUT/rclone.log"
sync "$WORK/download.raw"
t1=$(now)
DOWN_S=$(elapsed "$t0" "$t1")
rm -f "$WORK/download.raw"
log "rclone: upload $(mbps "$BYTES" "$UP_S") MB/s, download into a file $(mbps "$BYTES" "$DOWN_S") MB/s (to /dev/null $(mbps "$BYTES" "$CAT_S") MB/s)"
# The floor under a cold read: ranged GETs of this cluster as offsite's
# client makes them (crates/objects/examples/get-latency.rs), no daemon
# running.
env -u AWS_CA_BUNDLE -u AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL="${ENDPOINTS[0]}" AWS_REGION="$REGION" \
    AWS_ACCESS_KEY_ID="$KEY_ID" AWS_SECRET_ACCESS_KEY="$SECRET" \
    PROBE_ALTERNATES="${ENDPOINTS[*]:1}" \
    "$BENCH_REPO/target/release/examples/get-latency" "$BUCKET" "$READS" >"$OUT/get-latency.jsonl" 2>>"$OUT/rclone.log" ||
    die "the get-latency probe failed: see $OUT/rclone.log"
while read -r line; do log "GET latency: $line"; done <"$OUT/get-latency.jsonl"
stop_cluster

# 2. offsite: site-b keeps the replica in the bucket of a fresh cluster.
start_cluster offsite
make_pair s3
# site-b restarts with the object store configured, on the port site-a
# has paired with.
sed -i "s|^listen = .*|listen = \"$LISTEN_B\"|" "$B/config.toml"
stop_pid "$PID_B"
printf '%s\n' "$SECRET" >"$B/s3.secret"
chmod 600 "$B/s3.secret"
{
    echo
    echo "[object_store]"
    echo "endpoint = \"${ENDPOINTS[0]}\""
    echo "alternate_endpoints = [\"${ENDPOINTS[1]}\", \"${ENDPOINTS[2]}\"]"
    echo "region = \"$REGION\""
    echo "access_key_id = \"$KEY_ID\""
    echo "secret_access_key_file = \"s3.secret\""
} >>"$B/config.toml"
start_daemon "$B" "$OUT/s3-b.log"
PID_B=$DAEMON_PID
"$OFFSITE" authz add --allowed-primary site-a --storage-location "s3://$BUCKET/replicas" --dir "$B" >/dev/null
vols=()
for i in $(seq 1 "$VOLUMES"); do
    # Volume i: its share of the random bytes at its start, then a hole.
    dd if="$IMG" of="$WORK/v$i.raw" bs=1M iflag=skip_bytes,count_bytes \
        skip=$(( (i - 1) * SHARE )) count="$SHARE" status=none
    truncate -s "$VOL_BYTES" "$WORK/v$i.raw"
    "$OFFSITE" volume create "v$i" --import "$WORK/v$i.raw" --dir "$A" --json >"$OUT/import-v$i.json"
    rm -f "$WORK/v$i.raw"
    vols+=(--volume "v$i")
done
rm -f "$IMG"
enc=()
[[ $ENCRYPT == 1 ]] && enc=(--encrypt)
"$OFFSITE" group create g --partner site-b "${vols[@]}" --mode async --rpo 24h "${enc[@]}" --dir "$A" --json >"$OUT/create.json"
ca0=$(cpu_ticks "$PID_A"); cb0=$(cpu_ticks "$PID_B")
t0=$(now)
"$OFFSITE" group start g --dir "$A" --json >"$OUT/start.json"
"$OFFSITE" sync g --dir "$A" --json >"$OUT/first-sync.json"
t1=$(now)
INIT_S=$(elapsed "$t0" "$t1")
ca1=$(cpu_ticks "$PID_A"); cb1=$(cpu_ticks "$PID_B")
RATIO=$(python3 -c "print(round(($BYTES/$INIT_S) / ($BYTES/$UP_S), 2))")
log "offsite initial replication: $(mbps "$BYTES" "$INIT_S") MB/s (${INIT_S}s), ratio to rclone's upload $RATIO (target >= 0.5); CPU s a/b $(( (ca1-ca0)/CLK_TCK ))/$(( (cb1-cb0)/CLK_TCK ))"

# 3. Recovery from the bucket: a test failover, then cold reads.
t0=$(now)
"$OFFSITE" failover run g --test --dir "$B" --json >"$OUT/test-failover.json"
t1=$(now)
FO_S=$(elapsed "$t0" "$t1")
perf_start cold
/usr/bin/python3 - "$OUT/test-failover.json" "$SHARE" "$READS" >"$OUT/reads.json" <<'PY'
import json, random, sys, time
import nbd
answer, share, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
handles = []
for v in json.load(open(answer))["volumes"]:
    h = nbd.NBD()
    h.connect_uri(v["url"])
    handles.append(h)
lat = []
rng = random.Random(21)
for _ in range(n):
    h = rng.choice(handles)
    off = rng.randrange(0, share // 4096) * 4096
    t = time.perf_counter()
    h.pread(4096, off)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(json.dumps({"reads": n, "p50_ms": round(lat[n // 2], 2), "p99_ms": round(lat[min(n - 1, n * 99 // 100)], 2), "max_ms": round(lat[-1], 2)}))
PY
perf_stop
log "test failover from the bucket: ${FO_S}s (target < 5 s); cold 4 KiB reads $(cat "$OUT/reads.json") (target p99 <= 50 ms)"
"$OFFSITE" failover stop-test g --dir "$B" --json >/dev/null

# 4. The disaster: site-a is gone; failover from the bucket, then hydration.
sed -i "s|^listen = .*|listen = \"$LISTEN_A\"|" "$A/config.toml"
stop_pid "$PID_A"
t0=$(now)
"$OFFSITE" failover run g --force --dir "$B" --json >"$OUT/failover.json"
t1=$(now)
FAILOVER_S=$(elapsed "$t0" "$t1")
log "failover run (site-a down): ${FAILOVER_S}s (target < 5 s); hydrating"
perf_start hydration
# Which of site-b's threads are busy while it hydrates (the flattener, the
# read-ahead threads, the S3 client's), sampled once a few seconds in.
( sleep 3; top -H -b -n 2 -d 2 -p "$PID_B" | awk '/^top -/{n++} n==2' >"$OUT/hydration-threads.txt" ) &
while :; do
    left=0
    for i in $(seq 1 "$VOLUMES"); do
        "$OFFSITE" volume show "v$i" --dir "$B" --json >"$OUT/show-v$i.json"
        if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("hydration") else 1)' "$OUT/show-v$i.json"; then
            left=$((left + 1))
        fi
    done
    (( left == 0 )) && break
    sleep 0.5
done
t2=$(now)
perf_stop
HYD_S=$(elapsed "$t1" "$t2")
HYD_RATIO=$(python3 -c "print(round(($BYTES/$HYD_S) / ($BYTES/$DOWN_S), 2))")
log "hydration of $BYTES bytes of data in ${VOLUMES} x $VOL_SIZE: ${HYD_S}s, $(mbps "$BYTES" "$HYD_S") MB/s, ratio to rclone's download $HYD_RATIO (target >= 0.5)"
start_daemon "$A" "$OUT/a-restarted.log"
PID_A=$DAEMON_PID

# 5. Delta cycles on a big and a small sparse volume (site-a as the
# primary of new groups; g stays failed over): the same writes, so the CPU
# of the two cycles shows whether a cycle's cost grows with the volume.
DELTA_BYTES=$(bytes_of "$DELTA")
delta_cycle() {  # delta_cycle NAME SIZE -> DELTA_S DELTA_CPU ("a/b" ms)
    local name=$1 size=$2 url ca0 cb0 ca1 cb1 t0 t1
    "$OFFSITE" volume create "$name" --size "$size" --dir "$A" --json >/dev/null
    "$OFFSITE" group create "g$name" --partner site-b --volume "$name" --mode async --rpo 24h "${enc[@]}" --dir "$A" --json >/dev/null
    "$OFFSITE" group start "g$name" --dir "$A" --json >/dev/null
    url=$("$OFFSITE" volume url "$name" --dir "$A")
    /usr/bin/python3 - "$url" "$(bytes_of "$size")" "$DELTA_BYTES" <<'PY'
import os, random, sys
import nbd
url, size, delta = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(url)
rng = random.Random(7)
for _ in range(delta // 65536):
    h.pwrite(os.urandom(65536), rng.randrange(0, size // 65536) * 65536)
h.flush()
PY
    ca0=$(cpu_ticks "$PID_A"); cb0=$(cpu_ticks "$PID_B")
    t0=$(now)
    "$OFFSITE" sync "g$name" --dir "$A" --json >"$OUT/delta-sync-$name.json"
    t1=$(now)
    ca1=$(cpu_ticks "$PID_A"); cb1=$(cpu_ticks "$PID_B")
    DELTA_S=$(elapsed "$t0" "$t1")
    DELTA_CPU="$(( (ca1-ca0)*1000/CLK_TCK ))/$(( (cb1-cb0)*1000/CLK_TCK ))"
    log "delta cycle of $DELTA on a $size volume: ${DELTA_S}s (target < 2 s); CPU ms a/b $DELTA_CPU"
}
delta_cycle small "$SMALL_SIZE"
SMALL_S=$DELTA_S SMALL_CPU=$DELTA_CPU
delta_cycle big "$BIG_SIZE"

{
    echo "# bench/s3.sh $(date -u +%FT%TZ)"
    echo
    machine_info
    echo "offsite $(offsite_version); SIZE=$SIZE VOLUMES=$VOLUMES VOL_SIZE=$VOL_SIZE ENCRYPT=$ENCRYPT BIG_SIZE=$BIG_SIZE DELTA=$DELTA QUICKACK_ROUTE=$QUICKACK_ROUTE GARAGE_NODELAY=$GARAGE_NODELAY PERF=$PERF; load $(load_avg)"
    echo
    echo "| measure | value | target |"
    echo "| --- | ---: | --- |"
    echo "| rclone upload / download into a file / download to /dev/null MB/s | $(mbps "$BYTES" "$UP_S") / $(mbps "$BYTES" "$DOWN_S") / $(mbps "$BYTES" "$CAT_S") | |"
    echo "| offsite initial replication MB/s | $(mbps "$BYTES" "$INIT_S") | ratio $RATIO (≥ 0.5) |"
    echo "| test failover from the bucket | ${FO_S} s | < 5 s |"
    echo "| cold 4 KiB reads | $(cat "$OUT/reads.json") | p99 ≤ 50 ms |"
    while read -r line; do echo "| GET latency, no daemon running | $line | |"; done <"$OUT/get-latency.jsonl"
    echo "| failover run, site-a down ($VOLUMES × $VOL_SIZE) | ${FAILOVER_S} s | < 5 s |"
    echo "| hydration MB/s of data | $(mbps "$BYTES" "$HYD_S") (${HYD_S} s) | ratio $HYD_RATIO to rclone's download (≥ 0.5) |"
    echo "| delta cycle ($DELTA on $BIG_SIZE) | ${DELTA_S} s, CPU ms a/b $DELTA_CPU | < 2 s |"
    echo "| delta cycle ($DELTA on $SMALL_SIZE) | ${SMALL_S} s, CPU ms a/b $SMALL_CPU | CPU flat in size |"
} | tee "$OUT/summary.md"
python3 -c "import sys; sys.exit(0 if $RATIO >= 0.5 else 1)"
