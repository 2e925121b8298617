"""Structured answers with the tiny random-weights model: always valid JSON that matches the schema
(grammar-constrained decoding), clear 400s for schemas we cannot enforce, 422 for cut-off answers."""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
import requests

import glmflash
from glmflash.jobs.tasks import custom_task, load_task
from glmflash.text.structured import OutputError, SchemaError, TruncatedOutputError, requested_schema
from tests.conftest import data_url, favour, png_bytes, prompt_form
from tests.server_helpers import running_server

SEEDS = range(50)
# Random weights at full temperature are the adversary: they fill strings up to maxLength and arrays
# up to maxItems, with any characters the grammar allows. ROOM gives them a large budget.
WILD = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
ROOM = {"max_new_tokens": 2048, **WILD}
NESTED = {
    "type": "object",
    "properties": {
        "product": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 40},
                "condition": {"enum": ["new", "used", "refurbished"]},
                "price": {"type": "number", "minimum": 0},
                "dimensions": {
                    "type": "object",
                    "properties": {"w": {"type": "integer"}, "h": {"type": "integer"}},
                    "required": ["w", "h"],
                    "additionalProperties": False,
                },
            },
            "required": ["title", "condition", "price", "dimensions"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "flags": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"kind": {"enum": ["claim", "logo", "text"]}, "ok": {"type": "boolean"}},
                "required": ["kind", "ok"],
                "additionalProperties": False,
            },
        },
        "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 20}]},
    },
    "required": ["product", "tags", "flags", "note"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def image():
    return png_bytes(size=(56, 56), noise=True, seed=5)  # the same noise every run: repeatable answers


def assert_valid_for_seeds(engine, task, image, seeds=SEEDS):
    """Within the task's own budget (the longest answer its schema allows): never cut off."""
    budget = task.generation()["max_new_tokens"]
    for seed in seeds:
        reply = engine.chat(task.messages(image), seed=seed, **{**task.generation(), **WILD})
        assert reply.finish_reason == "stop", (seed, reply.text[-80:])
        assert reply.usage.completion_tokens <= budget
        value = json.loads(reply.text)
        jsonschema.validate(value, task.schema)
        assert reply.parsed == value


@pytest.mark.parametrize("preset", ["moderation", "invoice"])
def test_presets_give_valid_json_for_many_seeds_within_their_budget(form_engine, image, preset):
    seeds = SEEDS if prompt_form(form_engine) == "vision" else range(20)  # the second form: fewer
    assert_valid_for_seeds(form_engine, load_task(preset), image, seeds)


def test_a_nested_custom_schema_gives_valid_json_for_50_seeds(engine, image, tmp_path):
    schema_file = tmp_path / "listing.json"
    schema_file.write_text(json.dumps(NESTED))
    assert_valid_for_seeds(engine, custom_task("Describe the listing.", str(schema_file)), image)


def test_json_object_mode_gives_an_object_or_a_clear_cut_off(engine, image):
    """Any object: strings are unbounded, so random weights may not close them in the budget."""
    for seed in range(5):
        try:
            reply = engine.chat(
                [{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"},
                seed=seed, max_new_tokens=128, temperature=1.0, thinking=False,
            )  # fmt: skip
        except OutputError as exc:
            assert "cut off at max_tokens=128" in exc.message
        else:
            assert isinstance(reply.parsed, dict) and json.loads(reply.text) == reply.parsed


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_streaming_and_thinking_keep_the_json_in_the_answer(form_engine, image, seed):
    """Thinking on, in both prompt forms: the model opens <think> itself (after a newline, if it
    likes), reasons, closes it, then writes the JSON; reasoning and answer arrive apart."""
    task = load_task("moderation")
    fmt = task.response_format()
    for tried in range(4):  # random weights may think past the budget: then another seed
        try:
            chunks = list(
                form_engine.stream(
                    task.messages(image), response_format=fmt, thinking=True, seed=seed + 10 * tried, **ROOM
                )
            )
            break
        except TruncatedOutputError:
            continue
    else:
        pytest.fail("every seed thought past the budget")
    final = chunks[-1]
    answer = "".join(c.text for c in chunks[:-1] if not c.reasoning)
    reasoning = "".join(c.text for c in chunks[:-1] if c.reasoning)
    assert final.finish_reason == "stop" and json.loads(answer) == final.parsed
    assert final.parsed["verdict"] in ("allow", "review", "block")
    assert final.usage.reasoning_tokens >= 2  # <think> and </think> at least
    assert "think>" not in answer + reasoning


@pytest.mark.parametrize(
    ("thinking", "texts"),
    [
        ("off", ['{"a": 1}', '\n{"a": 1}']),  # vision form: the prompt ends in a newline; text form: not
        (
            "model-opens",
            ['<think>x</think>{"a": 1}', '\n<think>x</think>\n{"a": 1}', '<think></think>\n{"a": 1}'],
        ),
    ],
)
def test_the_grammar_accepts_what_the_model_writes_in_both_forms(engine, thinking, texts):
    from glmflash.backends.local.grammar import Constraints

    constraints = Constraints(engine.tokenizer, len(engine.tokenizer), engine.stop_ids)
    template = constraints.compile(
        {"type": "object", "properties": {"a": {"type": "integer"}}}, thinking=thinking
    )
    for text in texts:
        matcher = template.deep_copy()
        assert matcher.consume_tokens(engine.tokenizer.encode(text, add_special_tokens=False)), (
            text,
            matcher.get_error(),
        )
        assert matcher.is_accepting(), text


def test_the_grammar_keeps_answers_short_escapes_and_digit_runs_bounded(engine):
    """No \\uXXXX escapes (a character stays at most 4 bytes) and no digit runs past MAX_DIGIT_RUN:
    what worst_case_tokens counts on."""
    from glmflash.backends.local.grammar import Constraints
    from glmflash.text.structured import MAX_DIGIT_RUN

    constraints = Constraints(engine.tokenizer, len(engine.tokenizer), engine.stop_ids)
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 9}}}
    template = constraints.compile(schema, thinking="off")
    for text, ok in (('{"s": "a\\n\\"b\\\\"}', True), ('{"s": "\\u0041"}', False), ('{"s": "\\/"}', False)):
        matcher = template.deep_copy()
        accepted = matcher.consume_tokens(engine.tokenizer.encode(text, add_special_tokens=False))
        assert (accepted and matcher.is_accepting()) is ok, text
    # A model that would write "0.333..." for ever (those tokens' rows of lm_head made dominant)
    # stops at MAX_DIGIT_RUN digits, because the number can end there.
    model = glmflash.load("tiny", "fp32", "cpu", cache_dir=engine.settings.model.cache_dir)
    favour(model, "0", ".", "3")
    number = {"type": "number", "minimum": 0, "maximum": 1}
    digits = {"type": "object", "properties": {"x": number}, "required": ["x"], "additionalProperties": False}
    reply = model.chat(
        [{"role": "user", "content": "x"}], thinking=False, temperature=0, max_new_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": digits}},
    )  # fmt: skip
    assert re.fullmatch(r'\{"x": [01]\.(\d+)\}', reply.text), reply.text
    assert len(reply.text.split(".")[1]) - 1 == MAX_DIGIT_RUN  # not one digit more


