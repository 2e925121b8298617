"""The bench's `--arch-only`: the real GLM-4.6V-Flash architecture (or another, `--config`) with
random weights, written once as a checkpoint with the family's token ids and loaded through the
same code as the real one, each variant (bf16, int8, int4, +compile, +torchao) measured against the
memory-bandwidth limit it measures first.
"""

from __future__ import annotations

import copy
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

from .measure import _sync, device_name, run


def memory_bandwidth(device: str = "cuda:0", gib: float = 2.0) -> float:
    """Bytes/s the device moves in a copy within its memory (read + write), the best of 10."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(10):
        _sync()
        start = time.perf_counter()
        target.copy_(source)
        _sync()
        best = min(best, time.perf_counter() - start)
    del source, target
    _empty_cache()
    return 2 * gib * 2**30 / best


def arch_config(path: str | Path):
    """A Glm4vConfig from a JSON file laid out as glmflash/data/full_size_config.json."""
    import json

    from transformers import Glm4vConfig

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"Cannot read the architecture {path}: {exc}", param="config") from None
    data.pop("_comment", None)
    return Glm4vConfig(**data)


def random_checkpoint(folder: Path, config, device: str, *, reuse: bool = False) -> Path:
    """`config`'s architecture with random bf16 weights, beside a tokenizer laid out with the
    family's real token ids; every id the config names (image, video, eos, pad) is the tokenizer's.
    `reuse`: a checkpoint of the same architecture already in `folder` is taken as it is."""
    import hashlib
    import shutil

    from transformers import AutoModelForImageTextToText

    from ..backends.local.load import check_token_ids
    from ..backends.local.tiny import generation_config, token_ids, write_processor

    target = folder / "glm46v-random"
    stamp, key = target / "glmflash-random.txt", hashlib.sha256(config.to_json_string().encode()).hexdigest()
    if reuse and stamp.is_file() and stamp.read_text() == key:
        print(f"random checkpoint reused: {target}", file=sys.stderr, flush=True)
        return target
    shutil.rmtree(target, ignore_errors=True)
    tokenizer = write_processor(target, real_ids=True).tokenizer
    ids = token_ids(tokenizer)
    config = copy.deepcopy(config)
    text = config.get_text_config(decoder=True)
    if text.vocab_size < len(tokenizer):
        from ..errors import InvalidRequestError

        raise InvalidRequestError(
            f"The architecture's vocabulary ({text.vocab_size}) is smaller than the family's "
            f"tokenizer ({len(tokenizer)} ids): use the full-size vocabulary."
        )
    for name, value in ids.items():
        setattr(text if name in ("eos_token_id", "pad_token_id") else config, name, value)
    check_token_ids(config, tokenizer)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config = generation_config(ids)
    model.save_pretrained(target)
    del model
    gc.collect()
    _empty_cache()
    stamp.write_text(key)  # last: a checkpoint cut short is never reused
    print(f"random checkpoint written: {target}", file=sys.stderr, flush=True)
    return target


def _reset_compiled(entry: dict | None) -> None:
    """Keep what torch.compile counted for this variant (CUDA graph re-records and skips show
    there), then forget its graphs: the next variant compiles the same forward afresh."""
    from torch._dynamo.utils import counters

    if entry is not None and counters.get("inductor"):
        entry["inductor_counters"] = dict(counters["inductor"])
    counters.clear()
    torch._dynamo.reset()


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


VARIANT_FLAGS = ("compile", "torchao")


def parse_variant(variant: str) -> dict:
    """ "int8+torchao+compile" -> load() arguments: a precision, then optional flags."""
    precision, *flags = variant.split("+")
    unknown = set(flags) - set(VARIANT_FLAGS)
    if unknown or not precision:
        from ..errors import InvalidRequestError

        raise InvalidRequestError(
            f"Unknown variant {variant!r}: a precision, then optionally +compile and/or +torchao, "
            "e.g. bf16+compile, int8+torchao+compile."
        )
    return {
        "precision": precision,
        "compile": "compile" in flags,
        "quantizer": "torchao" if "torchao" in flags else "bitsandbytes",
    }


def _scratch(need: int = 40 * 2**30) -> str | None:
    """/dev/shm when it holds the ~20 GB checkpoint twice over (saving and loading from memory
    takes seconds, a disk minutes); else the default temporary folder."""
    import shutil

    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free >= need else None
    except OSError:
        return None


def arch_only(
    *,
    variants,
    tokens: int,
    requests: int,
    concurrency: int | list[int],
    save=lambda result: None,
    device: str = "cuda:0",
    config=None,
    size: int = 1024,
    bandwidth_gib: float = 2.0,
    checkpoint: str | Path | None = None,
) -> dict:
    """Each variant of the full-size architecture (or `config`) in turn on `device`, a 1024x1024
    image, at 1 and `concurrency` callers (or each of a list); `save` gets the result after each
    variant, so a run cut short still reports. `checkpoint`: a folder where the random checkpoint
    is kept (and reused from) instead of a temporary one."""
    import contextlib

    import glmflash

    from ..backends.local import local_engine
    from ..backends.local.load import full_size_config, weight_bytes

    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import InvalidRequestError

        raise InvalidRequestError("--arch-only needs a CUDA GPU.")
    levels = [1, concurrency] if isinstance(concurrency, int) else list(concurrency)
    choices = {variant: parse_variant(variant) for variant in variants}
    result: dict = {
        "device_name": device_name(device),
        "bandwidth_bytes_per_s": memory_bandwidth(device, bandwidth_gib),
        "image": f"{size}x{size}",
    }
    save(result)
    kept: contextlib.AbstractContextManager[str]
    if checkpoint is not None:
        Path(checkpoint).mkdir(parents=True, exist_ok=True)
        kept = contextlib.nullcontext(str(checkpoint))
    else:
        kept = tempfile.TemporaryDirectory(dir=_scratch() if device.startswith("cuda") else None)
    with kept as tmp:
        folder = random_checkpoint(
            Path(tmp), config or full_size_config(), device, reuse=checkpoint is not None
        )
        for variant, options in choices.items():
            began = time.perf_counter()
            engine = None
            try:
                engine = glmflash.load(str(folder), device=device, max_batch_size=max(levels), **options)
                weights = weight_bytes(local_engine(engine, "bench --arch-only").model)
                one = run(engine, size=size, tokens=tokens, requests=requests, concurrency=levels)
            except Exception as exc:  # e.g. bitsandbytes missing: say so, measure the rest
                result[variant] = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                limit = result["bandwidth_bytes_per_s"] / weights
                single = one["levels"][0]["decode_tokens_per_s"]
                result[variant] = {
                    **one,
                    "weight_bytes": weights,
                    "decode_limit_tokens_per_s": limit,
                    "decode_fraction_of_limit": one["baseline"]["decode_tokens_per_s"] / limit,
                    "engine_decode_fraction_of_limit": single / limit,
                }
            finally:
                if engine is not None:
                    engine.close()  # its batcher thread holds the model
                engine = None
                _reset_compiled(result.get(variant))
                gc.collect()
                _empty_cache()
            result[variant]["seconds"] = time.perf_counter() - began
            save(result)
    return result
