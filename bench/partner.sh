#!/usr/bin/env bash
# bench/partner.sh — replication channel vs iperf3 on loopback, and zstd on
# VM-disk-like data through the real replication path.
#
# Run (from anywhere; needs iperf3, zstd, mkfs.ext4, python3, ss, cargo):
#
#     bash bench/partner.sh
#
# What it does, in one run on this machine:
#   1. builds release offsite (`cargo build --release -p offsite-cli`) and
#      copies the binary into the temp dir (others may rebuild meanwhile);
#   2. creates two sites on 127.0.0.1 (site-a, site-b), serves both and pairs
#      them both ways (`partner add` with the other's listen address and
#      certificate fingerprint);
#   3. REPEAT times, alternating which goes first:
#        iperf3   one TCP stream, `iperf3 -c 127.0.0.1 -n BYTES -J`
#                 (end.sum_received.bits_per_second)
#        offsite  `offsite partner test site-b --bytes BYTES --json`,
#                 compression off (mTLS session, bulk messages, acks)
#      plus, with COMPRESS_TEST=1, one `partner test --compress` per repeat
#      (its data is a synthetic pattern, so only indicative);
#      reports MB/s (10^6 B/s) of each, the ratio offsite / iperf3 (target
#      >= 0.4), offsite's ping RTT and handshake time, and CPU use;
#   4. builds an ext4 image (IMG_SIZE, populated with /usr/share/doc and then
#      /usr/bin binaries until FILL_MIB MiB of files), counts its non-zero
#      4 KiB blocks, and compresses it with `zstd -1` for the reference ratio;
#   5. GROUP_REPEAT times for each of `--compress zstd` and `--compress none`
#      (alternating), on a FRESH pair of sites each time: imports the image
#      as volume `img` on site-a, `authz add` on site-b, `group create g`
#      (rpo 1m) and times `group start g --json` (returns after the first
#      PIT), and also the moment the replica's `group status` first shows a
#      PIT (polled every 0.1 s); MB/s = non-zero bytes / seconds. With WIRE=1 the bytes on the
#      wire are the TCP payload the replica's listener sockets received
#      (`ss -ti` bytes_received before/after, and `ss -tiE` for sockets that
#      closed meanwhile). A failing group step is recorded precisely (step,
#      command, stderr, daemon log tails) and the partner-test figures are
#      still reported.
# Everything it started (daemons, iperf3, ss monitors) is stopped on exit and the
# temp dir removed (set KEEP=1 to keep it).
#
# Options (environment):
#   BYTES=1G          bytes per iperf3 / partner-test run (powers of 1024)
#   REPEAT=3          runs per target (alternating order); medians shown
#   COMPRESS_TEST=1   0: skip the `partner test --compress` runs
#   IMG_SIZE=256M     ext4 image size
#   FILL_MIB=150      MiB of files copied into it
#   GROUP_REPEAT=...  initial replications per compression mode (default 2)
#   GROUP_TIMEOUT=300 seconds `group start` may take in all
#   START_GRACE=30    seconds `group start` may still take after the replica
#                     already reports its first PIT (then it is stopped and
#                     the run recorded as a failure, with its timings)
#   WIRE=1            0: do not count wire bytes with ss
#   RATIO_TARGET=0.4
#   BUILD=1           0: skip cargo build, use $OFFSITE or target/release/offsite
#   OFFSITE=...       offsite binary (default: <repo>/target/release/offsite),
#                     copied into the temp dir; OFFSITE_SRC=... works too
#   WORKDIR=...       parent of the temp dir (default ${TMPDIR:-/tmp})
#   OUT=...           where JSON, logs and summary.md are kept
#                     (default: a new /tmp/offsite-bench-results.XXXXXX)
#   KEEP=0            1: keep the temp dir (sites, image) after the run
#
# Exit status: 0 if the run completed, the ratio met RATIO_TARGET and every
# group run reached its first PIT; 1 if not; other on error.

set -euo pipefail

BYTES=${BYTES:-1G}
REPEAT=${REPEAT:-3}
COMPRESS_TEST=${COMPRESS_TEST:-1}
IMG_SIZE=${IMG_SIZE:-256M}
FILL_MIB=${FILL_MIB:-150}
GROUP_REPEAT=${GROUP_REPEAT:-2}
GROUP_TIMEOUT=${GROUP_TIMEOUT:-300}
START_GRACE=${START_GRACE:-30}
WIRE=${WIRE:-1}
RATIO_TARGET=${RATIO_TARGET:-0.4}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need iperf3 -- "install it: apt-get install iperf3"
need zstd -- "install it: apt-get install -y zstd"
need mkfs.ext4 -- "install it: apt-get install -y e2fsprogs"
need python3 ss stdbuf tar truncate

