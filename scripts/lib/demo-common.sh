# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/demo-group.sh (sourced, not run, from the repository
# root, with ROOT set to it): the binaries' profile, output helpers, the build, and the
# broker. Each demo keeps its own cleanup.

PROFILE=${DEMO_PROFILE:-release}
case "$PROFILE" in dev) BIN="$ROOT/target/debug" ;; *) BIN="$ROOT/target/$PROFILE" ;; esac

if [[ -t 1 ]]; then B=$'\033[1m'; G=$'\033[32m'; R=$'\033[31m'; D=$'\033[2m'; N=$'\033[0m'; else B='' G='' R='' D='' N=''; fi
say()  { printf '\n%s%s%s\n' "$B" "$*" "$N"; }
note() { printf '   %s\n' "$*"; }
show() { printf '   %s$ %s%s\n' "$D" "$*" "$N"; }
FAILED=0
CHECKS=0
check() { # check "what" command...
  local what=$1; shift
  CHECKS=$((CHECKS + 1))
  if "$@"; then printf '   %s✔ %s%s\n' "$G" "$what" "$N"; else printf '   %s✘ %s%s\n' "$R" "$what" "$N"; FAILED=$((FAILED + 1)); fi
}
now_ms() { date +%s%3N; }
json() { # json 'expr on d' <<< "$doc"
  python3 -c 'import json,sys; d=json.load(sys.stdin); v=eval(sys.argv[1]); print("" if v is None else v)' "$1"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # wait_http url seconds
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if (( $(date +%s) > deadline )); then echo "timed out waiting for $1" >&2; return 1; fi
    sleep 0.1
  done
}

# Starts a demo called $1: builds (see demo_build), notes the start time (START), and makes
# its scratch folder (WORK) and a topic of its own (TOPIC).
demo_begin() {
  demo_build
  START=$(date +%s)
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-$1.XXXXXX")
  TOPIC="$1.$(date +%Y%m%d%H%M%S).$$"
}

# Waits for the background `ledger load --verify` ($LOAD_PID, writing $WORK/load.out) and
# prints the end of what it said; load_rc is its exit status.
demo_wait_load() {
  load_rc=0
  wait "$LOAD_PID" || load_rc=$?
  LOAD_PID=
  sed 's/^/   /' "$WORK/load.out" | grep -vE '^\s*$' | tail -n 12
}

# Builds the three binaries (unless DEMO_SKIP_BUILD=1) and checks they are in $BIN.
demo_build() {
  if [[ "${DEMO_SKIP_BUILD:-}" == 1 ]]; then
    say "Using the binaries already built in $BIN"
  else
    say "Building ($PROFILE)"
    cargo build --locked --profile "$PROFILE" -p command-ingest -p projector -p ledger-cli
  fi
  local b
  for b in command-ingest projector ledger; do [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b" >&2; exit 1; }; done
}

# Sets BROKERS: KAFKA_BROKERS when set, else the local broker on DEMO_KAFKA_PORT (9092),
# started when it does not run; STARTED_BROKER is then its port, for the cleanup to stop.
demo_broker() {
  if [[ -n "${KAFKA_BROKERS:-}" ]]; then
    BROKERS=$KAFKA_BROKERS
    say "Using the broker at $BROKERS"
  else
    export KAFKA_PORT=${DEMO_KAFKA_PORT:-9092}
    if scripts/kafka-local.sh status >/dev/null 2>&1; then
      say "Using the local broker already running on 127.0.0.1:$KAFKA_PORT"
    else
      say "Starting a local Kafka broker (KRaft) on 127.0.0.1:$KAFKA_PORT"
      scripts/kafka-local.sh start >/dev/null
      # shellcheck disable=SC2034 # read by the demo's cleanup
      STARTED_BROKER=$KAFKA_PORT
    fi
    BROKERS=127.0.0.1:$KAFKA_PORT
  fi
}
