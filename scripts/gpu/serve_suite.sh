#!/usr/bin/env bash
# The serving benchmark on one GPU: `dynasparse serve --model shape:llama3-8b` driven by streamed
# /v1/completions at 1/16/64/128 concurrent streams and budgets 1.0/0.5/floor, next to the engine
# alone at the same batch (`dynasparse bench --serve`). Run from the repository root on the GPU
# machine; wheels for the server's packages in .whl/ (scripts/gpu/serve_wheels.sh fetches their
# whole closure) and a tokenizer directory in .tok/ (the default model's tokenizer.json and
# tokenizer_config.json: shape models borrow it). Writes serve_8b.json, serve_8b.png and the log
# to $OUT. ENGINE_PROCESS (default auto) is the server's --engine-process; a list such as "on,off"
# runs the suite once per mode into serve_8b-engine-<mode>.{json,png,log}, to compare them side by
# side (each run gets SUITE_TIMEOUT: shorten LEVELS or SECONDS_PER_LEVEL to fit both).
set -o pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/worker:$PWD/operator:$PWD/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}
export DYNASPARSE_SHAPE_TOKENIZER=${DYNASPARSE_SHAPE_TOKENIZER:-$PWD/.tok}
export DYNASPARSE_CACHE_DIR=${DYNASPARSE_CACHE_DIR:-/tmp/dynasparse-cache}
export PYTHONUNBUFFERED=1
# fail in seconds, not after the model load, when a package is missing
python3 -c "import fastapi, uvicorn, grpc_health.v1.health, dynasparse_worker.server.runtime" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
MODES=${ENGINE_PROCESS:-auto}
status=0
for mode in ${MODES//,/ }; do
  name=serve_8b
  [ "$MODES" != auto ] && name=serve_8b-engine-$mode
  timeout "${SUITE_TIMEOUT:-540}" python3 -m dynasparse bench --serve --shape "${SHAPE:-llama3-8b}" \
    --levels "${LEVELS:-1,16,64,128}" --budgets "${BUDGETS:-1.0,0.5,floor}" \
    --seconds "${SECONDS_PER_LEVEL:-10}" --prompt-len 50 --gen-len 128 --engine-process "$mode" \
    --json "$OUT/$name.json" --plot "$OUT/$name.png" 2>&1 | tee "$OUT/$name.log" || status=1
done
exit $status
