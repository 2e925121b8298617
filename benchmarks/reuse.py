"""Prefix and image reuse: time to first token with reuse against without, in the same run.

    .venv/bin/python benchmarks/reuse.py                  # tiny model, this machine
    .venv/bin/python benchmarks/reuse.py --side 1024 --rounds 5 --json reuse.json

- The second question about the same image (1024x1024: ~1 MP, ~1,340 image tokens): its TTFT
  over the first question's, on an engine with reuse (goal <= 0.3x).
- The 4th turn of a chat about one image: its TTFT with reuse over the same turn with reuse off
  (GLMFLASH_PREFIX_CACHE_MB=0) (goal <= 0.3x).

Each round uses a new image (so the first question is cold), the two engines share one model,
and the figures are medians over the rounds. TTFT is from the call (the image already decoded)
to the first token.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from PIL import Image

GREEDY = {"max_new_tokens": 8, "temperature": 0, "thinking": False}
QUESTIONS = ["What is in this picture?", "What colours does it have?", "Is there any text?", "Summarise it."]


def picture(side: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def ask(engine, image, question: str):
    content = [{"type": "image", "image": image}, {"type": "text", "text": question}]
    return engine.chat([{"role": "user", "content": content}], **GREEDY)


def chat_ttfts(engine, image) -> list[float]:
    messages: list[dict] = []
    ttfts = []
    for i, question in enumerate(QUESTIONS):
        content = [{"type": "image", "image": image}] if i == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        reply = engine.chat(messages, **GREEDY)
        messages.append({"role": "assistant", "content": reply.text})
        ttfts.append(reply.timings.ttft_s)
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--side", type=int, default=1024, help="square image side in pixels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import glmflash
    from glmflash.backends.local.engine import Engine

    base = glmflash.load(args.model, max_image_pixels=args.side * args.side)
    engines = {}
    for name, megabytes in (("on", 2048), ("off", 0)):
        settings = glmflash.Settings.build(
            cache_dir=base.settings.model.cache_dir, prefix_cache_mb=megabytes, max_image_pixels=args.side**2
        )
        engines[name] = Engine(base.model, base.processor, base.info, settings)
    for engine in engines.values():  # warm-up: first calls build the loop
        ask(engine, picture(64, 0), "warm")
    first, second, turn4 = [], [], {"on": [], "off": []}
    image_tokens = 0
    for round_ in range(args.rounds):
        image = picture(args.side, 100 + round_)
        cold = ask(engines["on"], image, QUESTIONS[0])
        warm = ask(engines["on"], image, QUESTIONS[1])
        image_tokens = cold.usage.image_tokens
        first.append(cold.timings.ttft_s)
        second.append(warm.timings.ttft_s)
        for name, engine in engines.items():
            turn4[name].append(chat_ttfts(engine, picture(args.side, 200 + round_))[3])
    median = statistics.median
    figures = {
        "image": f"{args.side}x{args.side}",
        "image_tokens": image_tokens,
        "rounds": args.rounds,
        "second_question": {"first_ttft_s": median(first), "second_ttft_s": median(second),
                            "ratio": median(s / f for s, f in zip(second, first, strict=True))},
        "fourth_turn": {"reuse_on_ttft_s": median(turn4["on"]), "reuse_off_ttft_s": median(turn4["off"]),
                        "ratio": median(a / b for a, b in zip(turn4["on"], turn4["off"], strict=True))},
    }  # fmt: skip
    q, t = figures["second_question"], figures["fourth_turn"]
    print(f"{args.side}x{args.side} image ({image_tokens} image tokens), medians of {args.rounds} rounds")
    print(f"second question about one image: TTFT {q['second_ttft_s'] * 1000:.1f} ms vs the first's "
          f"{q['first_ttft_s'] * 1000:.1f} ms: {q['ratio']:.2f}x (goal <= 0.3x)")  # fmt: skip
    print(f"4th chat turn: TTFT {t['reuse_on_ttft_s'] * 1000:.1f} ms with reuse vs "
          f"{t['reuse_off_ttft_s'] * 1000:.1f} ms without: {t['ratio']:.2f}x (goal <= 0.3x)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
