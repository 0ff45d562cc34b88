#!/usr/bin/env bash
# Stop the local RabbitMQ and PostgreSQL (to test that "make demo" / infra/services.sh up
# bring them back).
#
#   infra/stop-services.sh [all|rabbitmq|rabbitmq-app|postgres]
#
#   all           stop the RabbitMQ node and the PostgreSQL cluster (default)
#   rabbitmq      stop the RabbitMQ node (Erlang VM included)
#   rabbitmq-app  rabbitmqctl stop_app only: node stays up, app stopped
#   postgres      stop the PostgreSQL cluster on port FLEET_PG_PORT (5432)
set -euo pipefail

FLEET_LOG_TAG="stop-services"
# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_PORT="${FLEET_PG_PORT:-5432}"

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

rabbit_node_down() {
    ! as_root rabbitmqctl -q ping >/dev/null 2>&1
}

pg_down() {
    ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
}

rabbit_app_stopped() {
    ! as_root rabbitmq-diagnostics -q check_running >/dev/null 2>&1
}

stop_rabbitmq() {
    if ! have_cmd rabbitmqctl; then
        say "RabbitMQ: not installed, nothing to stop"
        return 0
    fi
    if rabbit_node_down; then
        say "RabbitMQ: node already stopped"
        return 0
    fi
    say "RabbitMQ: rabbitmqctl shutdown"
    as_root rabbitmqctl -q shutdown --timeout 60 || warn "rabbitmqctl shutdown reported an error"
    wait_for -t 60 -m "the RabbitMQ node to stop" rabbit_node_down \
        || die "RabbitMQ node is still up"
    say "RabbitMQ: stopped"
}

stop_rabbitmq_app() {
    need_cmd rabbitmqctl "RabbitMQ is not installed"
    if rabbit_node_down; then
        die "RabbitMQ node is not running: cannot leave it 'up with the app stopped'"
    fi
    if rabbit_app_stopped; then
        say "RabbitMQ: app already stopped (node up)"
        return 0
    fi
    say "RabbitMQ: rabbitmqctl stop_app"
    as_root rabbitmqctl -q stop_app || die "rabbitmqctl stop_app failed"
    wait_for -t 60 -m "the RabbitMQ app to stop" rabbit_app_stopped \
        || die "RabbitMQ app is still running"
    say "RabbitMQ: app stopped, node still up"
}

stop_postgres() {
    if ! have_cmd pg_lsclusters; then
        say "PostgreSQL: not installed, nothing to stop"
        return 0
    fi
    local ver name status
    read -r ver name status < <(pg_lsclusters --no-header | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }') || true
    if [[ -z "${ver:-}" ]]; then
        say "PostgreSQL: no cluster on port $PG_PORT, nothing to stop"
        return 0
    fi
    if [[ "$status" != online* ]]; then
        say "PostgreSQL: cluster $ver/$name already $status"
        return 0
    fi
    say "PostgreSQL: pg_ctlcluster $ver $name stop"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop -m fast \
        || die "pg_ctlcluster $ver $name stop failed"
    wait_for -t 60 -m "PostgreSQL to stop" pg_down \
        || die "PostgreSQL still accepts connections on port $PG_PORT"
    say "PostgreSQL: stopped"
}

case "${1:-all}" in
    all)
        stop_rabbitmq
        stop_postgres
        ;;
    rabbitmq) stop_rabbitmq ;;
    rabbitmq-app) stop_rabbitmq_app ;;
    postgres) stop_postgres ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
