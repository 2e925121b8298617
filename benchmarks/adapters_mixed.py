"""What serving several LoRA adapters costs: concurrent requests on the tiny model, without
adapters, all taking one adapter, and spread over the base model and two adapters (decoded in
the same batch, each row its own adapter). Throughput is the median of --rounds, each the
wall time of --clients requests sent at once; ratios are against the engine without adapters,
measured in the same run.

    .venv/bin/python benchmarks/adapters_mixed.py                # 8 clients, 48 tokens, 5 rounds
    .venv/bin/python benchmarks/adapters_mixed.py --clients 16 --tokens 96
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import glmflash
from glmflash.backends.local.tiny import random_adapter


def question() -> list[dict]:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(pixels)},
                                         {"type": "text", "text": "What is in the picture?"}]}]  # fmt: skip


def round_s(engine, adapters: list[str | None], tokens: int) -> float:
    """Wall seconds for one request per entry of `adapters`, all sent at once."""
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0, "thinking": False}

    def one(adapter):
        engine.chat(question(), **({} if adapter is None else {"adapter": adapter}), **options)

    threads = [threading.Thread(target=one, args=(a,)) for a in adapters]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.clients
    with tempfile.TemporaryDirectory() as tmp:
        spec = ",".join(
            f"{name}={random_adapter(Path(tmp) / name, seed=i)}" for i, name in enumerate(["alpha", "beta"])
        )
        plain = glmflash.load("tiny", "fp32", "cpu", max_batch_size=n)
        served = glmflash.load("tiny", "fp32", "cpu", max_batch_size=n, adapter=spec)
        setups = {
            "no adapters": (plain, [None] * n),
            "one adapter, every request": (served, ["alpha"] * n),
            "base + 2 adapters, mixed": (served, [("", "alpha", "beta")[i % 3] for i in range(n)]),
        }
        for engine, adapters in setups.values():  # warm: first calls build the scheduler
            round_s(engine, adapters[:2], 4)
        times: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(args.rounds):  # interleaved: the machine's noise falls on every setup alike
            for name, (engine, adapters) in setups.items():
                times[name].append(round_s(engine, adapters, args.tokens))
    base = statistics.median(times["no adapters"])
    print(f"{n} concurrent requests x {args.tokens} tokens, median of {args.rounds} rounds (tiny model, CPU)")
    print(f"{'setup':32} {'req/s':>8} {'vs no adapters':>15}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:32} {n / median:8.2f} {base / median:14.2f}x")


if __name__ == "__main__":
    main()
