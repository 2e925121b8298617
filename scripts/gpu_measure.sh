#!/usr/bin/env bash
# The GPU checks in one run on a CUDA machine: the GPU tests; a QLoRA training step on the real
# architecture with random weights (benchmarks/qlora_step.py: memory and time per step); then
# `bench --arch-only` over that architecture in bf16, int4, int8 and the faster-decoding variants
# (most important first: the JSON is rewritten after each, so a cut-off run still reports).
#
#   scripts/gpu_measure.sh [OUTDIR]          # OUTDIR defaults to $OUT, else gpu-results/
#
# Wheels in .whl/ (scripts/gpu_wheels.sh fetches them) are installed first, for machines
# without network (the device tool must carry .whl, which git ignores). TOTAL_SECONDS (default
# 560) bounds the whole run: QLORA_SECONDS (default 180) the training step, the benchmark what is
# left; each is stopped with SIGINT so its ~20 GB scratch checkpoint is removed.
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
deadline=$((SECONDS + ${TOTAL_SECONDS:-560}))
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log"
timeout -s INT -k 20 "${QLORA_SECONDS:-180}" python3 benchmarks/qlora_step.py --arch full \
  --json "$out/qlora.json" 2>&1 | tail -n 40 | tee "$out/qlora.log"
# bf16 with per-token scheduling and with the static batcher (+static) at 16 callers: issue 20's
# images/s and p95 side by side in one run
variants=${VARIANTS:-bf16,bf16+static,int4,int8,bf16+compile,int8+torchao+compile}
left=$((deadline - SECONDS))
timeout -s INT -k 30 "$((left > 60 ? left : 60))" python3 -m glmflash bench --arch-only --precisions "$variants" \
  --concurrency 1,16 --json "$out/arch.json" 2>&1 | tee "$out/bench.log"
echo "bench exit status: ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