# ---------------------------------------------------------------- setup
bench_init offsite-bench offsite-bench-results   # WORK: the daemon reads --import in it

# ---------------------------------------------------------------- link tests
run_iperf3() {  # run_iperf3 REP
    local port pid
    port=$(free_port)
    iperf3 -s -1 -p "$port" >"$OUT/iperf3-server-$1.log" 2>&1 &
    pid=$!
    track "$pid"
    wait_listen "$port" "$pid"
    iperf3 -c 127.0.0.1 -p "$port" -n "$BYTES" -J >"$OUT/iperf3-$1.json"
    stop_pid "$pid"
}

run_partner_test() {  # run_partner_test TAG REP [--compress]
    local tag=$1 rep=$2 a0 b0 t0 t1
    shift 2
    a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); t0=$(now)
    "$OFFSITE" partner test site-b --dir "$A" --bytes "$BYTES" --json "$@" \
        >"$OUT/$tag-$rep.json"
    t1=$(now)
    printf '{"wall_s": %s, "cpu_a_s": %s, "cpu_b_s": %s}\n' \
        "$(python3 -c "print($t1 - $t0)")" \
        "$(python3 -c "print(($(cpu_ticks "$PID_A") - $a0) / $CLK_TCK)")" \
        "$(python3 -c "print(($(cpu_ticks "$PID_B") - $b0) / $CLK_TCK)")" \
        >"$OUT/$tag-$rep.cpu.json"
}

# ---------------------------------------------------------------- image
build_image() {  # fills $WORK/root, makes $IMG, writes $OUT/image.json
    local root=$WORK/root
    mkdir -p "$root"
    python3 - "$FILL_MIB" "$WORK/files.lst" "$OUT/image-files.json" <<'PY'
import json, os, sys
limit = int(sys.argv[1]) << 20
total, parts, out = 0, {"/usr/share/doc": 0, "/usr/bin": 0}, []
def files(top, recurse):
    if recurse:
        for d, dirs, fs in os.walk(top):
            dirs.sort()
            for f in sorted(fs):
                yield os.path.join(d, f)
    else:
        for f in sorted(os.listdir(top)):
            yield os.path.join(top, f)
for top, recurse in (("/usr/share/doc", True), ("/usr/bin", False)):
    for p in files(top, recurse):
        if total >= limit:
            break
        if os.path.islink(p) or not os.path.isfile(p) or not os.access(p, os.R_OK):
            continue
        n = os.path.getsize(p)
        out.append(p.lstrip("/"))
        total += n
        parts[top] += n
with open(sys.argv[2], "w") as f:
    f.write("\0".join(out) + "\0")
json.dump({"files": len(out), "bytes": total, "parts": parts}, open(sys.argv[3], "w"))
PY
    tar -C / --null -T "$WORK/files.lst" -cf - 2>/dev/null | tar -C "$root" -xf -
    truncate -s "$IMG_SIZE" "$IMG"
    mkfs.ext4 -q -F -d "$root" "$IMG"
    rm -rf "$root"
    local zst
    zst=$(zstd -1 -c "$IMG" | wc -c)
    python3 - "$IMG" "$zst" "$OUT/image-files.json" >"$OUT/image.json" <<'PY'
import json, sys
img, zst = sys.argv[1], int(sys.argv[2])
bs, zero, size, nonzero = 4096, bytes(4096), 0, 0
with open(img, "rb") as f:
    while True:
        b = f.read(bs)
        if not b:
            break
        size += len(b)
        if b != zero[:len(b)]:
            nonzero += len(b)
info = json.load(open(sys.argv[3]))
print(json.dumps({"size": size, "nonzero": nonzero, "zstd1": zst, "block": bs, **info}))
PY
}

# ---------------------------------------------------------------- group runs
wire_start() {  # wire_start PORT PREFIX: snapshot, then watch socket ends
    ss -Htin "sport = :$1" >"$2.ss0" 2>/dev/null || true
    stdbuf -oL ss -HtinE "sport = :$1" >"$2.ssE" 2>/dev/null &
    SS_PID=$!
    track "$SS_PID"
}

