#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that scripts/gpu_measure.sh needs on the lent GPU
# machine, which has torch 2.11, transformers, accelerate and peft but no network (the list:
# tests/gpu_machine/sitecustomize.py): bitsandbytes (int8/int4, the QLoRA step), torchao
# (int8+torchao) and torchvision (the GLM processor needs it; not on that machine's list, so it
# is installed there only when missing). About 54 MB, under the device tool's 64 MiB per call.
# They land in .whl/ (git-ignored: the device tool must carry it), for Python 3.12 on x86-64
# Linux unless PYVER says otherwise. torchao 0.17 and torchvision 0.26 are the releases made for
# torch 2.11.
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${PYVER:-3.12}
rm -rf .whl && mkdir -p .whl
for wheel in "bitsandbytes==0.50.2" "torchao==0.17.0" "torchvision==0.26.0"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$wheel"
done
ls -l .whl
