"""glmflash's server against `transformers serve` on the same tiny model and the same load:
requests/s and p95 latency at 1 and 8 concurrent clients, side by side in one run.

    .venv/bin/python benchmarks/vs_transformers_serve.py
    .venv/bin/python benchmarks/vs_transformers_serve.py --requests 40 --tokens 32 --rounds 2

Both get the same OpenAI request (an image and a question, greedy, `max_tokens` answer tokens;
the tiny model never stops early). `transformers serve` runs as its own process on this machine
with the same folder; glmflash runs with its defaults (per-token scheduling, 8 slots).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from load import image_url, run_level, serve_tiny


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_transformers_serve(folder: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", folder, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("transformers serve did not start (pip install 'transformers[serving]')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=40, help="requests per level")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import glmflash
    from glmflash.backends.local.tiny import ensure_tiny_model

    engine = glmflash.load("tiny")
    folder = str(ensure_tiny_model(Path(engine.settings.model.cache_dir)))
    content = [
        {"type": "text", "text": "What is the total amount?"},
        {"type": "image_url", "image_url": {"url": image_url(args.size)}},
    ]
    body = {"model": folder, "messages": [{"role": "user", "content": content}],
            "max_tokens": args.tokens, "temperature": 0}  # fmt: skip
    hf, hf_url = start_transformers_serve(folder)
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for _ in range(args.rounds):
            engine, ours = serve_tiny(8, engine)
            for name, url in (("transformers serve", hf_url), ("glmflash", ours)):
                run_level(url, body, {}, 2, 4)  # warm-up
                for clients in (1, 8):
                    results.setdefault((name, clients), []).append(
                        run_level(url, body, {}, clients, args.requests)
                    )
    finally:
        hf.kill()
    med = {key: {m: statistics.median(lv[m] for lv in levels) for m in ("requests_per_s", "p95_s")}
           for key, levels in results.items()}  # fmt: skip
    print(f"{args.tokens} tokens per answer, {args.size}x{args.size} image, "
          f"{args.requests} requests per level, medians of {args.rounds} rounds")  # fmt: skip
    print(f"{'server':>20}{'clients':>8}{'req/s':>10}{'p95 ms':>10}")
    for (name, clients), m in med.items():
        print(f"{name:>20}{clients:>8}{m['requests_per_s']:>10.2f}{m['p95_s'] * 1000:>10.1f}")
    for clients in (1, 8):
        ratio = (
            med[("glmflash", clients)]["requests_per_s"]
            / med[("transformers serve", clients)]["requests_per_s"]
        )
        print(f"{clients} client(s): glmflash serves {ratio:.2f}x the requests/s of transformers serve")
    print("goal: >= 4x at 8 clients")


if __name__ == "__main__":
    main()
