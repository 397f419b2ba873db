#!/usr/bin/env bash
# Build and test the Rust bindings against an installed libmoeupcycle.
# Usage: bindings/rust/run.sh [PREFIX]   (PREFIX defaults to <repo>/dist; lib = PREFIX/lib)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${1:-$repo/dist}"
prefix="$(cd "$prefix" && pwd)"
cd "$here"
MOEUPCYCLE_LIB_DIR="$prefix/lib" cargo test --offline --quiet
