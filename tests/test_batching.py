"""Batching with the real tiny model through the engine: the same greedy answers as one at a time,
eager and compiled; rows that end (or are cancelled) alone; JSON and free rows together; seeded
answers that repeat; `bench`'s figures. The decode loop's own rules are in test_scheduler.py."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from glmflash.backends.local.engine import Engine
from glmflash.config import Settings


def engine_batching(engine, **settings) -> Engine:
    return Engine(
        engine.model,
        engine.processor,
        engine.info,
        Settings.build(cache_dir=engine.settings.model.cache_dir, **settings),
    )


def picture(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def user(*parts) -> list[dict]:
    content = [
        {"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p}
        for p in parts
    ]
    return [{"role": "user", "content": content}]


MIXED = [  # (messages, max_new_tokens): text only, one image, two images of other sizes, long prompt
    (user(picture(64, 48, 1), "What is this?"), 30),
    (user("A question without any image at all"), 20),
    (user(picture(120, 90, 2), picture(40, 40, 3), "Compare them"), 40),
    (user("x"), 5),
    (user(picture(200, 100, 4), "A longer prompt with quite a few more words than the others have"), 25),
    (user(picture(56, 200, 5), "Tall"), 35),
]


def concurrently(engine, requests, **options):
    replies = [None] * len(requests)

    def ask(i):
        messages, tokens = requests[i]
        replies[i] = engine.chat(messages, max_new_tokens=tokens, temperature=0, thinking=False, **options)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return replies


@pytest.mark.parametrize("compiled", [False, True])
def test_batched_greedy_output_is_identical_to_one_at_a_time(engine, compiled):
    alone = engine_batching(engine, max_batch_size=1)
    expected = [alone.chat(m, max_new_tokens=n, temperature=0, thinking=False) for m, n in MIXED]
    batched = engine_batching(engine, max_batch_size=8, compile=compiled)
    replies = concurrently(batched, MIXED)
    assert max(batched._batch.sizes) > 1  # they really shared batches
    for want, got in zip(expected, replies, strict=True):
        assert got.text == want.text
        uncached = dataclasses.replace(got.usage, cached_tokens=want.usage.cached_tokens)  # company varies
        assert (got.finish_reason, uncached) == (want.finish_reason, want.usage)


def test_a_short_or_cancelled_row_ends_alone(engine):
    batched = engine_batching(engine, max_batch_size=4)
    long_options = {"max_new_tokens": 400, "min_new_tokens": 400, "temperature": 0, "thinking": False}
    results, ended = {}, {}
    cancel = threading.Event()

    def run(name, **options):
        stop = cancel if name == "cancelled" else None
        results[name] = batched.chat(user(picture(64, 64, 7), name), stop_event=stop, **options)
        ended[name] = time.monotonic()

    threads = [
        threading.Thread(target=run, args=("long",), kwargs=long_options),
        threading.Thread(target=run, args=("cancelled",), kwargs=long_options),
        threading.Thread(
            target=run, args=("short",), kwargs={**long_options, "max_new_tokens": 3, "min_new_tokens": 3}
        ),
    ]
    for thread in threads:
        thread.start()
    threads[2].join(60)
    assert threads[0].is_alive()  # the short row came back while the long one still runs
    cancel.set()
    cancelled_at = time.monotonic()
    threads[1].join(60)
    assert ended["cancelled"] - cancelled_at < 1.0 and threads[0].is_alive()
    threads[0].join(120)
    assert max(batched._batch.sizes) == 3
    assert results["short"].usage.completion_tokens == 3 and results["short"].finish_reason == "length"
    assert (
        results["cancelled"].finish_reason == "cancelled"
        and results["cancelled"].usage.completion_tokens < 400
    )
    assert results["long"].usage.completion_tokens == 400


def test_json_rows_and_free_rows_share_a_batch(engine):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    batched = engine_batching(engine, max_batch_size=4)
    fmt = {"type": "json_schema", "json_schema": {"name": "small", "schema": schema}}
    batched.chat(
        user("warm"), response_format=fmt, max_new_tokens=60, thinking=False
    )  # grammar compiled once, first
    replies = [None] * 3

    def ask(i):
        options = {"response_format": fmt} if i < 2 else {}
        replies[i] = batched.chat(
            user(picture(48, 48, i), "go"), max_new_tokens=60, temperature=0, thinking=False, **options
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert max(batched._batch.sizes[1:]) == 3  # they did decode together
    for reply in replies[:2]:
        assert set(json.loads(reply.text)) == {"ok", "n"} and reply.parsed == json.loads(reply.text)
    assert replies[2].parsed is None


@pytest.mark.parametrize("size", [1, 8])
def test_a_seeded_sampled_answer_repeats(engine, size):
    batched = engine_batching(engine, max_batch_size=size)
    first, second = (
        batched.chat(
            user(picture(32, 32, 9), "hi"), max_new_tokens=12, temperature=0.9, seed=42, thinking=False
        )
        for _ in range(2)
    )
    assert first.text == second.text


def test_bench_writes_json_that_the_cost_calculator_reads(tmp_path, cache_dir):
    from tests.conftest import run_cli

    out = tmp_path / "bench.json"
    env = {"GLMFLASH_CACHE_DIR": cache_dir}
    small = ("--size", "64", "--tokens", "4", "--requests", "2", "--concurrency", "1,2")
    result = run_cli("bench", "--model", "tiny", *small, "--json", str(out), env_extra=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert [level["concurrency"] for level in figures["levels"]] == [1, 2]
    for level in figures["levels"]:
        assert level["images_per_s"] > 0 and level["images_per_s_ratio"] > 0 and level["ttft_s"] > 0
    assert figures["baseline"]["decode_tokens_per_s"] > 0 and figures["peak_memory_bytes"] > 0
    assert "model.generate, 1 by 1" in result.stdout and "engine, 2 at once" in result.stdout
    cost = run_cli("cost", "--bench", str(out), "--json")
    assert json.loads(cost.stdout)["inputs"]["images_per_second_per_gpu"] == figures["images_per_s"]
    bad = run_cli("bench", "--model", "tiny", "--concurrency", "0,x", env_extra=env)
    assert bad.returncode == 2 and "--concurrency" in bad.stderr
