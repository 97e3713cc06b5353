#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) under libFuzzer.
#   bash fuzz/run.sh [SECONDS]
#   PIXELFEED_FUZZ_SANITIZER=none bash fuzz/run.sh 300   # no ASan: builds in
#     minutes instead of an hour on 2 cores; panics, hangs and OOMs are still
#     caught, memory errors in unsafe code only with ASan
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Seeds: fuzz/seeds/spec (specs); tests/data/images and, when present,
# ../shared/corpus/{hostile,real} (images; read only); for jpeg_differential
# also the JPEG layout matrix (tests/python/jpeg_matrix.py, generated into
# fuzz/seeds-jpeg-matrix when cjpeg/jpegtran are installed). New inputs go to
# fuzz/corpus/<target>, crashes to fuzz/artifacts/<target> (both ignored by
# git); a crash fails the run and prints the reproducer path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "error: cargo-fuzz not found (cargo install cargo-fuzz; needs a nightly toolchain)" >&2
  exit 1
fi
shared="${PIXELFEED_CORPUS:-../../shared/corpus}"
decode_seeds=(../tests/data/images)
for d in "$shared/hostile" "$shared/real"; do
  [ -d "$d" ] && decode_seeds+=("$d")
done
sanitizer="${PIXELFEED_FUZZ_SANITIZER:-address}"
mkdir -p corpus/decode corpus/spec corpus/jpeg_differential
jpeg_seeds=(../tests/data/images)
[ -d "$shared/real" ] && jpeg_seeds+=("$shared/real")
[ -d "$shared/derived" ] && jpeg_seeds+=("$shared/derived")
py="${PYTHON:-../.venv/bin/python}"
[ -x "$py" ] || py=python3
if "$py" ../tests/python/jpeg_matrix.py seeds-jpeg-matrix --no-validate >/dev/null 2>&1; then
  rm -f seeds-jpeg-matrix/*.ppm seeds-jpeg-matrix/MANIFEST.tsv
  jpeg_seeds+=(seeds-jpeg-matrix)
fi
# WebP, GIF, BMP and TIFF: one target each, seeded with every variant the
# Pillow comparison tests write (tests/python/test_more_formats.py).
format_seeds=()
if "$py" make_format_seeds.py seeds-formats >/dev/null 2>&1; then
  format_seeds=(seeds-formats)
fi
# AddressSanitizer (cargo-fuzz's default): the output block path has unsafe
# code; libFuzzer also catches panics, hangs (-timeout) and OOMs.
cargo +nightly fuzz run -s "$sanitizer" decode corpus/decode "${decode_seeds[@]}" -- \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
cargo +nightly fuzz run -s "$sanitizer" spec corpus/spec seeds/spec -- \
  -max_total_time="$secs" -timeout=10 -print_final_stats=1
# Differential: zune-jpeg against libjpeg-turbo on mutated JPEGs; a
# disagreement between two clean decodes is a crash with its reproducer.
cargo +nightly fuzz run -s "$sanitizer" jpeg_differential corpus/jpeg_differential "${jpeg_seeds[@]}" -- \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
for format in webp gif bmp tiff; do
  mkdir -p "corpus/$format"
  seeds=()
  [ ${#format_seeds[@]} -gt 0 ] && seeds=("seeds-formats/$format")
  cargo +nightly fuzz run -s "$sanitizer" "$format" "corpus/$format" "${seeds[@]}" ../tests/data/images -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
# Wire: FlightData messages through DoExchange's data path (own cargo-fuzz
# project in wire/, so the targets above build without the server).
mkdir -p wire/corpus/exchange
"$py" wire/make_seeds.py wire/seeds >/dev/null
cargo +nightly fuzz run --fuzz-dir wire -s "$sanitizer" exchange wire/corpus/exchange wire/seeds -- \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
