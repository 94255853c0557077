#!/bin/bash
# Entrypoint of the compose read replica (postgres:15 image). On first start (empty data directory) it clones
# the primary with pg_basebackup, streaming WAL during the copy (-X stream) and writing standby.signal plus
# primary_conninfo (-R) so PostgreSQL starts as a hot standby that follows the primary through the slot the
# primary's init script created. Later starts reuse the data directory. Then it hands over to the image's own
# entrypoint, which drops to the postgres user and runs the server.
set -euo pipefail

: "${PRIMARY_HOST:?PRIMARY_HOST is not set}"
: "${REPLICATION_PASSWORD_FILE:?REPLICATION_PASSWORD_FILE is not set}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICATION_USER="${REPLICATION_USER:-replicator}"
REPLICATION_SLOT="${REPLICATION_SLOT:-replica_1}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    PGPASSWORD="$(cat "$REPLICATION_PASSWORD_FILE")"
    export PGPASSWORD
    until gosu postgres pg_isready --host "$PRIMARY_HOST" --port "$PRIMARY_PORT" --username "$REPLICATION_USER"; do
        echo "waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
        sleep 1
    done
    gosu postgres pg_basebackup --host "$PRIMARY_HOST" --port "$PRIMARY_PORT" --username "$REPLICATION_USER" \
        --pgdata "$PGDATA" --wal-method stream --write-recovery-conf --slot "$REPLICATION_SLOT" \
        --checkpoint fast --no-password --verbose
    unset PGPASSWORD
fi

exec docker-entrypoint.sh postgres -c hot_standby=on -c hot_standby_feedback=on "$@"
