#!/usr/bin/env bash
# Sparse engine GPU suite (issue 4), run on the device machine from the repository root:
#   `dynasparse bench --budgets` on random weights of the Llama-3-8B shape (synthetic plan: width
#   thresholds from activation quantiles on random tokens, depth from skipped halves in the share
#   per batch bucket that the calibrated planner takes on the default model; the JSON's
#   "calibration" says so): per batch size and budget the gated engine's tok/s, speed-up over the
#   dense engine of the same run, gate overhead at 1.0, budget-switch cost (captures, allocations),
#   and the frontier PNG. Results go to $OUT (sparse-8b.json, frontier-8b.png, sparse-8b.log).
# Dry run on a CPU (tiny shape, same flags otherwise): DRY_RUN=1 bash scripts/gpu/sparse_suite.sh
set -uo pipefail
export PYTHONPATH=worker:proto:operator:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/sparse-out}
mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" = 1 ]; then
  SHAPE=tiny DEVICE=cpu LIMIT=600 PROMPT=8 GEN=4 REPEATS=1
else
  SHAPE=llama3-8b DEVICE=cuda LIMIT=480 PROMPT=128 GEN=64 REPEATS=3
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
fi
timeout "$LIMIT" python3 -m dynasparse bench --shape "$SHAPE" --device "$DEVICE" --batch-sizes 1,32 \
  --budgets 1,0.75,0.5,floor --prompt-len "$PROMPT" --gen-len "$GEN" --no-hf --repeats "$REPEATS" \
  --json "$OUT/sparse-8b.json" --plot "$OUT/frontier-8b.png" 2>&1 | tee "$OUT/sparse-8b.log"
status=${PIPESTATUS[0]}
echo "bench exit status: $status" | tee -a "$OUT/sparse-8b.log"
exit "$status"
