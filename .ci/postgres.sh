#!/usr/bin/env bash
# Install (Debian `postgresql`) and start a PostgreSQL server on loopback, with a database and a
# user for the multi-machine sweep tests (tests/sweeps/test_postgres.py, skipped without it).
# Safe to run again: every step checks before it acts.
#
# usage: sudo .ci/postgres.sh
#        export SPARSEBENCH_TEST_POSTGRES=postgresql://sparsebench:sparsebench@127.0.0.1:5432/sparsebench
#        pip install ".[postgres]"       # the drivers SQLAlchemy picks for postgresql://
set -euo pipefail

DB_USER="${PG_USER:-sparsebench}"
DB_PASSWORD="${PG_PASSWORD:-sparsebench}"
DB_NAME="${PG_DATABASE:-sparsebench}"

if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
    pg_createcluster "$VERSION" main
fi
# Loopback only: the tests and a single CI machine need nothing else.
sed -i "s/^#\?listen_addresses *=.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$VERSION/main/postgresql.conf"
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    pg_ctlcluster "$VERSION" main start
fi

as_postgres() { runuser -u postgres -- "$@"; }
for _ in $(seq 1 30); do
    as_postgres pg_isready -q -h 127.0.0.1 && break
    sleep 1
done
as_postgres pg_isready -h 127.0.0.1

if [ "$(as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]; then
    as_postgres psql -q -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'"
fi
if [ "$(as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
    as_postgres psql -q -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
fi

echo "postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:5432/$DB_NAME"
