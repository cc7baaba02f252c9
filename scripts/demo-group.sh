#!/usr/bin/env bash
# The projector-group demo, end to end, with real processes and a real broker.
#
# It builds the binaries, gets a broker (KAFKA_BROKERS when set, else scripts/kafka-local.sh),
# starts the ingest and one projector (demo-a) on free ports with a temporary data directory
# and a fresh topic, runs a paced `ledger load` (a fifth of it transfers, which cross
# partitions and instances through the log) in the background, and then shows with real
# output:
#   1. one projector serving every partition of the topic, under traffic;
#   2. scaled to three (demo-b, demo-c join the group): the partitions are handed over while
#      a reader goes on reading through demo-a; the old owner serves a partition until the
#      new one has caught up, so no read gets 503;
#   3. every account read through every instance: the same answer from all three, most of
#      them forwarded to the partition's owner (the Ledger-Served-By header says which);
#   4. demo-c killed with SIGKILL while a reader reads through the survivors: its partitions
#      answer 503 partition_moving (with Retry-After) until its session times out and a
#      survivor has caught up; the window is measured, and no account read before reads 404;
#   5. the load's own verification: every balance, command and transfer status matches a
#      model of what was accepted, and the group's money is conserved.
# It stops everything it started (also on Ctrl-C or failure) and exits non-zero when a check
# fails.
#
# Environment: KAFKA_BROKERS (use this broker), DEMO_KAFKA_PORT (port of the local broker,
# default 9092), DEMO_PROFILE (cargo profile, default release; the test suite uses dev),
# DEMO_SKIP_BUILD=1 (use the binaries already built).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# shellcheck source=scripts/lib/demo-common.sh
source "$ROOT/scripts/lib/demo-common.sh"

# ---------------------------------------------------------------------------------------
demo_begin demo-group
INGEST_PID='' A_PID='' B_PID='' C_PID='' LOAD_PID='' READER_PID='' STARTED_BROKER=''
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid pids=() deadline
  for pid in "$READER_PID" "$LOAD_PID" "$A_PID" "$B_PID" "$C_PID" "$INGEST_PID"; do
    if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  # A projector stopped with SIGTERM hands its partitions over to the rest of its group
  # (up to --handoff-ms); with the whole group stopping there is nobody to hand them to,
  # and the data goes away with $WORK anyway: whatever still runs after 5 s is killed.
  deadline=$(( $(date +%s) + 5 ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (( $(date +%s) < deadline )); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ -n "$STARTED_BROKER" ]]; then KAFKA_PORT=$STARTED_BROKER scripts/kafka-local.sh stop >/dev/null 2>&1 || true; fi
  if (( rc != 0 )); then echo "demo failed; logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

demo_broker

# The reader, the comparison and the cluster checks, in Python (standard library only).
GROUPPY=$WORK/group.py
cat >"$GROUPPY" <<'PY'
import collections, http.client, json, signal, sys, threading, time, urllib.parse

