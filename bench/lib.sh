# bench/lib.sh — helpers shared by the bench/ scripts. Sourced, not run:
#
#     set -euo pipefail
#     KEEP=${KEEP:-0} BUILD=${BUILD:-1} ...      # the script's options
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#     bench_init offsite-foo                     # WORK, OUT, PIDS, exit trap
#     bench_binary                               # OFFSITE=$WORK/offsite
#     make_pair p; authorize_a "$WORK/p-store"   # two paired sites on loopback
#
# What it provides:
#   log MSG / die MSG          timestamped message on stderr / message + exit 2
#   need TOOL... -- HINT       die with HINT unless every TOOL is on PATH
#   bench_init PREFIX [OUTPREFIX]
#                              WORK=a new ${WORKDIR:-${TMPDIR:-/tmp}}/PREFIX.XXXXXX
#                              (absolute, symlinks resolved: daemons read paths
#                              in it), OUT=${OUT:-/tmp/OUTPREFIX.XXXXXX}
#                              (default OUTPREFIX: PREFIX-results), PIDS=(),
#                              and traps that stop every process in PIDS
#                              (last started first) and remove WORK (KEEP=1
#                              keeps it) on exit, error or Ctrl-C
#   track PID                  add PID to PIDS (stopped on exit)
#   stop_pid PID               SIGTERM, up to 10 s, then SIGKILL; reap; untrack
#   bench_binary               BUILD=1: `cargo build --release -p offsite-cli`
#                              (log in $OUT/build.log); then copies
#                              ${OFFSITE_SRC:-<repo>/target/release/offsite}
#                              to $WORK/offsite and sets OFFSITE to it, so a
#                              concurrent rebuild cannot swap it mid-run;
#                              offsite_version names it (OFFSITE_REV=... if
#                              it was not built from this checkout)
#   start_daemon DIR LOG       `offsite serve --dir DIR` in the background,
#                              waits until `site show` answers; DAEMON_PID
#   site_init DIR NAME         `site init` with every listener on 127.0.0.1:0
#   make_pair NAME             sites $WORK/NAME-a (site-a) and $WORK/NAME-b
#                              (site-b), served (logs $OUT/NAME-{a,b}.log) and
#                              paired both ways; sets A B PID_A PID_B LISTEN_A
#                              LISTEN_B
#   authorize_a STORE          on site-b: `authz add --allowed-primary site-a
#                              --storage-location STORE` (STORE created)
#   stop_pair                  stops PID_B, then PID_A
#   start_async_groups N       on site-a ($A): N volumes v1..vN of 1 MiB, each in
#                              its own async group gN (RPO 30 s, keep 3) to
#                              site-b, started; returns once every group
#                              replicates with a PIT (dies after 20 min)
#   jget KEY                   top-level KEY of the JSON on stdin
#   cpu_ticks PID              utime+stime of PID in clock ticks (CLK_TCK)
#   now / elapsed T0 T1        epoch seconds (ns resolution) / T1 - T0
#   free_port / wait_listen PORT PID
#   bytes_of SIZE              10G -> 10737418240 (K/M/G/T = powers of 1024)
#   drop_caches                sync and drop the page cache (root only)
#   machine_info               date, machine, fs (of WORK) lines, for headers
#   load_avg                   the 1/5/15-min load average

[[ -n ${BASH_VERSION:-} ]] || { echo "bench/lib.sh needs bash" >&2; exit 2; }

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

