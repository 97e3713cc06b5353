#!/usr/bin/env bash
# Quick start command 2 (and what CI runs): every test, Rust and Python.
#   bash scripts/test.sh [extra pytest args]
# 1. venv with the Python client + test deps and the native module
#    (maturin develop of native/; scripts/venv.sh)
# 2. cargo build of the debug server binary, cargo test --workspace (with
#    libjpeg-turbo, which needs cmake and nasm: scripts/features.sh says
#    what is missing; PIXELFEED_PURE_RUST=1 tests the pure-Rust fallback)
# 3. pytest tests/python -v against that binary (PIXELFEED_BIN); the
#    end-to-end tests start and stop the server themselves.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
source scripts/features.sh
ensure_venv test
# The in-process engine (native/, `pixelfeed.Engine`) for tests/python/test_native.py.
ensure_native

echo "== cargo build -p pixelfeed-cli --bin pixelfeed $PIXELFEED_FEATURES"
cargo build -p pixelfeed-cli --bin pixelfeed $PIXELFEED_FEATURES
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export PIXELFEED_BIN="${PIXELFEED_BIN:-$target_dir/debug/pixelfeed}"

# The JPEG layout matrix (tests/python/jpeg_matrix.py, cjpeg/jpegtran) for
# the engine's differential test; without those tools that test skips,
# saying so, and so do the Python ones.
matrix="$target_dir/jpeg-matrix"
echo "== $PY tests/python/jpeg_matrix.py $matrix"
if "$PY" tests/python/jpeg_matrix.py "$matrix" --no-validate >/dev/null; then
  export PIXELFEED_JPEG_MATRIX="$matrix"
fi

echo "== cargo test --workspace $PIXELFEED_FEATURES"
cargo test --workspace $PIXELFEED_FEATURES

echo "== pytest tests/python (server: $PIXELFEED_BIN)"
"$PY" -m pytest tests/python -v "$@"
