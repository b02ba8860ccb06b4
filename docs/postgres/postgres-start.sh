#!/bin/sh
# Makes the cluster on the first start (database and user `locker`), then runs PostgreSQL in
# the foreground. Durability settings stay PostgreSQL's defaults (fsync and synchronous_commit
# on), which locker relies on: a 200 means committed.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U locker --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 -E UTF8
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    createdb -U locker locker
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
