#!/usr/bin/env bash
# Writes .env for docker-compose (which reads it by itself): every secret the compose
# fleet needs, each random, readable by its owner only. In an existing .env, the secrets
# there are kept (the running fleet and its volumes know them) and missing ones added.
#
#   infra/compose-env.sh [PATH]    (default: .env beside docker-compose.yml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.env}"
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
# name bytes what: every secret the compose fleet needs.
secrets=(
    "FLEET_ADMIN_TOKEN 16 the API's bootstrap admin token"
    "FLEET_SECRETS_KEY 32 seals secret env values"
    "FLEET_BOOTSTRAP_SECRET 16 executors register with it"
    "FLEET_BROKER_ADMIN_PASSWORD 16 RabbitMQ's administrator (fleet-admin)"
    "FLEET_BROKER_PASSWORD_SUBMITTER 16 the submitter's own broker user"
    "FLEET_BROKER_PASSWORD_DISPATCHER 16 the dispatcher's own broker user"
    "FLEET_BROKER_PASSWORD_COLLECTOR 16 the collector's own broker user"
)
if [[ ! -e "$OUT" ]]; then
    echo "# Written by infra/compose-env.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep it secret." >"$OUT"
fi
added=0
for s in "${secrets[@]}"; do
    read -r name bytes what <<<"$s"
    # A secret already there is kept: the running fleet and its volumes know it.
    if ! grep -q "^$name=" "$OUT"; then
        printf '# %s\n%s=%s\n' "$what" "$name" "$(hex "$bytes")" >>"$OUT"
        added=$((added + 1))
    fi
done
echo "compose-env: $OUT: $added secret(s) added, the others kept" >&2
