#!/usr/bin/env bash
# Development TLS for Fleet: a private CA and a server certificate signed by it, and
# the local RabbitMQ and PostgreSQL set up to serve TLS with them.
#
#   infra/tls.sh make [DIR]    make DIR/ca.pem, ca-key.pem, server.pem, server-key.pem
#                              (DIR: infra/dev-tls). Kept if they exist and are valid
#                              for 30 more days; FLEET_TLS_FORCE=1 makes new ones.
#   infra/tls.sh local [DIR]   make them if needed, then serve TLS with them locally:
#                              RabbitMQ AMQPS on 127.0.0.1:5671 and its management API
#                              on https://127.0.0.1:15671 (restarts the node if its
#                              configuration changed), and PostgreSQL's certificate
#                              (reloaded, no restart). Plain ports stay open.
#   infra/tls.sh status [DIR]  exit 0 when the local services serve DIR's certificate
#
# The server certificate names localhost, 127.0.0.1, ::1 and the compose service names
# (rabbitmq, postgres, submitter), plus FLEET_TLS_EXTRA_SANS ("DNS:a,IP:10.0.0.5").
# The CA's key stays in DIR: it is a development CA. Bring your own in production
# (README, "TLS").
set -euo pipefail

FLEET_LOG_TAG="tls"
# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
DIR="${2:-$ROOT/infra/dev-tls}"
INSTALLED=/etc/fleet-tls
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
PG_PORT="${FLEET_PG_PORT:-5432}"
BEGIN_MARK="# BEGIN fleet TLS (infra/tls.sh)"
END_MARK="# END fleet TLS"

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

valid_for_30_days() {
    [[ -s "$1" ]] && openssl x509 -in "$1" -noout -checkend $((30 * 86400)) >/dev/null 2>&1
}

make_certs() {
    need_cmd openssl "apt-get install -y openssl"
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [[ -z "${FLEET_TLS_FORCE:-}" ]] && valid_for_30_days "$DIR/ca.pem" \
        && valid_for_30_days "$DIR/server.pem" && [[ -s "$DIR/server-key.pem" ]] \
        && openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1; then
        say "certificates in $DIR are valid; kept"
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'; trap - RETURN" RETURN
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
        -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" \
        -subj "/O=Fleet development/CN=Fleet development CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 \
        -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" \
        -subj "/O=Fleet development/CN=localhost" 2>/dev/null
    local sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:rabbitmq,DNS:postgres,DNS:submitter"
    sans+="${FLEET_TLS_EXTRA_SANS:+,$FLEET_TLS_EXTRA_SANS}"
    printf '%s\n' "subjectAltName=$sans" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" >"$tmp/server.ext"
    openssl x509 -req -sha256 -days 825 -in "$tmp/server.csr" \
        -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" -CAcreateserial \
        -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null
    chmod 600 "$tmp/ca-key.pem" "$tmp/server-key.pem"
    chmod 644 "$tmp/ca.pem" "$tmp/server.pem"
    mv "$tmp/ca.pem" "$tmp/ca-key.pem" "$tmp/server.pem" "$tmp/server-key.pem" "$DIR/"
    say "made a development CA and a server certificate ($sans) in $DIR"
}

# The certificate and a key copy each service may read (both refuse a key others can).
install_for_services() {
    as_root mkdir -p "$INSTALLED"
    as_root chmod 755 "$INSTALLED"
    as_root install -m 644 "$DIR/ca.pem" "$INSTALLED/ca.pem"
    as_root install -m 644 "$DIR/server.pem" "$INSTALLED/server.pem"
    if id rabbitmq >/dev/null 2>&1; then
        as_root install -m 600 -o rabbitmq "$DIR/server-key.pem" "$INSTALLED/rabbitmq-key.pem"
    fi
    if id postgres >/dev/null 2>&1; then
        as_root install -m 600 -o postgres "$DIR/server-key.pem" "$INSTALLED/postgres-key.pem"
    fi
}

