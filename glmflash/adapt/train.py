"""Fine-tuning a LoRA adapter (peft) on training rows from adapt.examples, with transformers' Trainer.

The adapter covers the language model's projections only: attention q/k/v/o and the MLP's fused
gate_up and down (TARGET). The vision tower stays frozen and untouched, which is also what vLLM
can serve. A generic `gate_proj/up_proj` list would hit the vision MLP and miss the language
model's fused `gate_up_proj`.

Each row is encoded as inference sees it: the prompt through the processor (image within the
pixel budget), then the answer's tokens and the turn's end. The loss counts the answer only.
Gradient checkpointing runs non-reentrant, so no input embedding needs `requires_grad`: that
sidesteps `enable_input_require_grads`, which fails on the GLM vision tower in transformers 5.

Training has validation loss per epoch, early stop, checkpoints per epoch, and resume after a
kill (the newest checkpoint in OUT/checkpoints). The adapter is written whole at the end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..backends.local import local_engine
from ..backends.local.adapters import TARGET, base_shape, require_peft
from ..errors import InvalidRequestError
from .examples import read_split

__all__ = ["TARGET", "TrainSettings", "finetune", "require_peft", "wants_qlora"]
QLORA_BELOW_BYTES = 40 * 2**30  # cards with less memory train on 4-bit base weights (QLoRA)


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    epochs: float = 3.0
    learning_rate: float = 2e-4
    batch: int = 4  # rows per optimiser step (gradient accumulation over single rows)
    patience: int = 2  # epochs without a better validation loss before stopping
    max_image_pixels: int = 802_816  # images are downscaled to this for training
    gradient_checkpointing: bool = True
    max_steps: int = -1  # stop after this many optimiser steps (tests, quick tries); -1: epochs


def wants_qlora(device: str) -> bool:
    """The default base precision for training: 4-bit on CUDA cards under 40 GB."""
    if not device.startswith("cuda"):
        return False
    return torch.cuda.get_device_properties(torch.device(device)).total_memory < QLORA_BELOW_BYTES


class Rows(torch.utils.data.Dataset):
    """Training rows encoded on demand: prompt tokens and image through the processor, then the
    answer's tokens; labels -100 on the prompt."""

    def __init__(self, rows: list[dict], engine, max_image_pixels: int):
        from ..inputs.images import ImagePolicy

        self.rows, self.engine = rows, engine
        limits = replace(engine.settings.limits, max_image_pixels=max_image_pixels)
        self.policy = ImagePolicy.from_limits(limits)
        tokenizer = engine.tokenizer
        self.end = "<|user|>" if "<|user|>" in tokenizer.get_vocab() else tokenizer.eos_token

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        messages = [{"role": "user", "content": [{"type": "image", "image": row["image"]},
                                                 {"type": "text", "text": row["prompt"]}]}]  # fmt: skip
        _, inputs = self.engine.prepare(messages, thinking=False, image_policy=self.policy)
        inputs = {k: v.to("cpu") for k, v in inputs.items()}
        text = row["answer"] + self.end
        ids = self.engine.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        prompt = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:
            types = inputs["mm_token_type_ids"]
            inputs["mm_token_type_ids"] = torch.nn.functional.pad(types, (0, ids.shape[1]))
        labels = inputs["input_ids"].clone()
        labels[:, :prompt] = -100
        inputs["labels"] = labels
        return inputs


def estimate_bytes(model, trainable: int, tokens: int) -> int:
    """What the run needs, roughly: the weights as loaded, the adapter's weights, gradients and
    Adam moments in fp32, and activations for one row of `tokens` (checkpointed per layer)."""
    from ..backends.local.load import weight_bytes

    config = model.config.get_text_config(decoder=True)
    activations = tokens * config.hidden_size * config.num_hidden_layers * 4 * 6
    return weight_bytes(model) + trainable * 16 + activations


def finetune(
    engine, data: str | Path, out: str | Path, settings: TrainSettings, *, progress: bool = True
) -> dict:
    """Train a LoRA adapter on DATA/train.jsonl (validated on DATA/val.jsonl) into OUT. `engine`:
    a local one (the weights are trained in this process)."""
    engine = local_engine(engine, "finetune")
    peft = require_peft()
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    data, out = Path(data), Path(out)
    train, val = read_split(data / "train.jsonl"), read_split(data / "val.jsonl")
    missing = [row["image"] for row in train + val if not Path(row["image"]).is_file()]
    if missing:
        raise InvalidRequestError(
            f"{len(missing)} training image(s) are missing, e.g. {missing[0]}.", param="data"
        )
    if not train:
        raise InvalidRequestError(f"{data} has no training rows (train.jsonl).", param="data")
    if len(train) < settings.batch:
        raise InvalidRequestError(
            f"{len(train)} training rows is fewer than one step's batch ({settings.batch}): "
            "add rows or lower --batch.",
            param="batch",
        )
    model = engine.model
    shape = base_shape(model.config)
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=TARGET)  # fmt: skip
    model = peft.get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dataset = Rows(train, engine, settings.max_image_pixels)
    val_set = Rows(val, engine, settings.max_image_pixels)
    longest = max(dataset[i]["input_ids"].shape[1] for i in range(min(len(dataset), 8)))
    estimate = estimate_bytes(model, trainable, longest)
    on_cpu = not engine.info.device.startswith("cuda")
    print(f"training {trainable:,} adapter parameters on {len(train)} rows ({len(val)} for validation); "
          f"memory needed, estimated: {estimate / 2**30:.2f} GiB", flush=True)  # fmt: skip
    checkpoints = out / "checkpoints"
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=settings.batch,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        logging_steps=1,
        eval_strategy="epoch" if val else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=bool(val),
        metric_for_best_model="eval_loss" if val else None,
        greater_is_better=False if val else None,
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        report_to=[],
        use_cpu=on_cpu,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        eval_dataset=val_set if val else None,
        data_collator=lambda items: items[0],
        callbacks=[EarlyStoppingCallback(settings.patience)] if val else [],
    )
    if engine.info.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    resume = _last_checkpoint(checkpoints)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    report = {
        "settings": asdict(settings),
        "base_model": engine.info.model_id,
        "base_shape": shape,
        "rows": {"train": len(train), "val": len(val)},
        "steps": trainer.state.global_step,
        "steps_per_s": trainer.state.global_step / seconds if seconds else 0.0,
        "train_loss": [e["loss"] for e in history if "loss" in e],
        "val_loss": [e["eval_loss"] for e in history if "eval_loss" in e],
        "resumed": resume is not None,
        "estimated_bytes": estimate,
        "used_bytes": _used_bytes(engine.info.device),
    }
    _save(model, out, report)
    return report


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest whole checkpoint; one a kill cut short (no trainer_state.json) is removed."""
    whole = []
    for folder in checkpoints.glob("checkpoint-*"):
        if (folder / "trainer_state.json").is_file():
            whole.append(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return max(whole, key=lambda folder: int(folder.name.rsplit("-", 1)[1]), default=None)


def _used_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak RSS


def _save(model, out: Path, report: dict) -> None:
    """The adapter and glmflash.json, written into a fresh folder and moved into place."""
    staging = out / ".adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    (staging / "glmflash.json").write_text(json.dumps(report, indent=2))
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