def test_a_cut_off_answer_is_an_error_not_passed_on(engine, image):
    task = load_task("invoice")
    with pytest.raises(TruncatedOutputError, match="cut off at max_tokens=12") as info:
        engine.chat(task.messages(image), **{**task.generation(), "max_new_tokens": 12})
    assert info.value.code == "invalid_output" and info.value.param == "max_new_tokens"


@pytest.mark.parametrize(
    ("schema", "names"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "not": {"required": ["a"]}}, "not"),
        ({"type": "string", "format": "bogus-format"}, "bogus-format"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum (1)"),
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "not a valid JSON Schema"),
    ],
)
def test_unenforceable_schemas_are_refused_by_name(engine, schema, names):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(SchemaError, match=r"json_schema\.schema") as info:
        engine.chat([{"role": "user", "content": "x"}], response_format=fmt, max_new_tokens=4)
    assert names in info.value.message and info.value.status == 400


def test_response_format_checks():
    assert requested_schema(None) is None and requested_schema({"type": "text"}) is None
    assert requested_schema({"type": "json_object"}) == {"type": "object"}
    for bad in (
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": {}}},
        7,
    ):
        with pytest.raises(Exception, match="response_format") as info:
            requested_schema(bad)
        assert info.value.status == 400


def test_tasks_load_presets_files_and_languages(tmp_path):
    zh = load_task("moderation", language="Chinese")
    assert "written in Chinese" in zh.prompt and not zh.thinking
    assert zh.key() != load_task("moderation").key()
    own = tmp_path / "meter.json"
    own.write_text(
        json.dumps({"prompt": "Read the meter", "schema": {"type": "object"}, "max_new_tokens": 64})
    )
    assert load_task(str(own)).name == "meter" and load_task(str(own)).max_new_tokens == 64
    (tmp_path / "broken.json").write_text("{")
    for bad in ("nonexistent-task", str(tmp_path / "broken.json")):
        with pytest.raises(Exception, match=r"task|JSON") as info:
            load_task(bad)
        assert info.value.status == 400


class Verdict(pydantic.BaseModel):
    verdict: Literal["allow", "review", "block"]
    confidence: float = pydantic.Field(ge=0, le=1)  # bounded: random weights write huge numbers


def test_the_api_returns_schema_json_to_the_openai_client(engine, image):
    with running_server(engine) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        task = load_task("moderation")
        content = [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": task.prompt},
        ]
        messages = [{"role": "user", "content": content}]
        fmt = task.response_format()
        reply = client.chat.completions.create(
            model="glm-4.6v-flash", messages=messages, response_format=fmt, max_tokens=2048, temperature=1.0,
            seed=1, extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )  # fmt: skip
        jsonschema.validate(json.loads(reply.choices[0].message.content), task.schema)

        stream = client.chat.completions.create(
            model="glm-4.6v-flash", messages=messages, response_format=fmt, max_tokens=2048, temperature=1.0,
            seed=1, stream=True, extra_body={"thinking": False},
        )  # fmt: skip
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert json.loads(streamed) == json.loads(reply.choices[0].message.content)

        parsed = client.chat.completions.parse(  # the openai client's own structured-output helper
            model="glm-4.6v-flash", messages=messages, response_format=Verdict, max_tokens=512, temperature=1,
            extra_body={"thinking": False},
        )  # fmt: skip
        assert isinstance(parsed.choices[0].message.parsed, Verdict)

        cut = requests.post(
            f"{url}/v1/chat/completions",
            json={"messages": messages, "response_format": task.response_format(), "max_tokens": 8},
            timeout=60,
        )
        assert cut.status_code == 422 and cut.json()["error"]["code"] == "invalid_output"
        assert "cut off" in cut.json()["error"]["message"]
        assert client.chat.completions.create(
            model="m", messages=messages, max_tokens=2
        ).choices  # still serving
