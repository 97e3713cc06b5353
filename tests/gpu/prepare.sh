#!/usr/bin/env bash
# Builds what the GPU check needs on THIS machine (the device machine has no
# Rust toolchain) and stages it under .gpu/ (git-ignored), which the device
# run carries: release binaries and a copy of the benchmark images.
#   bash tests/gpu/prepare.sh        # then run tests/gpu/run.sh on the device
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/features.sh
cargo build --release -p pixelfeed-cli --bin pixelfeed $PIXELFEED_FEATURES
cargo build --release -p pixelfeed-client --features cuda --example rust_gpu_upload
cargo build --release -p pixelfeed-engine --example engine_bench $PIXELFEED_FEATURES
rm -rf .gpu && mkdir -p .gpu/bin .gpu/images
cp target/release/pixelfeed target/release/examples/rust_gpu_upload target/release/examples/engine_bench .gpu/bin/
# Debug info makes them ~100 MB each; the device transfer is capped at 64 MiB.
strip .gpu/bin/*
# The in-process module (pixelfeed.Engine) as an abi3 wheel for the device's
# Python; run.sh installs it there without dependencies.
source scripts/venv.sh
ensure_venv
"$PY" -m pip install -q "maturin>=1.7,<2"
VIRTUAL_ENV="$PIXELFEED_VENV" "$PY" -m maturin build -q --release --strip -m native/Cargo.toml \
  -o .gpu/wheels $PIXELFEED_FEATURES
corpus=../shared/corpus/bench/imagenet
if [ -d "$corpus" ]; then
  cp "$corpus"/*.jpg .gpu/images/
else
  echo "note: $corpus not found; staging the bundled test images instead" >&2
  cp tests/data/images/*.jpg .gpu/images/
fi
du -sh .gpu
