#!/usr/bin/env bash
# bench.sh - the benchmarks, side by side with raw Kafka in the same run.
#
# Usage: scripts/bench.sh [--quick]
#
# Builds the release binaries, uses (or starts) a real local broker on its own port,
# warms it up (a fresh JVM broker is slow until its JIT catches up), and measures,
# each against a fresh topic:
#   1. raw Kafka produce: org.apache.kafka.tools.ProducerPerformance, records of the
#      size of an encoded event, with the ingest's durability and batching settings:
#      acks=all, idempotent, lz4, and batch.size=1000000 (librdkafka's default, which
#      the ingest runs with; the Java client's own default is 16 KiB). It keeps
#      linger.ms=5, the default and its best: the ingest's 2 ms (every request waits
#      for its ack) measured 427k/s here against 736k/s, a lower limit line than
#      Kafka's own;
#   2. the ingest: single commands at 64 keep-alive connections (throughput, p50/p99),
#      then batches of 1000 (items per second), with the load generator's CPU share;
#   3. raw Kafka consume: org.apache.kafka.tools.ConsumerPerformance over a topic
#      filled with N events (2 000 000; --quick 300 000) over 10 000 accounts;
#   4. replay: a fresh projector over that same topic, from process start until all is
#      applied: events/s, peak RSS, size of the sled directory; then again with
#      PROJECTOR_WORKERS=1 (a fresh directory and group), so the scaling shows;
#   4b. the Kafka Streams peer (bench/kstreams, built here with Maven): the same rules as
#      a Kafka Streams 4.1.1 application (processor API, persistent RocksDB stores with
#      changelogs, 2 stream threads, a 512 MB heap) over that same topic, timed from JVM
#      start until its group's committed offsets reach the topic's end: with
#      exactly_once_v2, then with at_least_once. Its stores must end where the domain's
#      own Model ends over the fill's events, or the run fails;
#   5. end-to-end visibility lag at 5000 commands/s offered for 30 s (--quick 10 s);
#   6. the store's ceiling, no Kafka: the same number of replay events through the
#      projector's own Store::apply_batch, then the same keys as plain sled inserts;
#   7. the ingest's recovery: single commands on 8 connections, the broker frozen
#      (SIGSTOP) for 8 s, past the 5 s delivery timeout, then thawed: seconds to the
#      first 202, and to the first whole second of nothing but 202s.
# Needs Java 17 and Maven (as scripts/kafka-local.sh does).
# Writes target/bench/summary.json (plus every step's JSON and the services' logs in
# target/bench/) and prints a table; then target/bench/report.html, one self-contained
# page (inline SVG) with the pictures: the end-to-end lag's distribution and its
# percentiles per second, the replay rate over time of the projector (both worker
# counts) and the Kafka Streams peer against raw Kafka's consume rate, memory over time,
# and the table. `target/release/ledger-bench report --dir target/bench` makes the page
# again from a run's JSON, without running anything.
#
# Not part of the tests. It never touches the dev (9092) or test (19092) brokers.
#
# Environment:
#   BENCH_KAFKA_PORT   broker port (default 19192; controller on PORT+1). A broker
#                      already running there (started by scripts/kafka-local.sh) is
#                      used and left running; otherwise one is started and stopped.
#   BENCH_OUT          output folder (default target/bench)
#
# Every process it starts is stopped by pid on exit, also on failure or Ctrl-C, and
# the topics it created are deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

MODE=full
case "${1:-}" in
--quick) MODE=quick ;;
"") ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: scripts/bench.sh [--quick]" >&2
    exit 2
    ;;
esac

if [[ "$MODE" == quick ]]; then
    RAW_RECORDS=1000000
    WARMUP_EVENTS=200000
    REPLAY_EVENTS=300000
    HTTP_WARMUP_S=2
    HTTP_S=10
    E2E_WARMUP_S=2
    E2E_S=10
else
    RAW_RECORDS=5000000
    WARMUP_EVENTS=500000
    REPLAY_EVENTS=2000000
    HTTP_WARMUP_S=3
    HTTP_S=30
    E2E_WARMUP_S=3
    E2E_S=30
fi
readonly ACCOUNTS=10000 PARTITIONS=6 E2E_RATE=5000

PORT="${BENCH_KAFKA_PORT:-19192}"
if [[ "$PORT" == 9092 || "$PORT" == 19092 ]]; then
    echo "bench: BENCH_KAFKA_PORT=$PORT is the dev or test broker's port; use another" >&2
    exit 2
