#!/usr/bin/env bash
# Quick start command 1: build the release server and the in-process
# module, start the server on a free loopback port, run
# examples/quickstart.py against it (per-image results, then Pillow vs
# Flight vs in-process images/s), stop it.
#   bash scripts/demo.sh [quickstart args, e.g. --corpus --seconds 10]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
source scripts/features.sh
ensure_venv demo

echo "== cargo build --release -p pixelfeed-cli --bin pixelfeed $PIXELFEED_FEATURES"
cargo build --release -p pixelfeed-cli --bin pixelfeed $PIXELFEED_FEATURES
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target_dir/release/pixelfeed"
ensure_native --release || echo "note: the in-process module did not build; the demo skips it" >&2

log="$(mktemp)"
"$bin" serve --listen 127.0.0.1:0 >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

# The CLI prints exactly `pixelfeed listening on ADDR` once it is bound.
addr=""
for _ in $(seq 1 600); do
  addr="$(sed -n 's/.*pixelfeed listening on \([^ ]*\).*/\1/p' "$log" | head -n1)"
  [ -n "$addr" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$log" >&2
    echo "error: the server exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  cat "$log" >&2
  echo "error: no 'pixelfeed listening on' line from the server within 60 s" >&2
  exit 1
fi
echo "== server listening on $addr (pid $server)"

"$PY" examples/quickstart.py --server "grpc://$addr" "$@"
