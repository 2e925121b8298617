"""Faults in the decode loop, with the real tiny model behind a real server on 127.0.0.1 and the
official openai client. An error injected in each stage of the token scheduler (its methods
patched on a real engine) fails the rows it concerns with a clear error, the other rows get the
answers they get without it, the next request is answered and /health and /ready stay 200.
Failures that repeat, or a loop thread that dies (loudly or silently), break the engine: every
caller is answered at once with 503 engine_failed, later requests are refused at once, and /health
and /ready answer 503 with the reason."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest

import glmflash
from glmflash.backends.local import scheduler as scheduler_module
from glmflash.backends.local.rows import RowSampler
from glmflash.backends.local.scheduler import Scheduler

from .server_helpers import engine_with, running_server, wait_until
from .test_batching import user
from .test_scheduler import row_request

LONG = 1500  # a forced answer this long is still running when the fault comes


@dataclass
class Answer:
    text: str | None = None
    status: int = 200
    code: str | None = None
    message: str = ""
    took: float = 0.0


class Scene:
    """A real engine (its own scheduler) behind a real server, and the calls made to it."""

    def __init__(self, engine, url: str):
        self.engine, self.url = engine, url
        self.loop = engine._batcher()
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        self.pool = ThreadPoolExecutor(8)

    def ask(self, prompt: str, tokens: int, *, forced: bool = False, **extra) -> Answer:
        body = {"chat_template_kwargs": {"enable_thinking": False}, **extra}
        if forced:
            body["min_tokens"] = tokens
        started = time.monotonic()
        try:
            reply = self.client.chat.completions.create(
                model="glm-4.6v-flash", messages=[{"role": "user", "content": prompt}],
                max_tokens=tokens, temperature=0, extra_body=body,
            )  # fmt: skip
        except openai.APIStatusError as exc:
            return Answer(None, exc.status_code, exc.code, str(exc), time.monotonic() - started)
        return Answer(reply.choices[0].message.content, took=time.monotonic() - started)

    def later(self, *args, **kwargs):
        return self.pool.submit(self.ask, *args, **kwargs)

    def probe(self, path: str) -> tuple[int, dict]:
        response = httpx.get(self.url + path, timeout=10)
        return response.status_code, response.json()

    def assert_serving(self) -> None:
        assert self.engine.health() is None
        assert self.probe("/health") == (200, {"status": "ok"})
        assert self.probe("/ready")[0] == 200

    def assert_broken(self, *reason: str) -> None:
        for path in ("/health", "/ready"):
            status, body = self.probe(path)
            assert status == 503 and body["status"] == "failed"
            assert all(part in body["reason"] for part in reason), body
        refused = self.ask("and now?", 5)  # refused at once, never a wait
        assert (refused.status, refused.code) == (503, "engine_failed") and refused.took < 1.5
        assert "restarted" in refused.message


@pytest.fixture
def scenes(engine):
    """scenes(**settings): the tiny model in an engine of its own under these settings, behind a
    server of its own; all closed after the test."""
    with contextlib.ExitStack() as stack:

        def make(**settings) -> Scene:
            local = engine_with(engine, **settings)
            stack.callback(local.close)
            url, _app = stack.enter_context(running_server(local))
            scene = Scene(local, url)
            stack.callback(scene.pool.shutdown, cancel_futures=True)
            return scene

        yield make


def inject(monkeypatch, target, name: str, *, when=lambda: True, times: int | None = 1) -> list[str]:
    """target.name raises RuntimeError("injected fault in NAME") on its first `times` calls (None:
    every one) for which when() holds; the list of the calls that raised."""
    original = getattr(target, name)
    fired: list[str] = []

    def faulty(*args, **kwargs):
        if (times is None or len(fired) < times) and when():
            fired.append(name)
            raise RuntimeError(f"injected fault in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, faulty)
    return fired


def decoding(loop) -> bool:
    """A row of this request's is decoding: one whose answer ended may still sit in the batch for
    the rest of its turn (while its KV is kept for reuse), and does not count."""
    return any(not live.row.ended for live in loop.live)


def failed_by(answer: Answer, name: str) -> bool:
    return (answer.status, answer.code) == (500, "generation_failed") and f"injected fault in {name}" in (
        answer.message
    )


# -- one fault: the rows it concerns fail, the others do not notice -------------------------------


@pytest.mark.parametrize("stage", ["_begin", "_fill"])
def test_a_fault_making_or_prefilling_a_newcomer_fails_it_alone(scenes, monkeypatch, stage):
    scene = scenes(max_batch_size=2)
    expected = scene.ask("a long answer", LONG, forced=True).text
    fired = inject(monkeypatch, scene.loop, stage, when=lambda: decoding(scene.loop))
    running = scene.later("a long answer", LONG, forced=True)
    wait_until(lambda: decoding(scene.loop), 30)
    newcomer = scene.ask("a newcomer", 20)
    assert fired == [stage] and failed_by(newcomer, stage) and newcomer.took < 5
    assert running.result().text == expected  # the running row went on as if nothing happened
    assert scene.ask("the next one", 20).text is not None
    scene.assert_serving()


@pytest.mark.parametrize("stage", ["_step", "_leave", "_turn"])
def test_a_fault_in_the_running_batch_fails_its_rows_and_the_line_is_served(scenes, monkeypatch, stage):
    """_step and _leave work on the shared cache, _turn is the loop's own turn (an error escaping
    every stage): the running rows fail, the cache is dropped, and the rows in line are served."""
    scene = scenes(max_batch_size=1)
    expected = scene.ask("waiting in line", 30).text
    fired = inject(
        monkeypatch, scene.loop, stage, when=lambda: bool(scene.loop.waiting) and decoding(scene.loop)
    )
    running = scene.later("a long answer", LONG, forced=True)
    wait_until(lambda: decoding(scene.loop), 30)
    waiting = scene.later("waiting in line", 30)  # one slot: it waits for the running row
    assert failed_by(running.result(), stage) and fired == [stage]
    assert waiting.result().text == expected
    scene.assert_serving()


def test_a_fault_joining_the_batch_fails_the_running_rows_and_spares_the_line(scenes, monkeypatch):
    scene = scenes(max_batch_size=2)
    expected = {prompt: scene.ask(prompt, 30).text for prompt in ("first newcomer", "second newcomer")}
    fired = inject(monkeypatch, scene.loop, "_join", when=lambda: decoding(scene.loop))
    running = scene.later("a long answer", LONG, forced=True)
    wait_until(lambda: decoding(scene.loop), 30)
    newcomers = {prompt: scene.later(prompt, 30) for prompt in expected}  # one free slot: one waits
    assert failed_by(running.result(), "_join") and fired == ["_join"]
    answers = {prompt: future.result() for prompt, future in newcomers.items()}
    joined = [prompt for prompt, answer in answers.items() if failed_by(answer, "_join")]
    assert len(joined) == 1  # the one that joined shared the cache; the other was in line
    (spared,) = set(expected) - set(joined)
    assert answers[spared].text == expected[spared]
    scene.assert_serving()


def test_one_rows_sampler_failing_fails_that_row_alone(scenes, monkeypatch):
    """A row whose own token choice raises (a grammar or a thinking budget: RowSampler.constrain)
    fails; the rows decoding in the same step keep their answers."""
    scene = scenes(max_batch_size=4)
    expected = scene.ask("a long answer", LONG, forced=True).text
    other = scene.ask("another long one", LONG, forced=True).text
    fired = inject(monkeypatch, RowSampler, "constrain", times=None)
    others = [scene.later(prompt, LONG, forced=True) for prompt in ("a long answer", "another long one")]
    wait_until(lambda: len(scene.loop.live) == 2, 30)
    budgeted = scene.ask(
        "think briefly", 40, chat_template_kwargs={"enable_thinking": True}, thinking_budget=5
    )
    assert failed_by(budgeted, "constrain") and fired
    assert [future.result().text for future in others] == [expected, other]
    assert scene.loop._failures == 0  # a row's own failure says nothing about the loop
    scene.assert_serving()


def test_a_prefill_failure_spares_the_rows_put_back_in_line(engine, monkeypatch):
    """Rows taken together whose prompts do not fit one chunk beside each other: the first is
    prefilled, the second goes back in line; a failure in the prefill (or in grouping the
    prompts) fails the first only."""
    local = engine_with(engine, max_batch_size=4, prefill_chunk=8)
    loop = local._batcher()
    expected = [token for token, _ in loop.tokens(row_request(local, user("put back"), 12))]
    for target, name in ((loop, "_fill"), (scheduler_module, "group")):
        fired = inject(monkeypatch, target, name)
        with loop.ready:  # queued at once: one turn takes both
            first = loop.tokens(row_request(local, user("prefilled first"), 12))
            second = loop.tokens(row_request(local, user("put back"), 12))
        with pytest.raises(RuntimeError, match=f"injected fault in {name}"):
            list(first)
        assert [token for token, _ in second] == expected and fired == [name]
        assert loop.health() is None
    local.close()


# -- the loop cannot go on: broken, said at once, refused at once ---------------------------------


def test_failures_in_a_row_break_the_engine_and_every_caller_is_answered(scenes, monkeypatch):
    scene = scenes(max_batch_size=1)
    inject(monkeypatch, scene.loop, "_step", times=None)  # the same error at every step: broken
    calls = [scene.later(f"request {i}", 20, forced=True) for i in range(5)]
    answers = [call.result() for call in calls]
    assert (
        sorted((a.status, a.code) for a in answers)
        == [(500, "generation_failed")] * 3 + [(503, "engine_failed")] * 2
    )  # three rows failed at their step; the rows left in line were answered at the third
    assert all(a.took < 10 for a in answers)
    scene.assert_broken("3 failures in a row", "injected fault in _step")
    with pytest.raises(glmflash.EngineFailedError, match="restarted"):
        scene.engine.chat(user("direct"), max_new_tokens=3)


def test_a_loop_thread_that_dies_answers_its_callers_at_once(scenes, monkeypatch):
    """An error that even the loop's recovery cannot handle ends the thread: on its way out it
    fails every row it holds and every row in line."""
    scene = scenes(max_batch_size=1)
    inject(monkeypatch, scene.loop, "_step", times=None)
    inject(monkeypatch, scene.loop, "_fail", times=None)  # the recovery fails too: the thread ends
    calls = [scene.later(f"request {i}", 20, forced=True) for i in range(3)]
    answers = [call.result() for call in calls]
    assert [(a.status, a.code) for a in answers] == [(503, "engine_failed")] * 3
    wait_until(lambda: not scene.loop._thread.is_alive(), 5)
    scene.assert_broken("its thread ended on RuntimeError: injected fault in _fail")


def test_a_reader_notices_a_thread_that_ended_silently(scenes, monkeypatch):
    """A loop thread gone without a word (nothing failed its rows): each waiting reader sees it
    within a second and raises; /health and /ready say so."""
    release = threading.Event()
    monkeypatch.setattr(Scheduler, "_loop", lambda self: release.wait(30))
    scene = scenes(max_batch_size=2)
    waiting = scene.later("nobody will answer this", 10)
    wait_until(lambda: scene.loop.waiting, 10)
    release.set()  # the thread ends; the row stays in line, unanswered
    ended = time.monotonic()
    answer = waiting.result()
    assert (answer.status, answer.code) == (503, "engine_failed") and time.monotonic() - ended < 2.0
    scene.assert_broken("its thread has ended")


# -- health is part of the contract -----------------------------------------------------------------


def test_both_engines_say_they_are_healthy_while_serving(engine):
    assert engine.health() is None
    with running_server(engine) as (url, _app):
        remote = glmflash.load(f"{url}/v1")
        assert remote.health() is None
        remote.close()
