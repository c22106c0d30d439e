#!/usr/bin/env bash
# Runs the Node.js client's tests against a real credbroker server: a fresh PostgreSQL database,
# a generated keyring, an environment `node` with one secret key, and `credbroker serve` on a free
# loopback port. Everything it creates is removed at exit. Works from any cwd.
#
# Needs: the repo's virtualenv (`make install`), node >= 20 with npm, psql, and a PostgreSQL that
# CREDBROKER_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres) may
# CREATE DATABASE on.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CREDBROKER="$ROOT/.venv/bin/credbroker"
ADMIN_URL="${CREDBROKER_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
export PGCONNECT_TIMEOUT=10

log() { echo "run-tests.sh: $*" >&2; }

if [[ ! -x "$CREDBROKER" ]]; then
  log "$CREDBROKER not found: run 'make install' in $ROOT first"
  exit 1
fi
for tool in node npm psql; do
  command -v "$tool" >/dev/null || { log "$tool not found"; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/credbroker-node.XXXXXX")"
DB_NAME="credbroker_node_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
DB_CREATED=0
SERVER_PID=""

cleanup() {
  local rc=$?
  set +e
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  if [[ $rc -ne 0 && -s "$WORK/server.log" ]]; then
    log "server log (last 40 lines):"
    tail -n 40 "$WORK/server.log" >&2
  fi
  if [[ $DB_CREATED -eq 1 ]]; then
    timeout 30 psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null ||
      log "could not drop database $DB_NAME"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. A fresh database, and a DSN for it: the admin URL with its database name replaced.
timeout 30 psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null
DB_CREATED=1
CREDBROKER_DATABASE_URL="$(
  node -e 'const u = new URL(process.argv[1]); u.pathname = "/" + process.argv[2]; console.log(u.href)' \
    "$ADMIN_URL" "$DB_NAME"
)"
export CREDBROKER_DATABASE_URL

# 2. Keyring, schema, environment and secret key.
(umask 077 && "$CREDBROKER" keyring generate >"$WORK/keyring.json")
export CREDBROKER_KEYRING_FILE="$WORK/keyring.json"
unset CREDBROKER_KEYRING
export CREDBROKER_LOG_FORMAT=json
timeout 60 "$CREDBROKER" migrate >/dev/null
timeout 60 "$CREDBROKER" environments create node >/dev/null
CREDBROKER_KEY="$(timeout 60 "$CREDBROKER" keys create --environment node --description node-client-tests | tail -n 1)"
[[ "$CREDBROKER_KEY" == cbsk_* ]] || { log "keys create printed no secret key"; exit 1; }

# 3. The server, on a port the OS picks; its "serving" log line names the port.
CREDBROKER_VERIFY_CREDENTIALS=false CREDBROKER_RECHECK_INTERVAL=0 CREDBROKER_SHUTDOWN_GRACE=1 \
  "$CREDBROKER" serve --listen 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do  # 20 s
  PORT="$(grep '"serving"' "$WORK/server.log" 2>/dev/null | grep -o '"port": *[0-9]*' | grep -o '[0-9]*$' | head -n 1 || true)"
  [[ -n "$PORT" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited during startup"; exit 1; }
  sleep 0.2
done
[[ -n "$PORT" ]] || { log "server did not report its port within 20 s"; exit 1; }
export CREDBROKER_TARGET="127.0.0.1:$PORT"
export CREDBROKER_KEY

# 4. Dependencies from the lock file, then the tests.
cd "$HERE"
timeout 300 npm ci --no-audit --no-fund --ignore-scripts  # no dependency needs its install scripts
timeout 20 node scripts/wait-for-server.js "$CREDBROKER_TARGET" 15
log "server at $CREDBROKER_TARGET (database $DB_NAME)"
timeout 300 npm test
