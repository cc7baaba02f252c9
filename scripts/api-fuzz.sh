#!/usr/bin/env bash
# Attacks both services through their own OpenAPI documents with Schemathesis, a
# property-based API tester: every operation, with auth on and every check, against a
# real broker. Fails on any failure it finds.
#
#   KAFKA_BROKERS=127.0.0.1:9092 scripts/api-fuzz.sh
#
# Schemathesis and everything it depends on are pinned in
# scripts/schemathesis-requirements.txt and installed once into target/schemathesis (git
# ignored; PyPI must be reachable the first time). scripts/schemathesis.toml holds what
# it is told about this API and why. FUZZ_SEED changes the examples (default: fixed, so a
# CI run is repeatable); FUZZ_MAX_EXAMPLES their number per operation (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

brokers="${KAFKA_BROKERS:-${LEDGER_TEST_BROKERS:-127.0.0.1:9092}}"
profile_dir=target/debug
venv=target/schemathesis
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf 'api-fuzz: %s\n' "$*" >&2; }

# The environment matches the pinned set exactly, or it is made again.
wanted="$(sha256sum scripts/schemathesis-requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$venv/.pinned" 2>/dev/null)" != "$wanted" ]]; then
  say "installing the pinned schemathesis into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r scripts/schemathesis-requirements.txt
  echo "$wanted" >"$venv/.pinned"
fi

if [[ -z "${FUZZ_SKIP_BUILD:-}" ]]; then
  cargo build --locked --quiet -p command-ingest -p projector
fi

topic="fuzz.$(date +%s).$$"
token=fuzz-token

# Starts a service on a free port. Not in a command substitution: that would be a
# subshell, and its pid would never reach `pids` (nor the clean-up).
launch() {
  local name="$1"
  shift
  "$profile_dir/$name" "$@" --brokers "$brokers" --topic "$topic" --auth-token "$token" \
    --listen 127.0.0.1:0 >"$work/$name.log" 2>&1 &
  pids+=("$!")
}

# Prints a launched service's address once it is ready.
address() {
  local name="$1" addr=""
  for _ in $(seq 300); do
    addr="$(grep -o 'addr=[0-9.:]*' "$work/$name.log" | head -1 | cut -d= -f2 || true)"
    if [[ -n "$addr" ]] && curl -sf "http://$addr/readyz" >/dev/null; then
      echo "$addr"
      return
    fi
    sleep 0.1
  done
  say "$name did not become ready; its log:"
  cat "$work/$name.log" >&2
  return 1
}

launch command-ingest
launch projector --data-dir "$work/data" --group-id "$topic"
ingest="$(address command-ingest)"
projector="$(address projector)"
say "ingest on $ingest, projector on $projector, topic $topic"

# Some state for the examples in the documents to find (acc-1, c-42), so that reads are
# answered 200 as well as 404.
auth=(-H "Authorization: Bearer $token" -H 'Content-Type: application/json')
curl -sf "${auth[@]}" "http://$ingest/v1/commands/batch" -d '[
  {"type":"open_account","account_id":"acc-1"},
  {"type":"open_account","account_id":"acc-2"},
  {"type":"deposit","account_id":"acc-1","amount":1250,"command_id":"c-42"},
  {"type":"transfer","from_account":"acc-1","to_account":"acc-2","amount":500}]' >/dev/null
for _ in $(seq 100); do
  curl -sf "${auth[@]}" "http://$projector/v1/accounts/acc-2" | grep -q '"balance":500' && break
  sleep 0.1
done

failed=0
for addr in "$ingest" "$projector"; do
  say "schemathesis against http://$addr"
  if ! (cd "$work" && LEDGER_FUZZ_HOOKS="$OLDPWD/scripts/schemathesis_hooks.py" \
    "$OLDPWD/$venv/bin/schemathesis" \
    --config-file "$OLDPWD/scripts/schemathesis.toml" \
    run "http://$addr/openapi.json" --url "http://$addr" \
    -H "Authorization: Bearer $token" --checks all --no-color \
    --seed "${FUZZ_SEED:-20261207}" --max-examples "${FUZZ_MAX_EXAMPLES:-30}"); then
    failed=1
  fi
done
if [[ "$failed" != 0 ]]; then
  say "schemathesis found failures (above)"
  exit 1
fi
say "no failures on either service"
