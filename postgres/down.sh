#!/usr/bin/env bash
# Stop the PostgreSQL cluster postgres/up.sh started.
set -u
version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
[ -n "$version" ] && pg_ctlcluster "$version" main stop 2>/dev/null
echo "[postgres/down] stopped"
