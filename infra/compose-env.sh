#!/usr/bin/env bash
# Writes .env for docker-compose (which reads it by itself): every secret the compose
# fleet needs, each random, readable by its owner only. An existing .env is kept as it
# is (its secrets are what the running fleet and its volumes know).
#
#   infra/compose-env.sh [PATH]    (default: .env beside docker-compose.yml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.env}"
if [[ -e "$OUT" ]]; then
    echo "compose-env: $OUT exists; keeping it" >&2
    exit 0
fi
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
{
    echo "# Written by infra/compose-env.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep it secret."
    echo "FLEET_ADMIN_TOKEN=$(hex 16)"                 # the API's bootstrap admin token
    echo "FLEET_SECRETS_KEY=$(hex 32)"                 # seals secret env values
    echo "FLEET_BOOTSTRAP_SECRET=$(hex 16)"            # executors register with it
    echo "FLEET_BROKER_ADMIN_PASSWORD=$(hex 16)"       # RabbitMQ's administrator
    echo "FLEET_BROKER_PASSWORD_SUBMITTER=$(hex 16)"   # each service's own broker user
    echo "FLEET_BROKER_PASSWORD_DISPATCHER=$(hex 16)"
    echo "FLEET_BROKER_PASSWORD_COLLECTOR=$(hex 16)"
} >"$OUT"
echo "compose-env: wrote $OUT" >&2
