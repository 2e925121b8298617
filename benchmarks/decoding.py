"""Compiled decoding (GLMFLASH_COMPILE) and the int8 quantizers, each against its eager or
bitsandbytes twin, measured in alternating rounds of the same run (medians of the rounds).

    .venv/bin/python benchmarks/decoding.py                     # tiny model on this machine
    .venv/bin/python benchmarks/decoding.py --model /models/glm46v-flash --device cuda --precision bf16

Rows: one stream's decode tokens/s and images/s with 1 and 8 callers, for the engine eager and
compiled on the same weights; with --int8 also int8 through bitsandbytes, torchao, and torchao
compiled (each its own copy of the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import glmflash
from glmflash.backends.local.engine import Engine
from glmflash.commands.measure import through_engine, workload


def twin(engine, **changes) -> Engine:
    """The same weights behind another engine with other settings."""
    return Engine(engine.model, engine.processor, engine.info, engine.settings.replace(**changes))


def measure(engine, args) -> dict:
    one = through_engine(engine, workload(args.requests, args.size), args.tokens, 1)
    many = through_engine(engine, workload(args.requests * 2, args.size), args.tokens, 8)
    return {"decode_tokens_per_s": one["decode_tokens_per_s"], "images_per_s_1": one["images_per_s"],
            "images_per_s_8": many["images_per_s"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=224, help="square test image side (224)")
    parser.add_argument("--tokens", type=int, default=64, help="answer tokens, forced (64)")
    parser.add_argument("--requests", type=int, default=4, help="requests per measurement (4)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--int8", action="store_true", help="also bitsandbytes vs torchao int8")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    base = glmflash.load(args.model, args.precision, args.device, max_batch_size=8)
    engines = {"eager": base, "compiled": twin(base, compile=True)}
    if args.int8:
        bnb = glmflash.load(args.model, "int8", args.device, max_batch_size=8)
        ao = glmflash.load(args.model, "int8", args.device, max_batch_size=8, quantizer="torchao")
        engines.update(
            {"int8 bitsandbytes": bnb, "int8 torchao": ao, "int8 torchao compiled": twin(ao, compile=True)}
        )
    for engine in engines.values():  # warm-up: compiles each batch shape before anything is timed
        for callers in (1, 8, 2):
            through_engine(engine, workload(callers, args.size), args.tokens, callers)
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            rounds[name].append(measure(engine, args))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    print(f"{base.info.model_id} on {base.info.device}; {args.size}x{args.size} image, {args.tokens} tokens, "
          f"median of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'':>22}{'decode tok/s':>14}{'images/s, 1':>13}{'images/s, 8':>13}")
    for name, m in med.items():
        print(
            f"{name:>22}{m['decode_tokens_per_s']:>14.1f}{m['images_per_s_1']:>13.2f}{m['images_per_s_8']:>13.2f}"
        )
    ratios = {"compiled / eager": ("compiled", "eager")}
    if args.int8:
        ratios["int8 torchao / bitsandbytes"] = ("int8 torchao", "int8 bitsandbytes")
        ratios["int8 torchao compiled / bitsandbytes"] = ("int8 torchao compiled", "int8 bitsandbytes")
    result = {"medians": med, "ratios": {}}
    for label, (a, b) in ratios.items():
        # per-round ratios, then their median: both sides of a round ran seconds apart
        r = {
            k: statistics.median(x[k] / y[k] for x, y in zip(rounds[a], rounds[b], strict=True))
            for k in med[a]
        }
        result["ratios"][label] = r
        print(f"{label}: decode {r['decode_tokens_per_s']:.2f}x, images/s "
              f"{r['images_per_s_1']:.2f}x (1 caller), {r['images_per_s_8']:.2f}x (8 callers)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
