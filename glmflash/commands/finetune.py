"""`python -m glmflash training-data | finetune | merge-adapter`: the fine-tuning path's commands.

python -m glmflash training-data results.jsonl --task moderation --corrections fixed.csv --out data/
python -m glmflash finetune data/ --out adapters/moderation --epochs 3
python -m glmflash batch photos/ --task moderation --adapter adapters/moderation --out after.jsonl
python -m glmflash merge-adapter adapters/moderation --out merged/     # a full checkpoint
"""

from __future__ import annotations

import json
import sys

from ..jobs.tasks import PRESETS, load_task


def add_parsers(commands, model_flags) -> None:
    data = commands.add_parser(
        "training-data",
        help="batch or eval results (optionally corrected) -> training rows (train/val JSONL)",
    )
    data.add_argument("results", help="a results.jsonl from `batch` or an `eval` run folder's")
    data.add_argument("--task", required=True, help=f"{' or '.join(PRESETS)}, or a task JSON file")
    data.add_argument("--corrections", help="a labels file (image, expected) that overrides answers")
    data.add_argument("--val", type=float, default=0.2, help="share of rows for validation (0.2)")
    data.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, manifest.json")

    train = commands.add_parser("finetune", help="train a LoRA adapter on training-data's rows")
    model_flags(train, adapter=False)
    train.add_argument("data", help="a folder from `training-data`")
    train.add_argument("--out", required=True, help="the adapter folder (checkpoints inside; resumes)")
    train.add_argument("--rank", type=int, default=16)
    train.add_argument("--alpha", type=int, default=32)
    train.add_argument("--epochs", type=float, default=3.0)
    train.add_argument("--learning-rate", type=float, default=2e-4)
    train.add_argument("--batch", type=int, default=4, help="rows per optimiser step (4)")
    train.add_argument("--patience", type=int, default=2, help="epochs without a better val loss (2)")
    train.add_argument("--max-image-pixels", type=int, default=802_816, help="training image budget")
    train.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (quick tries)")
    train.add_argument("--no-gradient-checkpointing", action="store_true")
    train.add_argument("--no-progress", action="store_true")

    merge = commands.add_parser("merge-adapter", help="base weights + a LoRA adapter -> a full checkpoint")
    model_flags(merge, adapter=False)
    merge.add_argument("adapter_folder", help="the adapter folder")
    merge.add_argument("--out", required=True, help="folder for the merged checkpoint")


def run(args, load_engine, settings) -> int:
    """`load_engine()` loads the base model; `settings` are the ones it loads with."""
    if args.command == "training-data":
        from ..adapt.examples import export_training

        manifest = export_training(
            args.results, load_task(args.task), args.out, corrections=args.corrections, val_fraction=args.val
        )
        left = ", ".join(f"{n} {why}" for why, n in manifest["left_out"].items() if n) or "none"
        print(f"{manifest['train']} training rows, {manifest['val']} validation rows "
              f"({manifest['corrected']} corrected; left out: {left}) in {args.out}")  # fmt: skip
        return 0
    if args.command == "merge-adapter":
        from ..adapt.merge import merge

        print(f"merged checkpoint: {merge(load_engine(), args.adapter_folder, args.out)}")
        return 0
    from ..adapt.train import TrainSettings, finetune, require_peft

    require_peft()  # before loading the model
    if args.precision is None and settings.model.precision == "auto":  # QLoRA on smaller cards
        from ..adapt.train import wants_qlora
        from ..backends.local.load import choose_placement

        if wants_qlora(choose_placement("auto", args.device or "auto").device):
            args.precision = "int4"
    settings = TrainSettings(
        rank=args.rank, alpha=args.alpha, epochs=args.epochs, learning_rate=args.learning_rate,
        batch=args.batch, patience=args.patience, max_image_pixels=args.max_image_pixels,
        gradient_checkpointing=not args.no_gradient_checkpointing, max_steps=args.max_steps,
    )  # fmt: skip
    report = finetune(load_engine(), args.data, args.out, settings, progress=not args.no_progress)
    shown = ("steps", "steps_per_s", "val_loss", "estimated_bytes", "used_bytes")
    summary = {key: report[key] for key in shown}
    print(json.dumps(summary), file=sys.stderr)
    print(f"adapter: {args.out}")
    return 0
