#!/usr/bin/env bash
# The README's main job (for now): one site on loopback, one volume, data
# written and read back over NBD with qemu-io, dirty tracking shown, clean
# shutdown. Later issues turn this into the two-site DR demonstration.
# Usage: scripts/quickstart.sh [--keep]   (--keep leaves the site directory)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p offsite-cli
bin=$PWD/target/release/offsite
work=$(mktemp -d -t offsite-quickstart.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ "${1:-}" != keep ]; then rm -rf "$work"; else echo "site left in $work/site-a"; fi
}
trap 'cleanup' EXIT
step() { printf '\n== %s\n' "$*"; }

step "create site-a in $work/site-a (ephemeral loopback ports)"
"$bin" site init --dir "$work/site-a" --name site-a \
    --listen 127.0.0.1:0 --api 127.0.0.1:0 --nbd 127.0.0.1:0
"$bin" serve --dir "$work/site-a" 2>"$work/site-a.log" &
pid=$!
for _ in $(seq 100); do "$bin" site show --dir "$work/site-a" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" site show --dir "$work/site-a"

step "create a 1 GiB volume"
"$bin" volume create disk0 --size 1G --dir "$work/site-a"
url=$("$bin" volume url disk0 --dir "$work/site-a")

step "write and verify data over NBD with qemu-io ($url)"
qemu-io -f raw -c 'write -P 0x5a 0 4M' -c 'write -P 0xa5 512M 1M' -c 'flush' "$url"
qemu-io -f raw -c 'read -P 0x5a 0 4M' -c 'read -P 0xa5 512M 1M' -c 'read -P 0 8M 1M' "$url"

step "changed-block tracking"
"$bin" volume list --dir "$work/site-a"
dirty=$("$bin" volume show disk0 --dir "$work/site-a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
[ "$dirty" = $((5 << 20)) ] || { echo "FAIL: dirty_bytes=$dirty, expected $((5 << 20))"; exit 1; }

step "clean shutdown and restart keep the data and the dirty set"
kill -TERM "$pid"; wait "$pid"; pid=
"$bin" serve --dir "$work/site-a" 2>>"$work/site-a.log" &
pid=$!
for _ in $(seq 100); do "$bin" site show --dir "$work/site-a" >/dev/null 2>&1 && break; sleep 0.1; done
url=$("$bin" volume url disk0 --dir "$work/site-a")
qemu-io -f raw -c 'read -P 0x5a 0 4M' -c 'read -P 0xa5 512M 1M' "$url"
dirty2=$("$bin" volume show disk0 --dir "$work/site-a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
[ "$dirty2" = "$dirty" ] || { echo "FAIL: dirty_bytes $dirty2 after restart, expected $dirty"; exit 1; }
echo "dirty_bytes preserved across restart: $dirty2"

[ "${1:-}" = --keep ] && trap 'cleanup keep' EXIT
printf '\nquickstart: all checks passed\n'
