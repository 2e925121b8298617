"""Prefill for the token scheduler: requests that wait together are prefilled as one group.

A group is one request, or several short ones whose left-padded prompts fit in one chunk
(`prefill_chunk` tokens in all): their images are encoded once, in one call, and the group's
cache comes out aligned at its newest column, the way the running rows' cache is kept, so it
joins as it is. A request longer than a chunk is prefilled alone, a chunk per turn of the loop.

Each row's rotary positions come from the model's own rule (get_rope_index: three streams per
token, image tokens laid out by their grid), and so does the offset its answer continues with.
A request prefilled alone whose prompt starts with what a recent row held (reuse.py) starts with
those keys and values in its cache and prefills only the rest, at the positions the whole prompt
gives it; images seen recently take their cached features instead of the vision encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .reuse import Reuse, encode, image_keys
from .rows import Row


@dataclass(eq=False)
class Prefill:
    """Rows being prefilled into a cache of their own (one row: a chunk per turn)."""

    rows: list[Row]
    embeds: torch.Tensor  # (rows, width, hidden): prompt embeddings, images in place, left-padded
    positions: torch.Tensor  # (3, rows, width)
    mask: torch.Tensor  # (rows, width): 1 for prompt tokens, 0 for padding
    offsets: list[int]  # per row: rotary position minus token index after its prompt
    cache: object
    steps_at: int  # the scheduler's decode steps when it began
    done: int = 0
    chunks: int = 0

    @property
    def width(self) -> int:
        return self.embeds.shape[1]


def group(rows: list[Row], model, pad_id: int, steps: int, reuse: Reuse | None = None) -> Prefill:
    """Embed and place the rows' prompts (their inputs made) as one group; a row alone starts
    from its longest cached prefix."""
    inputs = collate([dict(row.inputs) for row in rows], pad_id)
    embeds = embed(model, inputs, reuse)
    positions, offsets = rotary_positions(model, inputs)
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    cache, done = new_cache(model), 0
    if reuse is not None and len(rows) == 1:
        done, prefix = reuse.find(inputs["input_ids"][0], image_keys(inputs), rows[0].adapter)
        if prefix is not None:
            for layer, (keys, values) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
                cache.update(keys[None, :, :done], values[None, :, :done], layer)
        rows[0].reused["cached_tokens"] = done
    return Prefill(rows, embeds, positions, mask, offsets, cache, steps, done=done)


def collate(inputs: list[dict], pad_id: int) -> dict:
    """Left-pad the token rows to one length; stack the images of all rows in order."""
    if len(inputs) == 1:
        return inputs[0]
    width = max(x["input_ids"].shape[1] for x in inputs)
    batch: dict[str, Any] = {}
    for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if name not in inputs[0]:
            continue
        fill = pad_id if name == "input_ids" else 0
        batch[name] = torch.cat(
            [torch.nn.functional.pad(x[name], (width - x[name].shape[1], 0), value=fill) for x in inputs]
        )
    for name in ("pixel_values", "image_grid_thw"):
        parts = [x[name] for x in inputs if name in x]
        if parts:
            batch[name] = torch.cat(parts)
    if all("image_hashes" in x for x in inputs):
        batch["image_hashes"] = [h for x in inputs for h in x["image_hashes"]]
    return batch


def embed(model, inputs: dict, reuse: Reuse | None = None) -> torch.Tensor:
    """Input embeddings with each image's features in its placeholder tokens."""
    ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    if inputs.get("pixel_values") is not None:
        pixels, grids = inputs["pixel_values"], inputs["image_grid_thw"]
        if reuse is not None:
            features = reuse.image_features(model, pixels, grids, image_keys(inputs))
        else:
            features = encode(model, pixels, grids)
        embeds[ids == model.config.image_token_id] = features.to(embeds.device, embeds.dtype)
    return embeds


def rotary_positions(model, inputs: dict) -> tuple[torch.Tensor, list[int]]:
    """(3, rows, width) rotary positions and, per row, the offset its answer continues with."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    if inputs.get("image_grid_thw") is None:
        if mask is None:
            positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        else:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[None].expand(3, -1, -1), [0] * ids.shape[0]
    extra = {"mm_token_type_ids": inputs["mm_token_type_ids"]} if "mm_token_type_ids" in inputs else {}
    base = getattr(model, "model", model)
    positions, offsets = base.get_rope_index(
        ids, image_grid_thw=inputs["image_grid_thw"], attention_mask=mask, **extra
    )
    return positions, [int(offset) for offset in offsets.reshape(-1).tolist()]


def new_cache(model):
    try:
        return DynamicCache(config=model.config.get_text_config(decoder=True))
    except TypeError:  # transformers before the config argument
        return DynamicCache()