wire_stop() {  # wire_stop PORT PREFIX: final snapshot, stop watching
    sleep 0.2
    ss -Htin "sport = :$1" >"$2.ss1" 2>/dev/null || true
    sleep 0.2
    stop_pid "$SS_PID"
}

group_fail() {  # group_fail FILE STEP CMD ERRFILE
    {
        echo "step: $2"
        echo "command: $3"
        echo "stderr:"
        sed 's/^/    /' "$4"
        echo "group status at site-a / site-b:"
        "$OFFSITE" group status g --dir "$A" --json 2>&1 | tr -d '\n' | sed 's/^/    /'; echo
        "$OFFSITE" group status g --dir "$B" --json 2>&1 | tr -d '\n' | sed 's/^/    /'; echo
        echo "site-a log (last 12 lines):"
        tail -12 "$OUT/$PAIR-a.log" 2>/dev/null | sed 's/^/    /'
        echo "site-b log (last 12 lines):"
        tail -12 "$OUT/$PAIR-b.log" 2>/dev/null | sed 's/^/    /'
    } >"$1"
    log "group run $PAIR FAILED at '$2': $(head -3 "$4" | tr '\n' ' ')"
}

has_pit() {  # has_pit JSON: the group status names a last PIT
    [[ $1 == *'"last_pit"'* && $1 != *'"last_pit":null'* && $1 != *'"last_pit": null'* ]]
}

# run_group MODE REP — fresh pair, import, authz, create, timed start.
# Times `group start g --json` at the primary and, by polling the replica's
# `group status` every 0.1 s, the moment the replica reports its first PIT
# (so a start that does not return still gives the transfer time).
run_group() {
    local mode=$1 rep=$2 tag err cmd store a0 b0 t0 t1 t_rep="" gpid rc st ca cb
    tag=group-$mode-$rep
    PAIR=g$rep-$mode
    err=$OUT/$tag.stderr
    rm -f "$OUT/$tag.fail"
    log "group run $rep/$GROUP_REPEAT --compress $mode: fresh site pair"
    make_pair "$PAIR"

    cmd="offsite volume create img --import $IMG --dir A"
    "$OFFSITE" volume create img --import "$IMG" --dir "$A" --json \
        >"$OUT/$tag.volume.json" 2>"$err" ||
        { group_fail "$OUT/$tag.fail" "volume create --import" "$cmd" "$err"; stop_pair; return 0; }

    store=$WORK/$PAIR-store
    mkdir -p "$store"
    cmd="offsite authz add --allowed-primary site-a --storage-location $store --dir B"
    "$OFFSITE" authz add --allowed-primary site-a --storage-location "$store" --dir "$B" \
        >/dev/null 2>"$err" ||
        { group_fail "$OUT/$tag.fail" "authz add" "$cmd" "$err"; stop_pair; return 0; }

    cmd="offsite group create g --partner site-b --volume img --rpo 1m --compress $mode --dir A"
    "$OFFSITE" group create g --partner site-b --volume img --rpo 1m --compress "$mode" \
        --dir "$A" --json >"$OUT/$tag.create.json" 2>"$err" ||
        { group_fail "$OUT/$tag.fail" "group create" "$cmd" "$err"; stop_pair; return 0; }

    [[ $WIRE == 1 ]] && wire_start "${LISTEN_B##*:}" "$OUT/$tag"
    cmd="offsite group start g --dir A --json"
    a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); t0=$(now)
    timeout "$GROUP_TIMEOUT" "$OFFSITE" group start g --dir "$A" --json \
        >"$OUT/$tag.start.json" 2>"$err" &
    gpid=$!
    track "$gpid"
    while kill -0 "$gpid" 2>/dev/null; do
        if [[ -z $t_rep ]]; then
            st=$("$OFFSITE" group status g --dir "$B" --json 2>/dev/null) || st=""
            if has_pit "$st"; then
                t_rep=$(now)
                ca=$(cpu_ticks "$PID_A"); cb=$(cpu_ticks "$PID_B")
            fi
        elif (($(elapsed "$t_rep" "$(now)" | cut -d. -f1) >= START_GRACE)); then
            kill -TERM "$gpid" 2>/dev/null || true
            echo "(killed by the benchmark: still running ${START_GRACE} s after the replica reported its first PIT)" >>"$err"
            break
        fi
        sleep 0.1
    done
    rc=0
    wait "$gpid" || rc=$?
    t1=$(now)
    stop_pid "$gpid"
    [[ -n $t_rep ]] || { ca=$(cpu_ticks "$PID_A"); cb=$(cpu_ticks "$PID_B"); }
    [[ $WIRE == 1 ]] && wire_stop "${LISTEN_B##*:}" "$OUT/$tag"
    printf '{"start_s": %s, "start_rc": %s, "replica_pit_s": %s, "cpu_a_s": %s, "cpu_b_s": %s}\n' \
        "$(elapsed "$t0" "$t1")" "$rc" "$([[ -n $t_rep ]] && elapsed "$t0" "$t_rep" || echo null)" \
        "$(python3 -c "print(($ca - $a0) / $CLK_TCK)")" \
        "$(python3 -c "print(($cb - $b0) / $CLK_TCK)")" >"$OUT/$tag.cpu.json"
    "$OFFSITE" group measure g --dir "$A" --json >"$OUT/$tag.measure.json" 2>/dev/null || true
    "$OFFSITE" group status g --dir "$A" --json >"$OUT/$tag.primary.json" 2>/dev/null || true
    "$OFFSITE" group status g --dir "$B" --json >"$OUT/$tag.replica.json" 2>/dev/null || true
    if ((rc != 0)); then
        ((rc == 124)) && echo "(timeout: no answer within GROUP_TIMEOUT=${GROUP_TIMEOUT} s)" >>"$err"
        group_fail "$OUT/$tag.fail" "group start (exit status $rc)" "$cmd" "$err"
    elif ! has_pit "$(cat "$OUT/$tag.start.json")"; then
        cat "$OUT/$tag.start.json" >>"$err"
        group_fail "$OUT/$tag.fail" "group start returned without a PIT" "$cmd" "$err"
    fi
    stop_pair
}

