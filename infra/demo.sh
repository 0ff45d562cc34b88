#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run via trap and wait_for look unreachable to shellcheck
# Fleet end-to-end demo on this machine (run from a clean checkout: `make demo`).
#
#  1. infra/services.sh up (RabbitMQ + PostgreSQL, installed/started if needed), then
#     infra/tls.sh local: a development CA (infra/dev-tls) whose certificate RabbitMQ
#     (AMQPS, 5671; management, 15671) and PostgreSQL serve; every hop of the demo is
#     TLS, verified against that CA: the API (https), the broker, the management API and
#     the database
#  2. cargo build --bins
#  3. starts 1 submitter, 1 dispatcher, 1 collector and 3 executors
#     (cpu-1, cpu-2: group cpu, capacity 2; gpu-1: group lab.gpu, label gpu=yes, capacity 1)
#     with their logs in $DEMO_DIR (a fresh temp dir, printed)
#  4. submits a job (hashes of repo files, uname on a gpu executor, a dependent task,
#     and one task that fails with "disk full" on stderr) with `fleetctl submit --wait`,
#     then shows `fleetctl results` and `fleetctl executors`, and checks the outcome
#     (the web console's address, https://localhost:7070/ui, and a token to sign in with
#     are printed once the fleet is up; the browser must trust infra/dev-tls/ca.pem, or
#     be told to go on)
#  5. stops everything it started, on any exit
#
# Exit code 0 when the job ran as expected (fleetctl exits 3: one task fails on purpose).
#
# Environment (optional):
#   FLEET_DEMO_PREFIX      AMQP prefix (default: demo)
#   FLEET_DEMO_PORT_BASE   first HTTP port; uses BASE..BASE+5 (default: 7070)
#   FLEET_DEMO_RELEASE=1   build and run the release binaries
#   FLEET_DEMO_STAY=1      after the check, keep the fleet running (for the web console)
#                          until Ctrl-C
#   FLEET_DEMO_READY_TIMEOUT (90) / FLEET_DEMO_JOB_TIMEOUT (300) / FLEET_DEMO_STOP_TIMEOUT (15) seconds
#   RUST_LOG               service log level (default: info)
set -euo pipefail

FLEET_LOG_TAG="demo"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=infra/lib.sh
. "$ROOT/infra/lib.sh"
cd "$ROOT"

PREFIX="${FLEET_DEMO_PREFIX:-demo}"
PORT_BASE="${FLEET_DEMO_PORT_BASE:-7070}"
READY_TIMEOUT="${FLEET_DEMO_READY_TIMEOUT:-90}"
JOB_TIMEOUT="${FLEET_DEMO_JOB_TIMEOUT:-300}"
STOP_TIMEOUT="${FLEET_DEMO_STOP_TIMEOUT:-15}"
EXPECTED_RC=3
EXPECTED_EXECUTORS='["cpu-1","cpu-2","gpu-1"]'
HASH_FILES=(Cargo.toml Makefile infra/lib.sh)
FAIL_TASK="disk-full"
FAIL_MESSAGE="disk full: cannot write /nonexistent"

# Processes started by this script (parallel arrays).
PIDS=()
NAMES=()
LOGS=()
ADDRS=()
DEMO_DIR=""
SHOWN=() # indexes of processes whose log tail was already shown

# --------------------------------------------------------------------------- process control

# is_alive PID : the process exists and is not a zombie.
is_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "$state" != Z ]]
}

# show_log INDEX : last lines of a process's log.
show_log() {
    local i="$1"
    SHOWN[i]=1
    warn "last lines of ${LOGS[$i]} (${NAMES[$i]}):"
    tail -n 30 "${LOGS[$i]}" 2>/dev/null | sed 's/^/    | /' >&2 || true
}

