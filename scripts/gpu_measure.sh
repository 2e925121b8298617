#!/usr/bin/env bash
# Issue 8's GPU half in one run on a CUDA machine: the GPU tests, then `bench --arch-only` over the
# real architecture with random weights in bf16, int4, int8 and the faster-decoding variants
# (most important first: the JSON is rewritten after each, so a cut-off run still reports).
#
#   scripts/gpu_measure.sh [OUTDIR]          # OUTDIR defaults to $OUT, else gpu-results/
#
# Wheels in .whl/ (scripts/gpu_wheels.sh fetches them) are installed first, for machines
# without network (the device tool must carry .whl, which git ignores). BENCH_SECONDS bounds the
# benchmark (default 480); it is stopped with SIGINT so the ~20 GB scratch checkpoint is removed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  python3 -m pip list 2>/dev/null | grep -iE '^(bitsandbytes|torchao|accelerate) '
} 2>&1 | tee "$out/machine.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log"
# bf16 with per-token scheduling and with the static batcher (+static) at 16 callers: issue 20's
# images/s and p95 side by side in one run
variants=${VARIANTS:-bf16,bf16+static,int4,int8,bf16+compile,int8+torchao+compile}
timeout -s INT -k 30 "${BENCH_SECONDS:-480}" python3 -m glmflash bench --arch-only --precisions "$variants" \
  --concurrency 1,16 --json "$out/arch.json" 2>&1 | tee "$out/bench.log"
echo "bench exit status: ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
