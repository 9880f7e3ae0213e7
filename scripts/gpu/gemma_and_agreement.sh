#!/usr/bin/env bash
# One GPU run for issue 3, from the repository root on the device machine (gguf wheel installed):
#   1. Gemma 2 / Gemma 3 tiny configs in the engine (CUDA graphs) vs HF greedy   -> $OUT/gemma-check.json
#   2. token agreement on the trained default model (GGUF $1), bf16, 10 prompts x 256 greedy
#      tokens, with the HF-vs-HF noise floor (sdpa vs eager) and the batch-1 decode-path
#      comparison, and once more without cuBLAS bf16 reduced-precision reductions -> $OUT/real-model-check.json
# Each step has its own timeout (~4 min in all); a failing step does not stop the other.
#   bash scripts/gpu/gemma_and_agreement.sh /path/SmolLM2-135M-Instruct.Q4_1.gguf
#   DEVICE=cpu bash scripts/gpu/gemma_and_agreement.sh MODEL.gguf   # CPU smoke run, few tokens
set -uo pipefail
GGUF=${1:?usage: gemma_and_agreement.sh MODEL.gguf}
export PYTHONPATH=worker:proto:operator:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gemma-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
  GEMMA_ARGS=(--gen 48) REAL_ARGS=(--gen 256 --free-running 2 --decode-path-prompts 2)
else
  GEMMA_ARGS=(--gen 4 --prompts 2) REAL_ARGS=(--gen 4 --decode-path-prompts 1 --free-running 1)
fi
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" 2>&1 | tee "$OUT/versions.txt"
timeout 95 python3 scripts/gpu/gemma_check.py --device "$DEVICE" "${GEMMA_ARGS[@]}" \
  --json "$OUT/gemma-check.json" 2>&1 | grep -v -e FutureWarning -e "output = func" | tee "$OUT/gemma-check.log"
echo "gemma_check exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gemma-check.log"
timeout 130 python3 scripts/gpu/real_model_check.py "$GGUF" --device "$DEVICE" "${REAL_ARGS[@]}" \
  --json "$OUT/real-model-check.json" 2>&1 | grep -v -e FutureWarning -e "output = func" | tee "$OUT/real-model-check.log"
echo "real_model_check exit: ${PIPESTATUS[0]}" | tee -a "$OUT/real-model-check.log"
