#!/usr/bin/env bash
# Runs schemathesis (pinned; installed into target/schemathesis-venv on first use) against the OpenAPI document a
# freshly started `gatehouse serve` publishes, as an admin, on the embedded store or on PostgreSQL:
#   scripts/schemathesis.sh [sqlite|postgres] [seed]
# Needs a built `target/debug/gatehouse` (cargo build). For postgres, GATEHOUSE_TEST_DATABASE_URL names a server
# where a scratch database may be created. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-sqlite}
seed=${2:-1}
version=4.32.5
venv=target/schemathesis-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  # Workspaces the run launched outlive the gateway (by design): end their agents.
  for record in "$work"/data/workspaces/.run/*.json; do
    [ -e "$record" ] || continue
    case $record in *.tags.json) continue ;; esac
    pid=$(grep -o '"pid":[0-9]*' "$record" | cut -d: -f2)
    [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ "$backend" = postgres ]; then psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export GATEHOUSE_DATA_DIR=$work/data GATEHOUSE_LISTEN=127.0.0.1:0 GATEHOUSE_LOG_FORMAT=json
# One token sends every request (about 3,300 in 45 s), and the checks for ignored authentication send requests with
# bad or no tokens from this one address: rate limits off (0), or the run would test the 429s instead of the API.
export GATEHOUSE_RATE_LIMIT_API_PER_MINUTE=0 GATEHOUSE_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE=0
export GATEHOUSE_RATE_LIMIT_LAUNCH_PER_MINUTE=0
if [ "$backend" = postgres ]; then
  PG_URL=${GATEHOUSE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  db=gh_schemathesis_$$
  psql "$PG_URL" -qc "CREATE DATABASE $db"
  export GATEHOUSE_DATABASE_URL=${PG_URL%/*}/$db
fi
target/debug/gatehouse serve >"$work/serve.log" 2>&1 &
server=$!
address=""
for _ in $(seq 1 100); do
  port=$(grep '"listening"' "$work/serve.log" | grep -o '"port":[0-9]*' | head -n 1 | cut -d: -f2 || true)
  [ -n "$port" ] && address=127.0.0.1:$port && break
  sleep 0.1
done
if [ -z "$address" ]; then
  echo "schemathesis: the server did not start:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
GATEHOUSE_ST_TOKEN=$(target/debug/gatehouse token issue --email schemathesis@example.com --role admin)
export GATEHOUSE_ST_TOKEN
# The two WebSocket upgrades (terminal, agent) are described by docs/API.md, not by the document's schemas.
PYTHONPATH=.ci SCHEMATHESIS_HOOKS=schemathesis_hooks "$venv/bin/st" --config-file .ci/schemathesis.toml run \
  "http://$address/api/v1/openapi.json" --seed "$seed" --max-examples 20 \
  --exclude-path /api/v1/agent/connect --exclude-path '/api/v1/workspaces/{id}/terminal' --no-color
