#!/usr/bin/env bash
# Fetches the source distribution of llama-cpp-python from PyPI into a cache
# directory (default .cache/materials/llama-cpp-python) and prints its path.
# The version is the installed package's, so the library the GGUF tests run
# and llama.cpp's own converter (vendor/llama.cpp/convert_hf_to_gguf.py in the
# sdist) come from the same llama.cpp; without an installed package, the
# newest sdist (scripts/deps.sh then installs from it). Reused when present.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MOEUPCYCLE_CACHE:-$PWD/.cache/materials}/llama-cpp-python"
VERSION="$(python3 -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || true)"
if [ -n "$VERSION" ]; then
  SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
  SPEC="llama-cpp-python==$VERSION"
else
  SDIST="$(ls "$CACHE"/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -n 1 || true)"
  SPEC="llama-cpp-python"
fi
if [ -z "$SDIST" ] || [ ! -s "$SDIST" ]; then
  mkdir -p "$CACHE/download"
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    --dest "$CACHE/download" "$SPEC" >&2
  got="$(ls "$CACHE"/download/llama_cpp_python-*.tar.gz | head -n 1)"
  SDIST="$CACHE/$(basename "$got")"
  mv "$got" "$SDIST"
  rm -rf "$CACHE/download"
fi
echo "$SDIST"
