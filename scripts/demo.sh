#!/usr/bin/env bash
# The README's main job: a two-site disaster-recovery demonstration on one
# machine, on loopback, with the embedded defaults. Site A serves a VM's two
# volumes over NBD; site B is paired with A over mutual TLS and authorizes it;
# a replication group ships A's changes to B as crash-consistent PITs; then a
# test failover, a planned failover to B, reverse (B -> A) and failback. The
# VM's hooks are harmless scripts that log what they would start. Each
# step's data is checked (qemu-io patterns, `offsite verify`, PITs read back
# over NBD). Exits non-zero if any check fails.
# Usage: scripts/demo.sh [--keep]   (--keep leaves the sites' directories)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p offsite-cli
bin=$PWD/target/release/offsite
work=$(mktemp -d -t offsite-demo.XXXXXX)
pids=()
keep=${1:-}
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$keep" = --keep ]; then echo "sites left in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
serve() {
    "$bin" serve --dir "$work/$1" 2>>"$work/$1.log" &
    pids+=($!)
    for _ in $(seq 100); do "$bin" site show --dir "$work/$1" >/dev/null 2>&1 && return; sleep 0.1; done
    fail "site $1 did not start (see $work/$1.log)"
}

step "create site-a (primary) and site-b (recovery) in $work, on loopback ports"
for s in site-a site-b; do
    "$bin" site init --dir "$work/$s" --name "$s" --listen 127.0.0.1:0 --api 127.0.0.1:0 --nbd 127.0.0.1:0 >/dev/null
    serve "$s"
done
A=(--dir "$work/site-a"); B=(--dir "$work/site-b")
"$bin" site show "${A[@]}"

step "pair the sites (pinned certificate fingerprints, both ways) and authorize site-a on site-b"
fa=$("$bin" site show "${A[@]}" --json | json 'd["fingerprint"]'); la=$("$bin" site show "${A[@]}" --json | json 'd["listen"]')
fb=$("$bin" site show "${B[@]}" --json | json 'd["fingerprint"]'); lb=$("$bin" site show "${B[@]}" --json | json 'd["listen"]')
"$bin" partner add site-b --address "$lb" --fingerprint "$fb" "${A[@]}"
"$bin" partner add site-a --address "$la" --fingerprint "$fa" "${B[@]}"
"$bin" authz add --allowed-primary site-a --storage-location "$work/replicas" "${B[@]}"
# For reverse replication and failback, site-a will be site-b's replica.
"$bin" authz add --allowed-primary site-b --storage-location "$work/replicas-a" "${A[@]}"
"$bin" partner test site-b --bytes 64M "${A[@]}"

step "a VM with two volumes on site-a, data written over NBD"
"$bin" volume create web-boot --size 256M "${A[@]}" >/dev/null
"$bin" volume create web-data --size 128M "${A[@]}" >/dev/null
hooks="$work/hooks.log"
"$bin" vm create web --volume web-boot --volume web-data "${A[@]}" \
    --start "echo \$OFFSITE_SITE: start \$OFFSITE_VM \$OFFSITE_MODE on \$OFFSITE_VOLUME_0_URL >> $hooks" \
    --stop "echo \$OFFSITE_SITE: stop \$OFFSITE_VM \$OFFSITE_MODE >> $hooks" >/dev/null
boot=$("$bin" volume url web-boot "${A[@]}"); data=$("$bin" volume url web-data "${A[@]}")
qemu-io -f raw -c 'write -P 0x5a 0 16M' -c 'write -P 0xa5 200M 4M' "$boot" >/dev/null
qemu-io -f raw -c 'write -P 0x33 1M 8M' "$data" >/dev/null
"$bin" volume list "${A[@]}"

step "replication group: created (checked by site-b), initial replication, first PIT"
"$bin" group create web --partner site-b --vm web --mode async --rpo 5m --keep 4 "${A[@]}" >/dev/null
"$bin" group start web "${A[@]}"