fi
BROKERS="127.0.0.1:$PORT"
OUT="${BENCH_OUT:-$ROOT/target/bench}"
[[ "$OUT" == /* ]] || OUT="$ROOT/$OUT"
RUN="$(date +%Y%m%d-%H%M%S)-$$"
STEPS="$OUT/steps"
LOGS="$OUT/logs"
TMP="$OUT/tmp-$RUN"
BIN="$ROOT/target/release"
BENCH="$BIN/ledger-bench"
KSTREAMS="$ROOT/bench/kstreams"
KSTREAMS_CP="$KSTREAMS/target/ledger-kstreams-peer-1.jar:$KSTREAMS/target/lib/*"
KAFKA_STATE="$ROOT/.kafka-local"

T_WARMUP="bench.$RUN.warmup"
T_RAW="bench.$RUN.raw"
T_INGEST="bench.$RUN.ingest"
T_REPLAY="bench.$RUN.replay"
T_E2E="bench.$RUN.e2e"

step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }

STARTED_BROKER=0
TOPICS=()
declare -A PIDS=() # pid -> name, of the services this script started and has not stopped

# SIGTERM, then SIGKILL after $2 seconds (default 20); reaps the child.
stop_pid() {
    local pid="$1" grace="${2:-20}" i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            note "pid $pid (${PIDS[$pid]:-?}) still running after ${grace}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$pid]"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    # The recovery step freezes the broker; never leave it frozen.
    if [[ -n "${BROKER_PID:-}" ]]; then
        kill -CONT "$BROKER_PID" 2>/dev/null || true
    fi
    for pid in "${!PIDS[@]}"; do
        stop_pid "$pid" 10
    done
    # The projector ledger-bench spawns for the replay and the peer it runs (it stops
    # them itself; this is for the case where ledger-bench died first).
    if [[ -f "$TMP/replay.pid" ]]; then
        pid="$(cat "$TMP/replay.pid")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
            grep -q projector "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if [[ -f "$TMP/peer.pid" ]]; then
        pid="$(cat "$TMP/peer.pid")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
            grep -q KStreamsPeer "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if ((${#TOPICS[@]} > 0)) && [[ -x "$BENCH" ]]; then
        "$BENCH" delete-topics --brokers "$BROKERS" "${TOPICS[@]}" >/dev/null 2>&1 ||
            note "could not delete the run's topics: ${TOPICS[*]}"
    fi
    rm -rf "$TMP"
    if ((STARTED_BROKER)); then
        step "stopping the broker this script started"
        KAFKA_PORT="$PORT" scripts/kafka-local.sh stop || true
    fi
    if ((rc != 0)); then
        echo "bench: failed (exit $rc); logs in $LOGS" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a service in the background, output to $LOGS/$1.log; sets LAST_PID.
start_service() {
    local name="$1"
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS[$LAST_PID]="$name"
}

kafka_java() {
    java -Xmx512m -Dlog4j2.configurationFile="file:$KAFKA_STATE/tools-log4j2.properties" \
        -cp "$KAFKA_STATE/lib/*" "$@"
}

rm -rf "$STEPS" "$LOGS" "$OUT/summary.json" "$OUT/report.html"
mkdir -p "$STEPS" "$LOGS" "$TMP"
BEGIN=$SECONDS

step "building release binaries"
cargo build --release --locked -p command-ingest -p projector -p ledger-bench

step "building the Kafka Streams peer (bench/kstreams)"
# lib/ anew, so a jar of an older dependency version never stays on the class path.
rm -rf "$KSTREAMS/target/lib"
if ! mvn -B -q -f "$KSTREAMS/pom.xml" package dependency:copy-dependencies \
    >"$LOGS/kstreams-mvn.log" 2>&1; then
    tail -n 50 "$LOGS/kstreams-mvn.log" >&2 || true
    echo "bench: building bench/kstreams failed (full output: $LOGS/kstreams-mvn.log)" >&2
    exit 1
fi

"$BENCH" machine-info >"$STEPS/machine.json"
python3 - "$STEPS/machine.json" <<'PY' >&2
import json, sys
m = json.load(open(sys.argv[1]))
print(f"    machine: {m['cores']} cores, {m['cpu_model']}, load average {m['loadavg']}")
if float(m["loadavg"].split()[0]) > 0.5 * m["cores"]:
    print("    warning: the machine is already busy; every number below competes with that load"
          " (each step reports other_cpu_cores)")
PY

step "broker on $BROKERS"
if KAFKA_PORT="$PORT" scripts/kafka-local.sh status >/dev/null 2>&1; then
    note "using the broker already running on $BROKERS (left running)"
else
    STARTED_BROKER=1
    KAFKA_PORT="$PORT" scripts/kafka-local.sh start >/dev/null
fi
BROKER_PID="$(cat "$KAFKA_STATE/broker-$PORT.pid")"

step "warming up the broker: $WARMUP_EVENTS events to a throwaway topic"
# A freshly started JVM broker runs interpreted until its JIT catches up: without this,
# whichever step comes first (the raw baseline) would measure the warm-up.
TOPICS+=("$T_WARMUP")
"$BENCH" fill --brokers "$BROKERS" --topic "$T_WARMUP" --partitions "$PARTITIONS" \
    --events "$WARMUP_EVENTS" --accounts "$ACCOUNTS" >"$STEPS/warmup.json"

step "event size"
"$BENCH" event-size >"$STEPS/event_size.json"
SIZE="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_size_bytes"])' "$STEPS/event_size.json")"
note "a typical encoded event is $SIZE bytes"

step "Kafka Streams peer self-test: its decoder against the encoder's test vector, its rules against the domain's examples"
VECTOR="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["test_vector_hex"])' "$STEPS/event_size.json")"
java -cp "$KSTREAMS_CP" local.ledger.kstreams.KStreamsPeer --self-test --vector "$VECTOR" >&2

step "raw Kafka produce: ProducerPerformance, $RAW_RECORDS records of $SIZE bytes (acks=all, idempotent, linger.ms=5, lz4, batch.size=1000000)"
TOPICS+=("$T_RAW")
"$BENCH" create-topic --brokers "$BROKERS" --topic "$T_RAW" --partitions "$PARTITIONS" >/dev/null
kafka_java org.apache.kafka.tools.ProducerPerformance --topic "$T_RAW" \
    --num-records "$RAW_RECORDS" --record-size "$SIZE" --throughput -1 \
    --producer-props bootstrap.servers="$BROKERS" acks=all enable.idempotence=true \
    linger.ms=5 compression.type=lz4 batch.size=1000000 client.id=bench-raw-produce \
    >"$LOGS/producer-perf.log" 2>&1
python3 - "$LOGS/producer-perf.log" >"$STEPS/raw_produce.json" <<'PY'
import json, re, sys
lines = [l for l in open(sys.argv[1]) if "records sent" in l and "50th" in l]
if not lines:
    sys.exit("ProducerPerformance printed no summary; see " + sys.argv[1])
l = lines[-1]
num = lambda pat: float(re.search(pat, l).group(1))
print(json.dumps({
    "records": int(num(r"^(\d+) records sent")),
    "records_per_s": num(r"([\d.]+) records/sec"),
    "mb_per_s": num(r"\(([\d.]+) MB/sec\)"),
    "avg_latency_ms": num(r"([\d.]+) ms avg latency"),
    "p50_ms": num(r"(\d+) ms 50th"),
    "p99_ms": num(r"(\d+) ms 99th"),
    "max_latency_ms": num(r"([\d.]+) ms max latency"),
    "line": l.strip(),
}, indent=2))
PY
note "$(tail -n 1 "$LOGS/producer-perf.log")"

step "ingest: single commands, 64 connections, ${HTTP_S}s (+${HTTP_WARMUP_S}s warm-up)"
TOPICS+=("$T_INGEST")
INGEST_PORT="$("$BENCH" free-port)"
start_service ingest "$BIN/command-ingest" --brokers "$BROKERS" --topic "$T_INGEST" \
    --partitions "$PARTITIONS" --listen "127.0.0.1:$INGEST_PORT"
INGEST_PID=$LAST_PID
"$BENCH" wait-ready "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null
"$BENCH" http-single --url "http://127.0.0.1:$INGEST_PORT" --connections 64 \
    --warmup-s "$HTTP_WARMUP_S" --duration-s "$HTTP_S" --accounts "$ACCOUNTS" \
    --watch "ingest=$INGEST_PID" --watch "broker=$BROKER_PID" >"$STEPS/http_single.json"

step "ingest: batches of 1000, 8 connections, ${HTTP_S}s (+${HTTP_WARMUP_S}s warm-up)"
"$BENCH" http-batch --url "http://127.0.0.1:$INGEST_PORT" --connections 8 --batch-size 1000 \
    --warmup-s "$HTTP_WARMUP_S" --duration-s "$HTTP_S" --accounts "$ACCOUNTS" \
    --watch "ingest=$INGEST_PID" --watch "broker=$BROKER_PID" >"$STEPS/http_batch.json"
step "ingest recovery: the broker frozen for 8 s under single commands, then thawed"
"$BENCH" recovery --url "http://127.0.0.1:$INGEST_PORT" --broker-pid "$BROKER_PID" \
    --freeze-s 8 --connections 8 --accounts "$ACCOUNTS" >"$STEPS/recovery.json"
INGEST_HWM_KB="$(awk '/^VmHWM/ {print $2}' "/proc/$INGEST_PID/status" 2>/dev/null || echo 0)"
echo "{\"ingest_peak_rss_mb\": $((INGEST_HWM_KB / 1024))}" >"$STEPS/ingest_rss.json"
stop_pid "$INGEST_PID"

step "filling $T_REPLAY with $REPLAY_EVENTS events over $ACCOUNTS accounts"
TOPICS+=("$T_REPLAY" "$T_REPLAY.dlq")
"$BENCH" fill --brokers "$BROKERS" --topic "$T_REPLAY" --partitions "$PARTITIONS" \
    --events "$REPLAY_EVENTS" --accounts "$ACCOUNTS" >"$STEPS/fill.json"

step "raw Kafka consume: ConsumerPerformance over $T_REPLAY"
kafka_java org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$BROKERS" \
    --topic "$T_REPLAY" --messages "$REPLAY_EVENTS" --group "bench-consumer-perf-$RUN" \
    --timeout 60000 >"$LOGS/consumer-perf.log" 2>&1
python3 - "$LOGS/consumer-perf.log" "$REPLAY_EVENTS" >"$STEPS/raw_consume.json" <<'PY'
import json, sys
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
header = next(i for i, l in enumerate(lines) if l.startswith("start.time"))
keys = [k.strip() for k in lines[header].split(",")]
vals = [v.strip() for v in lines[header + 1].split(",")]
row = dict(zip(keys, vals))
n = int(row["data.consumed.in.nMsg"])
if n < int(sys.argv[2]):
    sys.exit(f"ConsumerPerformance read {n} of {sys.argv[2]} messages; see {sys.argv[1]}")
print(json.dumps({
    "messages": n,
    "records_per_s": float(row["nMsg.sec"]),
    "fetch_records_per_s": float(row["fetch.nMsg.sec"]),
    "mb_per_s": float(row["MB.sec"]),
    "rebalance_ms": float(row["rebalance.time.ms"]),
    "fetch_ms": float(row["fetch.time.ms"]),
    "row": row,
}, indent=2))
PY

step "replay: a fresh projector over $T_REPLAY"
# With the projector's default worker count, whatever the caller's environment says.
env -u PROJECTOR_WORKERS "$BENCH" replay --projector-bin "$BIN/projector" --brokers "$BROKERS" \
    --topic "$T_REPLAY" --data-dir "$TMP/replay-data" --group-id "bench-replay-$RUN" \
    --log-file "$LOGS/projector-replay.log" --pid-file "$TMP/replay.pid" \
    --expect-events "$REPLAY_EVENTS" --watch "broker=$BROKER_PID" >"$STEPS/replay.json"

step "replay with one worker: a fresh projector over $T_REPLAY, PROJECTOR_WORKERS=1"
PROJECTOR_WORKERS=1 "$BENCH" replay --projector-bin "$BIN/projector" --brokers "$BROKERS" \
    --topic "$T_REPLAY" --data-dir "$TMP/replay-data-1-worker" --group-id "bench-replay-1w-$RUN" \
    --log-file "$LOGS/projector-replay-1-worker.log" --pid-file "$TMP/replay.pid" \
    --expect-events "$REPLAY_EVENTS" --watch "broker=$BROKER_PID" >"$STEPS/replay_1_worker.json"

# The Kafka Streams peer over $T_REPLAY with guarantee $1, into $STEPS/kstreams_$2.json;
# fails unless its stores end where the domain's Model ends over the fill's events.
kstreams_peer() {
    local guarantee="$1" name="$2" app="bench-kstreams-$2-$RUN"
    # Its changelog topics, deleted with the run's other topics.
    TOPICS+=("$app-accounts-changelog" "$app-commands-changelog")
    # --brokers, --group, --topic: its progress over time, for the report.
    "$BENCH" peer --log-file "$LOGS/kstreams-$name.log" --pid-file "$TMP/peer.pid" \
        --timeout-s 900 --watch "broker=$BROKER_PID" \
        --brokers "$BROKERS" --group "$app" --topic "$T_REPLAY" -- \
        java -Xmx512m -cp "$KSTREAMS_CP" local.ledger.kstreams.KStreamsPeer \
        --brokers "$BROKERS" --topic "$T_REPLAY" --application-id "$app" \
        --state-dir "$TMP/kstreams-$name" --guarantee "$guarantee" --threads 2 \
        --expect-events "$REPLAY_EVENTS" --deadline-s 600 >"$STEPS/kstreams_$name.json"
    python3 - "$STEPS/fill.json" "$STEPS/kstreams_$name.json" <<'PY' >&2
import json, sys
want = json.load(open(sys.argv[1]))["expected"]
peer = json.load(open(sys.argv[2]))
got = peer["state"]
diffs = [f"{k}: peer {got.get(k)}, rules {want[k]}"
         for k in ("accounts", "accounts_open", "balance_sum", "applied_events", "commands") if got.get(k) != want[k]]
recorded = {k: v for k, v in want["outcomes"].items() if k != "duplicate"}
if got.get("commands_by_outcome") != recorded:
    diffs.append(f"outcomes: peer {got.get('commands_by_outcome')}, rules {recorded}")
if diffs:
    sys.exit("bench: the Kafka Streams peer's stores differ from the rules' result:\n  " + "\n  ".join(diffs))
print(f"    {peer['events']:,} events in {peer['seconds']} s from JVM start: {peer['per_s']:,}/s, "
      f"peak RSS {peer['peak_rss_mb']:.0f} MB; its stores match the rules "
      f"({got['applied_events']:,} applied, balances summing to {got['balance_sum']:,})")
PY
}

step "Kafka Streams peer over $T_REPLAY: exactly_once_v2"
kstreams_peer exactly_once_v2 eos

step "Kafka Streams peer over $T_REPLAY: at_least_once"
kstreams_peer at_least_once alos

step "end-to-end visibility lag at $E2E_RATE commands/s for ${E2E_S}s (+${E2E_WARMUP_S}s warm-up)"
TOPICS+=("$T_E2E" "$T_E2E.dlq")
INGEST_PORT="$("$BENCH" free-port)"
start_service ingest-e2e "$BIN/command-ingest" --brokers "$BROKERS" --topic "$T_E2E" \
    --partitions "$PARTITIONS" --listen "127.0.0.1:$INGEST_PORT"
INGEST_PID=$LAST_PID
"$BENCH" wait-ready "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null
PROJECTOR_PORT="$("$BENCH" free-port)"
start_service projector-e2e "$BIN/projector" --brokers "$BROKERS" --topic "$T_E2E" \
    --data-dir "$TMP/e2e-data" --group-id "bench-e2e-$RUN" --listen "127.0.0.1:$PROJECTOR_PORT"
PROJECTOR_PID=$LAST_PID
"$BENCH" wait-ready "http://127.0.0.1:$PROJECTOR_PORT/readyz" >/dev/null
"$BENCH" e2e-lag --ingest-url "http://127.0.0.1:$INGEST_PORT" \
    --projector-url "http://127.0.0.1:$PROJECTOR_PORT" --rate "$E2E_RATE" \
    --warmup-s "$E2E_WARMUP_S" --duration-s "$E2E_S" \
    --watch "ingest=$INGEST_PID" --watch "projector=$PROJECTOR_PID" \
    --watch "broker=$BROKER_PID" >"$STEPS/e2e.json"
stop_pid "$PROJECTOR_PID"
stop_pid "$INGEST_PID"

step "the store's ceiling, no Kafka: $REPLAY_EVENTS events through Store::apply_batch, then as plain sled inserts"
"$BENCH" store-ceiling --dir "$TMP/store-ceiling" --events "$REPLAY_EVENTS" \
    --accounts "$ACCOUNTS" >"$STEPS/store_ceiling.json"

"$BENCH" machine-info >"$STEPS/machine_end.json"
ELAPSED=$((SECONDS - BEGIN))

step "summary"
python3 - "$STEPS" "$OUT/summary.json" "$MODE" "$ELAPSED" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(git status --porcelain 2>/dev/null | head -c1 | wc -c)" <<'PY'
import json, os, sys

steps, out, mode, elapsed, commit, dirty = sys.argv[1:7]
s = {f[:-5]: json.load(open(os.path.join(steps, f))) for f in os.listdir(steps) if f.endswith(".json")}
sg, sb, e2e, rp = s["http_single"], s["http_batch"], s["e2e"], s["replay"]
ks, ksa = s["kstreams_eos"], s["kstreams_alos"]
lag = e2e["lag_202_to_visible"]

def ms_le(v):
    # A Prometheus bucket bound in seconds ("+Inf" past the last one) as ms.
    return None if v is None else (v if isinstance(v, str) else round(v * 1000, 3))

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

summary = {
    "mode": mode,
    "raw_produce_per_s": s["raw_produce"]["records_per_s"],
    "ingest_single_per_s": sg["items_per_s"],
    "ingest_single_p50_ms": sg["latency"].get("p50_ms"),
    "ingest_single_p99_ms": sg["latency"].get("p99_ms"),
    "ingest_batch_per_s": sb["items_per_s"],
    "ingest_batch_request_p99_ms": sb["latency"].get("p99_ms"),
    "raw_consume_per_s": s["raw_consume"]["records_per_s"],
    "raw_consume_fetch_per_s": s["raw_consume"]["fetch_records_per_s"],
    "replay_per_s": rp["replay_per_s"],
    "replay_per_s_1_worker": s["replay_1_worker"]["replay_per_s"],
    "replay_1_worker_peak_rss_mb": s["replay_1_worker"]["peak_rss_mb"],
    "replay_steady_per_s": rp["steady_per_s"],
    "replay_seconds": rp["seconds"],
    "replay_events": rp["events"],
    "replay_peak_rss_mb": rp["peak_rss_mb"],
    "replay_mean_batch_size": rp["batch_size"].get("mean"),
    "replay_apply_flush_share": rp["apply_flush_share_of_wall"],
    "replay_projector_cpu_cores": rp["projector_cpu_cores"],
    "sled_dir_mb": rp["sled_dir_mb"],
    # Bytes on disk per replayed event, after the projector's clean stop.
    "store_bytes_per_event": round(rp["sled_dir_mb"] * 1e6 / rp["events"], 1) if rp.get("sled_dir_mb") and rp.get("events") else None,
    "peer_kstreams_eos_per_s": ks["per_s"],
    "peer_kstreams_eos_seconds": ks["seconds"],
    "peer_kstreams_eos_per_s_from_running": ks["per_s_from_running"],
    "peer_kstreams_peak_rss_mb": ks["peak_rss_mb"],
    "peer_kstreams_eos_cpu_cores": ks["cpu"]["cpu_cores_peer"],
    "peer_kstreams_state_dir_mb": ks["state_dir_mb"],
    "peer_kstreams_alos_per_s": ksa["per_s"],
    "peer_kstreams_alos_peak_rss_mb": ksa["peak_rss_mb"],
    "store_apply_per_s": s["store_ceiling"]["store_apply_per_s"],
    "sled_plain_insert_per_s": s["store_ceiling"]["sled_plain_insert_per_s"],
    "fill_per_s": s["fill"]["fill_per_s"],
    "e2e_lag_p50_ms": lag.get("p50_ms"),
    "e2e_lag_p99_ms": lag.get("p99_ms"),
    "e2e_lag_max_ms": lag.get("max_ms"),
    "e2e_offered_per_s": e2e["offered_per_s"],
    "e2e_accepted_per_s": e2e["accepted_per_s"],
    "e2e_not_visible": e2e["not_visible_within_wait"] + e2e["refused"] + e2e["query_failed"],
    "e2e_accepted_p99_ms_from_due": e2e["accept_latency_from_due"].get("p99_ms"),
    "e2e_projector_mean_batch_size": e2e["projector_batch_size"].get("mean"),
    "e2e_apply_flush_p99_le_ms": ms_le(e2e["projector_apply_flush_seconds"].get("p99_le")),
    "e2e_apply_flush_max_le_ms": ms_le(e2e["projector_apply_flush_seconds"].get("max_le")),
    "ingest_single_loadgen_cpu_share": sg["cpu"]["loadgen_cpu_share"],
    "ingest_batch_loadgen_cpu_share": sb["cpu"]["loadgen_cpu_share"],
    "e2e_loadgen_cpu_share": e2e["cpu"]["loadgen_cpu_share"],
    "ingest_peak_rss_mb": s["ingest_rss"]["ingest_peak_rss_mb"],
    "event_size_bytes": s["event_size"]["event_size_bytes"],
    "ingest_recovery_s": s["recovery"]["ingest_recovery_s"],
    "ingest_recovery_all_ok_s": s["recovery"]["ingest_recovery_all_ok_s"],
}
summary["loadgen_cpu_share"] = max(summary[k] for k in
    ("ingest_single_loadgen_cpu_share", "ingest_batch_loadgen_cpu_share", "e2e_loadgen_cpu_share"))
summary["ingest_batch_vs_raw"] = ratio(summary["ingest_batch_per_s"], summary["raw_produce_per_s"])
summary["replay_vs_raw_consume"] = ratio(summary["replay_per_s"], summary["raw_consume_per_s"])
summary["replay_vs_kstreams_eos"] = ratio(summary["replay_per_s"], summary["peer_kstreams_eos_per_s"])
summary["store_apply_vs_raw_consume"] = ratio(summary["store_apply_per_s"], summary["raw_consume_per_s"])
summary["sled_plain_vs_raw_consume"] = ratio(summary["sled_plain_insert_per_s"], summary["raw_consume_per_s"])
targets = {
    "ingest_batch_vs_raw": (">=", 0.9),
    "ingest_single_p99_ms": ("<=", 10),
    "ingest_recovery_s": ("<=", 15),
    "replay_vs_raw_consume": (">=", 0.5),
    "e2e_lag_p99_ms": ("<=", 20),
    "replay_projector_cpu_cores": (">=", 1.7),
    "store_bytes_per_event": ("<=", 64),
    "replay_peak_rss_mb": ("<=", 256),
    "replay_vs_kstreams_eos": (">=", 2.0),
}
summary["targets"] = {
    k: {"target": f"{op} {v}", "value": summary[k],
        "met": summary[k] is not None and (summary[k] >= v if op == ">=" else summary[k] <= v)}
    for k, (op, v) in targets.items()
}
summary["machine"] = s["machine"]
summary["machine"]["loadavg_at_end"] = s["machine_end"]["loadavg"]
summary["run_seconds"] = int(elapsed)
summary["git_commit"] = commit + ("-dirty" if dirty != "0" else "")
summary["steps"] = {k: v for k, v in s.items() if k not in ("machine", "machine_end")}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 1000 or isinstance(v, int):
        v = f"{v:,.0f}"
    elif isinstance(v, float):
        v = f"{v:.3g}" if v < 10 else f"{v:.1f}"
    return f"{v}{unit}"

def cpu(step):
    c = step["cpu"]
    parts = [f"loadgen {c['loadgen_cpu_cores']:.2f}"]
    parts += [f"{k[10:]} {v:.2f}" for k, v in c.items() if k.startswith("cpu_cores_") and v is not None]
    if "other_cpu_cores" in c:
        parts.append(f"other {c['other_cpu_cores']:.2f}")
    return "cores: " + ", ".join(parts)

rows = [
    ("Raw Kafka", None, None, None),
    ("raw_produce_per_s", fmt(summary["raw_produce_per_s"], "/s"), "", f"ProducerPerformance, {summary['event_size_bytes']} B records, acks=all, idempotent, linger 5 ms, lz4, batch.size 1 MB"),
    ("raw_consume_per_s", fmt(summary["raw_consume_per_s"], "/s"), "", f"ConsumerPerformance, same topic as replay (fetch-only {fmt(summary['raw_consume_fetch_per_s'], '/s')})"),
    ("Ingest", None, None, None),
    ("ingest_single_per_s", fmt(summary["ingest_single_per_s"], "/s"), "", "64 keep-alive connections; " + cpu(sg)),
    ("ingest_single_p50_ms", fmt(summary["ingest_single_p50_ms"], " ms"), "", ""),
    ("ingest_single_p99_ms", fmt(summary["ingest_single_p99_ms"], " ms"), "<= 10", ""),
    ("ingest_batch_per_s", fmt(summary["ingest_batch_per_s"], "/s"), "", "batches of 1000, 8 connections; " + cpu(sb)),
    ("ingest_batch_vs_raw", fmt(summary["ingest_batch_vs_raw"]), ">= 0.9", ""),
    ("ingest_recovery_s", fmt(summary["ingest_recovery_s"], " s"), "<= 15", f"broker frozen 8 s, thawed -> first 202; all 202 for a whole second after {fmt(summary['ingest_recovery_all_ok_s'], ' s')}"),
    ("loadgen_cpu_share", fmt(summary["loadgen_cpu_share"]), "", "worst of the HTTP steps, share of all cores"),
    ("Projector replay", None, None, None),
    ("replay_per_s", fmt(summary["replay_per_s"], "/s"), "", f"{summary['replay_events']:,} events in {summary['replay_seconds']} s from process start (steady {fmt(summary['replay_steady_per_s'], '/s')})"),
    ("replay_vs_raw_consume", fmt(summary["replay_vs_raw_consume"]), ">= 0.5", ""),
    ("replay_per_s_1_worker", fmt(summary["replay_per_s_1_worker"], "/s"), "", f"the same with PROJECTOR_WORKERS=1 (peak RSS {fmt(summary['replay_1_worker_peak_rss_mb'], ' MB')})"),
    ("replay_peak_rss_mb", fmt(summary["replay_peak_rss_mb"], " MB"), "<= 256", "VmHWM"),
    ("sled_dir_mb", fmt(summary["sled_dir_mb"], " MB"), "", "du of the data directory after stop"),
    ("replay batches", fmt(summary["replay_mean_batch_size"]), "", f"mean events per batch; apply+flush {fmt(summary['replay_apply_flush_share'])} of wall time; projector {fmt(summary['replay_projector_cpu_cores'])} cores"),
    ("store alone (no Kafka)", fmt(summary["store_apply_per_s"], "/s"), "", f"Store::apply_batch, same events, batches of 5000: {fmt(summary['store_apply_vs_raw_consume'])} of raw consume"),
    ("sled plain inserts", fmt(summary["sled_plain_insert_per_s"], "/s"), "", f"same keys, no transaction (the floor of any sled layout): {fmt(summary['sled_plain_vs_raw_consume'])} of raw consume"),
    ("Kafka Streams peer", None, None, None),
    ("peer_kstreams_eos_per_s", fmt(summary["peer_kstreams_eos_per_s"], "/s"), "", f"exactly_once_v2, 2 threads, RocksDB: {summary['peer_kstreams_eos_seconds']} s from JVM start ({fmt(summary['peer_kstreams_eos_per_s_from_running'], '/s')} from RUNNING); {fmt(summary['peer_kstreams_eos_cpu_cores'])} cores"),
    ("replay_vs_kstreams_eos", fmt(summary["replay_vs_kstreams_eos"]), ">= 2.0", "replay_per_s / peer_kstreams_eos_per_s"),
    ("peer_kstreams_peak_rss_mb", fmt(summary["peer_kstreams_peak_rss_mb"], " MB"), "", f"peak RSS, -Xmx512m; state dir {fmt(summary['peer_kstreams_state_dir_mb'], ' MB')}"),
    ("peer_kstreams_alos_per_s", fmt(summary["peer_kstreams_alos_per_s"], "/s"), "", f"at_least_once, otherwise the same (peak RSS {fmt(summary['peer_kstreams_alos_peak_rss_mb'], ' MB')})"),
    ("End to end", None, None, None),
    ("e2e_lag_p50_ms", fmt(summary["e2e_lag_p50_ms"], " ms"), "", f"202 -> visible, {fmt(summary['e2e_offered_per_s'])}/s offered, {fmt(summary['e2e_accepted_per_s'])}/s accepted"),
    ("e2e_lag_p99_ms", fmt(summary["e2e_lag_p99_ms"], " ms"), "<= 50", ""),
    ("e2e_lag_max_ms", fmt(summary["e2e_lag_max_ms"], " ms"), "", f"not visible/failed: {summary['e2e_not_visible']}; " + cpu(e2e)),
    ("e2e projector", fmt(summary["e2e_projector_mean_batch_size"]), "", f"mean events per batch; apply+flush p99 <= {summary['e2e_apply_flush_p99_le_ms']} ms, max <= {summary['e2e_apply_flush_max_le_ms']} ms; 202 p99 {fmt(summary['e2e_accepted_p99_ms_from_due'], ' ms')} from due time"),
]
# Again with the rows as printed, for the HTML report's table.
summary["table"] = [
    {"section": name} if value is None else
    {"name": name, "value": value, "target": target, "note": note,
     "met": summary["targets"][name]["met"] if name in summary["targets"] else None}
    for name, value, target, note in rows
]
with open(out, "w") as f:
    json.dump(summary, f, indent=2)

w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1] or "") for r in rows)
print()
print(f"ledger bench ({mode}), {summary['machine']['cores']} cores, load average {summary['machine']['loadavg']} -> {summary['machine']['loadavg_at_end']}, {elapsed} s, commit {summary['git_commit']}")
for name, value, target, note in rows:
    if value is None:
        print(f"\n{name}")
        continue
    met = ""
    if name in summary["targets"]:
        met = "ok" if summary["targets"][name]["met"] else "MISSED"
        target = f"{target} {met}"
    print(f"  {name:<{w0}}  {value:>{w1}}  {target:<13} {note}")
print(f"\nwritten: {out}")
PY
"$BENCH" report --dir "$OUT" --out "$OUT/report.html" >/dev/null
echo "written: $OUT/report.html"
