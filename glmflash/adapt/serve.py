"""LoRA adapters on a loaded model: attached in place (transformers' PEFT integration, so the
engine's model keeps its class and its decode loop), and merged into the base weights for export.

An adapter trained for another base model or another architecture is refused with a clear
message, before anything is changed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import InvalidRequestError


def adapter_config(path: str | Path) -> dict:
    folder = Path(path).expanduser()
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise InvalidRequestError(
            f"{folder} is not a LoRA adapter folder (no adapter_config.json): train one with "
            "`python -m glmflash finetune`.",
            param="adapter",
        )
    try:
        return json.loads(config.read_text("utf-8"))
    except ValueError:
        raise InvalidRequestError(f"{config} is not valid JSON.", param="adapter") from None


def attach_adapter(model, path: str | Path, name: str | None = None, *, base: str | None = None) -> str:
    """Load the adapter at `path` into `model` and make it active; returns its name. `base`: the
    loaded model's id, checked against the one the adapter was trained on (glmflash.json)."""
    from .train import require_peft

    require_peft()
    folder = Path(path).expanduser()
    adapter_config(folder)
    trained_on = _trained_on(folder)
    if base and trained_on and trained_on != base:
        raise InvalidRequestError(
            f"The adapter in {folder} was trained on {trained_on}, but {base} is loaded: load that "
            "model, or train an adapter for this one.",
            param="adapter",
        )
    name = name or folder.name
    try:
        model.load_adapter(str(folder), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names that do not fit
        _detach(model, name)
        raise InvalidRequestError(
            f"The adapter in {folder} does not fit this model (trained for another base model or "
            f"another rank?): {str(exc).splitlines()[0][:300]}",
            param="adapter",
        ) from None
    return name  # the first adapter loaded is the active one


def merge(engine, adapter: str | Path, out: str | Path) -> Path:
    """Base weights plus the adapter, merged, saved as a full checkpoint (with the processor)
    that loads like any other: `glmflash.load(OUT)`, vLLM, SGLang."""
    peft = _peft()
    folder = Path(adapter).expanduser()
    adapter_config(folder)
    try:
        merged = peft.PeftModel.from_pretrained(engine.model, str(folder)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise InvalidRequestError(
            f"The adapter in {folder} does not fit this model: {str(exc).splitlines()[0][:300]}",
            param="adapter",
        ) from None
    target = Path(out).expanduser()
    merged.save_pretrained(str(target))
    engine.processor.save_pretrained(str(target))
    return target


def _trained_on(folder: Path) -> str | None:
    """The base model id in the adapter's glmflash.json (adapters from elsewhere have none)."""
    try:
        return json.loads((folder / "glmflash.json").read_text("utf-8")).get("base_model")
    except (OSError, ValueError, AttributeError):
        return None


def _peft():
    from .train import require_peft

    return require_peft()


def _detach(model, name: str) -> None:
    with contextlib.suppress(Exception):  # nothing was attached
        model.delete_adapter(name)