def murmur2(key):
    """Kafka's murmur2, as ledger_domain::partitioning computes an account's partition."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(key)) & mask
    n = len(key) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = key[n:]
    if tail:
        for i in reversed(range(len(tail))):
            h ^= tail[i] << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h

def partition_of(account, count):
    return (murmur2(account.encode()) & 0x7FFFFFFF) % count

class Conn:
    """One keep-alive connection to one instance, reconnecting after an error."""
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.c = u.hostname, u.port, None
    def get(self, path):
        for attempt in (1, 2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self.c.request("GET", path)
                resp = self.c.getresponse()
                body = resp.read()
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                return resp.status, doc, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException) as e:
                if self.c is not None:
                    self.c.close()
                self.c = None
                if attempt == 2:
                    return 0, {"error": {"code": "unreachable", "message": str(e)}}, {}

def code_of(doc):
    return (doc or {}).get("error", {}).get("code") if isinstance(doc, dict) else None

def instances(args):
    """id=url arguments, in order."""
    return [tuple(a.split("=", 1)) for a in args]

def cmd_read(out, prefix, n, count, pace_ms, *targets):
    """Reads the accounts round-robin through each instance (one thread each, from when the
    instance is ready) until SIGTERM."""
    n, count, pace = int(n), int(count), float(pace_ms) / 1000
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rows, lock = [], threading.Lock()
    def loop(k, asked, url):
        conn, i = Conn(url), k * 7
        while not stop.is_set() and conn.get("/readyz")[0] != 200:
            stop.wait(0.1)
        while not stop.is_set():
            account = f"{prefix}-{i % n}"
            t0 = time.time()
            status, doc, headers = conn.get(f"/v1/accounts/{account}")
            t1 = time.time()
            row = {"t0": t0, "t1": t1, "asked": asked, "account": account,
                   "partition": partition_of(account, count), "status": status,
                   "code": code_of(doc), "served_by": headers.get("ledger-served-by"),
                   "retry_after": headers.get("retry-after"),
                   "applied_events": doc.get("applied_events") if status == 200 and doc else None}
            with lock:
                rows.append(row)
            i += 1
            stop.wait(pace)
    threads = [threading.Thread(target=loop, args=(k, a, u), daemon=True)
               for k, (a, u) in enumerate(instances(targets))]
    for t in threads:
        t.start()
    while not stop.wait(0.2):
        pass
    for t in threads:
        t.join(15)
    with open(out, "w") as f:
        for row in sorted(rows, key=lambda r: r["t0"]):
            f.write(json.dumps(row) + "\n")

def cmd_windows(path):
    """The 503 partition_moving windows of a reader's record, and what else went wrong."""
    try:
        rows = [json.loads(line) for line in open(path)]
    except OSError:
        rows = []
    rows.sort(key=lambda r: r["t1"])
    opened, windows = {}, []
    status = collections.Counter()
    moving_parts = set()
    no_retry_after = 0
    for r in rows:
        p = r["partition"]
        if r["status"] == 503 and r["code"] == "partition_moving":
            status["503 partition_moving"] += 1
            moving_parts.add(p)
            if not r.get("retry_after"):
                no_retry_after += 1
            w = opened.setdefault(p, {"partition": p, "from": r["t0"], "n": 0})
            w["n"] += 1
        else:
            label = str(r["status"]) + (" " + r["code"] if r["code"] and r["status"] != 404 else "")
            status[label] += 1
            if r["status"] in (200, 404) and p in opened:
                w = opened.pop(p)
                w["to"], w["closed"] = r["t1"], True
                windows.append(w)
    end = max((r["t1"] for r in rows), default=0)
    for w in opened.values():
        w["to"], w["closed"] = end, False
        windows.append(w)
    longest = max(windows, key=lambda w: w["to"] - w["from"], default=None)
    # An account answered 200 must never answer 404 to a read sent after that answer.
    first_ok, back_to_404 = {}, []
    for r in sorted(rows, key=lambda r: r["t1"]):
        if r["status"] == 200:
            first_ok.setdefault(r["account"], r["t1"])
    for r in rows:
        ok_at = first_ok.get(r["account"])
        if r["status"] == 404 and ok_at is not None and r["t0"] > ok_at:
            back_to_404.append(r["account"])
    # Reads that saw fewer events applied to an account than an earlier read had.
    went_back, best = 0, {}
    for r in sorted(rows, key=lambda r: r["t0"]):
        if r["status"] != 200:
            continue
        done_before = [x for x in best.get(r["account"], []) if x[0] < r["t0"]]
        if done_before and max(x[1] for x in done_before) > r["applied_events"]:
            went_back += 1
        best.setdefault(r["account"], []).append((r["t1"], r["applied_events"]))
    span = (rows[-1]["t1"] - rows[0]["t0"]) if rows else 0
    print(json.dumps({
        "reads": len(rows),
        "seconds": round(span, 1),
        "status": dict(status),
        "moving": status["503 partition_moving"],
        "moving_partitions": sorted(moving_parts),
        "no_retry_after": no_retry_after,
        "windows": len(windows),
        "longest_ms": round((longest["to"] - longest["from"]) * 1000) if longest else 0,
        "longest_partition": longest["partition"] if longest else None,
        "longest_reads": longest["n"] if longest else 0,
        "unclosed": sum(1 for w in windows if not w["closed"]),
        "per_partition_ms": {str(w["partition"]): round((w["to"] - w["from"]) * 1000)
                             for w in sorted(windows, key=lambda w: w["from"])},
        "back_to_404": sorted(set(back_to_404)),
        "went_back": went_back,
        "served_elsewhere": sum(1 for r in rows if r["served_by"] and r["served_by"] != r["asked"]),
    }))

