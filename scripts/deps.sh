#!/usr/bin/env bash
# Installs what building and testing need on Debian 12 (system packages via
# apt-get, Python test packages via pip). Sourced by setup.sh and test.sh;
# safe to run again (skips what is present).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(libopenblas-dev libhwloc-dev cmake pkg-config gcc g++ python3-pip)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# transformers (5.x: strictly typed configs) and tokenizers check what the library
# writes; they install without torch. sentencepiece is imported by llama.cpp's
# converter (convert_hf_to_gguf.py), which the GGUF tests run.
if ! python3 -c "import numpy, pytest, safetensors, gguf, tokenizers, transformers, sentencepiece
assert int(transformers.__version__.split('.')[0]) >= 5" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check numpy pytest safetensors gguf tokenizers "transformers>=5" \
    sentencepiece
fi

# llama-cpp-python (which the GGUF tests run our exports on) compiles llama.cpp
# for the machine it installs on (-march=native). Its AMX kernels fault on CPUs
# that have AMX (a tile instruction on a worker thread whose tiles were never
# configured: SIGILL), so they are compiled out; every other instruction set of
# the machine stays on. No cached wheel: one built for another CPU may not run here.
# It installs from its sdist in the materials cache (scripts/fetch-llama-cpp.sh),
# which stays there: the GGUF tests also run llama.cpp's own converter from it.
install_llama_cpp_python() {
  local flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" sdist
  sdist="$(scripts/fetch-llama-cpp.sh)"
  CMAKE_ARGS="-DCMAKE_C_FLAGS=\"$flags\" -DCMAKE_CXX_FLAGS=\"$flags\"" \
    python3 -m pip install -q --disable-pip-version-check --no-cache-dir "$@" "$sdist"
}