need() {  # need TOOL... -- HINT
    local tools=() hint=""
    while (($#)); do
        if [[ $1 == -- ]]; then shift; hint="$*"; break; fi
        tools+=("$1"); shift
    done
    local t
    for t in "${tools[@]}"; do
        command -v "$t" >/dev/null || die "$t not found${hint:+ ($hint)}"
    done
}

# ---------------------------------------------------------------- processes
PIDS=()

track() { PIDS+=("$1"); }

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

bench_cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if [[ ${KEEP:-0} == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}

bench_init() {  # bench_init PREFIX [OUTPREFIX]
    local prefix=$1 outprefix=${2:-$1-results}
    WORK=$(mktemp -d "${WORKDIR:-${TMPDIR:-/tmp}}/$prefix.XXXXXX")
    WORK=$(cd "$WORK" && pwd -P)
    OUT=${OUT:-$(mktemp -d "/tmp/$outprefix.XXXXXX")}
    mkdir -p "$OUT"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_binary() {
    local src=${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite}
    if [[ ${BUILD:-0} == 1 ]]; then
        log "building release offsite"
        (cd "$BENCH_REPO" && cargo build --release -p offsite-cli) >"$OUT/build.log" 2>&1 ||
            { tail -30 "$OUT/build.log" >&2; die "cargo build failed"; }
    fi
    [[ -x $src ]] || die "no offsite binary at $src (BUILD=1 builds it)"
    OFFSITE=$WORK/offsite
    cp "$src" "$OFFSITE"
}

offsite_version() {  # "0.1.0 @ abc1234[+dirty]"; OFFSITE_REV overrides the revision
    local rev=${OFFSITE_REV:-}   # (for a binary built elsewhere, e.g. a worktree)
    if [[ -z $rev ]]; then
        rev="$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$BENCH_REPO" diff --quiet 2>/dev/null || echo '+dirty')"
    fi
    echo "$("$OFFSITE" --version | awk '{print $2}') @ $rev"
}

# ---------------------------------------------------------------- sites
start_daemon() {  # start_daemon DIR LOG -> sets DAEMON_PID, waits until ready
    local dir=$1 logf=$2 i
    "$OFFSITE" serve --dir "$dir" >>"$logf" 2>&1 &
    DAEMON_PID=$!
    track "$DAEMON_PID"
    for i in $(seq 300); do
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$logf" >&2; die "offsite serve exited"; }
        "$OFFSITE" site show --dir "$dir" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "offsite serve did not become ready in 30 s"
}

site_init() {  # site_init DIR NAME
    "$OFFSITE" site init --dir "$1" --name "$2" \
        --api 127.0.0.1:0 --nbd 127.0.0.1:0 --listen 127.0.0.1:0 >/dev/null
}

make_pair() {  # make_pair NAME -> A B PID_A PID_B LISTEN_A LISTEN_B
    local name=$1 fp_a fp_b show
    A=$WORK/$name-a
    B=$WORK/$name-b
    site_init "$A" site-a
    site_init "$B" site-b
    start_daemon "$A" "$OUT/$name-a.log"
    PID_A=$DAEMON_PID
    start_daemon "$B" "$OUT/$name-b.log"
    PID_B=$DAEMON_PID
    show=$("$OFFSITE" site show --dir "$A" --json)
    fp_a=$(jget fingerprint <<<"$show")
    LISTEN_A=$(jget listen <<<"$show")
    show=$("$OFFSITE" site show --dir "$B" --json)
    fp_b=$(jget fingerprint <<<"$show")
    LISTEN_B=$(jget listen <<<"$show")
    [[ $LISTEN_A != *:0 && $LISTEN_B != *:0 ]] ||
        die "site show reports an unbound listen address ($LISTEN_A, $LISTEN_B)"
    "$OFFSITE" partner add site-b --address "$LISTEN_B" --fingerprint "$fp_b" --dir "$A" >/dev/null
    "$OFFSITE" partner add site-a --address "$LISTEN_A" --fingerprint "$fp_a" --dir "$B" >/dev/null
}

authorize_a() {  # authorize_a STORE: site-b accepts groups of site-a into STORE
    mkdir -p "$1"
    "$OFFSITE" authz add --allowed-primary site-a --storage-location "$1" --dir "$B" >/dev/null
}

stop_pair() { stop_pid "$PID_B"; stop_pid "$PID_A"; }

# ---------------------------------------------------------------- small tools
jget() {  # jget KEY < json   (top-level key)
    python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print("" if v is None else v)' "$1"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime
now() { date +%s.%N; }
elapsed() { python3 -c "print($2 - $1)"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_listen() {  # wait_listen PORT PID
    local i
    for i in $(seq 100); do
        kill -0 "$2" 2>/dev/null || die "process $2 exited before listening on $1"
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    die "nothing listens on port $1 after 10 s"
}

bytes_of() {  # bytes_of 10G -> 10737418240
    python3 -c "
import sys
s = sys.argv[1]; m = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
print(int(s[:-1]) * m[s[-1].upper()] if s[-1].upper() in m else int(s))" "$1"
}

drop_caches() {  # write back dirty pages, then drop page cache, dentries, inodes
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null ||
        die "cannot write /proc/sys/vm/drop_caches (needs root); use CACHE=warm"
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

machine_info() {  # header lines shared by the scripts' reports
    echo "date:    $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "fs:      $(df -T "$WORK" | awk 'NR==2 {print $2 " (" $1 "), " int($5 / 1048576) " GiB free"}')"
}

start_async_groups() {  # N: groups g1..gN on site-a, replicating
    local n t0 waiting=1
    t0=$(now)
    for n in $(seq "$1"); do
        "$OFFSITE" volume create "v$n" --size 1M --dir "$A" >/dev/null
        "$OFFSITE" group create "g$n" --partner site-b --volume "v$n" --mode async \
            --rpo 30s --keep 3 --dir "$A" >/dev/null
        "$OFFSITE" group start "g$n" --no-wait --dir "$A" >/dev/null
    done
    log "$1 groups created and started in $(elapsed "$t0" "$(now)") s"
    for _ in $(seq 1200); do
        waiting=$("$OFFSITE" group list --dir "$A" --json |
            python3 -c 'import json,sys; print(sum(1 for g in json.load(sys.stdin) if g["state"] != "replicating" or not g["last_pit"]))')
        ((waiting == 0)) && break
        sleep 1
    done
    ((waiting == 0)) || die "$waiting groups are not replicating after 20 min"
}
