#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers with libFuzzer and AddressSanitizer.
#
#   scripts/fuzz.sh TARGET SECONDS   run the committed corpus once, then fuzz TARGET for SECONDS
#   scripts/fuzz.sh all SECONDS      the same for every target, SECONDS each
#   scripts/fuzz.sh replay [TARGET]  only run the committed corpus once (every target by default)
#   scripts/fuzz.sh build            only build the fuzz binaries
#
# Targets (fuzz/TARGET.swift, dictionary fuzz/dict/TARGET.dict): safetensors
# gguf config tokenizer upcycle.
# Builds what changed into .build-fuzz/ first: the core's modules compiled once, with
# coverage instrumentation and AddressSanitizer, unoptimized so that unsafe
# buffer accesses are bounds-checked too; one small binary per target.
#
# A finding is a crash (Swift trap, memory error), an input running longer
# than FUZZ_TIMEOUT seconds, or memory beyond FUZZ_MEMORY_MB (one allocation
# or the whole process). The script then exits non-zero, and the input that
# did it is in fuzz/findings/TARGET/ (crash-*, timeout-*, oom-*); run
# `.build-fuzz/bin/fuzz-TARGET FILE` to reproduce it (FUZZ_VERBOSE=1 prints
# whether each input was accepted or why it was refused). Fixed findings go
# into fuzz/corpus/TARGET/ as regression inputs (regress-*).
#
# New interesting inputs are kept in .build-fuzz/corpus/TARGET/ across runs;
# the committed seeds in fuzz/corpus/ are only read. Extra libFuzzer flags go
# in FUZZ_FLAGS (e.g. FUZZ_FLAGS="-jobs=2 -workers=2" for a longer campaign).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TARGETS=(safetensors gguf config tokenizer upcycle)
# The core's modules, in the order Package.swift's coreModules lists them (each after those it imports).
read -r -a CORE_MODULES <<< "$(sed -n 's/^let coreModules = \[\(.*\)\]$/\1/p' Package.swift | tr -d '",')"
[ "${#CORE_MODULES[@]}" -gt 0 ] || { echo "fuzz: no 'let coreModules = [...]' line in Package.swift" >&2; exit 1; }
BUILD=.build-fuzz
TIMEOUT="${FUZZ_TIMEOUT:-10}"
MEMORY_MB="${FUZZ_MEMORY_MB:-512}"

# The comment at the top of this file.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

# Longest input each target is given.
max_len() {
  case "$1" in
    safetensors) echo 8192 ;; gguf) echo 16384 ;; config) echo 4096 ;;
    tokenizer) echo 16384 ;; upcycle) echo 512 ;;
  esac
}

# Sources of a target besides fuzz/Support.swift and its own file.
extra_sources() {
  case "$1" in
    upcycle) echo Tests/MoECoreTests/GGUFTestFile.swift ;;
  esac
}

# Flags shared by every compile: the C modules the core imports, and the
# instrumentation.
swift_flags() {
  local cflag
  echo -swift-version 6 -Onone -g -sanitize=fuzzer,address -parse-as-library -suppress-warnings -package-name moeupcycle
  echo -I Sources/COpenBLAS -I Sources/CHwloc -I Sources/CMoECPU/include -I "$BUILD/core"
  for cflag in $(pkg-config --cflags openblas hwloc); do echo -Xcc "$cflag"; done
}

# Whether $1 must be rebuilt: it is missing, an input file is newer, or the
# inputs (files and flags) changed.
stale() {
  local out="$1"; shift
  local list="$out.inputs"
  [ -f "$out" ] && [ -f "$list" ] || return 0
  [ "$(printf '%s\n' "$@")" = "$(cat "$list")" ] || return 0
  local f
  for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
  return 1
}

