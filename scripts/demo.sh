#!/usr/bin/env bash
# The eventual-consistency demo, end to end, with real processes and a real broker.
#
# It builds the binaries, gets a broker (KAFKA_BROKERS when set, else scripts/kafka-local.sh),
# starts the projector and the ingest on free ports with a temporary data directory and a
# fresh topic, then shows with real output:
#   1. a deposit accepted in milliseconds; a read right away may miss it, a read with its
#      consistency token does not;
#   2. the projector paused (`ledger admin pause`): commands are still accepted at full speed
#      while the projection falls behind, as `ledger top` shows; resumed, it catches up;
#   3. the projector killed with SIGKILL in the middle of a load and restarted: every balance
#      and command status still matches a model of what was accepted;
#   4. an overdraft accepted by the ingest and rejected by the projector, and why;
#   5. a transfer across two partitions: the debit is visible with the transfer's token, then
#      the credit with the token of where it settled; one to an account never opened comes
#      back as a refund; the group's money adds up;
#   6. the log itself, as any other service reads it: `ledger tail` prints the events;
#   7. a verified rebuild: the store rebuilt from offset 0 beside the live one, compared by
#      state digest at the same offsets, and swapped in (`ledger admin rebuild --wait`).
# It stops everything it started (also on Ctrl-C or failure) and exits non-zero when a check
# fails.
#
# Environment: KAFKA_BROKERS (use this broker), DEMO_KAFKA_PORT (port of the local broker,
# default 9092), DEMO_PROFILE (cargo profile, default release; the test suite uses dev),
# DEMO_SKIP_BUILD=1 (use the binaries already built, as the test suite does: its own build
# has other feature flags, so building again here would rebuild half the workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# shellcheck source=scripts/lib/demo-common.sh
source "$ROOT/scripts/lib/demo-common.sh"

# ---------------------------------------------------------------------------------------
demo_begin demo
INGEST_PID= PROJ_PID= LOAD_PID= STARTED_BROKER=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "$LOAD_PID" ]] && kill "$LOAD_PID" 2>/dev/null || true
  if [[ -n "$PROJ_PID" ]]; then kill -CONT "$PROJ_PID" 2>/dev/null || true; kill "$PROJ_PID" 2>/dev/null || true; fi
  [[ -n "$INGEST_PID" ]] && kill "$INGEST_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -n "$STARTED_BROKER" ]]; then KAFKA_PORT=$STARTED_BROKER scripts/kafka-local.sh stop >/dev/null 2>&1 || true; fi
  if (( rc != 0 )); then echo "demo failed; logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

demo_broker

INGEST_PORT=$(free_port)
PROJ_PORT=$(free_port)
export LEDGER_INGEST_URL=http://127.0.0.1:$INGEST_PORT
export LEDGER_PROJECTOR_URL=http://127.0.0.1:$PROJ_PORT
P=$LEDGER_PROJECTOR_URL
ledger() { "$BIN/ledger" "$@"; }

start_projector() {
  # A long session timeout lets the paused projector keep its partitions; static membership
  # lets the restarted one take them back at once.
  "$BIN/projector" --brokers "$BROKERS" --topic "$TOPIC" --group-id "$TOPIC.projector" \
    --instance-id demo-0 --data-dir "$WORK/projector" --listen "127.0.0.1:$PROJ_PORT" \
    --kafka-config session.timeout.ms=30000 >>"$WORK/projector.log" 2>&1 &
  PROJ_PID=$!
  wait_http "$P/readyz" 60
}
applied_total() { curl -fsS "$P/v1/progress" | json 'sum(p["applied_offset"] for p in d["partitions"])'; }
accepted_total() {
  curl -fsS "$LEDGER_INGEST_URL/metrics" | awk '/^ingest_commands_accepted_total/ {s += $2} END {print s + 0}'
}

"$BIN/command-ingest" --brokers "$BROKERS" --topic "$TOPIC" --listen "127.0.0.1:$INGEST_PORT" >"$WORK/ingest.log" 2>&1 &
INGEST_PID=$!
wait_http "$LEDGER_INGEST_URL/readyz" 60
start_projector
note "topic $TOPIC; ingest $LEDGER_INGEST_URL (pid $INGEST_PID); projector $P (pid $PROJ_PID)"

# ---------------------------------------------------------------------------------------
say "1. A command is accepted as soon as Kafka holds it; the read side follows"
show "ledger open demo-alice --wait"
ledger open demo-alice --wait
show "ledger --json deposit demo-alice 1250"
t0=$(now_ms)
accepted=$(ledger --json deposit demo-alice 1250)
t1=$(now_ms)
echo "$accepted" | sed 's/^/   /'
token=$(json 'd["token"]' <<<"$accepted")
right_away=$(curl -sS "$P/v1/accounts/demo-alice")
t2=$(now_ms)
with_token=$(curl -sS "$P/v1/accounts/demo-alice?after=$token")
t3=$(now_ms)
note "accepted in $((t1 - t0)) ms (one write: the event in Kafka, acks=all)"
note "read right away:       $right_away"
note "read with ?after=token: $with_token   (answered $((t3 - t2)) ms later)"
if [[ "$(json 'd["balance"]' <<<"$right_away")" == 1250 ]]; then
  note "(this time the projector had already applied it when the plain read came: the window is small, but it is there)"
