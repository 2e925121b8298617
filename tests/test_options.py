"""Generation options are declared once (glmflash.options.OPTIONS) and everything derives from it;
the two options added on top of that: `stop` sequences and a thinking budget, in single and batched
generation, through the API and through the remote engine."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import fields

import openai
import pytest

import glmflash
from glmflash.cli import build_parser
from glmflash.jobs.tasks import load_task
from glmflash.options import OPTIONS, GenerationOptions, from_openai, to_openai
from glmflash.server.protocol import ChatCompletionRequest
from glmflash.text.structured import TruncatedOutputError
from tests.conftest import png_bytes
from tests.server_helpers import engine_with, running_server

GREEDY = {"max_new_tokens": 40, "min_new_tokens": 40, "temperature": 0, "thinking": False}
PROMPTS = ["Describe the picture in detail.", "What is written here?", "Count the objects.", "Read it."]
# Noise drawn from a fixed seed: the random model's answers (and so the stops picked from them) are
# the same on every run.
IMAGE = png_bytes(size=(56, 56), noise=True, seed=7)


def question(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": text}]}]


def a_stop_in(text: str) -> str:
    """Two plain characters, not at the very start of `text`, where they first occur."""
    for start in range(3, len(text) - 2):
        piece = text[start : start + 2]
        if re.fullmatch(r"[A-Za-z0-9 ]{2}", piece) and text.find(piece) == start:
            return piece
    raise AssertionError(f"no plain text to stop at in {text!r}")


def test_each_option_is_declared_once_and_the_rest_derives_from_it():
    assert {f.name for f in fields(GenerationOptions)} == set(OPTIONS)
    api_fields = {key for o in OPTIONS.values() for key in o.api if "." not in key}
    assert api_fields <= set(ChatCompletionRequest.model_fields)  # typed in the API's OpenAPI schema
    flags = "chat x.png --temperature 0.2 --top-k 5 --stop A --stop B --thinking-budget 64 --no-thinking"
    args = build_parser().parse_args(flags.split())
    assert (args.temperature, args.top_k, args.stop, args.thinking_budget, args.thinking) == (
        0.2, 5, ["A", "B"], 64, False)  # fmt: skip
    every = {"max_new_tokens": 9, "min_new_tokens": 2, "temperature": 0.5, "top_p": 0.9, "top_k": 4,
             "repetition_penalty": 1.1, "seed": 3, "thinking": False, "stop": ["END"],
             "thinking_budget": 7}  # fmt: skip
    assert set(every) == set(OPTIONS)
    body = to_openai(every)
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["max_tokens"] == 9
    assert from_openai(body, objects={"chat_template_kwargs": body["chat_template_kwargs"]}) == every
    # as OpenAI clients send them: the template's switch wins over a top-level one
    both = from_openai({"thinking": True}, objects={"chat_template_kwargs": {"enable_thinking": False}})
    assert both == {"thinking": False}


def test_a_row_applies_its_options_as_declared(engine):
    """The decode loop's sampler reads the resolved options themselves (no GenerationConfig)."""
    from glmflash.backends.local.rows import Row, RowSampler

    given = {"temperature": 0.5, "top_p": 0.7, "top_k": 3, "repetition_penalty": 1.3, "min_new_tokens": 2}
    options = GenerationOptions.build(default_max_new_tokens=8, max_new_tokens_limit=99, seed=1, **given)
    sampler = RowSampler(Row(None, options.resolved(engine.defaults), ()), engine.stop_ids, None, None)
    assert (sampler.temperature, sampler.top_p, sampler.top_k, sampler.penalty, sampler.min_new) == (
        0.5, 0.7, 3, 1.3, 2,
    )  # fmt: skip
    assert sampler.sample and sampler.generator is not None


def test_stop_ends_the_answer_before_the_stop_string_and_stops_the_model(engine):
    full = engine.chat(question(PROMPTS[0]), **GREEDY)
    stop = a_stop_in(full.text)
    cut = engine.chat(question(PROMPTS[0]), **{**GREEDY, "stop": ["never there", stop]})
    assert (
        cut.text == full.text[: full.text.index(stop)].rstrip()
        or cut.text == full.text[: full.text.index(stop)]
    )
    assert cut.finish_reason == "stop" and cut.usage.completion_tokens < full.usage.completion_tokens