# One Swift module of Sources/ as a static library in $BUILD/core (with
# its .swiftmodule beside it): module name, then extra flags.
build_module() {
  local name="$1"; shift
  local lib="$BUILD/core/lib$name.a"
  local sources
  mapfile -t sources < <(find "Sources/$name" -name '*.swift' | LC_ALL=C sort)
  local flags
  flags="flags: $(swift_flags | tr '\n' ' ') $*"
  if stale "$lib" "${sources[@]}" "$flags"; then
    echo "fuzz: building $name (instrumented)" >&2
    local start=$SECONDS
    rm -f "$lib" "$lib.inputs"
    # shellcheck disable=SC2046
    swiftc $(swift_flags) "$@" -module-name "$name" -enable-testing -j 2 \
      -emit-library -static -o "$lib" \
      -emit-module -emit-module-path "$BUILD/core/$name.swiftmodule" \
      "${sources[@]}"
    printf '%s\n' "${sources[@]}" "$flags" > "$lib.inputs"
    echo "fuzz: $name built in $((SECONDS - start)) s" >&2
  fi
}

build() {
  mkdir -p "$BUILD/core" "$BUILD/bin"
  # The C module's objects (CPU features, thread buffers, the bf16 and quantized kernels): every .c file.
  local objects=() src obj
  for src in Sources/CMoECPU/*.c; do
    obj="$BUILD/core/$(basename "$src" .c).o"
    if stale "$obj" "$src" Sources/CMoECPU/include/moe_cpu.h; then
      clang -c -g -O1 -fsanitize=address -ISources/CMoECPU/include "$src" -o "$obj"
      printf '%s\n' "$src" Sources/CMoECPU/include/moe_cpu.h > "$obj.inputs"
    fi
    objects+=("$obj")
  done
  # The kernel modules with the instruction sets Package.swift gives them.
  build_module MoEKernelCode
  build_module MoEKernelsAVX512 -target-cpu skylake-avx512
  build_module MoEKernelsAVX2 -target-cpu haswell
  build_module MoEKernelsPortable
  local libs=("$BUILD/core/libMoEKernelCode.a" "$BUILD/core/libMoEKernelsAVX512.a"
              "$BUILD/core/libMoEKernelsAVX2.a" "$BUILD/core/libMoEKernelsPortable.a")
  local m
  for m in "${CORE_MODULES[@]}"; do
    build_module "$m" -target-cpu haswell
    libs+=("$BUILD/core/lib$m.a")
  done
  local t bin inputs
  for t in "${TARGETS[@]}"; do
    bin="$BUILD/bin/fuzz-$t"
    # shellcheck disable=SC2207
    inputs=(fuzz/Support.swift "fuzz/$t.swift" $(extra_sources "$t"))
    if stale "$bin" "${inputs[@]}" "${libs[@]}" "${objects[@]}"; then
      echo "fuzz: building fuzz-$t" >&2
      rm -f "$bin" "$bin.inputs"
      # shellcheck disable=SC2046
      swiftc $(swift_flags) -module-name "fuzz_$t" "${inputs[@]}" \
        -Xlinker --whole-archive "${libs[@]}" -Xlinker --no-whole-archive "${objects[@]}" \
        $(pkg-config --libs openblas hwloc) -use-ld=lld -o "$bin"
      printf '%s\n' "${inputs[@]}" "${libs[@]}" "${objects[@]}" > "$bin.inputs"
    fi
  done
}

# The environment every run gets: libFuzzer (not the Swift runtime) handles
# traps so that it saves the input; hashing is seeded the same every run so
# that a saved input reproduces the same way; leaks are not findings.
run_env() {
  export SWIFT_BACKTRACE=enable=no SWIFT_DETERMINISTIC_HASHING=1
  export ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=16:malloc_context_size=8${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
}

limits() {
  echo -timeout="$TIMEOUT" -rss_limit_mb="$MEMORY_MB" -malloc_limit_mb="$MEMORY_MB" -detect_leaks=0
}

report_failure() {
  local t="$1" log="$2"
  echo "fuzz-$t: FINDING (full log: $log)" >&2
  grep -m 3 -E 'Fatal error|property violated|ERROR: (AddressSanitizer|libFuzzer)' "$log" | sed 's/^/  /' >&2 || true
  # The innermost frames in the project's code.
  grep -oE "$ROOT/(Sources|fuzz)/[^ ]*\.swift:[0-9]+" "$log" | sed "s|^$ROOT/||" | awk '!seen[$0]++' | head -n 3 | sed 's/^/  at /' >&2 || true
  if grep -q 'Test unit written to' "$log"; then
    sed -n 's/^.*Test unit written to /  input: /p' "$log" >&2
  else
    grep 'Running: ' "$log" | tail -n 1 | sed 's/^.*Running: /  input: /' >&2 || true
  fi
  echo "  reproduce: $BUILD/bin/fuzz-$t INPUT" >&2
}

# Runs the fuzz binary of target $2 with the remaining arguments, output into
# the log file $1. It runs in $BUILD/logs: libFuzzer writes the logs of
# parallel jobs into the current directory.
run() {
  local log="$1" t="$2"; shift 2
  mkdir -p "$BUILD/logs" "fuzz/findings/$t"
  # shellcheck disable=SC2046
  (run_env; cd "$BUILD/logs" && "$ROOT/$BUILD/bin/fuzz-$t" $(limits) -artifact_prefix="$ROOT/fuzz/findings/$t/" "$@") \
    > "$log" 2>&1
}

# Runs every committed input of target $1 once.
replay() {
  local t="$1" log="$BUILD/logs/$t-replay.log"
  local files
  mapfile -t files < <(find "$ROOT/fuzz/corpus/$t" -type f | LC_ALL=C sort)
  [ "${#files[@]}" -gt 0 ] || { echo "fuzz-$t: no committed corpus in fuzz/corpus/$t" >&2; return 1; }
  if ! run "$log" "$t" "${files[@]}"; then
    report_failure "$t" "$log"
    return 1
  fi
  echo "fuzz-$t: ${#files[@]} committed inputs pass"
}

# Fuzzes target $1 for $2 seconds.
fuzz() {
  local t="$1" seconds="$2" log="$BUILD/logs/$t.log" start="$BUILD/logs/$t.start"
  mkdir -p "$BUILD/corpus/$t" "fuzz/findings/$t"
  touch "$start"
  # shellcheck disable=SC2086
  if ! run "$log" "$t" -max_total_time="$seconds" -max_len="$(max_len "$t")" -dict="$ROOT/fuzz/dict/$t.dict" \
         -print_final_stats=1 ${FUZZ_FLAGS:-} "$ROOT/$BUILD/corpus/$t" "$ROOT/fuzz/corpus/$t"; then
    report_failure "$t" "$log"
    return 1
  fi
  # Parallel jobs (FUZZ_FLAGS=-jobs=N) log into $BUILD/logs/fuzz-N.log; what they find is saved all the same.
  if [ -n "$(find "fuzz/findings/$t" -type f -newer "$start")" ]; then
    echo "fuzz-$t: FINDING: new inputs in fuzz/findings/$t/ (logs: $BUILD/logs/)" >&2
    find "fuzz/findings/$t" -type f -newer "$start" | sed 's/^/  input: /' >&2
    return 1
  fi
  local execs rate cov corpus
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)"
  corpus="$(find "$BUILD/corpus/$t" -type f | wc -l)"
  echo "fuzz-$t: ${seconds} s, ${execs:-?} runs (${rate:-?}/s), ${cov:-cov: ?}, $corpus inputs kept; no finding"
}

# The targets named by $1: one, or all.
select_targets() {
  local t
  [ "$1" = all ] && { selected=("${TARGETS[@]}"); return; }
  for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && { selected=("$1"); return; }; done
  echo "fuzz: unknown target '$1' (targets: ${TARGETS[*]}, or all)" >&2
  exit 2
}

[ $# -ge 1 ] || usage
status=0
case "$1" in
  build)
    [ $# -eq 1 ] || usage
    build ;;
  replay)
    [ $# -le 2 ] || usage
    select_targets "${2:-all}"
    build
    for t in "${selected[@]}"; do replay "$t" || status=1; done ;;
  *)
    [ $# -eq 2 ] && [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || usage
    select_targets "$1"
    build
    for t in "${selected[@]}"; do
      if replay "$t"; then fuzz "$t" "$2" || status=1; else status=1; fi
    done ;;
esac
exit "$status"
