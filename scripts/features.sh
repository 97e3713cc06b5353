# Sourced by the scripts: the cargo features this machine can build.
# `turbojpeg` (draft decoding through a bundled libjpeg-turbo) needs cmake
# and nasm; without them the build leaves it out, draft specs are refused,
# and the draft tests skip with a message saying so.
#   source scripts/features.sh; cargo build $PIXELFEED_FEATURES ...
if command -v cmake >/dev/null 2>&1 && command -v nasm >/dev/null 2>&1; then
  PIXELFEED_FEATURES="--features pixelfeed-engine/turbojpeg"
else
  PIXELFEED_FEATURES=""
  echo "note: cmake or nasm not found: building without draft decoding (feature turbojpeg)" >&2
fi
export PIXELFEED_FEATURES
