#!/bin/bash
# Runs the compose PostgreSQL scripts for real, without Docker: a private primary cluster initialised the way the
# postgres:15 image does it (scram passwords, then /docker-entrypoint-initdb.d), postgres-primary-init.sh against
# it, then postgres-replica-entrypoint.sh cloning it (stand-ins for the image's `gosu` and
# `docker-entrypoint.sh`), and checks that the replica is a hot standby streaming through the slot and that a
# row written on the primary arrives. Needs PostgreSQL 15 server binaries; run as root (clusters run as
# `postgres`). Usage: bash deploy/compose/test-replica-scripts.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
primary_port="${PRIMARY_PORT_TEST:-55432}"
replica_port="${REPLICA_PORT_TEST:-55433}"
work="$(mktemp -d /tmp/audit-db-replica-test.XXXXXX)"
chmod 0755 "$work"
mkdir -p "$work/bin" "$work/secrets"
export PATH="$work/bin:$bin:$PATH"

cleanup() {
    for d in replica primary; do
        if [ -f "$work/$d/postmaster.pid" ]; then
            runuser -u postgres -- "$bin/pg_ctl" -D "$work/$d" -m immediate -w stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

printf 'test-only-postgres-password' >"$work/secrets/postgres_password"
printf 'test-only-replication-password' >"$work/secrets/replication_password"
chmod 0644 "$work/secrets/"*
chown -R postgres "$work"

# The primary, as the image initialises it: superuser `audit` with a scram password, database `audit`.
runuser -u postgres -- "$bin/initdb" -D "$work/primary" -U audit --auth=scram-sha-256 \
    --pwfile="$work/secrets/postgres_password" >/dev/null
# The replica connects from another container, which initdb's loopback-only replication lines do not cover: drop
# them, and add what the image adds (`host all all all scram-sha-256`, which does not match replication).
sed -i '/replication/d' "$work/primary/pg_hba.conf"
echo 'host all all all scram-sha-256' >>"$work/primary/pg_hba.conf"
cat >>"$work/primary/postgresql.conf" <<CONF
port = $primary_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
shared_preload_libraries = 'pg_stat_statements'
wal_level = replica
CONF
runuser -u postgres -- "$bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
export PGPASSWORD=test-only-postgres-password
psql -h "$work" -p "$primary_port" -U audit -d postgres -qc 'CREATE DATABASE audit'
runuser -u postgres -- env PATH="$PATH" PGHOST="$work" PGPORT="$primary_port" PGPASSWORD="$PGPASSWORD" \
    POSTGRES_USER=audit POSTGRES_DB=audit PGDATA="$work/primary" \
    REPLICATION_PASSWORD_FILE="$work/secrets/replication_password" \
    bash "$here/postgres-primary-init.sh" >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$work/primary" reload >/dev/null

# Stand-ins for what the image provides to the replica entrypoint.
cat >"$work/bin/gosu" <<'SH'
#!/bin/sh
user="$1"; shift
exec runuser -u "$user" -- env PATH="$PATH" PGPASSWORD="${PGPASSWORD:-}" "$@"
SH
cat >"$work/bin/docker-entrypoint.sh" <<SH
#!/bin/sh
shift  # "postgres"
exec runuser -u postgres -- env PATH="\$PATH" pg_ctl -D "\$PGDATA" -l "$work/replica.log" -w \
    -o "-p $replica_port -k $work \$*" start
SH
chmod 0755 "$work/bin/"*

unset PGPASSWORD
PRIMARY_HOST=127.0.0.1 PRIMARY_PORT="$primary_port" PGDATA="$work/replica" \
    REPLICATION_PASSWORD_FILE="$work/secrets/replication_password" \
    bash "$here/postgres-replica-entrypoint.sh" >"$work/replica-entrypoint.log" 2>&1 \
    || { cat "$work/replica-entrypoint.log"; exit 1; }

export PGPASSWORD=test-only-postgres-password
psql -h "$work" -p "$primary_port" -U audit -d audit -qc 'CREATE TABLE replica_check (x int); INSERT INTO replica_check VALUES (42)'
fail() { echo "FAIL: $*" >&2; exit 1; }
for _ in $(seq 1 50); do
    got="$(psql -h "$work" -p "$replica_port" -U audit -d audit -tAc 'SELECT x FROM replica_check' 2>/dev/null || true)"
    [ "$got" = 42 ] && break
    sleep 0.2
done
[ "$got" = 42 ] || fail "the row written on the primary did not reach the replica"
[ "$(psql -h "$work" -p "$replica_port" -U audit -d audit -tAc 'SELECT pg_is_in_recovery()')" = t ] \
    || fail "the replica is not in recovery"
[ "$(psql -h "$work" -p "$primary_port" -U audit -d audit -tAc \
    "SELECT active FROM pg_replication_slots WHERE slot_name = 'replica_1'")" = t ] \
    || fail "slot replica_1 is not in use"
[ "$(psql -h "$work" -p "$primary_port" -U audit -d audit -tAc \
    "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")" = 1 ] \
    || fail "pg_stat_statements is not installed on the primary"
psql -h "$work" -p "$replica_port" -U audit -d audit -qc 'INSERT INTO replica_check VALUES (1)' 2>/dev/null \
    && fail "the replica accepted a write"
echo "replica scripts: primary init + pg_basebackup replica streaming through slot replica_1: ok"
