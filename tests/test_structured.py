"""Structured answers with the tiny random-weights model: always valid JSON that matches the schema
(grammar-constrained decoding), clear 400s for schemas we cannot enforce, 422 for cut-off answers."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
import requests

from glmflash.structured import OutputError, SchemaError, requested_schema
from glmflash.tasks import custom_task, load_task
from tests.conftest import data_url, png_bytes
from tests.server_helpers import running_server

SEEDS = range(50)
# Random weights fill strings up to maxLength and arrays up to maxItems: give them room.
ROOM = {"max_new_tokens": 2048, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
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
    return png_bytes(size=(56, 56), noise=True)


def assert_valid_for_seeds(engine, task, image):
    for seed in SEEDS:
        reply = engine.chat(task.messages(image), seed=seed, **{**task.generation(), **ROOM})
        assert reply.finish_reason == "stop", (seed, reply.text[-80:])
        value = json.loads(reply.text)
        jsonschema.validate(value, task.schema)
        assert reply.parsed == value


@pytest.mark.parametrize("preset", ["moderation", "invoice"])
def test_presets_give_valid_json_for_50_seeds(engine, image, preset):
    assert_valid_for_seeds(engine, load_task(preset), image)


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


def test_streaming_and_thinking_keep_the_json_in_the_answer(engine, image):
    fmt = load_task("moderation").response_format()
    chunks = list(
        engine.stream(
            load_task("moderation").messages(image), response_format=fmt, thinking=True, seed=2, **ROOM
        )
    )
    final = chunks[-1]
    answer = "".join(c.text for c in chunks[:-1] if not c.reasoning)
    assert final.finish_reason == "stop" and json.loads(answer) == final.parsed
    assert final.parsed["verdict"] in ("allow", "review", "block")


def test_a_cut_off_answer_is_an_error_not_passed_on(engine, image):
    task = load_task("invoice")
    with pytest.raises(OutputError, match="cut off at max_tokens=12"):
        engine.chat(task.messages(image), **{**task.generation(), "max_new_tokens": 12})


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
