#!/usr/bin/env bash
# The soak: the fault suite's faults (projector and ingest SIGKILLs, the projector aborted
# between writing transfer follow-ups and storing them, broker outages, freezes and
# restart storms, a leader SIGKILLed on three brokers, a group of three projectors
# formed, left and killed, a full disk, poison events) in a random loop for as long as
# asked, each round a verified `ledger load` with a fifth of transfers. Ends with a table
# of faults injected, commands accepted (and transfers among them), lost, applied twice
# and rounds whose money was not conserved; exits non-zero unless those are 0.
# It starts its own broker (--kafka-port, 19692 by default) and its own three-broker
# cluster (--cluster-port, 19792 to 19795) and stops them at the end.
# The disk-full fault mounts a small tmpfs, so it needs root.
#
#   scripts/soak.sh --minutes 20 [--seed S] [--kafka-port P] [--cluster-port P]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p command-ingest -p projector -p ledger-cli -p ledger-faults
exec target/release/soak "$@"
