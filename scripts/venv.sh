# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/test.sh: source it, then call
#   ensure_venv [EXTRA]      # EXTRA: an extra of clients/python, e.g. "test"
# It creates (or refreshes) the virtual environment at $PIXELFEED_VENV
# (default <repo>/.venv) with the pixelfeed Python client installed editable
# from clients/python and its dependencies at their pinned minimum versions
# (see clients/python/pyproject.toml), and sets PY to the venv's python.
# Re-runs are fast: pip runs only when pyproject.toml changed, the extra
# differs, or an import fails.

PIXELFEED_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIXELFEED_VENV="${PIXELFEED_VENV:-$PIXELFEED_REPO/.venv}"

ensure_venv() {
  local extra="${1:-}" base_python="${PYTHON:-python3}"
  local spec="$PIXELFEED_REPO/clients/python${extra:+[$extra]}"
  local stamp="$PIXELFEED_VENV/.pixelfeed-stamp${extra:+-$extra}"
  local want
  if ! command -v "$base_python" >/dev/null 2>&1; then
    echo "error: $base_python not found (need Python 3.9+; set PYTHON=...)" >&2
    return 1
  fi
  if ! "$PIXELFEED_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "== creating virtual environment $PIXELFEED_VENV" >&2
    rm -rf "$PIXELFEED_VENV"
    "$base_python" -m venv "$PIXELFEED_VENV"
  fi
  PY="$PIXELFEED_VENV/bin/python"
  want="$(cat "$PIXELFEED_REPO/clients/python/pyproject.toml"; echo "extra=$extra"; "$PY" -V 2>&1)"
  local imports="import pixelfeed, pyarrow, numpy"
  [ "$extra" = "test" ] && imports="$imports, PIL, pytest"
  [ "$extra" = "demo" ] && imports="$imports, PIL"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "$imports" >/dev/null 2>&1; then
    return 0
  fi
  echo "== installing the pixelfeed Python client into $PIXELFEED_VENV" >&2
  "$PY" -m pip install -q --upgrade "pip>=23" >&2
  "$PY" -m pip install -q -e "$spec" >&2
  "$PY" -c "$imports"
  printf '%s' "$want" >"$stamp"
}

# ensure_native [--release]: builds the in-process engine module
# (native/, `pixelfeed_native`, behind `pixelfeed.Engine`) with maturin and
# installs it into the venv (call ensure_venv first). Cargo rebuilds only
# what changed. Honours $PIXELFEED_FEATURES (scripts/features.sh).
ensure_native() {
  if ! "$PY" -m maturin --version >/dev/null 2>&1; then
    echo "== installing maturin into $PIXELFEED_VENV" >&2
    "$PY" -m pip install -q "maturin>=1.7,<2" >&2
  fi
  echo "== maturin develop ${1:-} -m native/Cargo.toml ${PIXELFEED_FEATURES:-}" >&2
  # shellcheck disable=SC2086
  VIRTUAL_ENV="$PIXELFEED_VENV" "$PY" -m maturin develop -q ${1:-} \
    -m "$PIXELFEED_REPO/native/Cargo.toml" ${PIXELFEED_FEATURES:-} >&2
  "$PY" -c "import pixelfeed_native"
}
