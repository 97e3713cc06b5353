# Sourced by the scripts: the cargo feature flags of the build.
#
# Every documented build decodes JPEGs with libjpeg-turbo (cargo feature
# `turbojpeg`, on by default), which is built from source and needs cmake
# and nasm. Without them this stops with what to install. To build the
# pure-Rust fallback instead (zune-jpeg: layouts it gets wrong are refused
# by name; `draft` specs are refused), set PIXELFEED_PURE_RUST=1.
#   source scripts/features.sh; cargo build $PIXELFEED_FEATURES ...
if [ "${PIXELFEED_PURE_RUST:-0}" = "1" ]; then
  PIXELFEED_FEATURES="--no-default-features"
  echo "note: PIXELFEED_PURE_RUST=1: building without libjpeg-turbo (JPEG decoder: zune-jpeg)" >&2
else
  PIXELFEED_FEATURES=""
  missing=""
  command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
  command -v nasm >/dev/null 2>&1 || missing="$missing nasm"
  if [ -n "$missing" ]; then
    cat >&2 <<MSG
error: building libjpeg-turbo (pixelfeed's JPEG decoder) needs:$missing
  Debian/Ubuntu:  sudo apt-get install cmake nasm
  Fedora:         sudo dnf install cmake nasm
  macOS:          brew install cmake nasm
or build the pure-Rust fallback decoder instead: PIXELFEED_PURE_RUST=1 $0
MSG
    exit 1
  fi
fi
export PIXELFEED_FEATURES
