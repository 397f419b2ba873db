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

# CMake package (find_package(moeupcycle)) and pkg-config file, both
# relocatable; their version is the header's.
ver() { sed -n "s/^#define MOE_VERSION_$1 \([0-9][0-9]*\)\$/\1/p" include/moeupcycle.h; }
MAJOR="$(ver MAJOR)"; MINOR="$(ver MINOR)"; PATCH="$(ver PATCH)"
[ -n "$MAJOR" ] && [ -n "$MINOR" ] && [ -n "$PATCH" ] || { echo "version not found in include/moeupcycle.h" >&2; exit 1; }
subst() { sed -e "s/@MOE_VERSION@/$MAJOR.$MINOR.$PATCH/g" -e "s/@MOE_VERSION_MAJOR@/$MAJOR/g" -e "s/@MOE_VERSION_MINOR@/$MINOR/g" "$1"; }
install -d "$PREFIX/lib/cmake/moeupcycle" "$PREFIX/lib/pkgconfig"
subst cmake/moeupcycleConfig.cmake.in > "$PREFIX/lib/cmake/moeupcycle/moeupcycleConfig.cmake"
subst cmake/moeupcycleConfigVersion.cmake.in > "$PREFIX/lib/cmake/moeupcycle/moeupcycleConfigVersion.cmake"
subst cmake/moeupcycle.pc.in > "$PREFIX/lib/pkgconfig/moeupcycle.pc"
chmod 0644 "$PREFIX/lib/cmake/moeupcycle/"*.cmake "$PREFIX/lib/pkgconfig/moeupcycle.pc"
echo "installed into $PREFIX"
