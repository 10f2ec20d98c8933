#!/usr/bin/env bash
# Prints a Postgres URL the tests can use (a superuser connection to a
# maintenance database; each test creates its own database there).
# Uses the server on 127.0.0.1:5432 when it answers; otherwise installs the
# `postgresql` package if missing and starts a throwaway cluster in a temp
# directory on a free port, stopped again when the machine reboots or by
# `pg_ctl -D "$dir" stop`.
set -euo pipefail

ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "$1" -t 2; }

if [[ -z "${LINEAGED_PG_THROWAWAY:-}" ]] && ready 5432 && psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  echo "postgres://postgres@127.0.0.1:5432/postgres"
  exit 0
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$bindir" ]]; then
  echo "pg-throwaway: installing postgresql" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

dir=$(mktemp -d /tmp/lineaged-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run() { if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$dir"; su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
run "$bindir/initdb -D $dir/data -U postgres -A trust --no-sync" >&2
run "$bindir/pg_ctl -D $dir/data -o '-k $dir -p $port -c listen_addresses=127.0.0.1 -c fsync=off' -l $dir/log -w start" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
