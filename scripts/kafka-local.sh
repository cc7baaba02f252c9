#!/usr/bin/env bash
# kafka-local.sh - a real local Apache Kafka 4.1.1 broker (or small cluster)
# for tests and CI.
#
# By default (KAFKA_NODES unset or 1) it runs one node in KRaft combined mode
# (broker + controller in one JVM, node.id=1). With KAFKA_NODES=N (2..5) it
# runs N broker-only nodes (node.id 1..N) plus one dedicated controller
# (node.id 0, a one-voter quorum), so tests can SIGKILL brokers while the
# controller stays up, re-elects leaders and shrinks ISRs. Everything listens
# on 127.0.0.1 only, on the machine's Java 17+. No Docker and no tarball: the
# jars are resolved from Maven Central with Maven, using scripts/kafka/pom.xml
# (cached in ~/.m2, copied once into the state folder).
#
# Usage: scripts/kafka-local.sh start|stop|status|reset
#        scripts/kafka-local.sh pid|kill|stop-node|start-node NODE
#
#   start   fetch the jars if missing (or if the pom changed), write the config,
#           format the storage once, start the broker(s) in the background and
#           wait until ready (single: answers a metadata request; cluster: all
#           nodes logged "Kafka Server started" and the cluster lists all N
#           brokers as unfenced). Prints the bootstrap address(es) on stdout.
#           Does nothing if everything already runs (in cluster mode it starts
#           just the nodes that are down).
#   stop    stop what this script started on KAFKA_PORT (cluster: all brokers,
#           then the controller; SIGTERM, SIGKILL after 30 s). Succeeds if it
#           is not running.
#   status  single: exit 0 and print "running pid N on 127.0.0.1:PORT" if our
#           broker runs and answers a metadata request; else print "not
#           running" and exit 1. Cluster: one line per node, then "running
#           BOOTSTRAP" (exit 0) if all nodes run and every broker is registered
#           and unfenced, else "degraded" or "not running" (exit 1).
#   reset   stop and wipe the data folder(s) (the jars and logs are kept).
#
#   Per-node commands, for fault tests; NODE is a broker's node.id, 1..N (in
#   single mode only 1, the combined node):
#   pid NODE         print the pid of broker NODE; exit 1 if it is not running.
#   kill NODE        SIGKILL broker NODE and wait until its port is closed.
#   stop-node NODE   SIGTERM broker NODE (SIGKILL after 30 s) and wait.
#   start-node NODE  start broker NODE again (same data and config) and wait
#                    until it answers a metadata request on its own port;
#                    prints its address. Other nodes are not touched (in
#                    cluster mode the controller must be running).
#   kill and stop-node succeed if the node is not running.
#
# Environment:
#   KAFKA_PORT           first broker port (default 9092). Single mode: the
#                        controller uses PORT+1. KAFKA_NODES=N: broker i
#                        listens on PORT+i-1, the controller on PORT+N.
#   KAFKA_NODES          number of brokers, 1..5 (default 1 = single mode).
#                        With N > 1: default.replication.factor and the
#                        internal topics' replication = min(3,N), min ISR =
#                        min(2,N), replica.lag.time.max.ms=5000, broker
#                        heartbeat 1 s and session timeout 6 s.
#   KAFKA_LOCAL_DIR      state folder (default <repo>/.kafka-local, git-ignored)
#   KAFKA_START_TIMEOUT  seconds start/start-node wait for readiness (default 60)
#   KAFKA_HEAP_OPTS      heap of each Kafka JVM (default "-Xms256m -Xmx768m";
#                        "-Xms128m -Xmx512m" when KAFKA_NODES > 1)
#   JAVA_HOME            Java to use (default: java on PATH)
#
# State folder layout (several ports can run side by side):
#   lib/                          jars (lib/.complete marks a finished copy)
#   Single mode (KAFKA_NODES=1):
#   data-PORT/                    KRaft metadata + topic data
#   broker-PORT.log               broker log (previous run: broker-PORT.log.prev)
#   broker-PORT.pid               pid of the broker JVM
#   server-PORT.properties        generated broker config
#   log4j2-PORT.properties        generated broker logging config
#   tools-log4j2.properties       logging config for the CLI tools (warn, stderr)
#   client-PORT.properties        short timeouts for the readiness/status check
#   Cluster mode (KAFKA_NODES=N > 1), all in cluster-PORT/ (PORT = first
#   broker's), I = node id (0 = controller, 1..N = brokers):
#   cluster-PORT/nodes            N the storage was formatted for (a start with
#                                 another KAFKA_NODES fails until reset)
#   cluster-PORT/cluster.id       the cluster id shared by all nodes
#   cluster-PORT/data-I/          node I's KRaft metadata + topic data
#   cluster-PORT/node-I.log       node I's log (previous run: node-I.log.prev)
#   cluster-PORT/node-I.pid       pid of node I's JVM
#   cluster-PORT/node-I.properties, log4j2-I.properties   generated configs
#   cluster-PORT/tools-log4j2.properties, client.properties   for the CLI tools
#   cluster-PORT.lock             serialises commands on that cluster
# The two modes share no file, so a command in one mode never touches
# processes or data of the other (even on overlapping ports).
#
# Exit codes: 0 ok; 1 failure, or "not running" for status and pid; 2 usage
# error.
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