def cmd_compare(prefix, n, *targets):
    """Every account through every instance: the answers must be identical. Under traffic a
    command can land between the reads of one account: it is then read again, up to 5 times."""
    targets = instances(targets)
    conns = [(asked, Conn(url)) for asked, url in targets]
    statuses = collections.Counter()
    served_elsewhere = answers = reread = 0
    differing, served = [], collections.Counter()
    for i in range(int(n)):
        account = f"{prefix}-{i}"
        for attempt in range(5):
            got = [(asked, *c.get(f"/v1/accounts/{account}")) for asked, c in conns]
            same = all((s, d) == (got[0][1], got[0][2]) for _, s, d, _ in got)
            if same:
                break
            reread += 1
        else:
            differing.append({"account": account, "answers": [(a, s, d) for a, s, d, _ in got]})
        for asked, status, doc, headers in got:
            answers += 1
            statuses[status] += 1
            by = headers.get("ledger-served-by")
            served[by] += 1
            if by != asked:
                served_elsewhere += 1
    print(json.dumps({
        "accounts": int(n), "answers": answers, "status": {str(k): v for k, v in statuses.items()},
        "identical": not differing, "differing": differing[:3], "reread": reread,
        "served_elsewhere": served_elsewhere, "served_by": dict(served),
    }))

def view_of(url):
    status, doc, _ = Conn(url).get("/v1/cluster")
    return doc if status == 200 else None

def settled(view, want):
    """Whether a cluster view shows `want` instances, every partition owned by exactly one of
    them, none warming or draining, and every instance owning some (while there are enough
    partitions to go round); and a few words on it."""
    if not view or view.get("partition_count") is None:
        return False, "no answer"
    owners = collections.defaultdict(list)
    others = []
    for inst in view["instances"]:
        for row in inst["partitions"]:
            if row["role"] == "owner":
                owners[row["partition"]].append(inst["instance_id"])
            else:
                others.append(f"p{row['partition']} {row['role']} on {inst['instance_id']}")
    count = view["partition_count"]
    unowned = [p for p in range(count) if not owners[p]]
    shared = [p for p in range(count) if len(owners[p]) > 1]
    words = (f"{len(view['instances'])} instances"
             + (f"; no owner for {unowned}" if unowned else "")
             + (f"; several owners for {shared}" if shared else "")
             + (f"; {', '.join(others)}" if others else ""))
    idle = [i["instance_id"] for i in view["instances"]
            if not any(r["role"] == "owner" for r in i["partitions"])]
    words += f"; {', '.join(idle)} own nothing yet" if idle else ""
    ok = (len(view["instances"]) == want and not unowned and not shared and not others
          and (not idle or want > count))
    return ok, words

def cmd_settled(want, *urls):
    """Exit 0 when every instance's view is settled with `want` instances."""
    states = [settled(view_of(u), int(want)) for u in urls]
    print(" | ".join(w for _, w in states))
    sys.exit(0 if all(ok for ok, _ in states) else 1)

def cmd_table(url):
    view = view_of(url)
    if not view:
        print(f"(no answer from {url}/v1/cluster)")
        return
    print(f"{'instance':<10} {'url':<24} {'owns':<14} applied offsets (partition:next offset)")
    for inst in view["instances"]:
        owned = [r for r in inst["partitions"] if r["role"] == "owner"]
        other = [f"{r['partition']}({r['role']})" for r in inst["partitions"] if r["role"] != "owner"]
        owns = ",".join(str(r["partition"]) for r in owned) + (" " + " ".join(other) if other else "")
        offsets = " ".join(f"{r['partition']}:{r['applied_offset']}" for r in inst["partitions"])
        print(f"{inst['instance_id']:<10} {inst['url']:<24} {owns or '-':<14} {offsets or '-'}")
    print(f"(as seen by {view['answered_by']}; {view['partition_count']} partitions)")

