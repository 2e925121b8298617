#!/usr/bin/env bash
# The GPU checks in one run on a CUDA machine, most valuable first. Each step runs under its own
# time budget (coreutils `timeout`, SIGINT first: the lent machine has no pytest-timeout) and all
# of them under TOTAL_SECONDS (default 480); a step whose turn comes with under 30 s left is
# skipped. Each step writes OUTDIR/STEP.json (the figures, rewritten as they come), OUTDIR/STEP.log,
# and a line in OUTDIR/steps.jsonl when it ends (exit 124: out of time), so a run cut short
# still reports everything it measured.
#
#   scripts/gpu_measure.sh [OUTDIR]                 # OUTDIR defaults to $OUT, else gpu-results/
#   STEPS=bench-int8,qlora scripts/gpu_measure.sh   # only these steps (a rerun of what failed)
#
# step                budget  estimate  what
# setup                  60 s     15 s  wheels from .whl/ (scripts/gpu_wheels.sh), machine.txt
# tests                  60 s     30 s  tests/test_gpu.py but the compiled ones (tiny model)
# bench-bf16            110 s     75 s  writes the random 20.6 GB checkpoint (kept for every later
#                                       step), bf16 at 1 and 16 callers, 8 requests: one-stream
#                                       decode against the bandwidth limit, TTFT, images/s, p95
# bench-int4             90 s     65 s  bitsandbytes NF4, 4 requests, 1 and 16 callers
# qlora                  90 s     55 s  benchmarks/qlora_step.py: 3 steps of 2 rows, int4 base
# bench-bf16+compile    120 s    100 s  1 caller, 4 requests (torch.compile + CUDA graphs)
# bench-int8             60 s     40 s  LLM.int8, 16 tokens, 2 requests, 1 caller
#                             = 380 s   then, while time is left:
# tests-compile          90 s     50 s  the compiled-decoding tests (CUDA graphs replayed)
# bench-int8+torchao+compile  120 s  torchao int8 weight-only, compiled, 1 caller
#
# How estimated (no GPU has run this yet; the figures are arithmetic, to be replaced by the
# first run's steps.jsonl): each step is a fresh Python (imports and CUDA start ~6 s). bf16 weights
# are 20.6 GB; an H200 reads ~4.0 of its 4.8 TB/s, so decoding one token costs >= 5 ms, but eager
# transformers at one stream is bound by kernel launches (~40 layers x ~15 kernels), ~25 ms a
# token as on an H100, so 64 tokens ~1.7 s. A 1024x1024 image is ~1,340 language tokens and
# ~5,500 vision patches: 2 x 10.3e9 x 1.4e3 + the vision tower ~ 50 TFLOP, ~0.15 s at ~400 TFLOP/s
# achieved. bench-bf16 = 19 one-at-a-time requests (warm-up, model.generate, engine) ~35 s + 32
# at 16 callers in 2 waves of (16 prefills ~2.5 s + 64 steps ~2.2 s) ~10 s + random init on the
# card and 20.6 GB to /dev/shm and back ~25 s. int4: quantising at load ~20 s, ~50 ms a token.
# QLoRA: int4 load ~25 s, a row's forward + backward with checkpointing ~4 x 2 x 10e9 x 1.1e3
# ~ 90 TFLOP ~0.5 s, 7 rows with validation, plus the Trainer's checkpoint ~5 s. Compiling the
# decode step ~60-90 s. LLM.int8 decodes at ~15-20% of bf16 (bitsandbytes #490, #347).
# Machine start and transfers come on top (~2 min of the 15 lent), which leaves a rerun of a few
# steps with STEPS.
#
# Environment: PYTHON (python3), DEVICE (cuda:0), ARCH_CONFIG (an architecture JSON instead of the
# full-size one), WHEELS (.whl), TOTAL_SECONDS (480), STEPS (all); QUICK=1 shrinks every
# workload to seconds. tests/test_gpu_dry_run.py runs this script on the CPU with a shrunken
# architecture, QUICK=1 and the GPU machine's packages only, so it cannot rot between GPU runs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
device=${DEVICE:-cuda:0}
wheels=${WHEELS:-.whl}
steps=",${STEPS:-all},"
arch=()
[ -n "${ARCH_CONFIG:-}" ] && arch=(--config "$ARCH_CONFIG")
export PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} # glmflash from this checkout: it is not installed there
deadline=$((SECONDS + ${TOTAL_SECONDS:-480}))
: >"$out/steps.jsonl"

