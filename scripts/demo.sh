#!/usr/bin/env bash
# The README's main job, kept for muscle memory: builds the release binary
# and runs `offsite demo` (two sites on loopback, a VM with two volumes, a
# recovery plan run as a test drill, cleanup, planned migration, reprotect
# and failback, data checked at every step). Exits non-zero if any check
# fails. Usage: scripts/demo.sh [--keep] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p offsite-cli
exec target/release/offsite demo "$@"
