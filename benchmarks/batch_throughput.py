"""Batch throughput with and without grammar-constrained decoding, and through a whole batch job.

For each image the moderation preset runs constrained; the same prompt then runs unconstrained,
forced to the same number of tokens (min = max = the constrained answer's length), so the ratio is
the grammar's cost alone. The two alternate image by image (shared machines drift). Then the
constrained job runs end to end through jobs.run_job (hashing, JSONL writes and fsyncs included).

    .venv/bin/python benchmarks/batch_throughput.py [--model tiny] [--images 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

import glmflash
from glmflash.jobs.runner import run_job
from glmflash.jobs.tasks import load_task


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    paths = []
    for i in range(count):
        image = Image.effect_noise((size, size), 40 + i).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = folder / f"img{i:03d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--precision")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (224)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    engine = glmflash.load(args.model, args.precision)
    # Random weights fill strings to their maxLength: room enough that no answer is cut off.
    task = replace(load_task("moderation"), max_new_tokens=2048)
    generation = {**task.generation(), "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images, args.size)
        engine.chat(task.messages(paths[0].read_bytes()), **generation)  # warm-up
        constrained, free, tokens, ratios = 0.0, 0.0, [], []
        for path in paths:
            messages = task.messages(path.read_bytes())
            start = time.perf_counter()
            reply = engine.chat(messages, **generation)
            with_grammar = time.perf_counter() - start
            n = reply.usage.completion_tokens
            start = time.perf_counter()
            engine.chat(messages, thinking=False, max_new_tokens=n, min_new_tokens=n, seed=0)
            without = time.perf_counter() - start
            constrained, free = constrained + with_grammar, free + without
            tokens.append(n)
            ratios.append(with_grammar / without)
        start = time.perf_counter()
        summary = run_job(engine, task, paths, Path(tmp) / "results.jsonl")
        job_s = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(tmp) / "results.jsonl").read_text().splitlines()]
        job_tokens = [r["usage"]["completion_tokens"] for r in records]
    figures = {
        "model": engine.info.model_id,
        "device": engine.info.device,
        "precision": engine.info.precision,
        "images": args.images,
        "image_size": args.size,
        "median_answer_tokens": statistics.median(tokens),
        "constrained_images_per_s": args.images / constrained,
        "unconstrained_images_per_s": args.images / free,
        "grammar_cost_ratio_median": statistics.median(ratios),
        "job_images_per_s": summary.done / job_s,
        "job_median_answer_tokens": statistics.median(job_tokens),  # the model's own sampling settings
        "job_done": summary.done,
        "job_failed": summary.failed,
    }
    for key, value in figures.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
