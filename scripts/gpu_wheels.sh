#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that scripts/gpu_measure.sh needs on a GPU machine that
# has torch and transformers but no network: bitsandbytes (int8/int4), torchao (int8+torchao), and
# peft with psutil (the QLoRA step).
# They land in .whl/ (git-ignored), for Python 3.12 on x86-64 Linux unless PYVER says otherwise.
# torchao 0.17 is the release made for torch 2.11, what the lent GPU machines hold.
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${PYVER:-3.12}
rm -rf .whl && mkdir -p .whl
for wheel in "bitsandbytes==0.50.2" "torchao==0.17.0" "peft==0.21.2" "psutil==7.1.3"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$wheel"
done
ls -l .whl
