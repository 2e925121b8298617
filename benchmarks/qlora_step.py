"""Memory and time per LoRA training step, through `finetune` itself: on a GPU the full-size
GLM-4.6V-Flash architecture with random weights, its base in 4-bit (QLoRA, what `finetune`
picks on cards under 40 GB) unless --precision says otherwise; on this CPU the tiny model.

    python benchmarks/qlora_step.py --arch full --json out.json     # a CUDA GPU, bitsandbytes, peft
    .venv/bin/python benchmarks/qlora_step.py                       # the tiny model on the CPU

`--config FILE` trains another architecture with random weights (scripts/gpu_measure.sh's CI dry
run: a shrunken one, `--device cpu`, fp32), `--checkpoint DIR` takes the random checkpoint that
`bench --arch-only --checkpoint DIR` kept (or writes one there).

Rows are noise images at the training pixel budget with a short JSON answer; the figures are
finetune's own report (steps/s, the estimate made before the run, the memory used: CUDA's peak
allocation, or peak RSS on a CPU), over --steps optimiser steps of --batch rows each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import glmflash
from glmflash.adapt.train import TrainSettings, finetune
from glmflash.commands.arch import _scratch, arch_config, random_checkpoint


def rows(folder: Path, count: int, side: int) -> Path:
    """`count` training rows (noise images of side x side) and one validation row, as
    training-data writes them."""
    data = folder / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count + 1):
        image = folder / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(image)
        user = {"role": "user", "content": [{"type": "image", "image": str(image)},
                                            {"type": "text", "text": "Is this image allowed?"}]}  # fmt: skip
        answer = json.dumps({"label": "allow" if i % 2 else "block", "reason": "a test row"})
        lines.append(json.dumps({"id": str(i), "messages": [user, {"role": "assistant", "content": answer}]}))
    (data / "train.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    (data / "val.jsonl").write_text(lines[-1] + "\n")
    return data


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--arch", choices=("tiny", "full"), default="tiny")
    parser.add_argument(
        "--config", help="full: another architecture (JSON as glmflash/data/full_size_config.json)"
    )
    parser.add_argument("--device", help="full: where to train (cuda:0)")
    parser.add_argument("--checkpoint", help="full: a folder that keeps the random checkpoint (reused)")
    parser.add_argument("--precision", help="the base's precision (default: int4 on CUDA, else fp32)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps to time")
    parser.add_argument("--batch", type=int, default=2, help="rows per optimiser step")
    parser.add_argument("--side", type=int, default=0, help="image side (default: the budget's)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    settings = TrainSettings(batch=args.batch, epochs=1, max_steps=args.steps, patience=1)
    side = args.side or (int(settings.max_image_pixels**0.5) if args.arch == "full" else 32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        if args.arch == "full":
            from glmflash.backends.local.load import full_size_config

            device = args.device or "cuda:0"
            config = arch_config(args.config) if args.config else full_size_config()
            if args.checkpoint:
                scratch, kept = None, Path(args.checkpoint)
            else:
                scratch = tempfile.TemporaryDirectory(dir=_scratch() if device.startswith("cuda") else None)
                kept = Path(scratch.name)
            model = str(random_checkpoint(kept, config, device, reuse=bool(args.checkpoint)))
            precision = args.precision or ("int4" if device.startswith("cuda") else "fp32")
            engine = glmflash.load(model, precision, device)
        else:
            scratch = None
            engine = glmflash.load("tiny", args.precision or "fp32", "cpu")
        loaded = time.perf_counter() - began
        data = rows(folder, args.steps * args.batch, side)
        report = finetune(engine, data, folder / "adapter", settings, progress=False)
        if scratch is not None:
            scratch.cleanup()
    figures = {
        "arch": args.arch,
        "device": engine.info.device,
        "precision": engine.info.precision,
        "image": f"{side}x{side}",
        "rows_per_step": args.batch,
        "steps": report["steps"],
        "seconds_per_step": 1 / report["steps_per_s"] if report["steps_per_s"] else None,
        "estimated_gib": report["estimated_bytes"] / 2**30,
        "used_gib": report["used_bytes"] / 2**30,
        "train_loss": report["train_loss"],
        "load_s": loaded,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
