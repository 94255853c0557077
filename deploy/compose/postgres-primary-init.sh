#!/bin/bash
# Runs once, when the postgres:15 image initialises an empty data directory (mounted into
# /docker-entrypoint-initdb.d/). Prepares the primary for audit-db and for the streaming replica:
#  - pg_stat_statements (audit-db's index advisor reads it; the library is preloaded by the compose command),
#  - a replication role whose password comes from a secret file,
#  - a physical replication slot per replica, so the primary keeps the WAL a replica has not received yet,
#  - a pg_hba.conf line allowing that role to connect for replication (`all` does not cover replication).
set -euo pipefail

replication_password="$(cat "${REPLICATION_PASSWORD_FILE:?REPLICATION_PASSWORD_FILE is not set}")"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=repl_user="${REPLICATION_USER:-replicator}" --set=repl_password="$replication_password" \
    --set=slot="${REPLICATION_SLOT:-replica_1}" <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
SELECT pg_create_physical_replication_slot(:'slot');
SQL

echo "host replication ${REPLICATION_USER:-replicator} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
