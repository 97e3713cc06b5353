#!/usr/bin/env bash
# Fails when a crate depends on something above its layer (ARCHITECTURE.md,
# "Crates"): the engine on the RPC stack, tokio, parquet or CUDA; the
# schema on anything but arrow-schema and serde; data on Flight; the server
# on the command line. Normal (non-dev) dependencies, all features on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0
# forbid CRATE PATTERN WHY [DEPTH]: no crate matching PATTERN among
# CRATE's dependencies (all of them, or DEPTH levels down).
forbid() {
  local crate="$1" pattern="$2" why="$3" depth="${4:-}" found
  found="$(cargo tree -p "$crate" -e normal --all-features --prefix none --offline \
      ${depth:+--depth "$depth"} 2>/dev/null \
    | tail -n +2 | awk '{print $1}' | grep -Ex "$pattern" | sort -u | tr '\n' ' ' || true)"
  if [ -n "$found" ]; then
    echo "error: $crate depends on $found: $why" >&2
    status=1
  else
    echo "ok: $crate has none of /$pattern/"
  fi
}

rpc='tonic|tonic-[a-z-]+|arrow-flight|prost|hyper|h2|axum|tower'
forbid pixelfeed-schema "$rpc|tokio|parquet|cudarc|zune-[a-z]+|pixelfeed-[a-z]+" \
  "the contract knows no pixels and no transport"
forbid pixelfeed-engine "$rpc|tokio|parquet|cudarc|clap|pixelfeed-(server|data|pool|cli|client)" \
  "the engine knows no Flight, no async runtime, no datasets and no CUDA"
forbid pixelfeed-pool "$rpc|tokio|parquet|pixelfeed-(server|data|cli|client)" \
  "the pool is memory only"
forbid pixelfeed-data "$rpc|tokio|cudarc|clap|indicatif|pixelfeed-(server|pool|cli|client)" \
  "datasets and convert know no Flight and no terminal"
forbid pixelfeed-server "clap|indicatif|tracing-subscriber|cudarc|pixelfeed-(pool|cli|client)" \
  "the server library has no command line and no CUDA"
forbid pixelfeed-server "anyhow" "libraries return typed errors; anyhow is for the binary" 1
forbid pixelfeed-engine "anyhow" "libraries return typed errors; anyhow is for the binary" 1
forbid pixelfeed-data "anyhow" "libraries return typed errors; anyhow is for the binary" 1
forbid pixelfeed-native "$rpc|tokio|parquet|pixelfeed-(server|data|cli|client)" \
  "the in-process module is the engine and the pool, never the Flight stack"
forbid pixelfeed-native "anyhow" "libraries return typed errors; anyhow is for the binary" 1
forbid pixelfeed-client "pixelfeed-(engine|pool|data|server|cli)" \
  "the client shares only the contract with the server"
exit "$status"
