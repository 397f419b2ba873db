#!/usr/bin/env bash
# Builds libmoeupcycle.so (release, Swift runtime linked statically) and the
# moeupcycle host, and installs them into a prefix (default ./dist):
#   PREFIX/lib/libmoeupcycle.so  PREFIX/include/moeupcycle.h  PREFIX/bin/moeupcycle
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${1:-${PREFIX:-dist}}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"

swift build -c release -Xswiftc -static-stdlib
BIN="$(swift build -c release -Xswiftc -static-stdlib --show-bin-path)"

install -d "$PREFIX/lib" "$PREFIX/include" "$PREFIX/bin"
install -m 0755 "$BIN/libmoeupcycle.so" "$PREFIX/lib/libmoeupcycle.so"
install -m 0644 include/moeupcycle.h "$PREFIX/include/moeupcycle.h"
# The host is plain C over the header; `bench moe` also calls OpenBLAS sgemm
# itself for its GEMM-only bound.
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -O2 -Wall -Wextra -pedantic -Werror \
  -I"$PREFIX/include" $(pkg-config --cflags openblas) Sources/moeupcycle/*.c \
  -L"$PREFIX/lib" -lmoeupcycle $(pkg-config --libs openblas) -lpthread -lm \
  -Wl,-rpath,'$ORIGIN/../lib' \
  -o "$PREFIX/bin/moeupcycle"
echo "installed into $PREFIX"