else
  note "(the plain read was stale: eventual consistency, made visible)"
fi
check "the read with the token shows the deposit" test "$(json 'd["balance"]' <<<"$with_token")" = 1250

# ---------------------------------------------------------------------------------------
say "2. Pause the projector (ledger admin pause): writes go on at full speed, the read side falls behind"
before=$(applied_total)
show "ledger admin pause"
ledger admin pause | sed 's/^/   /'
note "projector paused having applied $before events; it still answers queries"
for burst in 1 2 3; do
  show "ledger load --accounts 20 --commands 1000 --seed $burst --prefix demo-paused-$burst"
  ledger load --accounts 20 --commands 1000 --seed "$burst" --prefix "demo-paused-$burst" 2>&1 | grep -iE 'accepted|latency' | sed 's/^/   /'
  total=$(accepted_total)
  note "log holds $total events; projector applied $before; lag $((total - before)) and growing"
done
lag_paused=$((total - before))
check "commands were accepted while the projector was paused" test "$lag_paused" -ge 3000
check "every partition shows as paused in /v1/progress" test "$(curl -fsS "$P/v1/progress" | json 'str(all(p["paused"] for p in d["partitions"]))')" = True
show "ledger top   (stdout is not a terminal here, so one snapshot; in a terminal it is live, q quits)"
ledger top | sed 's/^/   /'
show "ledger admin resume"
ledger admin resume | sed 's/^/   /'
t0=$(now_ms)
note "projector resumed"
deadline=$(( $(date +%s) + 60 ))
while :; do
  progress=$(curl -fsS "$P/v1/progress")
  lag=$(json 'd["total_lag"]' <<<"$progress")
  note "progress: total lag ${lag:-unknown}"
  [[ "$lag" == 0 ]] && break
  (( $(date +%s) < deadline )) || break
  sleep 0.05
done
note "caught up $(( $(now_ms) - t0 )) ms after the resume"
check "the projector caught up (lag 0)" test "$lag" = 0

# ---------------------------------------------------------------------------------------
say "3. SIGKILL the projector in the middle of a load, restart it: nothing lost, nothing twice"
show "ledger load --accounts 50 --commands 6000 --transfers 0.2 --seed 42 --prefix demo-crash --verify &"
ledger load --accounts 50 --commands 6000 --transfers 0.2 --seed 42 --prefix demo-crash --concurrency 16 --verify >"$WORK/load.out" 2>&1 &
LOAD_PID=$!
base=$(applied_total)
deadline=$(( $(date +%s) + 60 ))
until (( $(applied_total) > base + 1500 )) || (( $(date +%s) > deadline )); do sleep 0.05; done
killed_at=$(applied_total)
kill -KILL "$PROJ_PID"
wait "$PROJ_PID" 2>/dev/null || true
note "killed the projector (SIGKILL) after it had applied $killed_at events; load still running"
start_projector
note "restarted it on the same data directory (pid $PROJ_PID); it resumes from the offsets in sled"
demo_wait_load
check "ledger load --verify: every balance, command and transfer status matches the model, money conserved (exit $load_rc)" test "$load_rc" = 0

# ---------------------------------------------------------------------------------------
say "4. An overdraft: accepted by the ingest, rejected by the projector"
show "ledger open demo-bob --wait"
ledger open demo-bob --wait
show "ledger withdraw demo-bob 500 --command-id demo-overdraft-1 --wait"
rc=0
ledger withdraw demo-bob 500 --command-id demo-overdraft-1 --wait || rc=$?
note "(exit $rc: accepted into the log, then rejected by the rules)"
show "ledger status demo-overdraft-1"
status=$(ledger --json status demo-overdraft-1)
ledger status demo-overdraft-1
check "the overdraft was rejected for insufficient funds" test "$(json 'd["reason"]' <<<"$status")" = insufficient_funds
check "the withdraw --wait exited 1 (rejected)" test "$rc" = 1
check "demo-bob's balance is still 0" test "$(ledger --json balance demo-bob | json 'd["balance"]')" = 0

# ---------------------------------------------------------------------------------------
say "5. A transfer across two partitions: no dual write, the log carries the credit"
show "ledger open demo-carol --wait; ledger deposit demo-carol 1000 --wait"
carol_p=$(ledger --json open demo-carol | json 'd["partition"]')
ledger deposit demo-carol 1000 --wait >/dev/null
# A destination in another partition than carol's: the 202 of each open says where it went.
dest= dest_p=
for name in demo-dave demo-erin demo-frank demo-grace demo-heidi demo-ivan demo-judy demo-mallory; do
  p=$(ledger --json open "$name" | json 'd["partition"]')
  if [[ "$p" != "$carol_p" ]]; then dest=$name dest_p=$p; break; fi
