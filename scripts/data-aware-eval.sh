#!/usr/bin/env bash
# Compares data-aware upcycling with copy, drop and random partitions on the
# real SmolLM2-135M (8 experts, top-2): held-out NLL and router balance at
# step 0, then after the same short continued training. The Shakespeare text
# is cut into a calibration part (its first 400 kB), a training part (the
# next 1.6 MB) and a held-out part (its last 200 kB).
#   scripts/data-aware-eval.sh [WORK_DIR] [STEPS]      (default /tmp/data-aware, 40)
# Prints one JSON line per variant and writes WORK_DIR/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/data-aware}"
STEPS="${2:-40}"
BIN="$PWD/dist/bin/moeupcycle"
CACHE="${MOEUPCYCLE_CACHE:-$PWD/.cache/materials}"
DENSE="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$CACHE/corpus/shakespeare.txt"
[ -x "$BIN" ] || scripts/build.sh dist >/dev/null
[ -s "$DENSE" ] || scripts/fetch-materials.sh >/dev/null
[ -s "$TEXT" ] || scripts/fetch-corpus.sh >/dev/null
mkdir -p "$WORK"
head -c 400000 "$TEXT" > "$WORK/calibration.txt"
head -c 2000000 "$TEXT" | tail -c 1600000 > "$WORK/train.txt"
tail -c 200000 "$TEXT" > "$WORK/heldout.txt"
: > "$WORK/results.jsonl"

# Statistics once (16384 calibration tokens), reused by every variant.
"$BIN" upcycle "$DENSE" "$WORK/stats-run" --method partition --partition-select activation \
  --calibration "$WORK/calibration.txt" --save-stats "$WORK/stats.safetensors" --force >/dev/null
rm -rf "$WORK/stats-run"

evaluate() {  # MODEL -> mean NLL and balance on the held-out part
  "$BIN" eval "$1" --data "$WORK/heldout.txt" --max-tokens 4096 --json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["mean_nll"], j["aux_loss"])'
}

variant() {  # NAME UPCYCLE-OPTIONS...
  local name="$1"; shift
  local moe="$WORK/$name"
  "$BIN" upcycle "$DENSE" "$moe" --experts 8 --top-k 2 --dtype f32 --force "$@" >/dev/null
  read -r nll0 balance0 < <(evaluate "$moe")
  "$BIN" train "$moe" --data "$WORK/train.txt" --out "$moe-trained" --steps "$STEPS" --batch 4 --seq-len 128 \
    --warmup 4 --eval-fraction 0.01 --force >/dev/null
  read -r nll1 balance1 < <(evaluate "$moe-trained")
  local line
  line=$(printf '{"variant": "%s", "options": "%s", "nll_step0": %s, "balance_step0": %s, "nll_trained": %s, "balance_trained": %s, "steps": %s}' \
    "$name" "$*" "$nll0" "$balance0" "$nll1" "$balance1" "$STEPS")
  echo "$line" | tee -a "$WORK/results.jsonl"
  rm -rf "$moe" "$moe-trained" "$moe-trained.jsonl"
}

read -r dense_nll _ < <(evaluate "$DENSE")
echo "{\"variant\": \"dense\", \"nll_step0\": $dense_nll}" | tee -a "$WORK/results.jsonl"
S="--stats $WORK/stats.safetensors"
variant copy --method copy
variant copy-kmeans --method copy --router-init kmeans $S
variant drop --method drop --ratio 0.5 --router-init uniform
variant drop-least-important --method drop --ratio 0.5 --router-init uniform --drop-select least-important $S
variant partition-random --method partition
variant partition-activation --method partition --partition-select activation $S
variant partition-activation-calibrated --method partition --partition-select activation --calibrated-scale $S
variant partition-random-calibrated --method partition --calibrated-scale $S
variant partition-cluster-kmeans --method partition --partition-select cluster --router-init kmeans --calibrated-scale $S
variant partition-activation-shared384 --method partition --partition-select activation --calibrated-scale \
  --shared-from-frequent 384 --format qwen2-moe $S
