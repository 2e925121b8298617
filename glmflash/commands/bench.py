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

import sys
from pathlib import Path

from .arch import arch_config, arch_only
from .measure import run, table


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