done
note "demo-carol lives in partition $carol_p, $dest in partition $dest_p"
show "ledger --json transfer demo-carol $dest 300 --command-id demo-transfer-1"
accepted=$(ledger --json transfer demo-carol "$dest" 300 --command-id demo-transfer-1)
echo "$accepted" | sed 's/^/   /'
token=$(json 'd["token"]' <<<"$accepted")
debited=$(curl -sS "$P/v1/accounts/demo-carol?after=$token")
first=$(curl -sS "$P/v1/commands/demo-transfer-1?account_id=demo-carol")
note "carol, read with the transfer's token:   $debited"
note "the transfer right then:                 status $(json 'd["status"]' <<<"$first")"
note "(the debit and the credit are two events in two partitions: the projector wrote the credit"
note " to the log, keyed by $dest, before it stored the debit; nothing wrote both at once)"
deadline=$(( $(date +%s) + 30 ))
while :; do
  settled=$(curl -sS "$P/v1/commands/demo-transfer-1?account_id=demo-carol")
  [[ "$(json 'd["status"]' <<<"$settled")" != pending ]] && break
  (( $(date +%s) < deadline )) || break
  sleep 0.05
done
settled_token=$(json 'd["transfer"]["settled_token"]' <<<"$settled")
credited=$(curl -sS "$P/v1/accounts/$dest?after=$settled_token")
note "the transfer, settled:                   $settled"
note "$dest, read with the settlement's token: $credited"
check "carol was debited (700 with the transfer's token)" test "$(json 'd["balance"]' <<<"$debited")" = 700
check "the transfer was applied" test "$(json 'd["status"]' <<<"$settled")" = applied
check "it settled in $dest's partition, not carol's" test "$(json 'd["transfer"]["settled_at"]["partition"]' <<<"$settled")" = "$dest_p"
check "$dest was credited (300 with the settlement's token)" test "$(json 'd["balance"]' <<<"$credited")" = 300
show "ledger transfer demo-carol demo-nobody 100 --command-id demo-transfer-2 --wait"
rc=0
out=$(ledger transfer demo-carol demo-nobody 100 --command-id demo-transfer-2 --wait) || rc=$?
echo "$out" | sed 's/^/   /'
refund=$(ledger --json status demo-transfer-2)
check "a transfer to an account never opened is refunded (exit $rc)" test "$(json 'd["status"] + ":" + d["reason"]' <<<"$refund")" = refunded:destination_not_open
check "carol has her 100 back (700)" test "$(ledger --json balance demo-carol | json 'd["balance"]')" = 700
show "ledger totals"
ledger totals | sed 's/^/   /'
check "the group's money is conserved, nothing in flight" test "$(ledger --json totals | json 'str(d["conserved"] and d["pending_transfers_sum"] == 0)')" = True

# ---------------------------------------------------------------------------------------
say "6. The log is the record, and any service can listen: ledger tail"
show "ledger tail --from-beginning | grep demo-bob"
ledger tail --brokers "$BROKERS" --topic "$TOPIC" --from-beginning >"$WORK/tail.jsonl"
grep '"account_id":"demo-bob"' "$WORK/tail.jsonl" | sed 's/^/   /' || true
note "($(wc -l <"$WORK/tail.jsonl") events in the log; each also carries CloudEvents headers"
note " such as ce_type, so a consumer in any language can filter without decoding)"
bob_events=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(" ".join(r.get("type", "?") + ":" + r.get("command_id", "?") for r in rows if r.get("account_id") == "demo-bob"))
' "$WORK/tail.jsonl")
bob_in_order() { [[ "$bob_events" == ledger.account_opened.v1:*" ledger.withdrawn.v1:demo-overdraft-1" ]]; }
check "the log holds demo-bob's open, then the overdraft the projector rejected" bob_in_order

# ---------------------------------------------------------------------------------------
say "7. A verified rebuild: a fresh store from offset 0 beside the live one, swapped in only if they agree"
show "ledger admin rebuild --wait"
rc=0
ledger admin rebuild --wait 2>&1 | sed 's/^/   /' || rc=$?
rebuilt=$(ledger --json admin rebuild --status)
note "$(json '"%s: %d events replayed, %d partitions compared" % (d["phase"], d["events_replayed"], len(d["partitions"]))' <<<"$rebuilt")"
check "the rebuilt store agreed with the live one, digest by digest, and was swapped in" test "$(json 'd["phase"]' <<<"$rebuilt")" = swapped
check "and it serves the same balances (carol 700)" test "$(ledger --json balance demo-carol | json 'd["balance"]')" = 700

# ---------------------------------------------------------------------------------------
say "Summary"
note "$((CHECKS - FAILED)) of $CHECKS checks passed in $(( $(date +%s) - START )) s after the build"
note "the ingest wrote each command once, to Kafka; the projector caught up after a pause and"
note "after a SIGKILL, a transfer crossed partitions through the log with its money conserved,"
note "a rebuild from the log proved itself against the live store before it took over,"
note "and consistency tokens made the eventual consistency visible and bounded."
(( FAILED == 0 ))