# The random checkpoint, written once by the first bench step: /dev/shm when it holds it (saving
# and loading take seconds there, minutes on a disk).
shm=$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -n 1)
root=${TMPDIR:-/tmp}
[ "${shm:-0}" -ge $((24 * 1024 ** 3)) ] 2>/dev/null && root=/dev/shm
keep=$(mktemp -d "$root/glmflash-random.XXXXXX") || exit 1
trap 'rm -rf "$keep"' EXIT

# step NAME BUDGET COMMAND...: COMMAND under BUDGET seconds (or what is left), its output in
# NAME.log and on stdout, a line in steps.jsonl.
step() {
  local name=$1 budget=$2 left status began
  shift 2
  [[ $steps == ,all, || $steps == *",$name,"* ]] || return 0
  left=$((deadline - SECONDS))
  if ((left < 30)); then
    echo "{\"step\": \"$name\", \"status\": \"skipped: ${left} s left\", \"budget_s\": $budget}" >>"$out/steps.jsonl"
    return 0
  fi
  ((budget > left)) && budget=$left
  echo "== $name (budget ${budget} s)"
  began=$SECONDS
  timeout -s INT -k 20 "$budget" "$@" 2>&1 | tee "$out/$name.log"
  status=${PIPESTATUS[0]}
  echo "{\"step\": \"$name\", \"exit\": $status, \"seconds\": $((SECONDS - began)), \"budget_s\": $budget}" >>"$out/steps.jsonl"
}

# gpu_step: a step that needs CUDA (compiling): recorded as skipped elsewhere.
gpu_step() {
  if [[ $device == cuda* ]]; then
    step "$@"
  elif [[ $steps == ,all, || $steps == *",$1,"* ]]; then
    echo "{\"step\": \"$1\", \"status\": \"skipped: $device is not a CUDA device\", \"budget_s\": $2}" >>"$out/steps.jsonl"
  fi
}

# bench NAME BUDGET VARIANT [WORKLOAD FLAGS]: one variant of `bench --arch-only` on the kept
# checkpoint, its figures in NAME.json (compiled variants on CUDA only).
bench() {
  local name=$1 budget=$2 variant=$3 run=step
  shift 3
  [ -n "${QUICK:-}" ] && set -- --tokens 4 --requests 2 --concurrency 1,2 --size 112
  [[ $variant == *+compile* ]] && run=gpu_step
  "$run" "$name" "$budget" "$py" -m glmflash bench --arch-only "${arch[@]}" --device "$device" --checkpoint "$keep" \
    --precisions "$variant" "$@" --json "$out/$name.json"
}

# Wheels first (the machine has no network), torchvision only where it is missing.
began=$SECONDS
status=0
if compgen -G "$wheels/*.whl" >/dev/null; then
  wanted=()
  for wheel in "$wheels"/*.whl; do
    [[ $(basename "$wheel") == torchvision-* ]] && "$py" -c 'import torchvision' 2>/dev/null && continue
    wanted+=("$wheel")
  done
  timeout 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$keep/site" "${wanted[@]}"
  status=$?
  export PYTHONPATH=$keep/site:$PYTHONPATH
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)'
  "$py" -m pip list 2>/dev/null | grep -iE '^(accelerate|bitsandbytes|peft|torchao|torchvision|transformers) '
  df -h /dev/shm "$keep" | sed 1d
} 2>&1 | tee "$out/machine.txt"
echo "{\"step\": \"setup\", \"exit\": $status, \"seconds\": $((SECONDS - began)), \"budget_s\": 60}" >>"$out/steps.jsonl"

tests=("$py" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning tests/test_gpu.py)
qlora=("$py" benchmarks/qlora_step.py --arch full "${arch[@]}" --device "$device" --checkpoint "$keep"
  --steps 3 --batch 2 --json "$out/qlora.json")
[ -n "${QUICK:-}" ] && qlora+=(--steps 1 --batch 1 --side 64)

step tests 60 "${tests[@]}" -k "not compile" --junitxml "$out/tests.xml"
bench bench-bf16 110 bf16 --concurrency 1,16 --requests 8
bench bench-int4 90 int4 --concurrency 1,16 --requests 4
step qlora 90 "${qlora[@]}"
bench bench-bf16+compile 120 bf16+compile --concurrency 1 --requests 4
bench bench-int8 60 int8 --concurrency 1 --requests 2 --tokens 16
gpu_step tests-compile 90 "${tests[@]}" -k compile --junitxml "$out/tests-compile.xml"
bench bench-int8+torchao+compile 120 int8+torchao+compile --concurrency 1 --requests 4
echo "== done in ${SECONDS} s: $out/steps.jsonl"
cat "$out/steps.jsonl"
