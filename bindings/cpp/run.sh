#!/usr/bin/env bash
# Build and run the C++ binding test and example.
# Usage: bindings/cpp/run.sh [prefix]   (prefix holds include/ and lib/; default dist)
# The model checks read SmolLM2 from $MOEUPCYCLE_CACHE (default .cache/materials).
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX="${1:-dist}"
PREFIX="$(cd "$PREFIX" && pwd)"
OUTDIR="$(mktemp -d "${TMPDIR:-/tmp}/moeupcycle-cpp.XXXXXX")"
trap 'rm -rf "$OUTDIR"' EXIT
CXXFLAGS=(-std=c++17 -O1 -g -Wall -Wextra -pedantic -Werror -I"$PREFIX/include" -Ibindings/cpp)
LDFLAGS=(-L"$PREFIX/lib" -lmoeupcycle -Wl,-rpath,"$PREFIX/lib")
g++ "${CXXFLAGS[@]}" bindings/cpp/test.cpp -o "$OUTDIR/test" "${LDFLAGS[@]}"
g++ "${CXXFLAGS[@]}" bindings/cpp/example.cpp -o "$OUTDIR/example" "${LDFLAGS[@]}"
echo "== example"
"$OUTDIR/example"
echo "== test"
"$OUTDIR/test"
