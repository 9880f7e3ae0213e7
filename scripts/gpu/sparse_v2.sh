#!/usr/bin/env bash
# Sparse speed v2 on one GPU, run on the device machine from the repository root; results in $OUT:
#   1. scripts/gpu/kernels_v4.py: correctness of the listed kernel (v4) on CUDA and per projection
#      group of the Llama-3-8B shape, batch 1 and 32: cuBLAS vs v3 vs v4 at 0-100 % union
#      sparsity (kernels-v4.json, kernels-v4.log);
#   2. scripts/gpu/sparse_suite.sh: the gated engine (v4 kernels, start-up speed table, offered
#      levels) against the dense engine, Llama-3-8B shape, batch 1 and 32, budgets
#      1/0.75/0.5/floor (sparse-8b.json, sparse-8b.log, frontier-8b.png);
#   3. the same bench on the default model's shape (SmolLM2-135M, random weights: the machine
#      has no model files) (sparse-smollm.json, sparse-smollm.log).
# Dry run on a CPU: DRY_RUN=1 bash scripts/gpu/sparse_v2.sh
set -uo pipefail
export PYTHONPATH=worker:proto:operator:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/sparse-v2}
mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" = 1 ]; then
  KFLAGS=--dry-run SHAPE=tiny DEVICE=cpu PROMPT=8 GEN=4 REPEATS=1
else
  KFLAGS= SHAPE=smollm2-135m DEVICE=cuda PROMPT=128 GEN=64 REPEATS=3
fi
timeout "${KERNEL_LIMIT:-170}" python3 scripts/gpu/kernels_v4.py $KFLAGS 2>&1 | tee "$OUT/kernels-v4.log"
OUT="$OUT" bash scripts/gpu/sparse_suite.sh
timeout "${SMALL_LIMIT:-120}" python3 -m dynasparse bench --shape "$SHAPE" --device "$DEVICE" \
  --batch-sizes 1,32 --budgets 1,0.75,0.5,floor --prompt-len "$PROMPT" --gen-len "$GEN" --no-hf \
  --repeats "$REPEATS" --json "$OUT/sparse-smollm.json" 2>&1 | tee "$OUT/sparse-smollm.log"
python3 scripts/gpu/speed_summary.py "$OUT/sparse-8b.json" "$OUT/sparse-smollm.json"