def cmd_progress(url):
    """GET /v1/progress through one instance: who serves each partition, in a line."""
    status, doc, _ = Conn(url).get("/v1/progress")
    rows = doc.get("partitions", []) if status == 200 else []
    by = collections.defaultdict(list)
    for r in rows:
        by[f"{r.get('owner')} ({r.get('role')})"].append(r["partition"])
    print(json.dumps({"partitions": len(rows), "total_lag": doc.get("total_lag") if rows else None,
                      "with_owner": sum(1 for r in rows if r.get("owner") and r.get("role")),
                      "line": "; ".join(f"{k}: {v}" for k, v in sorted(by.items()))}))

def cmd_owned(url, instance):
    view = view_of(url) or {"instances": []}
    print(" ".join(str(r["partition"]) for i in view["instances"] if i["instance_id"] == instance
                   for r in i["partitions"] if r["role"] == "owner"))

{"read": cmd_read, "windows": cmd_windows, "compare": cmd_compare, "settled": cmd_settled,
 "table": cmd_table, "owned": cmd_owned, "progress": cmd_progress}[sys.argv[1]](*sys.argv[2:])
PY
group() { python3 "$GROUPPY" "$@"; }

INGEST_PORT=$(free_port)
A_PORT=$(free_port) B_PORT=$(free_port) C_PORT=$(free_port)
A_URL=http://127.0.0.1:$A_PORT B_URL=http://127.0.0.1:$B_PORT C_URL=http://127.0.0.1:$C_PORT
export LEDGER_INGEST_URL=http://127.0.0.1:$INGEST_PORT
export LEDGER_PROJECTOR_URL=$A_URL
PARTITIONS=6 ACCOUNTS=60 PREFIX=demo-group

start_projector() { # start_projector ID PORT -> the pid in LAST_PID
  "$BIN/projector" --brokers "$BROKERS" --topic "$TOPIC" --group-id "$TOPIC.projector" \
    --instance-id "$1" --data-dir "$WORK/$1" --listen "127.0.0.1:$2" >>"$WORK/$1.log" 2>&1 &
  LAST_PID=$!
}
# wait_settled N SECONDS URL...: until every URL's /v1/cluster shows N instances, each
# partition with one owner, none warming or draining, each instance owning some. Prints what
# it last saw when it gives up.
wait_settled() {
  local want=$1 deadline=$(( $(date +%s) + $2 )) seen=; shift 2
  until seen=$(group settled "$want" "$@"); do
    if (( $(date +%s) > deadline )); then note "not settled: $seen"; return 1; fi
    sleep 0.1
  done
}
start_reader() { # start_reader OUT ID=URL...
  local out=$1; shift
  python3 "$GROUPPY" read "$out" "$PREFIX" "$ACCOUNTS" "$PARTITIONS" 10 "$@" &
  READER_PID=$!
}
stop_reader() {
  kill -TERM "$READER_PID" 2>/dev/null || true
  wait "$READER_PID" || true
  READER_PID=
}
table() { group table "$1" | sed 's/^/   /'; }

"$BIN/command-ingest" --brokers "$BROKERS" --topic "$TOPIC" --partitions "$PARTITIONS" \
  --listen "127.0.0.1:$INGEST_PORT" >"$WORK/ingest.log" 2>&1 &
INGEST_PID=$!
wait_http "$LEDGER_INGEST_URL/readyz" 60
note "topic $TOPIC ($PARTITIONS partitions); ingest $LEDGER_INGEST_URL (pid $INGEST_PID)"

# ---------------------------------------------------------------------------------------
say "1. One projector (demo-a) serving every partition, under a paced load"
show "projector --instance-id demo-a --listen 127.0.0.1:$A_PORT --data-dir …/demo-a --group-id $TOPIC.projector"
start_projector demo-a "$A_PORT"; A_PID=$LAST_PID
wait_http "$A_URL/readyz" 60
note "demo-a at $A_URL (pid $A_PID)"
LOAD_ARGS=(--accounts "$ACCOUNTS" --commands 6000 --rate 150 --seed 7 --prefix "$PREFIX" --concurrency 16 --transfers 0.2)
show "ledger load ${LOAD_ARGS[*]} --verify &"
"$BIN/ledger" load "${LOAD_ARGS[@]}" --verify >"$WORK/load.out" 2>&1 &
LOAD_PID=$!
# The load opens its accounts first: wait until the last one reads 200.
deadline=$(( $(date +%s) + 60 ))
until curl -fsS -o /dev/null "$A_URL/v1/accounts/$PREFIX-$((ACCOUNTS - 1))" 2>/dev/null || (( $(date +%s) > deadline )); do sleep 0.1; done
sleep 1
show "curl -i $A_URL/v1/accounts/$PREFIX-0"
curl -sS -i "$A_URL/v1/accounts/$PREFIX-0" | tr -d '\r' | grep -iE '^(HTTP|ledger-served-by)|^\{' | sed 's/^/   /' || true
check "demo-a owns all $PARTITIONS partitions" wait_settled 1 10 "$A_URL"
table "$A_URL"

