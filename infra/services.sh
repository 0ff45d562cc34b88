#!/usr/bin/env bash
# Bring up (or report on) the local services Fleet needs: RabbitMQ (with the
# management plugin) and PostgreSQL (with the database "fleet").
#
#   infra/services.sh up       install if missing, start if stopped, wait until ready,
#                              enable rabbitmq_management, create the database (idempotent)
#   infra/services.sh status   report; exit 0 when everything is ready, 1 otherwise
#
# Environment (optional): FLEET_DB_NAME (fleet), FLEET_PG_PORT (5432),
# RABBITMQ_START_TIMEOUT (120), PG_START_TIMEOUT (60) seconds.
# Debian/Ubuntu only; needs root (or password-less sudo) to install/start.
set -euo pipefail

FLEET_LOG_TAG="services"
# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DB_NAME="${FLEET_DB_NAME:-fleet}"
PG_HOST="127.0.0.1"
PG_PORT="${FLEET_PG_PORT:-5432}"
AMQP_PORT=5672
MGMT_URL="http://127.0.0.1:15672/api/overview"
RABBITMQ_START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# --------------------------------------------------------------------------- RabbitMQ

rabbit_installed() {
    have_cmd rabbitmqctl && have_cmd rabbitmq-server
}

# Prints one of: running, booting, app-stopped, down.
rabbit_state() {
    if as_root rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
        echo running
    elif as_root rabbitmqctl -q ping >/dev/null 2>&1; then
        if as_root rabbitmq-diagnostics -q is_booting --formatter json 2>/dev/null \
            | grep -q '"result":true'; then
            echo booting
        else
            echo app-stopped
        fi
    else
        echo down
    fi
}

rabbit_running() {
    as_root rabbitmq-diagnostics -q check_running
}

mgmt_enabled() {
    as_root rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1
}

mgmt_http_ok() {
    http_ok "$MGMT_URL" -u guest:guest
}

rabbit_up() {
    if ! rabbit_installed; then
        apt_install rabbitmq-server
        say "RabbitMQ: installed (rabbitmq-server)"
    fi

    local state
    state="$(rabbit_state)"
    case "$state" in
        running)
            say "RabbitMQ: already running"
            ;;
        booting)
            say "RabbitMQ: node is booting"
            ;;
        app-stopped)
            say "RabbitMQ: node up but app stopped -> rabbitmqctl start_app"
            as_root rabbitmqctl start_app || die "rabbitmqctl start_app failed"
            ;;
        down)
            say "RabbitMQ: not running -> rabbitmq-server -detached"
            as_root rabbitmq-server -detached || die "rabbitmq-server -detached failed"
            ;;
        *)
            die "RabbitMQ: cannot determine the node state (need root or password-less sudo)"
            ;;
    esac
    if [[ "$state" != running ]]; then
        wait_for -t "$RABBITMQ_START_TIMEOUT" -i 2 -m "RabbitMQ to finish booting" rabbit_running \
            || die "RabbitMQ did not start; see /var/log/rabbitmq/ (and 'rabbitmqctl status')"
        say "RabbitMQ: started"
    fi
    wait_for -t 30 -m "AMQP port 127.0.0.1:$AMQP_PORT" tcp_open 127.0.0.1 "$AMQP_PORT" \
        || die "RabbitMQ runs but nothing listens on 127.0.0.1:$AMQP_PORT"

    if mgmt_enabled; then
        say "RabbitMQ: management plugin already enabled"
    else
        say "RabbitMQ: enabling management plugin"
        as_root rabbitmq-plugins enable rabbitmq_management >/dev/null \
            || die "rabbitmq-plugins enable rabbitmq_management failed"
        say "RabbitMQ: management plugin enabled"
    fi
    wait_for -t 60 -m "RabbitMQ management API ($MGMT_URL)" mgmt_http_ok \
        || die "RabbitMQ management API does not answer on $MGMT_URL"
    say "RabbitMQ: ready (amqp://127.0.0.1:$AMQP_PORT, management http://127.0.0.1:15672)"
}

