#!/usr/bin/env bash
# Writes .env for docker-compose (which reads it by itself): every secret the compose
# fleet needs, each random, readable by its owner only. In an existing .env, the secrets
# there are kept (the running fleet and its volumes know them) and missing ones added.
# It also records FLEET_TLS_DIR, the certificates every hop's TLS uses, and makes them:
#
#   infra/compose-env.sh [PATH]    (default: .env beside docker-compose.yml)
#
# FLEET_TLS_DIR (default ./infra/dev-tls, relative to docker-compose.yml) holds ca.pem,
# server.pem and server-key.pem. A directory without them gets a development CA and a
# certificate for rabbitmq, postgres and submitter (infra/tls.sh make; the default one is
# renewed when due). Bring your own: `FLEET_TLS_DIR=/path infra/compose-env.sh` (or edit
# .env) with a directory holding ca.pem (the CA the services trust), server.pem (the
# chain, first a certificate naming rabbitmq, postgres and submitter) and its key
# server-key.pem; these are used as they are.
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
# umask covers a new file only: one written before (or by hand) is made private too.
chmod 600 "$OUT"
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

# The certificates: FLEET_TLS_DIR as .env has it, else as given, else the default.
if ! grep -q "^FLEET_TLS_DIR=" "$OUT"; then
    printf '# %s\n%s=%s\n' "TLS on every hop: ca.pem, server.pem, server-key.pem" \
        FLEET_TLS_DIR "${FLEET_TLS_DIR:-./infra/dev-tls}" >>"$OUT"
fi
tls_dir="$(sed -n 's/^FLEET_TLS_DIR=//p' "$OUT" | tail -n 1)"
# docker-compose reads a relative path from docker-compose.yml's directory.
case "$tls_dir" in
    /*) abs="$tls_dir" ;;
    *) abs="$ROOT/${tls_dir#./}" ;;
esac
have=0
for f in ca.pem server.pem server-key.pem; do
    [[ -s "$abs/$f" ]] && have=$((have + 1))
done
if [[ "$abs" -ef "$ROOT/infra/dev-tls" || "$have" -eq 0 ]]; then
    # Development certificates: made if missing, kept while valid (infra/tls.sh).
    "$ROOT/infra/tls.sh" make "$abs"
elif [[ "$have" -eq 3 ]]; then
    echo "compose-env: TLS from $abs (yours: kept as is)" >&2
else
    echo "compose-env: $abs needs ca.pem, server.pem and server-key.pem (or none of them," \
        "for a development CA)" >&2
    exit 1
fi