step "more writes, then a named PIT requested from the recovery site (forwarded to the primary)"
qemu-io -f raw -c 'write -P 0x77 100M 2M' "$boot" >/dev/null
"$bin" sync web --pit-name before-upgrade "${B[@]}"
qemu-io -f raw -c 'write -P 0x99 100M 1M' "$boot" >/dev/null
"$bin" sync web "${A[@]}"
"$bin" pit list web "${B[@]}"

step "verify: the primary at a fresh cut against the replica, block by block"
"$bin" verify web "${A[@]}"
diff=$("$bin" verify web "${A[@]}" --json | json 'd["differing_blocks"]')
[ "$diff" = 0 ] || fail "verify found $diff differing blocks"

step "the named PIT, served read-only over NBD by site-b, holds the data of its time"
url=$("$bin" pit export web before-upgrade "${B[@]}" --json | json '[v["url"] for v in d["volumes"] if v["name"]=="web-boot"][0]')
qemu-io -r -f raw -c 'read -P 0x77 100M 2M' -c 'read -P 0x5a 0 16M' -c 'read -P 0xa5 200M 4M' "$url" >/dev/null \
    || fail "PIT before-upgrade does not hold the expected data"
echo "PIT before-upgrade of web-boot reads back as written ($url)"

step "group status and measure (Measure-VMReplication)"
"$bin" group status web "${A[@]}"
"$bin" group measure web "${A[@]}"

step "test failover at site-b: writable clones of a PIT, the VM started on them, replication untouched"
t=$("$bin" failover run web --test --pit before-upgrade "${B[@]}" --json)
clone=$(echo "$t" | json '[v["url"] for v in d["volumes"] if v["name"]=="web-boot"][0]')
qemu-io -f raw -c 'read -P 0x77 100M 2M' -c 'write -P 0xee 0 1M' "$clone" >/dev/null || fail "test clone"
qemu-io -f raw -c 'write -P 0x44 120M 1M' "$boot" >/dev/null
"$bin" sync web "${A[@]}" >/dev/null
"$bin" failover stop-test web "${B[@]}"
qemu-io -r -f raw -c 'read -P 0x5a 0 1M' "$url" >/dev/null || fail "the test changed a PIT"

step "planned failover to site-b: stop the VM, fence, final PIT at site-a; promote at site-b"
"$bin" failover prepare web "${A[@]}"
"$bin" failover run web "${B[@]}"
bboot=$("$bin" volume url web-boot "${B[@]}")
qemu-io -f raw -c 'read -P 0x44 120M 1M' -c 'read -P 0x99 100M 1M' "$bboot" >/dev/null || fail "failover lost a write"
qemu-io -f raw -c 'write -P 0xb0 50M 4M' "$bboot" >/dev/null

step "reverse: site-a becomes the replica; only site-b's 4 MiB of changes move"
moved=$("$bin" reverse web "${B[@]}" --json | json 'd["bytes_transferred"]')
echo "reverse sent $moved bytes"
[ "$moved" -le $((5 * 1024 * 1024)) ] || fail "reverse sent $moved bytes for 4 MiB of changes"
diff=$("$bin" verify web "${B[@]}" --json | json 'd["differing_blocks"]')
[ "$diff" = 0 ] || fail "verify after reverse found $diff differing blocks"

step "failback: the same three commands from the other side"
"$bin" failover prepare web "${B[@]}"
"$bin" failover run web "${A[@]}"
"$bin" reverse web "${A[@]}"
boot=$("$bin" volume url web-boot "${A[@]}")
qemu-io -f raw -c 'read -P 0xb0 50M 4M' -c 'read -P 0x44 120M 1M' -c 'read -P 0x5a 0 16M' "$boot" >/dev/null \
    || fail "failback lost data"
diff=$("$bin" verify web "${A[@]}" --json | json 'd["differing_blocks"]')
[ "$diff" = 0 ] || fail "verify after failback found $diff differing blocks"
"$bin" group status web "${A[@]}"
echo "VM hooks ran:"; cat "$hooks"

printf '\ndemo: all checks passed\n'