def test_rows_with_different_stops_in_one_batch_each_stop_at_their_own(engine):
    alone = engine_with(engine, max_batch_size=1)
    solo = [alone.chat(question(p), **GREEDY).text for p in PROMPTS]
    stops = [a_stop_in(text) for text in solo]
    batched = engine_with(engine, max_batch_size=8)
    replies = [None] * len(PROMPTS)

    def ask(i):
        replies[i] = batched.chat(question(PROMPTS[i]), **{**GREEDY, "stop": stops[i]})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert max(batched._batch.sizes) > 1  # they really shared a batch
    for text, stop, reply in zip(solo, stops, replies, strict=True):
        assert text[: text.index(stop)].startswith(reply.text) and reply.finish_reason == "stop"
    batched.close()
    alone.close()


def test_stop_through_the_api_and_the_remote_engine(engine):
    full = engine.chat(question(PROMPTS[1]), **GREEDY)
    stop = a_stop_in(full.text)
    expected = engine.chat(question(PROMPTS[1]), **{**GREEDY, "stop": stop}).text
    with running_server(engine) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(IMAGE)}},
                   {"type": "text", "text": PROMPTS[1]}]  # fmt: skip
        extra = {"min_tokens": 40, "chat_template_kwargs": {"enable_thinking": False}}
        options = {"max_tokens": 40, "temperature": 0, "stop": [stop], "extra_body": extra}
        plain = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], **options
        )
        assert (plain.choices[0].message.content, plain.choices[0].finish_reason) == (expected, "stop")
        events = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], stream=True, **options
        )
        chunks = [c for c in events if c.choices]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
        remote = glmflash.load(f"{url}/v1")
        assert remote.chat(question(PROMPTS[1]), **{**GREEDY, "stop": stop}).text == expected


MODERATION = load_task("moderation")
WILD = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 3000}


def thinking_json(engine, seed: int, **options):
    return engine.chat(MODERATION.messages(IMAGE), response_format=MODERATION.response_format(),
                       thinking=True, seed=seed, **WILD, **options)  # fmt: skip


def test_a_thinking_budget_closes_the_thinking_and_the_answer_follows(form_engine):
    """Random weights left alone think for hundreds of tokens before the JSON; with a budget of 4
    the model is made to write </think> after 4 and answers (in both prompt forms)."""
    for seed in (0, 1):
        free = thinking_json(form_engine, seed)
        held = thinking_json(form_engine, seed, thinking_budget=4)
        assert free.usage.reasoning_tokens > 20  # far past the budget below
        # <think>, 4 tokens, </think> (and a newline); up to 3 more finish a character that a byte
        # token began, when the JSON grammar would not let </think> cut it
        assert held.usage.reasoning_tokens <= 4 + 3 + 3
        assert held.finish_reason == "stop" and held.parsed["verdict"] in ("allow", "review", "block")


def test_rows_with_and_without_a_thinking_budget_share_a_batch(engine):
    batched = engine_with(engine, max_batch_size=4)
    replies = {}

    def ask(name, **options):
        try:
            replies[name] = batched.chat(
                MODERATION.messages(IMAGE), response_format=MODERATION.response_format(), thinking=True,
                temperature=0, max_new_tokens=300, **options,
            )  # fmt: skip
        except TruncatedOutputError as exc:  # still thinking at 300 tokens
            replies[name] = exc

    threads = [threading.Thread(target=ask, args=("budget",), kwargs={"thinking_budget": 3}),
               threading.Thread(target=ask, args=("free",))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert batched._batch.sizes == [2]
    held, free = replies["budget"], replies["free"]
    assert held.usage.reasoning_tokens <= 3 + 3 and json.loads(held.text) == held.parsed
    assert isinstance(free, TruncatedOutputError) or free.usage.reasoning_tokens > 3 + 3
    batched.close()


def test_a_thinking_budget_through_the_api_and_the_remote_engine(engine):
    with running_server(engine) as (url, _):
        remote = glmflash.load(f"{url}/v1")
        held = thinking_json(remote, 0, thinking_budget=4)
        assert held.usage.reasoning_tokens <= 4 + 3 and held.parsed is not None
    with pytest.raises(glmflash.InvalidRequestError, match="thinking_budget must be between 1"):
        engine.stream(question("x"), thinking_budget=0)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