# ---------------------------------------------------------------- build
bench_binary

{
    machine_info
    echo "tools:   $(iperf3 --version | head -1 | awk '{print $1, $2}'), zstd $(zstd --version | grep -o 'v[0-9.]*' | head -1), $(mkfs.ext4 -V 2>&1 | head -1), offsite $(offsite_version)"
    echo "load:    $(load_avg) at the start (1/5/15-min load average; other work on the machine skews the figures)"
    echo "params:  BYTES=$BYTES REPEAT=$REPEAT COMPRESS_TEST=$COMPRESS_TEST IMG_SIZE=$IMG_SIZE FILL_MIB=$FILL_MIB GROUP_REPEAT=$GROUP_REPEAT"
} | tee "$OUT/env.txt" >&2

# ---------------------------------------------------------------- link
log "link: site pair"
make_pair link
for rep in $(seq "$REPEAT"); do
    if ((rep % 2)); then order=(iperf3 offsite); else order=(offsite iperf3); fi
    for target in "${order[@]}"; do
        log "rep $rep/$REPEAT $target, $BYTES"
        case $target in
            iperf3) run_iperf3 "$rep" ;;
            offsite) run_partner_test offsite "$rep" ;;
        esac
    done
    if [[ $COMPRESS_TEST == 1 ]]; then
        log "rep $rep/$REPEAT offsite --compress, $BYTES"
        run_partner_test offsite-zstd "$rep" --compress
    fi
done
stop_pair

# ---------------------------------------------------------------- image + groups
IMG=$WORK/fs.img
log "building a $IMG_SIZE ext4 image with ~$FILL_MIB MiB of files"
build_image
log "image: $(cat "$OUT/image.json")"

for rep in $(seq "$GROUP_REPEAT"); do
    if ((rep % 2)); then modes=(zstd none); else modes=(none zstd); fi
    for mode in "${modes[@]}"; do
        run_group "$mode" "$rep"
    done
done

# ---------------------------------------------------------------- report
echo "load average at the end: $(load_avg)" >"$OUT/load-end.txt"
export OUT REPEAT GROUP_REPEAT COMPRESS_TEST RATIO_TARGET BYTES
set +e
python3 - <<'PY' | tee "$OUT/summary.md"
import glob, json, os, re, statistics as st

e = os.environ
out, rep, grep_ = e["OUT"], int(e["REPEAT"]), int(e["GROUP_REPEAT"])
load = lambda p: json.load(open(p))
med = lambda xs: st.median(xs) if xs else float("nan")
MB = 1e6

