#!/usr/bin/env bash
# Build and test the Rust bindings against an installed libmoeupcycle.
# Usage: bindings/rust/run.sh [PREFIX]   (PREFIX defaults to <repo>/dist; lib = PREFIX/lib)
# The model tests read SmolLM2 from $MOEUPCYCLE_CACHE (default <repo>/.cache/materials).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${1:-$repo/dist}"
prefix="$(cd "$prefix" && pwd)"
gguf="${MOEUPCYCLE_CACHE:-$repo/.cache/materials}/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -s "$gguf" ] || echo "SKIPPED: the SmolLM2 model tests ($gguf not found; set MOEUPCYCLE_CACHE)"
cd "$here"
MOEUPCYCLE_LIB_DIR="$prefix/lib" cargo test --offline --quiet
