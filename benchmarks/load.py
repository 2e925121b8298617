"""Requests per second and p50/p95 latency of /v1/chat/completions at 1 and 8 concurrent clients,
and the server's overhead per request against calling Engine.chat directly with the same input.

    .venv/bin/python benchmarks/load.py                 # starts its own server with the tiny model
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:8080 --api-key KEY   # a running one
    .venv/bin/python benchmarks/load.py --compare-batching   # one at a time, per token (eager, compiled)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image


def image_url(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (180, 60, 40)).save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(args) -> dict:
    content = [
        {"type": "text", "text": "What is the total amount?"},
        {"type": "image_url", "image_url": {"url": image_url(args.size)}},
    ]
    messages = [{"role": "user", "content": content}]
    return {
        "model": "m",
        "messages": messages,
        "max_tokens": args.tokens,
        "min_tokens": args.tokens,
        "temperature": 0,
    }


def one(session: requests.Session, url: str, body: dict, headers: dict) -> float:
    start = time.perf_counter()
    response = session.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300)
    response.raise_for_status()
    return time.perf_counter() - start


def run_level(url, body, headers, concurrency: int, total: int) -> dict:
    local = threading.local()

    def task(_):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return one(local.session, url, body, headers)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(task, range(total)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": total,
        "requests_per_s": total / elapsed,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def serve_tiny(batch_size: int = 8, engine=None, compile: bool = False):
    import uvicorn

    import glmflash
    from glmflash.backends.local.engine import Engine
    from glmflash.server import create_app

    engine = engine or glmflash.load("tiny")
    settings = glmflash.Settings.build(
        max_queue=64,
        max_batch_size=batch_size,
        cache_dir=engine.settings.model.cache_dir,
        compile=compile,
        prefix_cache_mb=int(os.environ.get("GLMFLASH_PREFIX_CACHE_MB", 512)),  # 0: measure without reuse
    )
    engine = Engine(engine.model, engine.processor, engine.info, settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, settings), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return engine, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one with the tiny model)")
    parser.add_argument("--api-key")
    parser.add_argument("--tokens", type=int, default=32, help="answer length, forced")
    parser.add_argument("--size", type=int, default=224, help="square test image side in pixels")
    parser.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--compare-batching", action="store_true", help="one at a time vs batched, same run")
    parser.add_argument("--compile", action="store_true", help="the server decodes compiled")
    args = parser.parse_args()
    if args.compare_batching:
        return compare_batching(args)

    engine, url = (None, args.url) if args.url else serve_tiny(compile=args.compile)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = request_body(args)
    run_level(url, body, headers, 1, 3)  # warm-up
    levels = [run_level(url, body, headers, c, args.requests) for c in (1, 8)]
    result = {"url": url, "tokens": args.tokens, "image": f"{args.size}x{args.size}", "levels": levels}
    print(f"{args.tokens} tokens per answer, {args.size}x{args.size} image")
    print(f"{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for level in levels:
        print(f"{level['concurrency']:>8}{level['requests_per_s']:>10.2f}{level['p50_s'] * 1000:>10.1f}"
              f"{level['p95_s'] * 1000:>10.1f}")  # fmt: skip

    if engine is not None:  # server overhead: the same request through HTTP and through Engine.chat
        options = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "temperature": 0}
        session = requests.Session()
        http, direct = [], []
        for _ in range(args.requests // 2):
            http.append(one(session, url, body, headers))
            start = time.perf_counter()
            engine.chat(body["messages"], **options)
            direct.append(time.perf_counter() - start)
        overhead = statistics.median(h - d for h, d in zip(http, direct, strict=True))
        result["overhead"] = {
            "http_p50_s": statistics.median(http),
            "engine_chat_p50_s": statistics.median(direct),
            "overhead_per_request_s": overhead,
        }
        print(f"server overhead per request: {overhead * 1000:.1f} ms (median of paired runs; HTTP p50 "
              f"{statistics.median(http) * 1000:.1f} ms vs Engine.chat p50 {statistics.median(direct) * 1000:.1f} ms)")  # fmt: skip  # noqa: E501
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


SETUPS = {"one at a time": 1, "per token": 8}  # name: max_batch_size


def compare_batching(args) -> None:
    """The same server one request at a time and with per-token scheduling."""
    body, results, urls = request_body(args), {}, {}
    engine = None
    for name, batch in SETUPS.items():  # all started first: each runs beside the others
        engine, urls[name] = serve_tiny(batch, engine, args.compile)
    for _ in range(2):  # twice each, alternating: the machine drifts
        for name, url in urls.items():
            for clients in (1, 8, 2):  # warm-up (with --compile: each batch shape compiles first)
                run_level(url, body, {}, clients, clients * 2)
            for clients in (1, 8):
                level = run_level(url, body, {}, clients, args.requests)
                results.setdefault((name, clients), []).append(level)
    med = {key: {m: statistics.median(lv[m] for lv in levels) for m in ("requests_per_s", "p50_s", "p95_s")}
           for key, levels in results.items()}  # fmt: skip
    print(
        f"{args.tokens} tokens per answer, {args.size}x{args.size} image, {args.requests} requests per level"
    )
    print(f"{'setup':>16}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for (name, clients), m in med.items():
        p50, p95 = m["p50_s"] * 1000, m["p95_s"] * 1000
        print(f"{name:>16}{clients:>8}{m['requests_per_s']:>10.2f}{p50:>10.1f}{p95:>10.1f}")
    summary = {}
    for name in ("per token",):
        speedup = med[(name, 8)]["requests_per_s"] / med[("one at a time", 8)]["requests_per_s"]
        latency = med[(name, 8)]["p95_s"] / med[(name, 1)]["p50_s"]  # a lone request on that server
        summary[name] = {"speedup": speedup, "p95_vs_single": latency}
        print(f"{name}, 8 clients: {speedup:.2f}x the throughput of one at a time (goal >= 4x), "
              f"p95 latency {latency:.2f}x a lone request (goal <= 2x)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            rows = [{"setup": n, "clients": c, **m} for (n, c), m in med.items()]
            json.dump({"levels": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
