#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the shared-store tests and benchmarks.
#
#   bash .ci/pg.sh start   # prints `export EMAFUSION_TEST_PG_URL=...` (eval it)
#   bash .ci/pg.sh stop    # stops the cluster and deletes its data directory
#   bash .ci/pg.sh url     # the running cluster's URL (empty when none)
#
# Never runs the server as root: as root it creates the unprivileged user $PG_USER (default
# emafusion-pg) and runs initdb / pg_ctl as that user; otherwise it runs as you. The data
# directory is a fresh temp directory, the server listens on 127.0.0.1 only, on a free port,
# with its socket in the data directory. Authentication is `trust` for 127.0.0.1: the cluster
# is for tests on this machine, never for data. State lives in $PG_STATE_DIR (default .pg/).
# Installs the distribution's `postgresql` package when no server binaries are found (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR="${PG_STATE_DIR:-$PWD/.pg}"
PG_USER="${PG_USER:-emafusion-pg}"
DB_NAME="${PG_DB:-emafusion_test}"

say() { echo "pg.sh: $*" >&2; }

find_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$dir" ]] && command -v pg_ctl >/dev/null 2>&1; then
    dir="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  fi
  echo "$dir"
}

as_owner() {  # run a command as the cluster's owner
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

start() {
  if [[ -f "$STATE_DIR/url" ]] && url="$(cat "$STATE_DIR/url")" && [[ -n "$url" ]] \
      && as_owner "$(cat "$STATE_DIR/bin")/pg_ctl" -D "$(cat "$STATE_DIR/data")" status >/dev/null 2>&1; then
    say "already running at $url"
    echo "export EMAFUSION_TEST_PG_URL='$url'"
    return
  fi
  local bin
  bin="$(find_bin)"
  if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
    if [[ "$(id -u)" != 0 ]]; then
      say "no PostgreSQL server binaries found; install the 'postgresql' package"; exit 1
    fi
    say "installing postgresql from the distribution's packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
    bin="$(find_bin)"
    [[ -x "$bin/initdb" ]] || { say "postgresql installed but initdb not found"; exit 1; }
  fi
  if [[ "$(id -u)" == 0 ]] && ! id -u "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  fi
  local data port
  data="$(mktemp -d "${TMPDIR:-/tmp}/emafusion-pg.XXXXXX")"
  [[ "$(id -u)" == 0 ]] && chown "$PG_USER" "$data"
  chmod 700 "$data"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  as_owner "$bin/initdb" -D "$data/db" -U emafusion -A trust -E UTF8 --no-sync >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
    || { cat "$data/server.log" >&2; exit 1; }
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U emafusion "$DB_NAME"
  local url="postgresql://emafusion@127.0.0.1:$port/$DB_NAME"
  mkdir -p "$STATE_DIR"
  echo "$bin" >"$STATE_DIR/bin"
  echo "$data/db" >"$STATE_DIR/data"
  echo "$url" >"$STATE_DIR/url"
  say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $url (data in $data)"
  echo "export EMAFUSION_TEST_PG_URL='$url'"
}

stop() {
  [[ -f "$STATE_DIR/data" ]] || { say "no cluster to stop"; return 0; }
  local bin data
  bin="$(cat "$STATE_DIR/bin")"
  data="$(cat "$STATE_DIR/data")"
  as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$(dirname "$data")"
  rm -f "$STATE_DIR/bin" "$STATE_DIR/data" "$STATE_DIR/url"
  say "stopped; removed $(dirname "$data")"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) cat "$STATE_DIR/url" 2>/dev/null || true ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
