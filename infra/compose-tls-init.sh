#!/bin/sh
# docker-compose's one-shot tls-init service (image postgres:15, as root, no network):
# copies FLEET_TLS_DIR (mounted at /tls-src, read-only) into two volumes, so that each
# container can read what it needs whoever owns the host's files (infra/tls.sh makes
# the key mode 600, readable by the host user only):
#   tls       ca.pem, server.pem (0644): every service, and Prometheus
#   tls-keys  the server key, one copy per reader, each 0600 and owned by it: RabbitMQ
#             (uid 999 in rabbitmq:3-management), PostgreSQL (uid 999 in postgres:15;
#             it refuses a key others can read) and the submitter (uid 10001, the
#             fleet user of our image). Executors, whose tasks run as that same user,
#             do not mount tls-keys.
# It runs at every `docker-compose up`, so a renewed certificate is taken up when the
# services restart.
set -eu
SRC="${FLEET_TLS_SRC:-/tls-src}"
PUB="${FLEET_TLS_PUB:-/tls}"
KEYS="${FLEET_TLS_KEYS:-/tls-keys}"
for f in ca.pem server.pem server-key.pem; do
    if [ ! -s "$SRC/$f" ]; then
        echo "tls-init: no $f in FLEET_TLS_DIR: run infra/compose-env.sh (it makes a" \
            "development CA), or point FLEET_TLS_DIR at ca.pem, server.pem, server-key.pem" >&2
        exit 1
    fi
done
chmod 755 "$PUB"
install -m 644 "$SRC/ca.pem" "$PUB/ca.pem"
install -m 644 "$SRC/server.pem" "$PUB/server.pem"
chmod 711 "$KEYS"
install -m 600 -o 999 -g 999 "$SRC/server-key.pem" "$KEYS/rabbitmq-key.pem"
install -m 600 -o 999 -g 999 "$SRC/server-key.pem" "$KEYS/postgres-key.pem"
install -m 600 -o 10001 -g 10001 "$SRC/server-key.pem" "$KEYS/submitter-key.pem"
echo "tls-init: certificate and keys in place" >&2
