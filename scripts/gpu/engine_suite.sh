#!/usr/bin/env bash
# Engine GPU suite (issue 3), run on the device machine from the repository root:
#   correctness (kernels vs torch, bf16 token agreement vs HF) then `dynasparse bench` on the
#   Llama-3-8B and -1B shapes. Results go to $OUT (engine-check.json, bench-8b.json, bench-1b.json).
set -uo pipefail
export PYTHONPATH=worker:proto:operator:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/engine-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 scripts/gpu/engine_check.py --shape llama3-1b --shape llama3-8b --json "$OUT/engine-check.json" 2>&1 | tee "$OUT/check.log"
timeout 120 python3 -m dynasparse bench --shape llama3-8b --device cuda --batch-sizes 1,16,64 \
  --prompt-len 128 --gen-len 128 --hf-gen-len 16 --json "$OUT/bench-8b.json" --plot "$OUT/bench-8b.png" 2>&1 | tee "$OUT/bench-8b.log"
timeout 70 python3 -m dynasparse bench --shape llama3-1b --device cuda --batch-sizes 1,16,64 \
  --prompt-len 128 --gen-len 128 --hf-gen-len 16 --json "$OUT/bench-1b.json" 2>&1 | tee "$OUT/bench-1b.log"