NODES="${KAFKA_NODES:-1}"
if ! [[ "$NODES" =~ ^[1-5]$ ]]; then
    echo "kafka-local: KAFKA_NODES must be a number from 1 to 5, got '$NODES'" >&2
    exit 2
fi
if ((PORT + NODES > 65535)); then
    echo "kafka-local: KAFKA_PORT=$PORT is too high for KAFKA_NODES=$NODES (ports up to PORT+$NODES are used)" >&2
    exit 2
fi

STATE="${KAFKA_LOCAL_DIR:-$ROOT/.kafka-local}"
[[ "$STATE" == /* ]] || STATE="$PWD/$STATE"
readonly STATE
readonly LIB="$STATE/lib"
# Single mode.
readonly DATA="$STATE/data-$PORT"
readonly LOG="$STATE/broker-$PORT.log"
readonly PIDFILE="$STATE/broker-$PORT.pid"
readonly PROPS="$STATE/server-$PORT.properties"
readonly LOG4J="$STATE/log4j2-$PORT.properties"
# Cluster mode (KAFKA_NODES > 1): per-node files are named by node id in here.
readonly CDIR="$STATE/cluster-$PORT"
readonly MARK="$CDIR/nodes"
readonly CLUSTER_ID_FILE="$CDIR/cluster.id"

# stop and reset act on the cluster as it was formatted, whatever KAFKA_NODES
# says, so a cluster is never left running by a mismatched stop.
if ((NODES > 1)) && [[ "${1:-}" == stop || "${1:-}" == reset ]] &&
    [[ -f "$MARK" ]] && [[ "$(cat "$MARK" 2>/dev/null)" =~ ^[2-5]$ ]]; then
    NODES="$(cat "$MARK")"
    ((PORT + NODES <= 65535)) || NODES="${KAFKA_NODES}"
fi
readonly NODES

# Single mode: the controller listener of the combined node. Cluster mode: the
# dedicated controller, right after the last broker.
readonly CONTROLLER_PORT=$((PORT + NODES))
bootstrap_list() {
    local i list=""
    for ((i = 1; i <= NODES; i++)); do
        list+="${list:+,}$HOST:$((PORT + i - 1))"
    done
    echo "$list"
}
BOOTSTRAP="$(bootstrap_list)"
readonly BOOTSTRAP
if ((NODES == 1)); then
    readonly TOOLS_LOG4J="$STATE/tools-log4j2.properties"
    readonly CLIENT_PROPS="$STATE/client-$PORT.properties"
else
    readonly TOOLS_LOG4J="$CDIR/tools-log4j2.properties"
    readonly CLIENT_PROPS="$CDIR/client.properties"
fi
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
       $(basename "$0") pid|kill|stop-node|start-node NODE

Runs Apache Kafka $KAFKA_VERSION (KRaft) on $HOST for tests and CI: by default one
node (broker+controller) on \${KAFKA_PORT:-9092}, controller on KAFKA_PORT+1;
with KAFKA_NODES=N (2..5) N brokers (node.id 1..N) on KAFKA_PORT..KAFKA_PORT+N-1
and a dedicated controller (node.id 0) on KAFKA_PORT+N.

  start             fetch jars if needed, format storage once, start, wait
                    until ready; prints the bootstrap list
  stop              stop everything started by this script on KAFKA_PORT
  status            exit 0 if it runs and answers, else exit 1
  reset             stop and wipe the data (jars are kept)
  pid NODE          print broker NODE's pid (exit 1 if not running)
  kill NODE         SIGKILL broker NODE, wait until its port is closed
  stop-node NODE    SIGTERM broker NODE (SIGKILL after 30 s), wait
  start-node NODE   start broker NODE again, wait until it answers
NODE is 1..KAFKA_NODES (1 in single mode).

Environment: KAFKA_PORT (9092), KAFKA_NODES (1), KAFKA_LOCAL_DIR
(<repo>/.kafka-local), KAFKA_START_TIMEOUT (60), KAFKA_HEAP_OPTS
("-Xms256m -Xmx768m"; "-Xms128m -Xmx512m" when KAFKA_NODES > 1), JAVA_HOME.
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
    is_our_node "$1" "$PROPS"
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

    write_log4j "$LOG4J" "$LOG"
    write_tools_log4j
    write_client_props
}

# Broker logging config $1, logging to file $2.
write_log4j() {
    local file="$1" logfile="$2"
    cat >"$file" <<EOF
# Generated by scripts/kafka-local.sh: broker log -> $logfile
status = warn
name = kafka-local
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $logfile
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
}

write_tools_log4j() {
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
}

write_client_props() {
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

# --- single mode: per-node commands (node 1 is the one combined node) --------

cmd_pid() {
    local pid
    if ! pid="$(running_pid)"; then
        log "node 1 is not running"
        return 1
    fi
    echo "$pid"
}

cmd_kill() {
    local pid
    [[ -d "$STATE" ]] || return 0
    lock_port
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        log "node 1 is not running"
        return 0
    fi
    log "killing node 1 (pid $pid) with SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    if ! wait_stopped "$pid" 15; then
        rm -f "$PIDFILE"
        die "pid $pid or port $HOST:$PORT is still there after SIGKILL"
    fi
    rm -f "$PIDFILE"
    log "killed node 1"
}

cmd_stop_node() { cmd_stop; }
cmd_start_node() { cmd_start; }

# --- cluster mode (KAFKA_NODES > 1) ------------------------------------------
# Node I: 0 is the dedicated controller, 1..NODES are the brokers.

node_port() {
    if (($1 == 0)); then
        echo "$CONTROLLER_PORT"
    else
        echo $((PORT + $1 - 1))
    fi
}
node_name() {
    if (($1 == 0)); then echo "controller"; else echo "broker $1"; fi
}
node_data() { echo "$CDIR/data-$1"; }
node_log() { echo "$CDIR/node-$1.log"; }
node_pidfile() { echo "$CDIR/node-$1.pid"; }
node_props() { echo "$CDIR/node-$1.properties"; }
node_log4j() { echo "$CDIR/log4j2-$1.properties"; }

# Take an exclusive lock on fd 9 for the cluster on $PORT (see lock_port).
lock_cluster() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE/cluster-$PORT.lock"
        flock 9
    fi
}

# True if pid $1 is a live Java process running kafka.Kafka with config $2.
is_our_node() {
    local pid="$1" args
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(cmdline_of "$pid")"
    grep -q 'java' <<<"$args" &&
        grep -qx 'kafka.Kafka' <<<"$args" &&
        grep -qxF "$2" <<<"$args"
}

# Prints the pid of node $1 if it runs, or fails.
node_pid() {
    local pid pidfile
    pidfile="$(node_pidfile "$1")"
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    is_our_node "$pid" "$(node_props "$1")" || return 1
    echo "$pid"
}

# Fails if the storage on this port was formatted for another KAFKA_NODES.
check_marker() {
    local have
    [[ -f "$MARK" ]] || return 0
    have="$(cat "$MARK" 2>/dev/null || true)"
    [[ "$have" == "$NODES" ]] && return 0
    die "$CDIR was formatted for KAFKA_NODES=$have, not $NODES; use KAFKA_NODES=$have, or wipe it with: KAFKA_PORT=$PORT KAFKA_NODES=$NODES $0 reset"
}

# The config of node $1.
write_node_config() {
    local i="$1" props repl isr
    props="$(node_props "$i")"
    repl=$((NODES < 3 ? NODES : 3))
    isr=$((NODES < 2 ? NODES : 2))
    {
        echo "# Generated by scripts/kafka-local.sh (KAFKA_NODES=$NODES) - edits are overwritten on start."
        if ((i == 0)); then
            cat <<EOF
process.roles=controller
node.id=0
listeners=CONTROLLER://$HOST:$CONTROLLER_PORT
EOF
        else
            cat <<EOF
process.roles=broker
node.id=$i
listeners=PLAINTEXT://$HOST:$(node_port "$i")
advertised.listeners=PLAINTEXT://$HOST:$(node_port "$i")
inter.broker.listener.name=PLAINTEXT
EOF
        fi
        # The topic defaults are on the controller too: in KRaft it applies
        # num.partitions / default.replication.factor to CreateTopics.
        cat <<EOF
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.voters=0@$HOST:$CONTROLLER_PORT
log.dirs=$(node_data "$i")
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=$repl
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$repl
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=$repl
share.coordinator.state.topic.min.isr=$isr
min.insync.replicas=$isr
default.replication.factor=$repl
group.initial.rebalance.delay.ms=0
# Short consumer-group (KIP-848) timeouts so tests notice dead members fast.
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=1000
group.consumer.heartbeat.interval.ms=1000
# Fail fast: a dead follower leaves the ISR after 5 s; the controller fences a
# broker that missed its heartbeats (every 1 s) for 6 s and moves its leaders.
replica.lag.time.max.ms=5000
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
EOF
    } >"$props"
    write_log4j "$(node_log4j "$i")" "$(node_log "$i")"
}

# Format the storage of nodes "$@" that have none yet, all with the cluster's
# id (a new one, and every node, when the cluster was never fully formatted).
# The marker (nodes) is written last, so an interrupted format starts over.
format_nodes() {
    local i cluster_id data pids=() names=() k failed=0
    if [[ ! -f "$MARK" ]]; then
        for ((i = 0; i <= NODES; i++)); do
            if node_pid "$i" >/dev/null; then
                die "node $i runs but $MARK is missing; stop and reset this cluster"
            fi
        done
        cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)" ||
            die "could not generate a cluster id"
        for ((i = 0; i <= NODES; i++)); do
            rm -rf "$(node_data "$i")"
        done
        echo "$cluster_id" >"$CLUSTER_ID_FILE"
        set --
        for ((i = 0; i <= NODES; i++)); do
            set -- "$@" "$i"
        done
    else
        cluster_id="$(cat "$CLUSTER_ID_FILE" 2>/dev/null || true)"
        [[ -n "$cluster_id" ]] ||
            die "$CLUSTER_ID_FILE is missing; wipe the cluster with: KAFKA_PORT=$PORT KAFKA_NODES=$NODES $0 reset"
    fi
    for i in "$@"; do
        data="$(node_data "$i")"
        [[ -f "$data/meta.properties" ]] && continue
        mkdir -p "$data"
        log "formatting $data (cluster id $cluster_id)"
        # Static quorum (controller.quorum.voters), so no --standalone. The
        # JVMs run in parallel, and are waited for just below.
        kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$(node_props "$i")" >&2 &
        pids+=("$!")
        names+=("$data")
    done
    for k in "${!pids[@]}"; do
        if ! wait "${pids[$k]}"; then
            log "error: formatting the storage in ${names[$k]} failed"
            failed=1
        fi
    done
    ((failed == 0)) || exit 1
    [[ -f "$MARK" ]] || echo "$NODES" >"$MARK"
}

# Start the JVM of node $1 in the background (see cmd_start for the details).
launch_node() {
    local i="$1" logfile pidfile
    logfile="$(node_log "$i")"
    pidfile="$(node_pidfile "$i")"
    rm -f "$pidfile"
    if [[ -f "$logfile" ]]; then
        mv -f "$logfile" "$logfile.prev"
    fi
    log "starting $(node_name "$i") (node.id $i) on $HOST:$(node_port "$i"), log: $logfile"
    # shellcheck disable=SC2016,SC2086 # $$ is the inner bash's; KAFKA_HEAP_OPTS is a list of JVM flags
    setsid nohup bash -c 'echo $$ >"$1.tmp" && mv -f "$1.tmp" "$1" && shift && exec "$@"' \
        kafka-local "$pidfile" \
        "$JAVA" ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="file:$(node_log4j "$i")" \
        -cp "$LIB/*" kafka.Kafka "$(node_props "$i")" \
        </dev/null >>"$logfile" 2>&1 8>&- 9>&- &
}

# Prints the ids of the brokers the cluster lists as registered and unfenced
# (Admin describeCluster, after the Admin client's bootstrap metadata
# request), within $1 seconds; fails if the cluster does not answer.
cluster_brokers() {
    local out
    out="$(KAFKA_TOOL_LIMIT="${1:-15}" kafka_tool org.apache.kafka.tools.ClusterTool \
        list-endpoints --bootstrap-server "$BOOTSTRAP" --config "$CLIENT_PROPS" 2>/dev/null)" ||
        return 1
    awk '$1 ~ /^[0-9]+$/ && $5 == "unfenced" { print $1 }' <<<"$out"
}

# True if the cluster lists brokers 1..NODES as registered and unfenced.
all_brokers_registered() {
    local ids i
    ids="$(cluster_brokers "$1")" || return 1
    for ((i = 1; i <= NODES; i++)); do
        grep -qx "$i" <<<"$ids" || return 1
    done
}

# True if broker $1 alone answers a metadata request within $2 seconds.
node_answers() {
    KAFKA_TOOL_LIMIT="${2:-15}" kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$HOST:$(node_port "$1")" --command-config "$CLIENT_PROPS" \
        --list >/dev/null 2>&1
}

# True once every node of the caller's ids/pids arrays has exited and closed
# its port; false after $1 seconds.
nodes_gone() {
    local deadline=$((SECONDS + $1)) i left
    while :; do
        left=0
        for i in "${!ids[@]}"; do
            if pid_alive "${pids[$i]}" || port_open "$(node_port "${ids[$i]}")"; then
                left=1
            fi
        done
        ((left == 0)) && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

# Stop nodes "$@" together: SIGTERM, SIGKILL after $STOP_TIMEOUT s, wait until
# each pid is gone and its port closed. With KILL=1, SIGKILL at once.
stop_nodes() {
    local i pid ids=() pids=() left
    for i in "$@"; do
        if pid="$(node_pid "$i")"; then
            ids+=("$i")
            pids+=("$pid")
        else
            if [[ -f "$(node_pidfile "$i")" ]]; then
                log "$(node_name "$i"): removing stale pid file"
                rm -f "$(node_pidfile "$i")"
            fi
        fi
    done
    ((${#ids[@]} > 0)) || return 0
    for i in "${!ids[@]}"; do
        if [[ "${KILL:-0}" == 1 ]]; then
            log "killing $(node_name "${ids[$i]}") (pid ${pids[$i]}) with SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        else
            log "stopping $(node_name "${ids[$i]}") (pid ${pids[$i]})"
            kill -TERM "${pids[$i]}" 2>/dev/null || true
            kill -CONT "${pids[$i]}" 2>/dev/null || true # in case it was suspended
        fi
    done
    left=0
    if [[ "${KILL:-0}" == 1 ]]; then
        nodes_gone 15 || left=1
    elif ! nodes_gone "$STOP_TIMEOUT"; then
        for i in "${!ids[@]}"; do
            if pid_alive "${pids[$i]}"; then
                log "$(node_name "${ids[$i]}") still running after ${STOP_TIMEOUT}s, sending SIGKILL"
                kill -KILL "${pids[$i]}" 2>/dev/null || true
            fi
        done
        nodes_gone 15 || left=1
    fi
    for i in "${ids[@]}"; do
        rm -f "$(node_pidfile "$i")"
    done
    if ((left == 1)); then
        die "a node's pid or port is still there after SIGKILL"
    fi
    log "$([[ "${KILL:-0}" == 1 ]] && echo killed || echo stopped): $(for i in "${ids[@]}"; do printf '%s, ' "$(node_name "$i")"; done | sed 's/, $//')"
}

print_node_log_tail() {
    log "last 50 lines of $(node_log "$1"):"
    tail -n 50 "$(node_log "$1")" >&2 2>/dev/null || true
}

# Start nodes "$@" (not running, configs written, storage formatted) and wait
# until each logged "Kafka Server started" and then until $1 more check passes:
# "cluster" (all brokers registered and unfenced) or "node:I" (broker I
# answers a metadata request). Stops the nodes it started if that fails.
# (STARTED_IDS/STARTED_PIDS: the nodes and their pids, "" until known.)
STARTED_IDS=()
STARTED_PIDS=()
start_and_wait() {
    local check="$1" i k pid all ready=0 deadline
    shift
    STARTED_IDS=("$@")
    STARTED_PIDS=()
    for i in "${STARTED_IDS[@]}"; do
        launch_node "$i"
        STARTED_PIDS+=("")
    done
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        all=1
        for k in "${!STARTED_IDS[@]}"; do
            i="${STARTED_IDS[k]}"
            if [[ -z "${STARTED_PIDS[k]}" && -s "$(node_pidfile "$i")" ]]; then
                STARTED_PIDS[k]="$(cat "$(node_pidfile "$i")")"
            fi
            pid="${STARTED_PIDS[k]}"
            if [[ -z "$pid" ]]; then
                all=0
                continue
            fi
            # (pid_alive, not is_our_node: for a moment the pid is still the
            # bash that is about to exec java.)
            if ! pid_alive "$pid"; then
                print_node_log_tail "$i"
                failed_start
                die "$(node_name "$i") exited during startup"
            fi
            if ! grep -q 'Kafka Server started' "$(node_log "$i")" 2>/dev/null ||
                ! is_our_node "$pid" "$(node_props "$i")"; then
                all=0
            fi
        done
        if ((all == 1)); then
            case "$check" in
            cluster) all_brokers_registered $((deadline - SECONDS + 1)) && ready=1 ;;
            node:*) node_answers "${check#node:}" $((deadline - SECONDS + 1)) && ready=1 ;;
            esac
            ((ready == 1)) && break
        fi
        sleep 0.2
    done
    if ((ready == 0)); then
        for i in "${STARTED_IDS[@]}"; do
            print_node_log_tail "$i"
        done
        failed_start
        die "not ready within ${START_TIMEOUT}s"
    fi
}

# Ends the nodes start_and_wait has just started (brokers first).
failed_start() {
    local k i pid
    for ((k = ${#STARTED_IDS[@]} - 1; k >= 0; k--)); do
        i="${STARTED_IDS[k]}"
        pid="${STARTED_PIDS[k]}"
        if [[ -z "$pid" && -s "$(node_pidfile "$i")" ]]; then
            pid="$(cat "$(node_pidfile "$i")")"
        fi
        if [[ -n "$pid" ]]; then
            kill_started "$pid"
        fi
        rm -f "$(node_pidfile "$i")"
    done
}

cmd_multi_start() {
    local i pid missing=() running=()
    mkdir -p "$CDIR"
    lock_cluster
    check_marker
    for ((i = 0; i <= NODES; i++)); do
        if pid="$(node_pid "$i")"; then
            running+=("$(node_name "$i") pid $pid")
        else
            missing+=("$i")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "already running ($(printf '%s, ' "${running[@]}" | sed 's/, $//'))"
        echo "$BOOTSTRAP"
        return 0
    fi
    for i in "${missing[@]}"; do
        rm -f "$(node_pidfile "$i")"
        if port_open "$(node_port "$i")"; then
            die "port $HOST:$(node_port "$i") ($(node_name "$i")) is already in use by another process (not a node started by this script on KAFKA_PORT=$PORT KAFKA_NODES=$NODES)"
        fi
    done

    check_java
    ensure_jars
    write_tools_log4j
    write_client_props
    for i in "${missing[@]}"; do
        write_node_config "$i"
    done
    format_nodes "${missing[@]}"
    # Controller first (missing[0] is 0 when it is down); the brokers retry
    # until it answers, so they all boot together.
    start_and_wait cluster "${missing[@]}"
    running=()
    for ((i = 0; i <= NODES; i++)); do
        running+=("$(node_name "$i") pid $(node_pid "$i" || echo '?')")
    done
    log "ready: $(printf '%s, ' "${running[@]}" | sed 's/, $//'); bootstrap $BOOTSTRAP"
    echo "$BOOTSTRAP"
}

cmd_multi_stop() {
    local i brokers=()
    if [[ ! -d "$CDIR" ]]; then
        log "not running"
        return 0
    fi
    lock_cluster
    # All brokers (NODES is the formatted count here), then the controller:
    # the brokers' controlled shutdown needs it.
    for ((i = 1; i <= NODES; i++)); do
        brokers+=("$i")
    done
    stop_nodes "${brokers[@]}"
    stop_nodes 0
    log "cluster on $HOST:$PORT stopped"
}

cmd_multi_status() {
    local i pid registered="" up=0 alive=() ok=1
    check_marker
    for ((i = 0; i <= NODES; i++)); do
        if pid="$(node_pid "$i")"; then
            alive[i]="$pid"
            up=$((up + 1))
        fi
    done
    if ((up == 0)); then
        echo "not running"
        return 1
    fi
    if [[ -f "$CLIENT_PROPS" && -f "$TOOLS_LOG4J" && -n "${alive[0]:-}" ]]; then
        registered="$(cluster_brokers 15)" || registered=""
    fi
    for ((i = 1; i <= NODES; i++)); do
        if [[ -z "${alive[i]:-}" ]]; then
            echo "broker $i not running ($HOST:$(node_port "$i"))"
            ok=0
        elif grep -qx "$i" <<<"$registered"; then
            echo "broker $i running pid ${alive[i]} on $HOST:$(node_port "$i")"
        else
            echo "broker $i pid ${alive[i]} alive but not registered/unfenced ($HOST:$(node_port "$i"))"
            ok=0
        fi
    done
    if [[ -n "${alive[0]:-}" ]]; then
        echo "controller running pid ${alive[0]} on $HOST:$CONTROLLER_PORT"
    else
        echo "controller not running ($HOST:$CONTROLLER_PORT)"
        ok=0
    fi
    if ((ok == 1)); then
        echo "running $BOOTSTRAP"
        return 0
    fi
    echo "degraded"
    return 1
}

cmd_multi_reset() {
    local i
    cmd_multi_stop
    [[ -d "$CDIR" ]] || return 0
    for ((i = 0; i <= 5; i++)); do
        if [[ -d "$(node_data "$i")" ]]; then
            rm -rf "$(node_data "$i")"
            log "wiped $(node_data "$i")"
        fi
    done
    rm -f "$MARK" "$CLUSTER_ID_FILE"
}

cmd_multi_pid() {
    local pid
    check_marker
    if ! pid="$(node_pid "$1")"; then
        log "broker $1 is not running"
        return 1
    fi
    echo "$pid"
}

cmd_multi_kill() {
    [[ -d "$CDIR" ]] || return 0
    lock_cluster
    check_marker
    node_pid "$1" >/dev/null || log "broker $1 is not running"
    KILL=1 stop_nodes "$1"
}

cmd_multi_stop_node() {
    [[ -d "$CDIR" ]] || return 0
    lock_cluster
    check_marker
    node_pid "$1" >/dev/null || log "broker $1 is not running"
    stop_nodes "$1"
}

cmd_multi_start_node() {
    local pid
    mkdir -p "$CDIR"
    lock_cluster
    check_marker
    [[ -f "$MARK" ]] ||
        die "no cluster formatted on KAFKA_PORT=$PORT KAFKA_NODES=$NODES yet; use start"
    if pid="$(node_pid "$1")"; then
        log "broker $1 already running (pid $pid)"
        echo "$HOST:$(node_port "$1")"
        return 0
    fi
    node_pid 0 >/dev/null ||
        die "the controller is not running; use start to bring the cluster up"
    rm -f "$(node_pidfile "$1")"
    if port_open "$(node_port "$1")"; then
        die "port $HOST:$(node_port "$1") is already in use by another process"
    fi
    check_java
    ensure_jars
    [[ -f "$TOOLS_LOG4J" ]] || write_tools_log4j
    [[ -f "$CLIENT_PROPS" ]] || write_client_props
    write_node_config "$1"
    format_nodes "$1"
    start_and_wait "node:$1" "$1"
    log "ready: broker $1 pid $(node_pid "$1" || echo '?') on $HOST:$(node_port "$1")"
    echo "$HOST:$(node_port "$1")"
}

case "${1:-}" in
start | stop | status | reset)
    [[ $# -eq 1 ]] || {
        usage
        exit 2
    }
    if ((NODES == 1)); then
        "cmd_$1"
    else
        "cmd_multi_$1"
    fi
    ;;
pid | kill | stop-node | start-node)
    if [[ $# -ne 2 ]] || ! [[ "$2" =~ ^[1-5]$ ]] || (($2 > NODES)); then
        echo "kafka-local: $1 needs one NODE argument, a broker id from 1 to $NODES (KAFKA_NODES=$NODES)" >&2
        usage
        exit 2
    fi
    verb="${1//-/_}"
    if ((NODES == 1)); then
        "cmd_$verb"
    else
        "cmd_multi_$verb" "$2"
    fi
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage
    exit 2
    ;;
esac