# ---------------------------------------------------------------------------------------
say "2. Scale to three: demo-b and demo-c join the group while a reader reads through all"
# The reader reads through demo-b and demo-c too, from when each is ready.
start_reader "$WORK/scale-up.jsonl" "demo-a=$A_URL" "demo-b=$B_URL" "demo-c=$C_URL"
sleep 1
show "projector --instance-id demo-b --listen 127.0.0.1:$B_PORT --data-dir …/demo-b …  (and demo-c on :$C_PORT)"
t0=$(now_ms)
start_projector demo-b "$B_PORT"; B_PID=$LAST_PID
start_projector demo-c "$C_PORT"; C_PID=$LAST_PID
wait_http "$B_URL/readyz" 60
wait_http "$C_URL/readyz" 60
note "demo-b at $B_URL (pid $B_PID), demo-c at $C_URL (pid $C_PID): ready after $(( $(now_ms) - t0 )) ms"
settled_ok=0
wait_settled 3 60 "$A_URL" "$B_URL" "$C_URL" || settled_ok=$?
settled_ms=$(( $(now_ms) - t0 ))
sleep 1
stop_reader
note "settled $settled_ms ms after demo-b and demo-c started"
table "$B_URL"
check "every instance sees 3 instances, each partition with one owner, none warming or draining" test "$settled_ok" = 0
progress=$(group progress "$C_URL")
show "curl $C_URL/v1/progress   # through demo-c"
note "$(json 'd["line"]' <<<"$progress"); total lag $(json 'd["total_lag"]' <<<"$progress")"
check "the progress through demo-c covers all $PARTITIONS partitions, each with its owner and role" \
  test "$(json 'd["with_owner"]' <<<"$progress")" = "$PARTITIONS"
scale=$(group windows "$WORK/scale-up.jsonl")
note "reader (demo-a, then demo-b and demo-c once ready): $(json 'd["reads"]' <<<"$scale") reads in $(json 'd["seconds"]' <<<"$scale") s: $(json 'd["status"]' <<<"$scale")"
note "503 partition_moving during the scale-up: $(json 'd["moving"]' <<<"$scale") reads; longest window $(json 'd["longest_ms"]' <<<"$scale") ms"
SCALE_WINDOW=$(json 'd["longest_ms"]' <<<"$scale")
SCALE_MOVING=$(json 'd["moving"]' <<<"$scale")
went_back=$(json 'd["went_back"]' <<<"$scale")
if (( went_back > 0 )); then note "($went_back reads saw an account with fewer events applied than a read answered before them)"; fi
no_503() { (( $(json 'd["reads"]' <<<"$scale") > 0 )) && [[ "$SCALE_MOVING" == 0 ]]; }
check "no read got 503 while the partitions moved (the old owner served until the new one caught up)" no_503
check "no read of an account after a 200 got 404" test "$(json 'len(d["back_to_404"])' <<<"$scale")" = 0

# ---------------------------------------------------------------------------------------
say "3. Every account read through every instance"
show "for i in 0..$((ACCOUNTS - 1)); for each instance: GET /v1/accounts/$PREFIX-\$i"
cmp=$(group compare "$PREFIX" "$ACCOUNTS" "demo-a=$A_URL" "demo-b=$B_URL" "demo-c=$C_URL")
note "$(json 'd["answers"]' <<<"$cmp") answers, by status $(json 'd["status"]' <<<"$cmp"); served by $(json 'd["served_by"]' <<<"$cmp")"
note "$(json 'd["served_elsewhere"]' <<<"$cmp") of them served by another instance than the one asked (forwarded once to the owner)"
rereads=$(json 'd["reread"]' <<<"$cmp")
if (( rereads > 0 )); then note "($rereads accounts were read again: a command of the load landed between their three reads)"; fi
all_200() { [[ "$(json 'd["status"]' <<<"$cmp")" == "{'200': $((3 * ACCOUNTS))}" ]]; }
check "every account answered 200 through every instance" all_200
identical() { [[ "$(json 'd["identical"]' <<<"$cmp")" == True ]] || { json 'd["differing"]' <<<"$cmp" | sed 's/^/   /'; return 1; }; }
check "the three instances gave identical answers for all $ACCOUNTS accounts" identical

