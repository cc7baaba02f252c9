#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test, the ones
# against a real Kafka broker included. It starts that broker itself with
# scripts/kafka-local.sh on its own port (LEDGER_TEST_KAFKA_PORT, default 19092, so a
# development broker on 9092 is left alone) and stops it afterwards, also when a test
# fails. Set LEDGER_TEST_BROKERS to run against a broker you already have instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "ledger-store links no Kafka client"
# The store takes batches from ledger-domain; a Kafka client in its tree means someone
# made it depend on the event log again.
store_tree="$(cargo tree -p ledger-store -e normal --locked)"
if grep -q rdkafka <<<"$store_tree"; then
  echo "ledger-store depends on rdkafka (a Kafka client); it must not: take Batch and Record from ledger-domain, not from ledger-eventlog" >&2
  grep -n 'rdkafka\|ledger-eventlog' <<<"$store_tree" >&2 || true
  exit 1
fi

step "no unused dependencies (cargo machete)"
# Installed once into ~/.cargo/bin (about 90 s) when missing; pinned, so a new release
# cannot turn the suite red on its own.
MACHETE_VERSION=0.9.2
if [[ "$(cargo machete --version 2>/dev/null)" != "$MACHETE_VERSION" ]]; then
  cargo install cargo-machete --locked --version "$MACHETE_VERSION" --quiet
fi
cargo machete

step "building the tests"
cargo test --workspace --locked --no-run

if [[ -z "${LEDGER_TEST_BROKERS:-}" ]]; then
  export KAFKA_PORT="${LEDGER_TEST_KAFKA_PORT:-19092}"
  if scripts/kafka-local.sh status >/dev/null 2>&1; then
    step "using the broker already running on 127.0.0.1:$KAFKA_PORT"
  else
    step "starting a Kafka broker on 127.0.0.1:$KAFKA_PORT"
    trap 'step "stopping the test broker"; KAFKA_PORT='"$KAFKA_PORT"' scripts/kafka-local.sh stop || true' EXIT
    scripts/kafka-local.sh start >/dev/null
  fi
  export LEDGER_TEST_BROKERS="127.0.0.1:$KAFKA_PORT"
fi

step "cargo test (broker: $LEDGER_TEST_BROKERS)"
cargo test --workspace --locked

step "the demo (scripts/demo.sh) against the same broker"
KAFKA_BROKERS="$LEDGER_TEST_BROKERS" DEMO_PROFILE=dev DEMO_SKIP_BUILD=1 scripts/demo.sh

step "the group demo (scripts/demo-group.sh) against the same broker"
KAFKA_BROKERS="$LEDGER_TEST_BROKERS" DEMO_PROFILE=dev DEMO_SKIP_BUILD=1 scripts/demo-group.sh

step "Schemathesis against both services' OpenAPI documents (scripts/api-fuzz.sh)"
KAFKA_BROKERS="$LEDGER_TEST_BROKERS" FUZZ_SKIP_BUILD=1 scripts/api-fuzz.sh