rabbit_status() {
    local ok=0 state
    if ! rabbit_installed; then
        say "RabbitMQ: NOT INSTALLED"
        return 1
    fi
    state="$(rabbit_state)"
    say "RabbitMQ: $state"
    [[ "$state" == running ]] || ok=1
    if tcp_open 127.0.0.1 "$AMQP_PORT"; then
        say "RabbitMQ: AMQP port $AMQP_PORT open"
    else
        say "RabbitMQ: AMQP port $AMQP_PORT CLOSED"
        ok=1
    fi
    if [[ "$state" == running ]]; then
        if mgmt_enabled; then
            if mgmt_http_ok; then
                say "RabbitMQ: management plugin enabled, API answers on :15672"
            else
                say "RabbitMQ: management plugin enabled, API NOT answering on :15672"
                ok=1
            fi
        else
            say "RabbitMQ: management plugin NOT ENABLED"
            ok=1
        fi
    fi
    return "$ok"
}

# --------------------------------------------------------------------------- PostgreSQL

pg_installed() {
    have_cmd pg_ctlcluster && have_cmd pg_lsclusters && have_cmd psql \
        && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Prints "VERSION NAME STATUS" of the cluster on $PG_PORT (empty if none).
pg_cluster() {
    pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
}

# psql as user postgres over TCP, never prompting for a password.
pg_sql() {
    psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc "$1"
}

pg_trusts_tcp() {
    pg_sql 'SELECT 1' >/dev/null 2>&1
}

# pg_hba_add_trust FILE : put "trust" rules for local TCP before the first rule
# of FILE (pg_hba.conf is first-match), keeping a backup. Only adds missing lines.
pg_hba_add_trust() {
    local hba="$1" line
    local -a add=()
    for line in "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust"; do
        # shellcheck disable=SC2086 # split the rule into words on purpose
        if ! awk -v want="$(printf '%s ' $line)" '
                /^[[:space:]]*#/ { next }
                { $1 = $1; if ($0 " " == want) found = 1 }
                END { exit !found }' "$hba"; then
            add+=("$line")
        fi
    done
    if ((${#add[@]} == 0)); then
        return 0
    fi
    cp -p "$hba" "$hba.fleet-backup"
    local tmp="$hba.fleet-tmp"
    {
        awk -v lines="$(printf '%s\n' "${add[@]}")" '
            !done && !/^[[:space:]]*(#|$)/ {
                print "# added by fleet infra/services.sh: trust local TCP connections"
                print lines
                done = 1
            }
            { print }
            END {
                if (!done) {
                    print "# added by fleet infra/services.sh: trust local TCP connections"
                    print lines
                }
            }' "$hba"
    } >"$tmp"
    chown --reference="$hba" "$tmp" 2>/dev/null || true
    chmod --reference="$hba" "$tmp"
    mv "$tmp" "$hba"
}

pg_up() {
    if ! pg_installed; then
        apt_install postgresql
        say "PostgreSQL: installed (postgresql)"
    fi

    local cluster ver name status
    cluster="$(pg_cluster)"
    if [[ -z "$cluster" ]]; then
        if [[ -n "$(pg_lsclusters --no-header 2>/dev/null)" ]]; then
            pg_lsclusters >&2 || true
            die "PostgreSQL: no cluster on port $PG_PORT (set FLEET_PG_PORT or create one)"
        fi
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)"
        [[ -n "$ver" ]] || die "PostgreSQL: no server version found under /usr/lib/postgresql"
        say "PostgreSQL: no cluster -> pg_createcluster $ver main --port $PG_PORT"
        as_root pg_createcluster "$ver" main --port "$PG_PORT" >/dev/null \
            || die "pg_createcluster failed"
        cluster="$(pg_cluster)"
        [[ -n "$cluster" ]] || die "PostgreSQL: cluster was not created"
    fi
    read -r ver name status <<<"$cluster"

    if [[ "$status" == online* ]]; then
        say "PostgreSQL: cluster $ver/$name already running"
    else
        say "PostgreSQL: cluster $ver/$name is $status -> pg_ctlcluster start"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start \
            || die "pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
    fi
    wait_for -t "$PG_START_TIMEOUT" -m "PostgreSQL on $PG_HOST:$PG_PORT (pg_isready)" pg_ready \
        || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT; see /var/log/postgresql/postgresql-$ver-$name.log"
    [[ "$status" == online* ]] || say "PostgreSQL: started"

    if ! pg_trusts_tcp; then
        local hba="/etc/postgresql/$ver/$name/pg_hba.conf"
        [[ -f "$hba" ]] || die "PostgreSQL: user postgres cannot connect over TCP and $hba does not exist"
        say "PostgreSQL: user postgres cannot connect over TCP without a password -> adding trust rules to $hba"
        as_root bash -c "$(declare -f pg_hba_add_trust); pg_hba_add_trust \"\$1\"" _ "$hba" \
            || die "could not edit $hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload \
            || die "pg_ctlcluster $ver $name reload failed"
        wait_for -t 15 -m "PostgreSQL to trust local TCP connections" pg_sql 'SELECT 1' \
            || die "user postgres still cannot connect to $PG_HOST:$PG_PORT; check $hba"
        say "PostgreSQL: local TCP connections trusted (backup: $hba.fleet-backup)"
    fi

    if [[ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" == 1 ]]; then
        say "PostgreSQL: database '$DB_NAME' already exists"
    else
        say "PostgreSQL: creating database '$DB_NAME'"
        if ! createdb -w -h "$PG_HOST" -p "$PG_PORT" -U postgres "$DB_NAME"; then
            # Tolerate a concurrent creation.
            [[ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" == 1 ]] \
                || die "createdb $DB_NAME failed"
        fi
        say "PostgreSQL: database '$DB_NAME' created"
    fi
    say "PostgreSQL: ready (postgres://postgres@$PG_HOST:$PG_PORT/$DB_NAME)"
}

pg_status() {
    local ok=0 cluster
    if ! pg_installed; then
        say "PostgreSQL: NOT INSTALLED"
        return 1
    fi
    cluster="$(pg_cluster)"
    if [[ -z "$cluster" ]]; then
        say "PostgreSQL: NO CLUSTER on port $PG_PORT"
        return 1
    fi
    say "PostgreSQL: cluster $(awk '{ print $1 "/" $2 ": " $3 }' <<<"$cluster")"
    if ! pg_ready; then
        say "PostgreSQL: NOT accepting connections on $PG_HOST:$PG_PORT"
        return 1
    fi
    say "PostgreSQL: accepting connections on $PG_HOST:$PG_PORT"
    if ! pg_trusts_tcp; then
        say "PostgreSQL: user postgres CANNOT connect over TCP without a password"
        return 1
    fi
    if [[ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" == 1 ]]; then
        say "PostgreSQL: database '$DB_NAME' exists"
    else
        say "PostgreSQL: database '$DB_NAME' MISSING"
        ok=1
    fi
    return "$ok"
}

# --------------------------------------------------------------------------- main

cmd_up() {
    local start=$SECONDS
    ensure_cmds curl:curl
    rabbit_up
    pg_up
    say "services up ($((SECONDS - start))s): RabbitMQ amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f, PostgreSQL postgres://postgres@$PG_HOST:$PG_PORT/$DB_NAME"
}

cmd_status() {
    local ok=0
    have_cmd curl || warn "curl not installed: cannot check the management API"
    rabbit_status || ok=1
    pg_status || ok=1
    if ((ok == 0)); then
        say "status: all services ready"
    else
        say "status: NOT READY (run: infra/services.sh up)"
    fi
    return "$ok"
}

case "${1:-up}" in
    up) cmd_up ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
