#!/usr/bin/env bash
# Checks of the installed CMake package and pkg-config file: a small C program
# is built against PREFIX (default dist) with find_package(moeupcycle) and with
# pkg-config, and run. The prefix is copied to a fresh place first, so the
# files are also checked to be relocatable.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX="${1:-${PREFIX:-dist}}"
PREFIX="$(cd "$PREFIX" && pwd)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
passed=0; failed=0
check() {  # name, command...
  local name="$1"; shift
  if "$@"; then echo "ok   $name"; passed=$((passed + 1)); else echo "FAIL $name"; failed=$((failed + 1)); fi
}
MOVED="$OUT/moved-prefix"
cp -a "$PREFIX" "$MOVED"
no_absolute_paths() {
  ! grep -rn -e "$PREFIX" -e "$PWD" "$PREFIX/lib/cmake/moeupcycle" "$PREFIX/lib/pkgconfig/moeupcycle.pc"
}
header_version() {
  sed -n 's/^#define MOE_VERSION_STRING "\(.*\)"$/\1/p' "$PREFIX/include/moeupcycle.h"
}
versions_match_header() {
  local v
  v="$(header_version)"
  [ "$(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion moeupcycle)" = "$v" ] &&
    grep -q "^set(PACKAGE_VERSION \"$v\")$" "$PREFIX/lib/cmake/moeupcycle/moeupcycleConfigVersion.cmake"
}
build_cmake() {  # prefix, build dir
  cmake -S tests/cmake -B "$2" -DCMAKE_PREFIX_PATH="$1" -DCMAKE_BUILD_TYPE=Release >"$2.log" 2>&1 &&
    cmake --build "$2" >>"$2.log" 2>&1 &&
    LD_LIBRARY_PATH="$1/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$2/app" ||
    { cat "$2.log"; return 1; }
}
build_pkgconfig() {  # prefix, output
  # shellcheck disable=SC2046
  cc -std=c11 -Wall -Wextra -pedantic -Werror tests/cmake/app.c \
    $(PKG_CONFIG_PATH="$1/lib/pkgconfig" pkg-config --cflags --libs moeupcycle) -o "$2" &&
    LD_LIBRARY_PATH="$1/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$2"
}
rejects_other_major() {
  mkdir -p "$OUT/major"
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(p NONE)\nfind_package(moeupcycle 1 CONFIG REQUIRED)\n' \
    >"$OUT/major/CMakeLists.txt"
  ! cmake -S "$OUT/major" -B "$OUT/major/build" -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/major.log" 2>&1 &&
    grep -q "version: $(header_version | sed 's/\./\\./g')" "$OUT/major.log"
}
rejects_other_minor_before_1() {  # 0.x: another minor version is not compatible
  local major minor
  IFS=. read -r major minor _ <<<"$(header_version)"
  [ "$major" != 0 ] && return 0
  mkdir -p "$OUT/minor"
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(p NONE)\nfind_package(moeupcycle 0.%s CONFIG REQUIRED)\n' \
    "$((minor + 1))" >"$OUT/minor/CMakeLists.txt"
  ! cmake -S "$OUT/minor" -B "$OUT/minor/build" -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/minor.log" 2>&1 || return 1
  [ "$minor" -eq 0 ] && return 0
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(p NONE)\nfind_package(moeupcycle 0.%s CONFIG REQUIRED)\n' \
    "$((minor - 1))" >"$OUT/minor/CMakeLists.txt"
  ! cmake -S "$OUT/minor" -B "$OUT/minor/build-older" -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/minor-older.log" 2>&1
}
links_by_name() {  # the executable records libmoeupcycle.so, not a path, and its include dir is the moved prefix's
  readelf -d "$OUT/cmake-moved/app" | grep -q 'NEEDED.*\[libmoeupcycle\.so\]' &&
    grep -q "^moeupcycle_DIR:PATH=$MOVED/lib/cmake/moeupcycle$" "$OUT/cmake-moved/CMakeCache.txt"
}
check "no absolute paths in installed cmake/pkg-config files" no_absolute_paths
check "cmake and pkg-config versions match the header" versions_match_header
check "find_package(moeupcycle) consumer builds and runs" build_cmake "$PREFIX" "$OUT/cmake"
check "pkg-config consumer builds and runs" build_pkgconfig "$PREFIX" "$OUT/app-pc"
check "find_package(moeupcycle) consumer, moved prefix" build_cmake "$MOVED" "$OUT/cmake-moved"
check "pkg-config consumer, moved prefix" build_pkgconfig "$MOVED" "$OUT/app-pc-moved"
check "cmake consumer links libmoeupcycle.so by name, from the moved prefix" links_by_name
check "find_package(moeupcycle 1) rejected (SameMajorVersion)" rejects_other_major
check "find_package(moeupcycle 0.N) of another minor version rejected before 1.0" rejects_other_minor_before_1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
