"""The one decode loop's decode speed, compiled (GLMFLASH_COMPILE) against eager, in the same run:
decode tokens/s at 1 and 8 rows with the tiny model (or any checkpoint), and their ratio.

    .venv/bin/python benchmarks/decode_loop.py                    # tiny model, this machine
    .venv/bin/python benchmarks/decode_loop.py --tokens 200 --rounds 5 --rows 1 8

Each round runs every setup (eager, compiled) at every row count, alternating; decode tokens/s is
the rows' tokens after the first over the time from the first token to the last (prefill and the
first token left out), read from the loop's token ids (the goal's figure) and then through
Engine.chat (text: each caller's detokenising shares the cores). The compiled engine is warmed up
first (compiling is not timed). Figures are medians over the rounds (the ratio: of each round's
ratio); the goal is compiled >= 1.3x eager at 1 and 8 rows. Run it from the checkout with
PYTHONPATH=. when another copy is installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from PIL import Image

MESSAGES = [
    {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (224, 224), (90, 120, 150))},
                                 {"type": "text", "text": "Describe it."}]}
]  # fmt: skip


def decode_rate(engine, rows: int, tokens: int, through: str = "loop") -> float:
    """Decode tokens/s of `rows` requests of `tokens` tokens sent at once: their token ids straight
    from the decode loop (`loop`), or their text through Engine.chat (`engine`: detokenising and
    the text stage in each caller's thread, on the same cores)."""
    firsts, lasts = [], []
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0, "thinking": False}

    def ask():
        if through == "engine":
            called = time.perf_counter()
            timings = engine.chat(MESSAGES, **options).timings  # token times as the loop made them
            firsts.append(called + timings.ttft_s)
            lasts.append(called + timings.ttft_s + (tokens - 1) / timings.tokens_per_s)
            return
        from glmflash.backends.local.rows import RowRequest
        from glmflash.options import GenerationOptions

        _, inputs = engine.prepare(MESSAGES, thinking=False)
        checked = GenerationOptions.build(
            default_max_new_tokens=tokens, max_new_tokens_limit=tokens, **options
        )
        request = RowRequest(inputs, checked.resolved(engine.defaults), (threading.Event(),))
        times = [at for _, at in engine._batcher().tokens(request)]
        firsts.append(times[0])
        lasts.append(times[-1])

    threads = [threading.Thread(target=ask) for _ in range(rows)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rows * (tokens - 1) / (max(lasts) - max(firsts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import glmflash
    from glmflash.backends.local.engine import Engine

    base = glmflash.load(args.model)
    setups = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        settings = glmflash.Settings.build(
            cache_dir=base.settings.model.cache_dir, compile=compile_, max_batch_size=max(args.rows)
        )
        setups[name] = Engine(base.model, base.processor, base.info, settings)
    started = time.perf_counter()
    setups["compiled"].warm_up()
    for rows in args.rows:  # every shape measured, compiled once before timing
        for engine in setups.values():
            decode_rate(engine, rows, 20)
    warm_s = time.perf_counter() - started
    figures: dict = {"warm_up_s": round(warm_s, 1), "tokens": args.tokens, "rounds": args.rounds}
    for through in ("loop", "engine"):
        rates: dict[str, dict[int, list[float]]] = {name: {rows: [] for rows in args.rows} for name in setups}
        for _ in range(args.rounds):
            for rows in args.rows:
                for name, engine in setups.items():
                    rates[name][rows].append(decode_rate(engine, rows, args.tokens, through))
        print(
            f"through the {'decode loop (token ids)' if through == 'loop' else 'engine (Engine.chat, text)'}:"
        )
        print(f"{'rows':>5}{'eager tok/s':>13}{'compiled tok/s':>16}{'compiled/eager':>16}")
        figures[through] = {}
        for rows in args.rows:
            eager, compiled = (statistics.median(rates[name][rows]) for name in ("eager", "compiled"))
            pairs = zip(rates["compiled"][rows], rates["eager"][rows], strict=True)
            ratio = statistics.median(c / e for c, e in pairs)  # per round: the machine drifts between rounds
            figures[through][rows] = {"eager": eager, "compiled": compiled, "ratio": ratio}
            print(f"{rows:>5}{eager:>13.1f}{compiled:>16.1f}{ratio:>15.2f}x")
    print(f"(compiling, not timed: {warm_s:.1f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    for engine in setups.values():
        engine.close()


if __name__ == "__main__":
    main()
