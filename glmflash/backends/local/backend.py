"""The local backend's opener, which backends.registry.load() calls: a checkpoint resolved and
placed (load.py), its adapters attached (adapters.py), wrapped in an `Engine` (engine.py)."""

from __future__ import annotations

import logging
from dataclasses import replace

from ...config import EngineSettings
from ...errors import PrecisionError
from ...replies import EngineInfo
from ..registry import engine_settings
from .engine import Engine
from .load import QUANTIZERS, choose_placement, load_model, resolve_checkpoint, weight_bytes

log = logging.getLogger("glmflash")


def open_local(
    model: str, precision: str | None, device: str | None, base: EngineSettings, options: dict
) -> Engine:
    """The local backend's opener (backends.registry.load picks it): load the checkpoint
    `model` names ("auto", "tiny", a folder, a hub id) on this machine and return an `Engine`."""
    options.pop("api_key", None)  # a remote backend's: nothing to send it to here
    settings = engine_settings(base, {"model": model, "precision": precision, "device": device, **options})
    placement = choose_placement(settings.model.precision, settings.model.device)
    if settings.model.quantizer not in QUANTIZERS:
        raise PrecisionError(
            f"Unknown quantizer {settings.model.quantizer!r}: choose one of {', '.join(QUANTIZERS)}."
        )
    checkpoint = resolve_checkpoint(settings.model.name, settings)
    if placement.precision in ("int8", "int4"):
        placement = replace(placement, reason=f"{placement.reason}, {settings.model.quantizer}")
    log.info("loading %s: %s", checkpoint.model_id, placement.reason)
    model_obj, processor = load_model(checkpoint, placement, settings.model.quantizer)
    if checkpoint.demo:
        log.warning("The tiny demo model is loaded: its answers are meaningless.")
    model_id, adapters = checkpoint.model_id, []
    if settings.model.adapter:
        from .adapters import attach_adapters

        adapters = attach_adapters(model_obj, settings.model.adapter, base=model_id)
    if adapters:
        model_id = f"{model_id}+{adapters[0]}"  # what answers when a request names none
    info = EngineInfo(
        model_id=model_id,
        source=checkpoint.source,
        precision=placement.precision,
        device=placement.device,
        dtype=placement.dtype_name,
        parameters=sum(p.numel() for p in model_obj.parameters()),
        memory_bytes=weight_bytes(model_obj),
        max_image_pixels=settings.limits.max_image_pixels,
        demo_model=checkpoint.demo,
        placement_reason=placement.reason,
        adapters=tuple(adapters),
        adapter=adapters[0] if adapters else "",
    )
    return Engine(model_obj, processor, info, settings)
