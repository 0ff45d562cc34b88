#!/usr/bin/env bash
# TLS on every hop of docker-compose.yml, checked on its rendered configuration
# (`docker-compose config`, given as FILE or on stdin) and on the files it mounts. A
# grep-level check, run by `make compose-check`: it fails when a Fleet service's broker,
# management, database or API URL is plain or lacks the CA it is to trust, when the
# submitter serves no HTTPS, or when RabbitMQ or PostgreSQL would accept plain clients.
# It names what is wrong without printing values (the URLs hold passwords).
#
#   docker-compose config | infra/compose-tls-check.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rendered="$(cat "${1:-/dev/stdin}")"
bad=0
fail() {
    echo "compose-tls-check: $*" >&2
    bad=1
}

# Anywhere in the rendered file: no plain AMQP or HTTP URL, and no guest.
grep -q 'amqp://' <<<"$rendered" && fail "an amqp:// URL (AMQPS only: amqps://...:5671)"
grep -q 'http://' <<<"$rendered" && fail "an http:// URL (the API and management are https)"
grep -qi 'guest' <<<"$rendered" && fail "the guest user is mentioned"

# Per service: "KEY: value" lines of its environment, as `service KEY value`.
env_lines="$(awk '
    /^services:/ { in_services = 1; next }
    /^[^ ]/ { in_services = 0 }
    in_services && /^  [^ ]/ { svc = $1; sub(":$", "", svc); in_env = 0; next }
    in_services && /^    environment:/ { in_env = 1; next }
    in_services && /^    [^ ]/ { in_env = 0 }
    in_env && /^      [A-Z_0-9]+:/ { key = $1; sub(":$", "", key); $1 = ""; sub(/^ /, ""); print svc, key, $0 }
' <<<"$rendered")"
value() { awk -v s="$1" -v k="$2" '$1 == s && $2 == k { print $3 }' <<<"$env_lines"; }
services="$(awk '{ print $1 }' <<<"$env_lines" | sort -u)"
fleet=0
for s in $services; do
    url="$(value "$s" FLEET_AMQP__URL)"
    [[ -z "$url" ]] && continue
    fleet=$((fleet + 1))
    [[ "$url" == amqps://*:5671/* ]] || fail "$s: FLEET_AMQP__URL is not amqps://...:5671/"
    [[ -n "$(value "$s" FLEET_AMQP__CA_FILE)" ]] || fail "$s: no FLEET_AMQP__CA_FILE"
    m="$(value "$s" FLEET_AMQP__MANAGEMENT_URL)"
    [[ -z "$m" || "$m" == https://* ]] || fail "$s: FLEET_AMQP__MANAGEMENT_URL is not https"
    db="$(value "$s" FLEET_DATABASE__URL)"
    if [[ -n "$db" ]]; then
        [[ -n "$(value "$s" FLEET_DATABASE__CA_FILE)" ]] || fail "$s: no FLEET_DATABASE__CA_FILE"
        [[ "$db" == *sslmode=disable* ]] && fail "$s: FLEET_DATABASE__URL says sslmode=disable"
    fi
    r="$(value "$s" FLEET_EXECUTOR__REGISTER_URL)"
    if [[ -n "$r" ]]; then
        [[ "$r" == https://* ]] || fail "$s: FLEET_EXECUTOR__REGISTER_URL is not https"
        [[ -n "$(value "$s" FLEET_EXECUTOR__CA_FILE)" ]] || fail "$s: no FLEET_EXECUTOR__CA_FILE"
    fi
    # The API server (it holds the admin token) serves HTTPS.
    if [[ -n "$(value "$s" FLEET_AUTH__ADMIN_TOKEN)" ]]; then
        [[ -n "$(value "$s" FLEET_HTTP__TLS_CERT_FILE)" && -n "$(value "$s" FLEET_HTTP__TLS_KEY_FILE)" ]] \
            || fail "$s: serves the API without FLEET_HTTP__TLS_CERT_FILE/KEY_FILE"
    fi
done
[[ "$fleet" -ge 5 ]] || fail "found $fleet Fleet services with FLEET_AMQP__URL, expected 5 or more"

# The servers: RabbitMQ has no plain listener, PostgreSQL serves TLS and only TLS.
conf="$ROOT/infra/rabbitmq-tls.conf"
grep -q 'rabbitmq-tls.conf:/etc/rabbitmq/conf.d/' <<<"$rendered" || fail "rabbitmq: infra/rabbitmq-tls.conf not mounted"
grep -qx 'listeners.tcp = none' "$conf" || fail "$conf: no 'listeners.tcp = none'"
grep -q '^management\.tcp\.' "$conf" && fail "$conf: a plain management listener"
grep -Eq '^ *- ssl=on$' <<<"$rendered" || fail "postgres: no -c ssl=on"
grep -q 'hba_file=' <<<"$rendered" || fail "postgres: no hba_file (hostssl only)"
grep -Eq '^host(nossl)?[[:space:]]' "$ROOT/infra/postgres-hba.conf" \
    && fail "infra/postgres-hba.conf admits plain network connections"
# Published ports: never the plain AMQP or management ones.
grep -Eq ':(5672|15672)(/tcp)?$' <<<"$rendered" && fail "a plain RabbitMQ port (5672/15672) is published"
# Prometheus scrapes the submitter (its /metrics is on the HTTPS API port) over https.
awk '/job_name: fleet-submitter/ { on = 1; next } /job_name:/ { on = 0 } on' \
    "$ROOT/infra/prometheus.yml" | grep -q 'scheme: https' \
    || fail "infra/prometheus.yml: the fleet-submitter job does not scrape over https"

if [[ "$bad" -ne 0 ]]; then
    exit 1
fi
echo "compose-tls-check: TLS on every Fleet hop ($fleet services)" >&2
