"""RemoteEngine against a real glmflash server on 127.0.0.1 (tiny model): the same answers as the
local engine, usage, reasoning, JSON, error mapping, retries on 503, cancellation, a batch job."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

import glmflash
from glmflash.backends.remote import RemoteEngine
from glmflash.config import Settings
from glmflash.errors import GlmflashError, ImageError, InvalidRequestError
from glmflash.jobs.runner import run_job
from glmflash.jobs.tasks import custom_task, load_task
from glmflash.text.structured import OutputError, TruncatedOutputError
from tests.conftest import favour, png_bytes
from tests.server_helpers import engine_with, free_port, running_server, wait_until

SMALL = {
    "type": "object",
    "properties": {"verdict": {"enum": ["allow", "review", "block"]}, "n": {"type": "integer"}},
    "required": ["verdict", "n"],
    "additionalProperties": False,
}


def question(text="What is in the picture?", size=(48, 40), seed=None):
    picture = png_bytes(size=size, noise=True, seed=seed)
    content = [{"type": "image", "image": picture}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def served(engine):
    with running_server(engine, api_keys="remote-key") as (url, app):
        yield f"{url}/v1", app


def test_load_gives_a_remote_engine_with_the_same_answers(engine, served):
    url, _ = served
    remote = glmflash.load(url, api_key="remote-key")
    assert isinstance(remote, RemoteEngine) and remote.info.model_id == "glm-4.6v-flash"
    options = {"max_new_tokens": 24, "temperature": 0, "thinking": False}
    # a fixed image whose answer runs the full length (another may draw an early end of turn)
    asked = local = None
    for seed in range(12):
        asked = question(seed=seed)
        local = engine.chat(asked, **options)
        if local.finish_reason == "length":
            break
    chunks = list(remote.stream(asked, **options))
    final = chunks[-1]
    assert "".join(c.text for c in chunks[:-1]) == local.text
    assert final.finish_reason == local.finish_reason == "length"
    # cached_tokens differ: the local call left this prompt in the prefix cache the server shares
    assert replace(final.usage, cached_tokens=0) == replace(local.usage, cached_tokens=0)
    assert final.usage.image_tokens > 0 and final.usage.cached_tokens > 0
    assert final.timings.total_s > 0


def test_reasoning_and_json_come_back_apart(engine, served):
    url, _ = served
    remote = RemoteEngine(url, api_key="remote-key")
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": SMALL}}
    options = {
        "max_new_tokens": 2000,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "thinking": True,
        "response_format": fmt,
    }
    asked = question(seed=7)  # a fixed image; the random model may think past 2000 tokens on a seed:
    seed, local = next((seed, r) for seed in range(12) if (r := _whole(engine, asked, seed=seed, **options)))
    reply = remote.chat(asked, seed=seed, **options)
    assert reply.reasoning == local.reasoning and reply.reasoning  # the grammar opened <think> first
    assert reply.parsed == local.parsed and set(reply.parsed) == {"verdict", "n"}
    assert reply.usage.reasoning_tokens == local.usage.reasoning_tokens


def _whole(engine, asked, **options):
    """The reply, or None where the answer was cut off (a seed that thinks too long)."""
    try:
        return engine.chat(asked, **options)
    except OutputError:
        return None


def test_errors_map_to_the_library_errors(engine, served):
    url, _ = served
    with (
        running_server(engine_with(engine, max_new_tokens_limit=16)) as (strict, _),
        pytest.raises(InvalidRequestError) as too_many,
    ):
        RemoteEngine(f"{strict}/v1").chat(question(), max_new_tokens=100)
    assert too_many.value.param == "max_tokens" and "refused the request (400)" in too_many.value.message
    remote = RemoteEngine(url, api_key="remote-key")
    with pytest.raises(ImageError):  # checked here, before anything is sent
        remote.chat([{"role": "user", "content": [{"type": "image", "image": b"not an image"}]}])
    with pytest.raises(GlmflashError) as unauthorized:
        RemoteEngine(url, api_key="wrong")
    assert unauthorized.value.status == 401
    with pytest.raises(GlmflashError) as unreachable:
        RemoteEngine(f"http://127.0.0.1:{free_port()}/v1", retries=1, backoff_s=0.01)
    assert unreachable.value.code == "backend_unavailable"


def test_a_busy_backend_is_retried_until_it_answers(engine):
    busy = engine_with(engine, max_batch_size=1)
    with running_server(busy, max_queue=0) as (url, _):  # one request at a time, the next gets 503
        remote = RemoteEngine(f"{url}/v1", retries=6, backoff_s=0.1)
        long = {"max_new_tokens": 300, "min_new_tokens": 300, "temperature": 0}
        blocker = threading.Thread(target=remote.chat, args=(question(),), kwargs=long)
        blocker.start()
        wait_until(lambda: busy.busy, 10)
        reply = remote.chat(question("and now?"), max_new_tokens=3)  # 503 first, then served
        blocker.join(60)
        assert reply.usage.completion_tokens == 3


def test_cancelling_closes_the_stream_and_frees_the_backend(engine, served):
    url, _ = served
    remote = RemoteEngine(url, api_key="remote-key")
    stop = threading.Event()
    stream = remote.stream(
        question(), stop_event=stop, max_new_tokens=2000, min_new_tokens=2000, temperature=0
    )
    next(stream)
    stop.set()
    started = time.monotonic()
    chunks = list(stream)
    assert chunks[-1].finish_reason == "cancelled" and time.monotonic() - started < 1.0
    assert chunks[-1].usage.completion_tokens < 2000
    wait_until(lambda: not engine.busy, 2)


def test_a_batch_job_through_the_remote_engine(served, tmp_path):
    url, _ = served
    remote = RemoteEngine(url, api_key="remote-key")
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(size=(40 + i, 40), color=(i * 20, 90, 10)))
        paths.append(path)
    task = replace(custom_task("Judge it", None), schema=SMALL, max_new_tokens=64)
    summary = run_job(remote, task, paths, tmp_path / "r.jsonl", concurrency=4)
    assert (summary.done, summary.failed) == (8, 0)
    assert load_task("moderation").name == "moderation"


def test_bench_and_the_cli_use_the_backend(served, tmp_path):
    from tests.conftest import run_cli

    url, _ = served
    env = {"GLMFLASH_BACKEND_URL": url, "GLMFLASH_BACKEND_API_KEY": "remote-key"}
    out = tmp_path / "bench.json"
    small = ("--size", "48", "--tokens", "3", "--requests", "2", "--concurrency", "1,2", "--json", str(out))
    result = run_cli("bench", *small, env_extra=env)
    assert result.returncode == 0, result.stderr
    assert "remote" in out.read_text() and "engine, 2 at once" in result.stdout
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    chat = run_cli("chat", str(image), "-q", "hi", "--max-new-tokens", "3", "--no-thinking", env_extra=env)
    assert chat.returncode == 0 and "[length]" in chat.stderr


def test_a_glmflash_front_serves_the_api_and_page_from_a_backend(served):
    import openai
    import requests

    from glmflash.server.run import build_app

    url, _ = served
    remote = RemoteEngine(url, api_key="remote-key")
    app = build_app(remote, Settings())  # the page and the API, generating on the backend
    with running_server(remote, app=app) as (front, _):
        client = openai.OpenAI(base_url=f"{front}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens == 3
        assert requests.get(f"{front}/", timeout=30).status_code == 200


def test_an_answer_cut_inside_its_thinking_is_flagged_through_api_and_remote_engine(cache_dir):
    """A model that thinks for ever: the API's choice says cut_in_reasoning (plain and streamed),
    and a RemoteEngine in front of it says so too; a cut-off JSON answer stays retryable there."""
    import openai
    import requests

    thinker = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))
    favour(thinker, "<think>")
    with running_server(thinker) as (url, _):
        body = {"messages": [{"role": "user", "content": "Why?"}], "max_tokens": 5}
        choice = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
        assert (choice["finish_reason"], choice["cut_in_reasoning"]) == ("length", True)
        assert (
            choice["message"]["content"] == ""
        )  # no answer yet: only thinking (here, <think> after <think>)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        final = [c for c in client.chat.completions.create(**body, model="m", stream=True) if c.choices][-1]
        assert final.choices[0].finish_reason == "length" and final.choices[0].model_extra["cut_in_reasoning"]
        remote = glmflash.load(f"{url}/v1")
        assert remote.chat(body["messages"], max_new_tokens=5).cut_in_reasoning
        fmt = load_task("moderation").response_format()
        with pytest.raises(TruncatedOutputError, match="cut off"):
            remote.chat(body["messages"], max_new_tokens=5, response_format=fmt, thinking=False)
