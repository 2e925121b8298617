"""The token scheduler with the real tiny model: greedy tokens identical to `model.generate` alone
for mixed prompts, image sizes and arrival times (prefilled whole or in chunks); rows joining and
leaving at any step; one row cancelled mid-batch; per-row settings in one batch; positions after
images; the KV budget's refusal; long prefills interleaved; an idle scheduler using no CPU. The
tests that pin tokens run with the decode step eager and compiled (GLMFLASH_COMPILE)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from glmflash.backends.local import prefill
from glmflash.backends.local.rows import RowRequest
from glmflash.backends.local.scheduler import kv_bytes_per_token
from glmflash.errors import InvalidRequestError
from glmflash.options import GenerationOptions

from .test_batching import MIXED, engine_batching, picture, user


def row_request(engine, messages, tokens: int, stop: threading.Event | None = None, **given) -> RowRequest:
    _, inputs = engine.prepare(messages, thinking=False)
    options = GenerationOptions.build(
        default_max_new_tokens=tokens, max_new_tokens_limit=10_000, temperature=0, **given
    )
    return RowRequest(inputs, options.resolved(engine.defaults), (stop or threading.Event(),))


def loop_tokens(engine, messages, tokens: int, **given) -> list[int]:
    """Tokens straight from the scheduler (no text stage)."""
    return [token for token, _ in engine._batcher().tokens(row_request(engine, messages, tokens, **given))]


def generate_tokens(engine, messages, tokens: int) -> list[int]:
    """The reference: transformers' own generate, one request alone."""
    import torch

    _, inputs = engine.prepare(messages, thinking=False)
    with torch.inference_mode():
        out = engine.model.generate(
            **inputs, max_new_tokens=tokens, do_sample=False, eos_token_id=sorted(engine.stop_ids)
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def arriving(engine, requests, delays) -> list[list[int]]:
    """Each request sent after its delay, all at once; their tokens."""
    got: list = [None] * len(requests)

    def ask(i):
        time.sleep(delays[i])
        got[i] = loop_tokens(engine, *requests[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return got


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def compiled(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def expected(engine):
    return [generate_tokens(engine, messages, tokens) for messages, tokens in MIXED]


@pytest.mark.parametrize("chunk", [512, 7])
def test_greedy_tokens_are_generates_alone_for_any_mix_and_arrival(engine, expected, chunk, compiled):
    scheduled = engine_batching(
        engine, max_batch_size=4, prefill_chunk=chunk, compile=compiled
    )  # 6 requests, 4 slots
    for delays in ([0] * len(MIXED), [0, 0.05, 0.01, 0.12, 0.03, 0.2]):
        assert arriving(scheduled, MIXED, delays) == expected
    assert max(scheduled._batch.sizes) == 4  # they did decode together, as many as the slots
    prefills = scheduled._batch.prefills
    if chunk == 7:  # each prompt alone, a chunk per turn
        assert max(chunks for _, chunks, _ in prefills) > 1
    else:  # requests that came together were prefilled together
        assert max(rows for rows, _, _ in prefills) > 1
    scheduled.close()


def test_rows_join_and_leave_at_any_step(engine, expected, compiled):
    scheduled = engine_batching(engine, max_batch_size=8, compile=compiled)
    long_request = row_request(engine, MIXED[0][0], 150, min_new_tokens=150)
    alone = loop_tokens(scheduled, MIXED[0][0], 150, min_new_tokens=150)
    joiners, threads, long_tokens = {}, [], []

    def join(k):
        i = k % len(MIXED)
        joiners[k] = (i, loop_tokens(scheduled, *MIXED[i]))

    for token, _ in scheduled._batch.tokens(long_request):
        long_tokens.append(token)
        if len(long_tokens) in (1, 9, 40, 77, 120):  # a newcomer at these points of the long answer
            threads.append(threading.Thread(target=join, args=(len(long_tokens),)))
            threads[-1].start()
    for thread in threads:
        thread.join(60)
    assert long_tokens == alone  # the company changed nothing
    assert len(joiners) == 5 and all(tokens == expected[i] for i, tokens in joiners.values())
    assert max(scheduled._batch.sizes) > 1
    scheduled.close()


def test_one_row_cancelled_mid_batch_ends_at_once_and_the_others_go_on(engine, expected, compiled):
    scheduled = engine_batching(engine, max_batch_size=8, compile=compiled)
    stop = threading.Event()
    cancelled = scheduled._batcher().tokens(row_request(engine, MIXED[0][0], 400, stop, min_new_tokens=400))
    others: list = [None, None]

    def ask(i):
        others[i] = loop_tokens(scheduled, *MIXED[i + 1])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    got = 0
    for _ in cancelled:
        got += 1
        if got == 5:
            for thread in threads:
                thread.start()
        if got == 30:
            stop.set()
            set_at = time.monotonic()
    ended = time.monotonic() - set_at
    for thread in threads:
        thread.join(60)
    assert got < 400 and ended < 1.0  # it left at once, long before its length
    assert others == expected[1:3]


def test_every_setting_is_per_row_in_one_batch(engine, compiled):
    scheduled = engine_batching(engine, max_batch_size=8, compile=compiled)
    prompt = user(picture(48, 40, 3), "Say something")
    asks = [
        {"temperature": 0},
        {"temperature": 0.9, "seed": 7},
        {"temperature": 1.3, "top_k": 5, "seed": 3},
        {"temperature": 0.7, "top_p": 0.5, "seed": 11},
        {"temperature": 0, "repetition_penalty": 1.5},
        {"temperature": 0, "min_new_tokens": 40},
    ]
    common = {"max_new_tokens": 40, "thinking": False}
    alone = [scheduled.chat(prompt, **common, **ask) for ask in asks]
    together: list = [None] * len(asks)

    def run(i):
        together[i] = scheduled.chat(prompt, **common, **asks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert max(scheduled._batch.sizes) >= 4  # different temperatures no longer split batches
    assert [r.text for r in together] == [r.text for r in alone]  # seeded rows repeat in company
    assert together[5].usage.completion_tokens == 40
    assert together[0].text != together[4].text  # the penalty did apply to its row only


def test_positions_after_images_run_on_from_the_rows_own_offset(engine, expected, monkeypatch, compiled):
    _, inputs = engine.prepare(MIXED[2][0], thinking=False)
    positions, (offset,) = prefill.rotary_positions(engine.model, inputs)
    assert offset < 0  # an image takes fewer positions than tokens
    assert int(positions.max()) + 1 == inputs["input_ids"].shape[1] + offset
    _, text_inputs = engine.prepare(MIXED[1][0], thinking=False)
    assert prefill.rotary_positions(engine.model, text_inputs)[1] == [0]
    # positions that ignored the offset would give other tokens: the comparison above can fail
    original = prefill.rotary_positions
    monkeypatch.setattr(prefill, "rotary_positions", lambda *a: (original(*a)[0], [0] * len(original(*a)[1])))
    wrong = engine_batching(engine, max_batch_size=8, compile=compiled)
    images = [i for i, (messages, _) in enumerate(MIXED) if len(messages[0]["content"]) > 1]
    assert any(loop_tokens(wrong, *MIXED[i]) != expected[i] for i in images)


def test_the_kv_budget_refuses_what_a_slot_cannot_hold(engine, compiled):
    small = engine_batching(engine, max_batch_size=4, kv_cache_mb=1, compile=compiled)
    per_slot = 2**20 // (4 * kv_bytes_per_token(engine.model))
    assert small.slot_tokens() == min(per_slot, small.context_tokens)
    prompt = user(picture(64, 48, 1), "What is this?")
    fits = small.chat(prompt, max_new_tokens=5, thinking=False, temperature=0)
    assert fits.usage.completion_tokens == 5
    with pytest.raises(InvalidRequestError) as refused:
        small.chat(prompt, max_new_tokens=per_slot, thinking=False)
    assert refused.value.code == "kv_cache_exceeded" and "GLMFLASH_KV_CACHE_MB" in str(refused.value)
    assert small.chat(prompt, max_new_tokens=5, thinking=False, temperature=0).text == fits.text


def test_a_long_prefill_is_interleaved_with_the_running_rows(engine, expected):
    scheduled = engine_batching(engine, max_batch_size=8, prefill_chunk=16)
    running = scheduled._batcher().tokens(row_request(engine, MIXED[1][0], 300, min_new_tokens=300))
    long_prompt = user(picture(200, 160, 8), "A long question " * 20)
    late: list = []
    for count, _ in enumerate(running):
        if count == 3:
            thread = threading.Thread(target=lambda: late.append(loop_tokens(scheduled, long_prompt, 5)))
            thread.start()
    thread.join(60)
    chunks, steps = scheduled._batch.prefills[-1][1:]
    assert chunks > 4 and steps >= chunks - 1  # the running row kept decoding between chunks
    assert late == [generate_tokens(engine, long_prompt, 5)]


def test_a_failing_request_fails_alone(engine, expected):
    scheduled = engine_batching(engine, max_batch_size=8)
    broken = row_request(engine, MIXED[1][0], 5)

    def bad_inputs():
        raise ValueError("these inputs are broken")

    broken.inputs = bad_inputs
    with pytest.raises(ValueError, match="broken"):
        list(scheduled._batcher().tokens(broken))
    assert loop_tokens(scheduled, *MIXED[1]) == expected[1]


def test_an_idle_scheduler_uses_no_cpu(engine):
    scheduled = engine_batching(engine, max_batch_size=8)
    scheduled.chat(user("hello"), max_new_tokens=3, thinking=False)
    stat = f"/proc/self/task/{scheduled._batch._thread.native_id}/stat"
    if not os.path.exists(stat):
        pytest.skip("a thread's CPU time is read from /proc/self/task (Linux only)")

    def cpu_ticks() -> int:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    time.sleep(0.2)
    before = cpu_ticks()
    time.sleep(1.0)
    assert cpu_ticks() - before <= 1  # asleep on its condition, not polling
    scheduled.close()
