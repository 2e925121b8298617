"""What the Engine costs on top of raw `model.generate` for the same inputs.

Both paths start from the same PIL image and question, run the processor, and generate the same
number of tokens greedily with the same GenerationConfig (length forced with min_new_tokens).
Runs alternate; medians are reported, and the ratios are medians of the per-pair ratios, which
cancel most of the drift of a shared, noisy machine.

    .venv/bin/python benchmarks/wrapper_overhead.py [--model tiny] [--tokens 200] [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

import glmflash


class _Clock(BaseStreamer):
    def __init__(self):
        self.calls, self.first, self.last = 0, None, None

    def put(self, value):
        self.calls += 1
        if self.calls > 1:  # the first call is the prompt
            self.last = time.perf_counter()
            self.first = self.first or self.last

    def end(self):
        pass


def raw_generate(engine, image, question, tokens):
    start = time.perf_counter()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = engine.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = engine.processor(text=[prompt], images=[image], return_tensors="pt").to(engine.model.device)
    inputs.pop("token_type_ids", None)
    clock = _Clock()
    with torch.inference_mode():
        out = engine.model.generate(**inputs, generation_config=_greedy(engine, tokens), streamer=clock)
    end = time.perf_counter()
    count = out.shape[1] - inputs["input_ids"].shape[1]
    return clock.first - start, (count - 1) / (clock.last - clock.first), end - start


def _greedy(engine, tokens):
    """Greedy, exactly `tokens` long, stopping where the engine stops: the comparison is of the
    wrapper, not settings."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=sorted(engine.stop_ids),
        pad_token_id=engine.tokenizer.pad_token_id,
    )  # fmt: skip


def engine_chat(engine, image, question, tokens):
    reply = engine.ask(image, question, temperature=0, max_new_tokens=tokens, min_new_tokens=tokens)
    assert reply.usage.completion_tokens == tokens, reply.usage
    return reply.timings.ttft_s, reply.timings.tokens_per_s, reply.timings.total_s


def engine_stream(engine, image, question, tokens):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]
    final = list(engine.stream(messages, temperature=0, max_new_tokens=tokens, min_new_tokens=tokens))[-1]
    assert final.usage.completion_tokens == tokens, final.usage
    return final.timings.ttft_s, final.timings.tokens_per_s, final.timings.total_s


def _paired_ratio(results, name, index):
    return statistics.median(e[index] / r[index] for e, r in zip(results[name], results["raw"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--size", type=int, default=448, help="square test image side in pixels")
    parser.add_argument("--pause", type=float, default=0.5, help="idle seconds before each run")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    engine = glmflash.load(args.model, args.precision)
    image = Image.new("RGB", (args.size, args.size), (180, 60, 40))
    question = "What is the total amount on this invoice?"
    paths = (("raw", raw_generate), ("chat", engine_chat), ("stream", engine_stream))
    for _, fn in paths:  # warm-up
        fn(engine, image, question, 8)
    results = {name: [] for name, _ in paths}
    for _ in range(args.runs):
        for name, fn in paths:
            # Start each run from an idle machine, as a served request does: torch's CPU worker
            # threads keep spinning for a while after a run and would tax whichever run comes next.
            time.sleep(args.pause)
            results[name].append(fn(engine, image, question, args.tokens))
    medians = {
        name: {
            key: statistics.median(r[i] for r in runs)
            for i, key in enumerate(("ttft_s", "tokens_per_s", "total_s"))
        }
        for name, runs in results.items()
    }
    keys = ("ttft", "tokens_per_s", "total")
    summary = {
        "model": engine.info.model_id,
        "precision": engine.info.precision,
        "device": engine.info.device,
        "tokens": args.tokens,
        "runs": args.runs,
        "image": f"{args.size}x{args.size}",
        "medians": medians,
        "ratios": {
            name: {key: _paired_ratio(results, name, i) for i, key in enumerate(keys)}
            for name in ("chat", "stream")
        },
    }
    print(
        f"{engine.info.model_id} {engine.info.precision} on {engine.info.device}: {args.tokens} tokens, "
        f"{args.size}x{args.size} image, median of {args.runs}"
    )
    print(f"{'':22}{'TTFT s':>10}{'tokens/s':>12}{'total s':>10}")
    labels = {"raw": "model.generate", "chat": "Engine.chat", "stream": "Engine.stream"}
    for name, m in medians.items():
        print(f"{labels[name]:22}{m['ttft_s']:>10.4f}{m['tokens_per_s']:>12.1f}{m['total_s']:>10.3f}")
    for name, r in summary["ratios"].items():
        print(
            f"{labels[name] + ' / raw *':22}{r['ttft']:>10.3f}{r['tokens_per_s']:>12.3f}{r['total']:>10.3f}"
        )
    print("* median of per-run ratios (TTFT and total: lower is better; tokens/s: higher is better)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
