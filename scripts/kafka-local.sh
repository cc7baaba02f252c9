#!/usr/bin/env bash
# kafka-local.sh - a real single-node Apache Kafka 4.1.1 broker for tests and CI.
#
# Runs Kafka in KRaft combined mode (broker + controller in one JVM, node.id=1)
# on the machine's Java 17+, listening on 127.0.0.1 only. No Docker and no
# tarball: the jars are resolved from Maven Central with Maven, using
# scripts/kafka/pom.xml (cached in ~/.m2, copied once into the state folder).
#
# Usage: scripts/kafka-local.sh start|stop|status|reset
#
#   start   fetch the jars if missing (or if the pom changed), write the config,
#           format the storage once, start the broker in the background and
#           wait until it answers a metadata request. Prints the bootstrap
#           address on stdout. Does nothing if our broker already runs.
#   stop    stop the broker this script started (SIGTERM, SIGKILL after 30 s).
#           Succeeds if it is not running.
#   status  exit 0 and print "running pid N on 127.0.0.1:PORT" if our broker
#           runs and answers a metadata request; else print "not running" and
#           exit 1.
#   reset   stop the broker and wipe its data folder (the jars are kept).
#
# Environment:
#   KAFKA_PORT           broker port (default 9092); the controller uses PORT+1
#   KAFKA_LOCAL_DIR      state folder (default <repo>/.kafka-local, git-ignored)
#   KAFKA_START_TIMEOUT  seconds start waits for readiness (default 60)
#   KAFKA_HEAP_OPTS      broker heap (default "-Xms256m -Xmx768m")
#   JAVA_HOME            Java to use (default: java on PATH)
#
# State folder layout (several ports can run side by side):
#   lib/                          jars (lib/.complete marks a finished copy)
#   data-PORT/                    KRaft metadata + topic data
#   broker-PORT.log               broker log (previous run: broker-PORT.log.prev)
#   broker-PORT.pid               pid of the broker JVM
#   server-PORT.properties        generated broker config
#   log4j2-PORT.properties        generated broker logging config
#   tools-log4j2.properties       logging config for the CLI tools (warn, stderr)
#   client-PORT.properties        short timeouts for the readiness/status check
#
# Exit codes: 0 ok; 1 failure, or "not running" for status; 2 usage error.
set -euo pipefail

readonly KAFKA_VERSION=4.1.1
readonly HOST=127.0.0.1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly POM="$ROOT/scripts/kafka/pom.xml"

PORT="${KAFKA_PORT:-9092}"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65534)); then
    echo "kafka-local: KAFKA_PORT must be a number between 1 and 65534, got '$PORT'" >&2
    exit 2
fi
readonly PORT
readonly CONTROLLER_PORT=$((PORT + 1))
readonly BOOTSTRAP="$HOST:$PORT"