rabbit_block() {
    cat <<EOF
$BEGIN_MARK
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $INSTALLED/ca.pem
ssl_options.certfile = $INSTALLED/server.pem
ssl_options.keyfile = $INSTALLED/rabbitmq-key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.tcp.port = 15672
management.ssl.port = 15671
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = $INSTALLED/ca.pem
management.ssl.certfile = $INSTALLED/server.pem
management.ssl.keyfile = $INSTALLED/rabbitmq-key.pem
$END_MARK
EOF
}

rabbit_local() {
    as_root touch "$RABBIT_CONF"
    local current wanted
    current="$(awk -v b="$BEGIN_MARK" -v e="$END_MARK" '$0==b{on=1} on{print} $0==e{on=0}' "$RABBIT_CONF")"
    wanted="$(rabbit_block)"
    if [[ "$current" == "$wanted" ]] && tcp_open 127.0.0.1 5671; then
        # The files may be new (another checkout's CA): Erlang caches PEM files, so
        # drop its cache, then check that the broker serves DIR's certificate.
        as_root rabbitmqctl -q eval 'ssl:clear_pem_cache().' >/dev/null 2>&1 || true
        if wait_for -t 15 -m "RabbitMQ to serve $DIR's certificate" amqps_serves_ours; then
            say "RabbitMQ: already serves AMQPS on 127.0.0.1:5671"
            return 0
        fi
        say "RabbitMQ: serves another certificate; restarting it"
    fi
    local tmp
    tmp="$(mktemp)"
    awk -v b="$BEGIN_MARK" -v e="$END_MARK" '$0==b{skip=1} !skip{print} $0==e{skip=0}' \
        "$RABBIT_CONF" >"$tmp"
    printf '%s\n' "$wanted" >>"$tmp"
    as_root install -m 644 "$tmp" "$RABBIT_CONF"
    rm -f "$tmp"
    say "RabbitMQ: TLS listeners configured in $RABBIT_CONF; restarting the node"
    # A node reads its listeners at boot only.
    as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
    "$ROOT/infra/services.sh" up
    wait_for -t 60 -m "AMQPS on 127.0.0.1:5671" tcp_open 127.0.0.1 5671 \
        || die "RabbitMQ does not listen on 5671; see /var/log/rabbitmq/"
    say "RabbitMQ: AMQPS on 127.0.0.1:5671, management https://127.0.0.1:15671"
}

pg_sql() {
    psql -X -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc "$1"
}

pg_local() {
    pg_sql "ALTER SYSTEM SET ssl = on" >/dev/null
    pg_sql "ALTER SYSTEM SET ssl_cert_file = '$INSTALLED/server.pem'" >/dev/null
    pg_sql "ALTER SYSTEM SET ssl_key_file = '$INSTALLED/postgres-key.pem'" >/dev/null
    pg_sql "SELECT pg_reload_conf()" >/dev/null
    # The reload is asynchronous: wait until new connections are served with it.
    wait_for -t 30 -m "PostgreSQL to serve the certificate" pg_serves_ours \
        || die "PostgreSQL does not serve $INSTALLED/server.pem; see its log"
    say "PostgreSQL: TLS with the development certificate (verify-full as localhost)"
}

pg_serves_ours() {
    PGSSLMODE=verify-full PGSSLROOTCERT="$DIR/ca.pem" \
        psql -X -w "host=localhost port=$PG_PORT user=postgres dbname=postgres" \
        -tAc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null | grep -q t
}

amqps_serves_ours() {
    echo | openssl s_client -connect 127.0.0.1:5671 -servername localhost \
        -verify_return_error -CAfile "$DIR/ca.pem" >/dev/null 2>&1
}

status() {
    local ok=0
    if amqps_serves_ours; then say "RabbitMQ: AMQPS on 5671 with $DIR's CA"; else
        say "RabbitMQ: no AMQPS on 5671 with $DIR's CA"
        ok=1
    fi
    if pg_serves_ours; then say "PostgreSQL: TLS with $DIR's CA"; else
        say "PostgreSQL: no TLS with $DIR's CA"
        ok=1
    fi
    return "$ok"
}

case "$CMD" in
    make) make_certs ;;
    local)
        make_certs
        install_for_services
        rabbit_local
        pg_local
        ;;
    status) status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
