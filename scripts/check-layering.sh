#!/usr/bin/env bash
# Enforces the crate layering that docs/ARCHITECTURE.md states:
# - `domain` performs no I/O: no database, HTTP, crypto, logging-backend or direct tokio dependency;
# - `projections` knows no HTTP;
# - `store` knows no HTTP;
# - `relay` knows no HTTP framework (its WebSocket endpoints and routes are `api`'s) and never depends on `api`;
# - `controlplane` knows no HTTP framework and never depends on `api`;
# - `publisher` knows no HTTP framework (an HTTP client only) and never depends on `api`;
# - `secrets` is a leaf: no HTTP, database, async runtime or other Gatehouse crate (its only I/O is a key file);
# - the root package defines no route (only `api` does).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
check() {
  local crate=$1 pattern=$2 tree
  tree=$(cargo tree --locked -p "$crate" -e normal --prefix none --format '{p}' | sed 's/ .*//' | sort -u)
  if offenders=$(grep -xE "$pattern" <<<"$tree"); then
    echo "layering: $crate must not depend on: $(echo $offenders)" >&2
    fail=1
  fi
}

check domain 'sqlx.*|postgres-es|actix.*|jwt-simple|aes-gcm-siv|reqwest|hyper|tracing-subscriber|portable-pty'
check projections 'actix.*|jwt-simple|reqwest|hyper'
check store 'actix.*|jwt-simple|reqwest|hyper'
# relay: protocols, the gateway's rules and the agent; no HTTP framework, and api uses relay, never the reverse.
check relay 'actix.*|api|hyper|axum|projections'
# controlplane: executes workspace operations; no HTTP framework, and api uses it, never the reverse.
check controlplane 'actix.*|api|hyper|axum'
# publisher: delivers approved publishes (git through relay, pull requests through reqwest); no HTTP framework, and
# api uses it, never the reverse.
check publisher 'actix.*|api|axum|projections'
check secrets 'actix.*|sqlx.*|postgres-es|cqrs-es|tokio.*|hyper|reqwest|api|store|projections|domain|relay|audit'
# The root package composes: routes are mounted only through api::configure.
if grep -rnE '#\[(get|post|put|patch|delete)\(|web::(resource|route|get|post|put|patch|delete)\(' src/; then
  echo "layering: the root package must not define routes (they belong in api)" >&2
  fail=1
fi
# tokio reaches domain only through cqrs-es; domain itself must not name it.
if cargo tree --locked -p domain -e normal --depth 1 --prefix none --format '{p}' | grep -q '^tokio '; then
  echo "layering: domain must not depend on tokio directly" >&2
  fail=1
fi
[ "$fail" = 0 ] && echo "layering: ok"
exit "$fail"
