"""`python -m glmflash bench`: a fixed workload's time to first token, decode speed, images/s and
peak memory through the engine at several concurrencies, each against raw `model.generate` one
request at a time measured in the same run. Prints a table and writes JSON (the cost calculator
reads its `images_per_s`).

`--arch-only` measures the real GLM-4.6V-Flash architecture with random weights on a GPU (no
download: weight values do not change the timings) in bf16, int8 and int4 through the same
loading code as the checkpoint, against the memory-bandwidth limit it measures first.
`--config FILE` measures another architecture (scripts/gpu_measure.sh's CI dry run: a shrunken
one on the CPU) and `--checkpoint DIR` keeps the random checkpoint for the next run to reuse.
"""

from __future__ import annotations

import copy
import gc
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUESTION = "Is anything in this product image against the rules? Answer briefly."


def workload(count: int, size: int) -> list[list[dict]]:
    """`count` different noise images of size x size, each with the same question."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    question = {"type": "text", "text": QUESTION}
    return [[{"role": "user", "content": [{"type": "image", "image": im}, question]}] for im in images]


def baseline(engine, requests, tokens: int) -> dict:
    """Raw processor + model.generate, one request at a time, greedy, exactly `tokens` tokens."""
    from transformers import GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    eos = sorted(engine.stop_ids)
    config = GenerationConfig(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=eos,
                              pad_token_id=engine.tokenizer.pad_token_id,
                              temperature=1.0, top_p=1.0, top_k=50)  # fmt: skip  # neutral knobs: greedy
    ttft, rates = [], []
    start = time.perf_counter()
    for messages in requests:
        began = time.perf_counter()
        _, inputs = engine.prepare(messages, thinking=False)
        clock = Clock()
        with torch.inference_mode():
            engine.model.generate(**inputs, generation_config=config, streamer=clock)
        _sync()
        first, last = clock.times[1], clock.times[-1]  # times[0] is the prompt
        ttft.append(first - began)
        rates.append((tokens - 1) / (last - first) if last > first else 0.0)
    wall = time.perf_counter() - start
    return {"ttft_s": statistics.median(ttft), "decode_tokens_per_s": statistics.median(rates),
            "images_per_s": len(requests) / wall}  # fmt: skip


def through_engine(engine, requests, tokens: int, concurrency: int) -> dict:
    """`concurrency` callers at once, each streaming its answers from the engine."""
    ttft, rates, latencies, lock = [], [], [], threading.Lock()
    work = list(requests)

    def caller():
        while True:
            with lock:
                if not work:
                    return
                messages = work.pop()
            began, final = time.perf_counter(), None
            for chunk in engine.stream(messages, thinking=False, temperature=0, max_new_tokens=tokens,
                                       min_new_tokens=tokens):  # fmt: skip
                final = chunk
            with lock:
                ttft.append(final.timings.ttft_s)
                rates.append(final.timings.tokens_per_s)
                latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "ttft_s": statistics.median(ttft),
        "decode_tokens_per_s": statistics.median(rates),
        "images_per_s": len(requests) / wall,
        "p95_s": sorted(latencies)[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def run(engine, *, size: int, tokens: int, requests: int, concurrency: list[int]) -> dict:
    from ..backends.local import as_local

    engine.reset_peak_memory()
    warm = workload(2, size)
    local = as_local(engine)  # raw model.generate is the baseline here; a remote one: its own 1 by 1
    if local is not None:
        baseline(local, warm[:1], tokens)  # warm-up both paths
    through_engine(engine, warm, tokens, min(2, max(concurrency)))  # no batch shape left unmeasured
    engine.reset_peak_memory()  # the one-image peak: requests one at a time, nothing else
    if local is not None:
        base = baseline(local, workload(requests, size), tokens)
    else:
        base = through_engine(engine, workload(requests, size), tokens, 1)
    peak_one = peak_memory(engine)
    levels = []
    for n in concurrency:
        if engine.info.compiled:  # each new batch shape compiles first: not timed
            through_engine(engine, workload(n, size), tokens, n)
        level = through_engine(engine, workload(max(requests, n * 2), size), tokens, n)
        level["images_per_s_ratio"] = level["images_per_s"] / base["images_per_s"]
        level["ttft_ratio"] = level["ttft_s"] / base["ttft_s"]
        level["decode_ratio"] = level["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        levels.append(level)
    return {
        "model": engine.info.model_id,
        "device": engine.info.device,
        "device_name": device_name(engine.info.device),
        "precision": engine.info.precision,
        "max_batch_size": engine.settings.batching.max_batch_size,
        "compiled": engine.info.compiled,
        "quantizer": engine.info.quantizer,
        "workload": {
            "image": f"{size}x{size}",
            "question": QUESTION,
            "answer_tokens": tokens,
            "requests": requests,
        },
        "baseline": base,
        "levels": levels,
        "images_per_s": max(level["images_per_s"] for level in levels),
        "peak_memory_bytes": peak_memory(engine),  # with the most callers at once
        "peak_memory_one_image_bytes": peak_one,
        "peak_memory_kind": "process RSS" if engine.memory() is None else "GPU (torch max allocated)",
    }


def table(result: dict) -> str:
    b, w = result["baseline"], result["workload"]
    lines = [
        f"{result['model']} {result['precision']}{_how(result)} on {result['device_name']}; "
        f"{w['image']} image, {w['answer_tokens']} answer tokens, max batch {result['max_batch_size']}",
        f"{'':>22}{'TTFT ms':>10}{'decode tok/s':>14}{'images/s':>10}{'x baseline':>12}{'p95 s':>8}",
        f"{'model.generate, 1 by 1':>22}{b['ttft_s'] * 1000:>10.1f}{b['decode_tokens_per_s']:>14.1f}"
        f"{b['images_per_s']:>10.2f}{1:>12.2f}",
    ]
    for lv in result["levels"]:
        lines.append(f"{'engine, ' + str(lv['concurrency']) + ' at once':>22}{lv['ttft_s'] * 1000:>10.1f}"
                     f"{lv['decode_tokens_per_s']:>14.1f}{lv['images_per_s']:>10.2f}{lv['images_per_s_ratio']:>12.2f}"
                     f"{lv['p95_s']:>8.2f}")  # fmt: skip
    one, most = result["peak_memory_one_image_bytes"] / 2**30, result["peak_memory_bytes"] / 2**30
    lines.append(f"peak memory: {one:.2f} GiB one image at a time, {most:.2f} GiB in all "
                 f"({result['peak_memory_kind']})")  # fmt: skip
    return "\n".join(lines)


def _how(result: dict) -> str:
    """ " (torchao, compiled)": how the engine ran, when not plain."""
    parts = [result["quantizer"]] if result["precision"] in ("int8", "int4") else []
    if result.get("compiled"):
        parts.append("compiled")
    return f" ({', '.join(parts)})" if parts else ""


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_memory(engine) -> int:
    """The engine's accelerator peak; without one (CPU, remote), this process's peak RSS."""
    memory = engine.memory()
    if memory is not None:
        return memory.peak_bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the real architecture on a GPU ----------------------------------------------------------


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


def main(args, settings=None) -> int:
    import json

    target = Path(args.json)

    def save(result: dict) -> None:
        target.write_text(json.dumps(result, indent=2))

    failed = False
    if args.arch_only:
        variants = args.precisions.split(",")
        device = args.device or "cuda:0"
        result = arch_only(variants=variants, tokens=args.tokens, requests=args.requests,
                           concurrency=sorted({1, *args.concurrency}), save=save, device=device,
                           config=arch_config(args.config) if args.config else None, size=args.size or 1024,
                           bandwidth_gib=2.0 if device.startswith("cuda") else 0.25,
                           checkpoint=args.checkpoint)  # fmt: skip
        for variant in variants:
            entry = result[variant]
            failed = failed or "error" in entry
            print(f"{variant}: {entry.get('error') or table(entry)}")
            if "decode_fraction_of_limit" in entry:
                print(f"  one stream decodes at {entry['decode_fraction_of_limit']:.0%} (model.generate) and "
                      f"{entry['engine_decode_fraction_of_limit']:.0%} (engine) of the bandwidth limit "
                      f"({entry['decode_limit_tokens_per_s']:.1f} tok/s)")  # fmt: skip
    else:
        from ..backends.registry import load

        engine = load(args.model, args.precision, args.device, settings=settings)
        result = run(
            engine,
            size=args.size or 448,
            tokens=args.tokens,
            requests=args.requests,
            concurrency=args.concurrency,
        )
        print(table(result))
        save(result)
    print(f"written: {target}", file=sys.stderr)
    return 1 if failed else 0  # a variant that failed: the others' figures are written all the same
