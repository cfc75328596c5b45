#!/usr/bin/env bash
# Start a real PostgreSQL server for the storage tests and CI (Debian, root, no systemd), with
# a role and a database for tunevlseg. Idempotent.
#
#   PG_USER=tvls PG_DB=tvls PG_PASSWORD=tvls-dev PG_PORT=5432
#
# The tests connect as postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB with PGPASSWORD set:
# the password never appears in a URL.
set -euo pipefail
PG_USER=${PG_USER:-tvls}
PG_DB=${PG_DB:-tvls}
PG_PASSWORD=${PG_PASSWORD:-tvls-dev}
PG_PORT=${PG_PORT:-5432}
say() { echo "[postgres/up $(date +%T)] $*"; }

if ! dpkg -s postgresql >/dev/null 2>&1; then
  say "installing postgresql"
  mkdir -p /var/log/tvls
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; } \
    >/var/log/tvls/postgres-apt.log 2>&1 || { tail -30 /var/log/tvls/postgres-apt.log; exit 1; }
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$version main" \
  || pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
# max_connections well above the concurrency tests' 16 workers (one connection each).
pg_conftool "$version" main set max_connections 200 >/dev/null
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.2; done
pg_isready -h 127.0.0.1 -p "$PG_PORT"
runuser -u postgres -- psql -q -p "$PG_PORT" -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
runuser -u postgres -- psql -q -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1 \
  || runuser -u postgres -- createdb -p "$PG_PORT" -O "$PG_USER" "$PG_DB"
say "PostgreSQL $version up on port $PG_PORT: database $PG_DB, role $PG_USER"
