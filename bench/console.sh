#!/usr/bin/env bash
# bench/console.sh — the web console with many groups (issue 20, "Targets").
#
# Run (from anywhere):
#
#     bash bench/console.sh              # CONSOLE_GROUPS=200
#
# What it does: two sites on 127.0.0.1, paired; on site-a CONSOLE_GROUPS
# volumes of 1 MiB, each in its own async group, all started and
# replicating. Then headless Chromium (chromium-driver, python3-selenium)
# logs in to site-a's console and measures, in the browser:
#   - first render: from navigation start to the overview table holding
#     every group (performance.now() of the first poll that sees them; polls
#     every 5 ms), RUNS page loads, median and worst;
#   - page weight: bytes the page loads (the page, its scripts and style,
#     and the first overview snapshot on the live stream), as sent and as
#     gzip would send them;
#   - state change to screen: `group pause`/`resume` through the API, then
#     the time until the open page shows the new state, CHANGES times.
# Targets: first render <= 300 ms, page weight <= 300 KB compressed, a
# state change on screen <= 1 s.
#
# Options (environment): CONSOLE_GROUPS=200 RUNS=10 CHANGES=10 BUILD=0 (1:
#   cargo build --release first; also when there is no binary)
#   OFFSITE_SRC=... KEEP=0 OUT=...
#
# Exit status: 0 if every target was met, 1 if not.

set -euo pipefail

NGROUPS=${CONSOLE_GROUPS:-200}
RUNS=${RUNS:-10}
CHANGES=${CHANGES:-10}
BUILD=${BUILD:-0}
KEEP=${KEEP:-0}
OFFSITE_SRC=${OFFSITE_SRC:-${OFFSITE:-}}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need chromium chromedriver -- "apt-get install chromium chromium-driver python3-selenium"
/usr/bin/python3 -c 'import selenium' 2>/dev/null || die "python3-selenium is missing (apt-get install python3-selenium)"

bench_init offsite-console
[[ -x ${OFFSITE_SRC:-$BENCH_REPO/target/release/offsite} ]] || BUILD=1
bench_binary

{
    machine_info
    echo "tools:   offsite $(offsite_version), $(chromium --version 2>/dev/null | head -1)"
    echo "load:    $(load_avg) at the start"
    echo "params:  CONSOLE_GROUPS=$NGROUPS RUNS=$RUNS CHANGES=$CHANGES"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

make_pair c
authorize_a "$WORK/store"
start_async_groups "$NGROUPS"
log "every group is replicating"

api=$("$OFFSITE" site show --dir "$A" --json | jget api)
/usr/bin/python3 "$BENCH_REPO/bench/console-measure.py" "http://$api" "$A/api.token" \
    "$NGROUPS" "$RUNS" "$CHANGES" "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
! grep -q "missed" "$OUT/summary.md"
