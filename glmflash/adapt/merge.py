"""An adapter merged into the base model's weights and saved as a full checkpoint (merge-adapter)."""

from __future__ import annotations

from pathlib import Path

from ..backends.local import local_engine
from ..backends.local.adapters import adapter_config, require_peft
from ..errors import InvalidRequestError


def merge(engine, adapter: str | Path, out: str | Path) -> Path:
    """Base weights plus the adapter, merged, saved as a full checkpoint (with the processor)
    that loads like any other: `glmflash.load(OUT)`, vLLM, SGLang. `engine`: a local one."""
    engine = local_engine(engine, "merge-adapter")
    peft = require_peft()
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
