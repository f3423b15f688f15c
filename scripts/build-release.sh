#!/usr/bin/env bash
# Builds the release binary and copies it to an output directory. The Docker image's builder
# stage runs exactly this script.
#
#   scripts/build-release.sh [OUT_DIR]     (default: target/dist)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-target/dist}"
target_dir="${CARGO_TARGET_DIR:-target}"

cargo build --release --locked --bin dialtone

mkdir -p "$out"
cp "$target_dir/release/dialtone" "$out/dialtone"
echo "built $out/dialtone ($(du -h "$out/dialtone" | cut -f1))"