print(open(f"{out}/env.txt").read().rstrip().replace("\n", "  \n"))
print()

# ---- link
ip, of, oz = [], [], []
for r in range(1, rep + 1):
    d = load(f"{out}/iperf3-{r}.json")
    s = d["end"]["streams"][0].get("sender", {})
    ip.append(dict(mbs=d["end"]["sum_received"]["bits_per_second"] / 8 / MB,
                   rtt=s.get("mean_rtt", float("nan")) / 1000,
                   host=d["end"]["cpu_utilization_percent"]["host_total"],
                   remote=d["end"]["cpu_utilization_percent"]["remote_total"]))
    for tag, lst in (("offsite", of), ("offsite-zstd", oz)):
        p = f"{out}/{tag}-{r}.json"
        if os.path.exists(p):
            t, c = load(p), load(f"{out}/{tag}-{r}.cpu.json")
            lst.append(dict(mbs=t["mb_per_s"], rtt=t["rtt_ms"], hs=t["handshake_ms"],
                            comp=t["compression"], secs=t["seconds"],
                            cpu_a=100 * c["cpu_a_s"] / c["wall_s"],
                            cpu_b=100 * c["cpu_b_s"] / c["wall_s"]))
mi, mo = med([x["mbs"] for x in ip]), med([x["mbs"] for x in of])
ratio = mo / mi
print(f"Link, loopback, {e['BYTES']} per run, medians of {rep} (MB = 10^6 B; "
      "CPU % of one core, over each command's wall time):")
print()
print("| target | MB/s | ratio to iperf3 | RTT ms | handshake ms | CPU sender / receiver % |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| iperf3, 1 TCP stream | {mi:,.0f} | 1.00 | {med([x['rtt'] for x in ip]):.3f} (TCP srtt under load) "
      f"| – | {med([x['host'] for x in ip]):.0f} / {med([x['remote'] for x in ip]):.0f} |")
print(f"| offsite partner test | {mo:,.0f} | **{ratio:.2f}** | {med([x['rtt'] for x in of]):.3f} (ping) "
      f"| {med([x['hs'] for x in of]):.1f} | {med([x['cpu_a'] for x in of]):.0f} / {med([x['cpu_b'] for x in of]):.0f} |")
if oz:
    mz = med([x["mbs"] for x in oz])
    print(f"| offsite partner test --compress (synthetic pattern; compression={oz[0]['comp']}) "
          f"| {mz:,.0f} | {mz / mi:.2f} | {med([x['rtt'] for x in oz]):.3f} "
          f"| {med([x['hs'] for x in oz]):.1f} | {med([x['cpu_a'] for x in oz]):.0f} / {med([x['cpu_b'] for x in oz]):.0f} |")
print()
print("Per-run MB/s (in run order):  ")
print("iperf3 " + ", ".join(f"{x['mbs']:,.0f}" for x in ip) + " | offsite "
      + ", ".join(f"{x['mbs']:,.0f}" for x in of)
      + (" | offsite --compress " + ", ".join(f"{x['mbs']:,.0f}" for x in oz) if oz else "") + "  ")
print("pairwise ratios: " + ", ".join(f"{o['mbs'] / i['mbs']:.2f}" for i, o in zip(ip, of)))
link_ok = ratio >= float(e["RATIO_TARGET"])
print(f"ratio offsite / iperf3 {ratio:.2f} -> {'OK' if link_ok else 'FAIL'} (target >= {e['RATIO_TARGET']})")
print()

# ---- image
im = load(f"{out}/image.json")
mib = lambda b: b / 1048576
print(f"Image: {mib(im['size']):.0f} MiB ext4; files {mib(im['bytes']):.1f} MiB "
      f"({im['files']} files: /usr/share/doc {mib(im['parts']['/usr/share/doc']):.1f} MiB, "
      f"/usr/bin {mib(im['parts']['/usr/bin']):.1f} MiB); non-zero 4 KiB blocks "
      f"{mib(im['nonzero']):.1f} MiB; `zstd -1` of the image {mib(im['zstd1']):.1f} MiB "
      f"-> ratio non-zero / zstd **{im['nonzero'] / im['zstd1']:.2f}**")
print()

