#!/usr/bin/env bash
# Download, into .whl/, the wheels `dynasparse serve` needs on the GPU machine (Python 3.12,
# x86-64) beyond what its image holds, with their whole dependency closure: the image lacks
# fastapi/uvicorn/pydantic, and its grpcio is older than the one our generated stubs ask for.
# Carry .whl with the checkout; scripts/gpu/serve_suite.sh installs it with --no-deps.
set -euo pipefail
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .whl fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 httptools uvloop pydantic==2.14.4 \
  grpcio==1.85.1 grpcio-health-checking==1.85.1 cryptography
ls .whl