# ---------------------------------------------------------------------------------------
say "4. SIGKILL demo-c while a reader reads through demo-a and demo-b"
c_owned=$(group owned "$A_URL" demo-c)
note "demo-c owns partitions ${c_owned// /, }; the load is $(kill -0 "$LOAD_PID" 2>/dev/null && echo "still running" || echo "done")"
start_reader "$WORK/sigkill.jsonl" "demo-a=$A_URL" "demo-b=$B_URL"
sleep 1
show "kill -KILL $C_PID   # demo-c"
t0=$(now_ms)
kill -KILL "$C_PID"
wait "$C_PID" 2>/dev/null || true
C_PID=
settled_ok=0
wait_settled 2 60 "$A_URL" "$B_URL" || settled_ok=$?
settled_ms=$(( $(now_ms) - t0 ))
sleep 1
stop_reader
note "the group settled with 2 instances $settled_ms ms after the kill (session timeout 10 s)"
table "$A_URL"
check "demo-a and demo-b see 2 instances, each partition with one owner" test "$settled_ok" = 0
kill_stats=$(group windows "$WORK/sigkill.jsonl")
KILL_WINDOW=$(json 'd["longest_ms"]' <<<"$kill_stats")
KILL_MOVING=$(json 'd["moving"]' <<<"$kill_stats")
note "reader: $(json 'd["reads"]' <<<"$kill_stats") reads in $(json 'd["seconds"]' <<<"$kill_stats") s: $(json 'd["status"]' <<<"$kill_stats")"
note "503 partition_moving: $KILL_MOVING reads, on partitions $(json 'd["moving_partitions"]' <<<"$kill_stats")"
note "longest window of 503s: $KILL_WINDOW ms (partition $(json 'd["longest_partition"]' <<<"$kill_stats"), $(json 'd["longest_reads"]' <<<"$kill_stats") reads); per partition, ms: $(json 'd["per_partition_ms"]' <<<"$kill_stats")"
went_back=$(json 'd["went_back"]' <<<"$kill_stats")
if (( went_back > 0 )); then note "($went_back reads saw an account with fewer events applied than a read answered before them)"; fi
only_c() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if set(d["moving_partitions"]) <= {int(p) for p in sys.argv[2].split()} else 1)' "$kill_stats" "$c_owned"; }
check "only demo-c's partitions answered 503; the survivors' own never did" only_c
check "every 503 carried Retry-After" test "$(json 'd["no_retry_after"]' <<<"$kill_stats")" = 0
served_again() { (( $(json 'd["reads"]' <<<"$kill_stats") > 0 )) && [[ "$(json 'd["unclosed"]' <<<"$kill_stats")" == 0 ]]; }
check "every partition was served again before the reader stopped" served_again
check "no account read as 200 read as 404 afterwards" test "$(json 'len(d["back_to_404"])' <<<"$kill_stats")" = 0

# ---------------------------------------------------------------------------------------
say "5. The load's verification: every balance, command and transfer status matches its model; money conserved"
demo_wait_load
check "ledger load --verify through demo-a (exit $load_rc)" test "$load_rc" = 0

# ---------------------------------------------------------------------------------------
say "Summary"
note "$((CHECKS - FAILED)) of $CHECKS checks passed in $(( $(date +%s) - START )) s after the build"
note "scale-up to three: $SCALE_MOVING reads got 503 (longest window $SCALE_WINDOW ms): the old owner served until the new one caught up"
note "SIGKILL of demo-c: $KILL_MOVING reads got 503 partition_moving, longest window $KILL_WINDOW ms: its partitions"
note "waited for its session to time out and a survivor to catch up; no account went back to 404"
(( FAILED == 0 ))