stop_all() {
    local i pid deadline
    local -a alive
    ((${#PIDS[@]} > 0)) || return 0
    say "stopping ${#PIDS[@]} processes (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s)"
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while true; do
        alive=()
        for i in "${!PIDS[@]}"; do
            if is_alive "${PIDS[$i]}"; then
                alive+=("$i")
            fi
        done
        ((${#alive[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            for i in "${alive[@]}"; do
                warn "${NAMES[$i]} (pid ${PIDS[$i]}) did not stop within ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "${PIDS[$i]}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    wait "${PIDS[@]}" 2>/dev/null || true
    PIDS=()
    say "all demo processes stopped"
}

on_exit() {
    local rc=$? i
    trap - EXIT INT TERM
    if ((rc != 0)); then
        # A service that died along the way is the likely cause: show its log.
        for i in "${!PIDS[@]}"; do
            if [[ "${LOGS[$i]}" != /dev/null && -z "${SHOWN[$i]:-}" ]] && ! is_alive "${PIDS[$i]}"; then
                warn "${NAMES[$i]} (pid ${PIDS[$i]}) is no longer running"
                show_log "$i"
            fi
        done
    fi
    stop_all
    if [[ -n "$DEMO_DIR" ]]; then
        say "logs: $DEMO_DIR"
    fi
    if ((rc == 0)); then
        say "DEMO OK: the job ran as expected"
    else
        say "DEMO FAILED (exit code $rc)"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_proc NAME BINARY HTTP_ADDR [VAR=VALUE...] : start BINARY in the background
# (the pid recorded is the binary's own: the subshell execs it).
start_proc() {
    local name="$1" bin="$2" addr="$3"
    shift 3
    local log="$DEMO_DIR/$name.log"
    (
        export FLEET_HTTP__ADDR="$addr"
        for kv in "$@"; do
            export "${kv?}"
        done
        exec "$BIN_DIR/$bin"
    ) >"$log" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
    LOGS+=("$log")
    ADDRS+=("$addr")
    say "started $name (pid $!, $addr, log $log)"
}

# track NAME PID : stop PID on exit too (a helper process without HTTP address or log).
track() {
    PIDS+=("$2")
    NAMES+=("$1")
    LOGS+=("/dev/null")
    ADDRS+=("-")
}

# wait_ready INDEX : wait for GET /readyz = 200; fail fast if the process exits. (The
# submitter's port is the API, over HTTPS; the others serve health and metrics only.)
wait_ready() {
    local i="$1"
    local url="http://${ADDRS[$i]}/readyz" deadline=$((SECONDS + READY_TIMEOUT))
    if [[ "${NAMES[$i]}" == submitter ]]; then
        url="$FLEET_ADDR/readyz"
    fi
    until http_ok "$url" --cacert "$TLS_DIR/ca.pem" 2>/dev/null; do
        if ! is_alive "${PIDS[$i]}"; then
            show_log "$i"
            die "${NAMES[$i]} exited before becoming ready"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$i"
            die "${NAMES[$i]} not ready at $url after ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done
    say "${NAMES[$i]} ready ($url)"
}

executors_alive() {
    "$FLEETCTL" executors -o json | jq -e --argjson want "$EXPECTED_EXECUTORS" '
        (if type == "array" then . else .executors end)
        | [.[] | select(.alive == true) | .executor_id] as $alive
        | ($want - $alive) == []' >/dev/null
}

# --------------------------------------------------------------------------- 1. services, build

ensure_cmds curl:curl jq:jq timeout:coreutils sha256sum:coreutils
need_cmd cargo "install Rust: https://rustup.rs"

say "step 1/5: services"
"$ROOT/infra/services.sh" up
TLS_DIR="${FLEET_TLS_DIR:-$ROOT/infra/dev-tls}"
"$ROOT/infra/tls.sh" local "$TLS_DIR"

say "step 2/5: build"
if [[ "${FLEET_DEMO_RELEASE:-0}" == 1 ]]; then
    PROFILE=release
    cargo build --release --bins
else
    PROFILE=debug
    cargo build --bins
fi
TARGET_DIR="$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)"
BIN_DIR="$TARGET_DIR/$PROFILE"
for bin in fleet-submitter fleet-dispatcher fleet-collector fleet-executor fleetctl; do
    [[ -x "$BIN_DIR/$bin" ]] || die "binary $BIN_DIR/$bin not found after cargo build"
done
FLEETCTL="$BIN_DIR/fleetctl"

# --------------------------------------------------------------------------- 2. fleet processes

say "step 3/5: start the fleet"
for port in $(seq "$PORT_BASE" $((PORT_BASE + 5))); do
    if tcp_open 127.0.0.1 "$port"; then
        die "port 127.0.0.1:$port is already in use (a fleet already running?); set FLEET_DEMO_PORT_BASE to use other ports"
    fi
done

DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fleet-demo.XXXXXX")"
say "DEMO_DIR=$DEMO_DIR (logs, job file)"

unset FLEET_EXECUTOR__ID FLEET_EXECUTOR__CAPACITY FLEET_EXECUTOR__GROUPS FLEET_EXECUTOR__LABELS
export RUST_LOG="${RUST_LOG:-info}"
# Every hop over TLS, each trusting the development CA only; the certificate names
# localhost, so that is the name every address uses.
export FLEET_AMQP__URL="amqps://guest:guest@localhost:5671/%2f"
export FLEET_AMQP__MANAGEMENT_URL="https://localhost:15671"
export FLEET_AMQP__CA_FILE="$TLS_DIR/ca.pem"
export FLEET_AMQP__PREFIX="$PREFIX"
export FLEET_DATABASE__URL="postgres://postgres@localhost:5432/fleet"
export FLEET_DATABASE__CA_FILE="$TLS_DIR/ca.pem"
export FLEET_DATABASE__SCHEMA="public"
export FLEET_EXECUTOR__CA_FILE="$TLS_DIR/ca.pem"
export FLEET_ADDR="https://localhost:$PORT_BASE"
export FLEET_CA_FILE="$TLS_DIR/ca.pem"
# The API wants a bearer token: the submitter's bootstrap admin token, which fleetctl
# sends as FLEET_TOKEN. A fresh random one per demo unless one is given.
if [[ -z "${FLEET_AUTH__ADMIN_TOKEN:-}" ]]; then
    FLEET_AUTH__ADMIN_TOKEN="demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
fi
export FLEET_AUTH__ADMIN_TOKEN
export FLEET_TOKEN="$FLEET_AUTH__ADMIN_TOKEN"
# The key that seals secret env values (the submitter seals, the dispatcher opens).
if [[ -z "${FLEET_SECRETS__KEY:-}" ]]; then
    FLEET_SECRETS__KEY="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
fi
export FLEET_SECRETS__KEY
say "AMQP prefix '$PREFIX', database fleet (schema public), API $FLEET_ADDR"

# Executors register (the default: the dispatcher gives work only to registered
# executors, each with a broker user of its own), each with a one-time join token made
# here with the admin token; their credentials are kept in DEMO_DIR.
# Each service connects as a broker user of its own, allowed only what it does (made
# now for this prefix, with fresh passwords, through the management API as the local
# administrator, guest); nothing the demo starts connects as guest. The submitter keeps
# guest for the management API only: it mints the executors' users.
# Given to the setup alone (not exported: each service gets only its own, in its URL).
PW_SUBMITTER="s-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
PW_DISPATCHER="d-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
PW_COLLECTOR="c-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
FLEET_BROKER_PASSWORD_SUBMITTER="$PW_SUBMITTER" FLEET_BROKER_PASSWORD_DISPATCHER="$PW_DISPATCHER" \
    FLEET_BROKER_PASSWORD_COLLECTOR="$PW_COLLECTOR" \
    "$BIN_DIR/fleet-submitter" setup-broker-users >&2 || die "fleet-submitter setup-broker-users failed"
broker_url() { # USER PASSWORD
    printf 'amqps://%s:%s@localhost:5671/%%2f' "$1" "$2"
}
unset FLEET_AMQP__URL
start_proc submitter fleet-submitter "127.0.0.1:$PORT_BASE" \
    FLEET_HTTP__TLS_CERT_FILE="$TLS_DIR/server.pem" FLEET_HTTP__TLS_KEY_FILE="$TLS_DIR/server-key.pem" \
    FLEET_AMQP__URL="$(broker_url "$PREFIX-submitter" "$PW_SUBMITTER")" \
    FLEET_AMQP__MANAGEMENT_USER=guest FLEET_AMQP__MANAGEMENT_PASSWORD=guest
start_proc dispatcher fleet-dispatcher "127.0.0.1:$((PORT_BASE + 1))" \
    FLEET_AMQP__URL="$(broker_url "$PREFIX-dispatcher" "$PW_DISPATCHER")"
start_proc collector fleet-collector "127.0.0.1:$((PORT_BASE + 2))" \
    FLEET_AMQP__URL="$(broker_url "$PREFIX-collector" "$PW_COLLECTOR")"
unset PW_SUBMITTER PW_DISPATCHER PW_COLLECTOR
for i in 0 1 2; do
    wait_ready "$i"
done

# A demo run before this one registered the same executor ids: revoke them (deleting
# their broker users), so that they can register again.
for id in cpu-1 cpu-2 gpu-1; do
    "$FLEETCTL" executor revoke "$id" >/dev/null 2>&1 || true
done

# executor_env ID GROUP : the variables that register executor ID with a new join token.
executor_env() {
    local join
    join="$("$FLEETCTL" executor join-token --group "$2" -o json | jq -r .token)" \
        || die "fleetctl executor join-token failed"
    printf '%s\n' "FLEET_EXECUTOR__ID=$1" \
        "FLEET_AMQP__URL=amqps://localhost:5671/%2f" \
        "FLEET_EXECUTOR__JOIN_TOKEN=$join" \
        "FLEET_EXECUTOR__REGISTER_URL=$FLEET_ADDR" \
        "FLEET_EXECUTOR__CREDENTIALS_FILE=$DEMO_DIR/$1.credentials.json"
}
mapfile -t cpu1 < <(executor_env cpu-1 cpu)
mapfile -t cpu2 < <(executor_env cpu-2 cpu)
mapfile -t gpu1 < <(executor_env gpu-1 lab.gpu)
start_proc cpu-1 fleet-executor "127.0.0.1:$((PORT_BASE + 3))" \
    "${cpu1[@]}" FLEET_EXECUTOR__GROUPS=cpu FLEET_EXECUTOR__CAPACITY=2
start_proc cpu-2 fleet-executor "127.0.0.1:$((PORT_BASE + 4))" \
    "${cpu2[@]}" FLEET_EXECUTOR__GROUPS=cpu FLEET_EXECUTOR__CAPACITY=2
start_proc gpu-1 fleet-executor "127.0.0.1:$((PORT_BASE + 5))" \
    "${gpu1[@]}" FLEET_EXECUTOR__GROUPS=lab.gpu FLEET_EXECUTOR__LABELS=gpu=yes FLEET_EXECUTOR__CAPACITY=1

for i in 3 4 5; do
    wait_ready "$i"
done

if ! wait_for -t "$READY_TIMEOUT" -m "fleetctl executors to list cpu-1, cpu-2, gpu-1 alive" executors_alive; then
    "$FLEETCTL" executors || true
    for i in 3 4 5; do
        show_log "$i"
    done
    die "the executors did not all register"
fi
say "3 executors alive"
say "web console: $FLEET_ADDR/ui   sign in with the admin token: $FLEET_TOKEN"

# --------------------------------------------------------------------------- 3. the job

say "step 4/5: run a job"
HASHES_JSON="$(
    for f in "${HASH_FILES[@]}"; do
        [[ -f "$f" ]] || die "repo file $f is missing"
        name="hash-$(printf '%s' "$f" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9' '-')"
        jq -cn --arg name "$name" --arg file "$f" --arg expect "$(sha256sum "$f")" \
            '{name: $name, file: $file, expect: $expect}'
    done | jq -cs .
)"
JOB_FILE="$DEMO_DIR/job.json"
jq -n --arg cwd "$ROOT" --argjson hashes "$HASHES_JSON" \
    --arg fail_task "$FAIL_TASK" --arg fail_msg "$FAIL_MESSAGE" '{
    name: "fleet-demo",
    tasks: (
        [$hashes[] | {name, argv: ["sha256sum", .file], cwd: $cwd, group: "cpu"}]
        + [
            {name: "uname-gpu", argv: ["uname", "-a"], group: "lab", labels: {gpu: "yes"}},
            {name: "count-lines", argv: ["wc", "-l", $hashes[0].file], cwd: $cwd, group: "cpu",
             depends_on: [$hashes[0].name]},
            {name: $fail_task, argv: ["sh", "-c", "echo \"\($fail_msg)\" >&2; exit 3"],
             group: "cpu", max_attempts: 1}
          ]
    )
}' >"$JOB_FILE"
say "job file $JOB_FILE (tasks):"
jq -c '.tasks[]' "$JOB_FILE" | sed 's/^/    /' >&2

say "fleetctl submit -f $JOB_FILE --wait   (expected exit code: $EXPECTED_RC, task '$FAIL_TASK' fails on purpose)"
SUBMIT_OUT="$DEMO_DIR/submit.out"
# fleetctl runs in the background (output shown live by tail) so that a signal to
# this script interrupts `wait` at once and the EXIT trap stops fleetctl too.
timeout "$JOB_TIMEOUT" "$FLEETCTL" submit -f "$JOB_FILE" --wait >"$SUBMIT_OUT" 2>&1 </dev/null &
submit_pid=$!
track fleetctl-submit "$submit_pid"
tail -n +1 -f --pid="$submit_pid" "$SUBMIT_OUT" &
tail_pid=$!
track tail "$tail_pid"
submit_rc=0
wait "$submit_pid" || submit_rc=$?
wait "$tail_pid" || true # tail: prints the rest of the output, then exits
say "fleetctl submit exited with $submit_rc"
if ((submit_rc == 124)); then
    die "the job did not finish within ${JOB_TIMEOUT}s (see the logs in $DEMO_DIR)"
fi

# The job id: the first UUID in fleetctl's output that the API knows as a job.
JOB_ID=""
mapfile -t uuids < <(grep -oiE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$SUBMIT_OUT" | awk '!seen[$0]++')
for id in "${uuids[@]}"; do
    if "$FLEETCTL" status "$id" >/dev/null 2>&1; then
        JOB_ID="$id"
        break
    fi
done
[[ -n "$JOB_ID" ]] || die "could not find the job id in the output of fleetctl submit ($SUBMIT_OUT)"
say "job id: $JOB_ID"

say "fleetctl results $JOB_ID"
"$FLEETCTL" results "$JOB_ID" || warn "fleetctl results exited with $?"
say "fleetctl executors"
"$FLEETCTL" executors || die "fleetctl executors failed"

# --------------------------------------------------------------------------- 4. check

say "step 5/5: check the outcome"
if ((submit_rc != EXPECTED_RC)); then
    if ((submit_rc == 0)); then
        die "fleetctl submit --wait exited 0, but task '$FAIL_TASK' should have failed (expected exit $EXPECTED_RC)"
    fi
    die "fleetctl submit --wait exited $submit_rc, expected $EXPECTED_RC"
fi

JOB_JSON="$(curl -fsS --max-time 10 --cacert "$TLS_DIR/ca.pem" -H "Authorization: Bearer $FLEET_TOKEN" "$FLEET_ADDR/v1/jobs/$JOB_ID")" || die "GET /v1/jobs/$JOB_ID failed"
RESULTS_JSON="$(curl -fsS --max-time 10 --cacert "$TLS_DIR/ca.pem" -H "Authorization: Bearer $FLEET_TOKEN" "$FLEET_ADDR/v1/jobs/$JOB_ID/results")" || die "GET /v1/jobs/$JOB_ID/results failed"
printf '%s\n' "$JOB_JSON" >"$DEMO_DIR/job-status.json"
printf '%s\n' "$RESULTS_JSON" >"$DEMO_DIR/job-results.json"

problems="$(jq -r --argjson res "$RESULTS_JSON" --argjson hashes "$HASHES_JSON" \
    --arg fail_task "$FAIL_TASK" --arg fail_msg "$FAIL_MESSAGE" '
    def task($n): .tasks[] | select(.name == $n);
    def result($n): [$res.results[] | select(.name == $n)];
    . as $job
    | ([$hashes[].name] + ["uname-gpu", "count-lines", $fail_task]) as $names
    | (if .state != "failed" then "job state is \(.state), expected failed" else empty end),
      (($names - [.tasks[].name])[] | "task \(.) is missing from the job"),
      (.tasks[] | select(.name != $fail_task and .state != "succeeded")
        | "task \(.name) is \(.state) (exit code \(.exit_code), error \(.error)), expected succeeded"),
      (task($fail_task) | select(.state != "failed" or .exit_code != 3)
        | "task \(.name) is \(.state) with exit code \(.exit_code), expected failed with exit code 3"),
      (result($fail_task) | if length == 0 then "no result for task \($fail_task)"
        elif (.[0].stderr // "" | contains($fail_msg)) | not then "stderr of task \($fail_task) lacks \"\($fail_msg)\""
        else empty end),
      (task("uname-gpu") | select(.executor_id != "gpu-1")
        | "task uname-gpu ran on \(.executor_id), expected gpu-1"),
      ($hashes[] as $h | result($h.name) | if length == 0 then "no result for task \($h.name)"
        elif (.[0].stdout // "" | rtrimstr("\n")) != $h.expect then
          "task \($h.name) printed \(.[0].stdout | tojson), expected \($h.expect | tojson)"
        elif (.[0].executor_id | IN("cpu-1", "cpu-2")) | not then
          "task \($h.name) ran on \(.[0].executor_id), expected cpu-1 or cpu-2"
        else empty end)
    ' <<<"$JOB_JSON")" || die "could not check the job (status and results saved in $DEMO_DIR)"

if [[ -n "$problems" ]]; then
    printf '%s\n' "$problems" | sed 's/^/    - /' >&2
    die "the job did not run as expected (status and results saved in $DEMO_DIR)"
fi
say "job $JOB_ID: hashes match, uname ran on gpu-1, the dependent task count-lines succeeded, '$FAIL_TASK' failed with exit 3 and its message on stderr"
say "web console: $FLEET_ADDR/ui   sign in with the admin token: $FLEET_TOKEN"
if [[ "${FLEET_DEMO_STAY:-0}" == 1 ]]; then
    say "FLEET_DEMO_STAY=1: the fleet keeps running; open $FLEET_ADDR/ui/jobs/$JOB_ID; Ctrl-C stops it"
    trap 'exit 0' INT TERM
    while true; do
        sleep 1 &
        wait $! || true
    done
fi
exit 0
