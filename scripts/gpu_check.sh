#!/usr/bin/env bash
# The GPU machine's checks in one report (benchmarks/gpu_check.py): the CUDA test subset, NCCL training with
# --nproc 2, AMP bf16/fp16 steps, 4096x2160 WCT time and peak memory, the onnxruntime-gpu bundle.
#   scripts/gpu_check.sh                          # on a GPU: runs/gpu_check/gpu_check.{json,md}, under 8 minutes
#   scripts/gpu_check.sh --device cpu --quick     # the same checks on the CPU, small sizes
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
