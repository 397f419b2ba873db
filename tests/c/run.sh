#!/usr/bin/env bash
# C/C++ checks of the installed library: header compiles as C11 and C++17 with
# warnings as errors, and the exported symbols are only moe_*; then the
# library's dependencies are system libraries only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX="${PREFIX:-dist}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
passed=0; failed=0
check() {  # name, command...
  local name="$1"; shift
  if "$@"; then echo "ok   $name"; passed=$((passed + 1)); else echo "FAIL $name"; failed=$((failed + 1)); fi
}
build_c() { cc -std=c11 -Wall -Wextra -pedantic -Werror -I"$PREFIX/include" tests/c/header_c.c \
  -L"$PREFIX/lib" -lmoeupcycle -Wl,-rpath,"$PWD/$PREFIX/lib" -o "$OUT/header_c" && "$OUT/header_c"; }
build_cpp() { c++ -std=c++17 -Wall -Wextra -pedantic -Werror -I"$PREFIX/include" tests/c/header_cpp.cpp \
  -L"$PREFIX/lib" -lmoeupcycle -Wl,-rpath,"$PWD/$PREFIX/lib" -o "$OUT/header_cpp" && "$OUT/header_cpp"; }
abi_rules() {
  python3 tests/c/tiny_model.py "$OUT/tiny" && mkdir -p "$OUT/work" &&
  cc -std=c11 -Wall -Wextra -pedantic -Werror -I"$PREFIX/include" tests/c/abi_rules.c \
    -L"$PREFIX/lib" -lmoeupcycle -lm -Wl,-rpath,"$PWD/$PREFIX/lib" -o "$OUT/abi_rules" &&
  "$OUT/abi_rules" "$OUT/tiny" "$OUT/work"
}
declared_equals_exported() {
  # Every function the header declares is exported, and nothing else.
  local declared exported
  declared="$(cc -E -P -I"$PREFIX/include" "$PREFIX/include/moeupcycle.h" | tr -s ' \n' ' ' | tr ';' '\n' |
    grep -oE '\bmoe_[a-z0-9_]+ *\(' | grep -vE '^moe_(progress|token)_fn' | tr -d ' (' | sort -u)"
  exported="$(nm -D --defined-only "$PREFIX/lib/libmoeupcycle.so" | awk '{print $3}' | sort -u)"
  [ "$declared" = "$exported" ] || { diff <(echo "$declared") <(echo "$exported"); return 1; }
}
only_moe_symbols() {
  local other
  other="$(nm -D --defined-only "$PREFIX/lib/libmoeupcycle.so" | awk '{print $3}' | grep -v '^moe_' || true)"
  [ -z "$other" ] || { echo "non-moe_ exported symbols:"; echo "$other" | head; return 1; }
  nm -D --defined-only "$PREFIX/lib/libmoeupcycle.so" | grep -q ' moe_upcycle$'
}
system_deps_only() {
  local needed runpath
  needed="$(readelf -d "$PREFIX/lib/libmoeupcycle.so" | awk '/NEEDED/ {print $5}' | tr -d '[]')"
  echo "$needed" | grep -vE '^(libopenblas\.so\.0|libhwloc\.so\.[0-9]+|libstdc\+\+\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libc\.so\.6|ld-linux-x86-64\.so\.2)$' && return 1
  runpath="$(readelf -d "$PREFIX/lib/libmoeupcycle.so" | awk '/RUNPATH|RPATH/ {print $5}')"
  [ -z "$runpath" ] || [ "$runpath" = '[$ORIGIN]' ]
}
check "header compiles and runs as C11" build_c
check "header compiles and runs as C++17" build_cpp
check "only moe_* symbols exported" only_moe_symbols
check "every declared function exported, nothing else" declared_equals_exported
check "struct versions, output buffers, names, last error (abi_rules.c)" abi_rules
check "only system libraries needed, no toolchain RUNPATH" system_deps_only
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
