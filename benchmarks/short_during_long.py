"""A short request sent while a long answer is being generated: its latency against its latency
alone, through the HTTP server (the one decode loop, eager and compiled, in the same run).

    .venv/bin/python benchmarks/short_during_long.py                 # tiny model, this machine
    .venv/bin/python benchmarks/short_during_long.py --long 1500 --short 8 --after 1.0 --rounds 3

The short request joins the running batch at the next step. Figures are medians over the rounds,
the setups alternating.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import requests
from load import image_url, serve_tiny


def body(tokens: int, size: int) -> dict:
    content = [
        {"type": "text", "text": "Describe the picture."},
        {"type": "image_url", "image_url": {"url": image_url(size)}},
    ]
    return {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
    }


def timed(url: str, request: dict) -> float:
    start = time.perf_counter()
    response = requests.post(f"{url}/v1/chat/completions", json=request, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, default=1500, help="tokens of the long answer")
    parser.add_argument("--short", type=int, default=8, help="tokens of the short answer")
    parser.add_argument("--after", type=float, default=1.0, help="seconds between the two requests")
    parser.add_argument("--size", type=int, default=224, help="square image side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    long_body, short_body = body(args.long, args.size), body(args.short, args.size)
    figures: dict[str, dict[str, list[float]]] = {}
    engine = None
    for _ in range(args.rounds):
        for scheduler in ("eager", "compiled"):
            engine, url = serve_tiny(8, engine, compile=scheduler == "compiled")
            engine.warm_up()  # compiled: every shape the run meets, before timing
            timed(url, short_body)  # warm-up
            runs = figures.setdefault(scheduler, {"alone": [], "long": [], "during": []})
            runs["alone"].append(statistics.median(timed(url, short_body) for _ in range(3)))
            runs["long"].append(timed(url, long_body))
            long_call = threading.Thread(target=timed, args=(url, long_body))
            long_call.start()
            time.sleep(args.after)
            runs["during"].append(timed(url, short_body))
            long_call.join()
    print(f"long answer {args.long} tokens; short answer {args.short} tokens sent {args.after:g} s later; "
          f"{args.size}x{args.size} image; medians of {args.rounds} rounds")  # fmt: skip
    print(f"{'scheduler':>10}{'short alone ms':>16}{'long alone s':>14}{'short during ms':>17}{'ratio':>8}")
    for scheduler, runs in figures.items():
        alone, during = statistics.median(runs["alone"]), statistics.median(runs["during"])
        print(f"{scheduler:>10}{alone * 1000:>16.1f}{statistics.median(runs['long']):>14.2f}"
              f"{during * 1000:>17.1f}{during / alone:>7.1f}x")  # fmt: skip
    print("goal: the short request within 2x its time alone")


if __name__ == "__main__":
    main()
