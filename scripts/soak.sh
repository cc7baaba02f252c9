#!/usr/bin/env bash
# The soak: the fault suite's faults (projector and ingest SIGKILLs, broker outages, a
# second projector joining and leaving, a full disk) in a random loop for as long as asked,
# each round a verified `ledger load`. Ends with a table of faults injected, commands
# accepted, lost and applied twice; exits non-zero unless lost and applied twice are 0.
# It starts its own broker (KAFKA_PORT 19692 by default) and stops it at the end.
# The disk-full fault mounts a small tmpfs, so it needs root.
#
#   scripts/soak.sh --minutes 20 [--seed S] [--kafka-port P]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p command-ingest -p projector -p ledger-cli -p ledger-faults
exec target/release/soak "$@"