# ---- groups
def wire(prefix):
    """TCP payload bytes the replica's listener sockets received during the
    run: sockets that ended (ss -E reports their final counters) plus those
    still open at the end, each minus its count in the snapshot before."""
    def parse(path):
        socks, peer = {}, None
        for line in open(path):
            if not line.strip():
                continue
            if not line[0].isspace():
                peer = line.split()[-1]
            else:
                m = re.search(r"bytes_received:(\d+)", line)
                if m and peer:
                    socks[peer] = int(m.group(1))
        return socks
    if not os.path.exists(prefix + ".ss1"):
        return None
    s0, ended, s1 = parse(prefix + ".ss0"), parse(prefix + ".ssE"), parse(prefix + ".ss1")
    final = {**s1, **ended}
    return sum(v - s0.get(k, 0) for k, v in final.items())

rows, fails = {}, []
for mode in ("zstd", "none"):
    for r in range(1, grep_ + 1):
        tag = f"group-{mode}-{r}"
        failed = os.path.exists(f"{out}/{tag}.fail")
        if failed:
            fails.append((tag, open(f"{out}/{tag}.fail").read()))
        if not os.path.exists(f"{out}/{tag}.cpu.json"):
            continue
        c = load(f"{out}/{tag}.cpu.json")
        mp, pp = f"{out}/{tag}.measure.json", f"{out}/{tag}.primary.json"
        m = load(mp) if os.path.exists(mp) and os.path.getsize(mp) else {}
        pst = load(pp) if os.path.exists(pp) and os.path.getsize(pp) else {}
        w = wire(f"{out}/{tag}")
        rows.setdefault(mode, []).append(dict(
            ok=not failed, start=c["start_s"] if not failed else None, rep=c["replica_pit_s"],
            cpu_a=c["cpu_a_s"], cpu_b=c["cpu_b_s"],
            shipped=pst.get("initial_bytes_sent", m.get("bytes_total")), wire=w))
if rows:
    nz = im["nonzero"]
    f2 = lambda xs, fmt: fmt.format(med(xs)) if xs else "–"
    print(f"Initial replication of the image, fresh site pair per run, medians of up to {grep_}. "
          "'start s' = `group start --json` until it returned with the first PIT; "
          "'replica PIT s' = until the replica's `group status` first showed a PIT (polled every 0.1 s); "
          f"MB/s = non-zero bytes ({nz / MB:.1f} MB) / seconds:")
    print()
    print("| --compress | runs ok | start s | MB/s (start) | replica PIT s | MB/s (replica PIT) "
          "| CPU s site-a / site-b | initial_bytes_sent (status) | bytes on the wire (ss) | data / wire |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, rs in rows.items():
        st_ = [x["start"] for x in rs if x["start"]]
        rp = [x["rep"] for x in rs if x["rep"]]
        ws = [x["wire"] for x in rs if x["wire"]]
        wm = med(ws) if ws else None
        sh = [x["shipped"] for x in rs if x["shipped"] is not None]
        print(f"| {mode} | {sum(x['ok'] for x in rs)}/{len(rs)} | {f2(st_, '{:.2f}')} "
              f"| {f2([nz / MB / x for x in st_], '{:,.0f}')} | {f2(rp, '{:.2f}')} "
              f"| {f2([nz / MB / x for x in rp], '{:,.0f}')} "
              f"| {med([x['cpu_a'] for x in rs]):.2f} / {med([x['cpu_b'] for x in rs]):.2f} "
              + (f"| {med(sh) / MB:.1f} MB | " if sh else "| – | ")
              + (f"{wm / MB:.1f} MB "
                 f"| {nz / wm:.2f} |" if wm else "– | – |"))
    print()
    print("Per-run seconds (start / replica PIT): " + "; ".join(
        f"{mode} " + ", ".join(f"{x['start'] or 0:.2f} / {x['rep'] or 0:.2f}" for x in rs)
        for mode, rs in rows.items()) + " (0: none)")
    print()
groups_ok = not fails and sum(len(v) for v in rows.values()) == 2 * grep_
for tag, text in fails:
    print(f"**{tag} failed:**")
    print()
    print("```")
    print(text.rstrip())
    print("```")
    print()
print(open(f"{out}/load-end.txt").read().strip())
raise SystemExit(0 if link_ok and groups_ok else 1)
PY
rc=${PIPESTATUS[0]}
set -e
log "results in $OUT"
exit "$rc"