STATE="${KAFKA_LOCAL_DIR:-$ROOT/.kafka-local}"
[[ "$STATE" == /* ]] || STATE="$PWD/$STATE"
readonly STATE
readonly LIB="$STATE/lib"
readonly DATA="$STATE/data-$PORT"
readonly LOG="$STATE/broker-$PORT.log"
readonly PIDFILE="$STATE/broker-$PORT.pid"
readonly PROPS="$STATE/server-$PORT.properties"
readonly LOG4J="$STATE/log4j2-$PORT.properties"
readonly TOOLS_LOG4J="$STATE/tools-log4j2.properties"
readonly CLIENT_PROPS="$STATE/client-$PORT.properties"
readonly START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
readonly STOP_TIMEOUT=30

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
else
    JAVA=java
fi
readonly JAVA

log() { echo "kafka-local[$PORT]: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $(basename "$0") start|stop|status|reset

Runs a single-node Apache Kafka $KAFKA_VERSION broker (KRaft, broker+controller)
on $HOST:\${KAFKA_PORT:-9092} (controller on KAFKA_PORT+1) for tests and CI.

  start   fetch jars if needed, format storage once, start, wait until ready
  stop    stop the broker started by this script
  status  exit 0 if it runs and answers, else print "not running", exit 1
  reset   stop and wipe the data folder (jars are kept)

Environment: KAFKA_PORT (9092), KAFKA_LOCAL_DIR (<repo>/.kafka-local),
KAFKA_START_TIMEOUT (60), KAFKA_HEAP_OPTS ("-Xms256m -Xmx768m"), JAVA_HOME.
EOF
}

# --- helpers -----------------------------------------------------------------

# Take an exclusive lock on fd 9 (per port) for the rest of the script, so two
# concurrent start/stop calls for the same port do not race. Optional: flock is
# not available everywhere (macOS).
lock_port() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE/broker-$PORT.lock"
        flock 9
    fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# The command line of pid $1, arguments separated by newlines (empty if gone).
cmdline_of() {
    if [[ -r "/proc/$1/cmdline" ]]; then
        tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null || true
    else
        ps -o command= -p "$1" 2>/dev/null | tr ' ' '\n' || true
    fi
}

# True if pid $1 is a live Java process running kafka.Kafka with our config.
# (A zombie has an empty command line, so it counts as gone.)
is_our_broker() {
    local pid="$1" args
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(cmdline_of "$pid")"
    grep -q 'java' <<<"$args" &&
        grep -qx 'kafka.Kafka' <<<"$args" &&
        grep -qxF "$PROPS" <<<"$args"
}

# True if process $1 exists and is not a zombie.
pid_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [[ -n "$stat" && "$stat" != Z* ]]
}

# Prints the pid of our running broker, or fails.
running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    is_our_broker "$pid" || return 1
    echo "$pid"
}

# Run a Kafka CLI class with the cached jars; tuned for a fast JVM start.
# With KAFKA_TOOL_LIMIT=N set (and coreutils timeout available) it is killed
# after N seconds.
kafka_tool() {
    local cmd=("$JAVA" -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m
        -Dlog4j2.configurationFile="file:$TOOLS_LOG4J" -cp "$LIB/*" "$@")
    if [[ -n "${KAFKA_TOOL_LIMIT:-}" ]] && command -v timeout >/dev/null 2>&1; then
        cmd=(timeout "$KAFKA_TOOL_LIMIT" "${cmd[@]}")
    fi
    "${cmd[@]}"
}

# True if the broker answers a metadata request (Admin listTopics), within
# $1 seconds (default 15; the client timeouts in $CLIENT_PROPS also apply).
broker_answers() {
    KAFKA_TOOL_LIMIT="${1:-15}" kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --command-config "$CLIENT_PROPS" \
        --list >/dev/null 2>&1
}

check_java() {
    local first major minor
    command -v "$JAVA" >/dev/null 2>&1 ||
        die "java not found; install Java 17+ or set JAVA_HOME"
    first="$("$JAVA" -version 2>&1 || true)"
    first="${first%%$'\n'*}"
    major="$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"$first")"
    read -r major minor <<<"$major"
    [[ "$major" == 1 ]] && major="${minor:-0}"
    [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 17)) ||
        die "Kafka $KAFKA_VERSION needs Java 17+, found: $first"
}

# Copy the jars listed by scripts/kafka/pom.xml (and their dependencies) into
# $LIB. Idempotent: lib/.complete holds a checksum of the pom and is written
# only after a successful copy, so an interrupted fetch or a changed pom
# triggers a new one. The copy goes to a temporary folder that replaces lib/.
ensure_jars() {
    local want tmp
    [[ -f "$POM" ]] || die "missing $POM"
    want="$(cksum <"$POM")"
    if [[ -f "$LIB/.complete" && "$(cat "$LIB/.complete")" == "$want" ]]; then
        return 0
    fi
    # One fetch at a time (e.g. two ports started concurrently in CI).
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$STATE/lib.lock"
        flock 8
        if [[ -f "$LIB/.complete" && "$(cat "$LIB/.complete")" == "$want" ]]; then
            exec 8>&-
            return 0
        fi
    fi
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found; Maven is needed once to fetch the Kafka jars"
    log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB (slow the first time: ~55 MB of downloads into ~/.m2) ..."
    tmp="$(mktemp -d "$STATE/lib.tmp.XXXXXX")"
    if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$STATE/mvn.log" 2>&1; then
        tail -n 50 "$STATE/mvn.log" >&2 || true
        rm -rf "$tmp"
        die "Maven could not fetch the jars (full output: $STATE/mvn.log)"
    fi
    if ! compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
        rm -rf "$tmp"
        die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing (see $STATE/mvn.log)"
    fi
    echo "$want" >"$tmp/.complete"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    exec 8>&-
    log "jars ready in $LIB ($(find "$LIB" -name '*.jar' | wc -l | tr -d ' ') jars)"
}

write_configs() {
    cat >"$PROPS" <<EOF
# Generated by scripts/kafka-local.sh - edits are overwritten on start.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
# Short consumer-group (KIP-848) timeouts so tests notice dead members fast.
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=1000
group.consumer.heartbeat.interval.ms=1000
EOF

    cat >"$LOG4J" <<EOF
# Generated by scripts/kafka-local.sh: broker log -> $LOG
status = warn
name = kafka-local
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# quieter: per-request and per-partition state chatter
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel\$
logger.network.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF

    cat >"$TOOLS_LOG4J" <<EOF
# Generated by scripts/kafka-local.sh: CLI tools log warnings to stderr.
status = warn
name = kafka-local-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF

    cat >"$CLIENT_PROPS" <<EOF
# Generated by scripts/kafka-local.sh: short timeouts for readiness checks.
request.timeout.ms=5000
default.api.timeout.ms=8000
socket.connection.setup.timeout.ms=2000
socket.connection.setup.timeout.max.ms=2000
EOF
}

# Format the KRaft storage once (only when there is no meta.properties yet).
format_storage() {
    local cluster_id
    [[ -f "$DATA/meta.properties" ]] && return 0
    mkdir -p "$DATA"
    cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)" ||
        die "could not generate a cluster id"
    log "formatting $DATA (cluster id $cluster_id)"
    # Static quorum (controller.quorum.voters), so no --standalone.
    kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" >&2 ||
        die "formatting the storage in $DATA failed"
}

print_log_tail() {
    log "last 50 lines of $LOG:"
    tail -n 50 "$LOG" >&2 2>/dev/null || true
}

# Ends the process $1 we have just started (start failed).
kill_started() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# --- commands ----------------------------------------------------------------

cmd_start() {
    local pid started=0 answered deadline
    mkdir -p "$STATE"
    lock_port

    if pid="$(running_pid)"; then
        log "already running (pid $pid)"
        echo "$BOOTSTRAP"
        return 0
    fi
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
        die "port $HOST:$PORT is already in use by another process (not a broker started by this script)"
    fi
    if port_open "$CONTROLLER_PORT"; then
        die "controller port $HOST:$CONTROLLER_PORT is already in use by another process"
    fi

    check_java
    ensure_jars
    write_configs
    format_storage

    if [[ -f "$LOG" ]]; then
        mv -f "$LOG" "$LOG.prev"
    fi
    log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $HOST:$CONTROLLER_PORT), log: $LOG"
    # setsid + nohup: the broker survives this script, its terminal and
    # signals sent to our process group. The inner bash writes its own pid
    # (which exec turns into the JVM's) so the pid file is exact. fds 8/9
    # (locks) are closed so the broker does not hold them.
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
    setsid nohup bash -c 'echo $$ >"$1.tmp" && mv -f "$1.tmp" "$1" && shift && exec "$@"' \
        kafka-local "$PIDFILE" \
        "$JAVA" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="file:$LOG4J" \
        -cp "$LIB/*" kafka.Kafka "$PROPS" \
        </dev/null >>"$LOG" 2>&1 8>&- 9>&- &

    # Ready = the broker answers a metadata request (Admin listTopics via
    # TopicCommand) AND its log says "Kafka Server started". The check starts
    # while the broker still boots: its Admin client retries until the
    # listener opens (bounded by default.api.timeout.ms in $CLIENT_PROPS), so
    # the ~1.5 s start-up of the tool's JVM overlaps the broker's.
    deadline=$((SECONDS + START_TIMEOUT))
    pid=""
    answered=0
    while ((SECONDS < deadline)); do
        if [[ -z "$pid" && -s "$PIDFILE" ]]; then
            pid="$(cat "$PIDFILE")"
        fi
        if [[ -n "$pid" ]]; then
            # (pid_alive, not is_our_broker: for a moment the pid is still
            # the bash that is about to exec java.)
            if ! pid_alive "$pid"; then
                print_log_tail
                rm -f "$PIDFILE"
                die "the broker exited during startup"
            fi
            if ((answered == 0)) && broker_answers $((deadline - SECONDS + 1)); then
                answered=1
            fi
            if ((answered == 1)) && grep -q 'Kafka Server started' "$LOG" 2>/dev/null &&
                is_our_broker "$pid"; then
                started=1
                break
            fi
        fi
        sleep 0.2
    done
    if ((started == 0)); then
        print_log_tail
        if [[ -n "$pid" ]]; then
            kill_started "$pid"
        fi
        rm -f "$PIDFILE"
        die "the broker was not ready within ${START_TIMEOUT}s"
    fi
    log "ready: pid $pid, bootstrap $BOOTSTRAP"
    echo "$BOOTSTRAP"
}

# True once process $1 (already checked to be ours) has exited and the broker
# port is closed; waits up to $2 seconds. Checks the pid, not the command
# line: an exiting JVM loses its command line before its threads and
# sockets are gone.
wait_stopped() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        if ! pid_alive "$1" && ! port_open "$PORT"; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

cmd_stop() {
    local pid
    [[ -d "$STATE" ]] || return 0
    lock_port
    if ! pid="$(running_pid)"; then
        if [[ -f "$PIDFILE" ]]; then
            log "removing stale pid file"
        fi
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # in case it was suspended
    if ! wait_stopped "$pid" "$STOP_TIMEOUT"; then
        if pid_alive "$pid"; then
            log "still running after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        if ! wait_stopped "$pid" 15; then
            rm -f "$PIDFILE"
            die "pid $pid or port $HOST:$PORT is still there after SIGKILL"
        fi
    fi
    rm -f "$PIDFILE"
    log "stopped"
}

cmd_status() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "not running"
        return 1
    fi
    if [[ ! -f "$CLIENT_PROPS" || ! -f "$TOOLS_LOG4J" ]] || ! broker_answers; then
        log "pid $pid is alive but $BOOTSTRAP does not answer a metadata request"
        echo "not running"
        return 1
    fi
    echo "running pid $pid on $BOOTSTRAP"
}

cmd_reset() {
    cmd_stop
    if [[ -d "$DATA" ]]; then
        rm -rf "$DATA"
        log "wiped $DATA"
    fi
}

case "${1:-}" in
start | stop | status | reset)
    [[ $# -eq 1 ]] || {
        usage
        exit 2
    }
    "cmd_$1"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage
    exit 2
    ;;
esac
