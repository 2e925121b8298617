"""The bench's measurements: a fixed workload (noise images, one question), raw `model.generate`
one request at a time as the baseline, the engine at several concurrencies, and their table.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time

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
