"""/v1/responses through the official openai client (responses.create, plain and streamed): text
and image input, instructions, function tools forced on the tiny model, a function's output (an
image too) sent back, and the 400s for what it does not do."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests

from tests.conftest import data_url, png_bytes
from tests.server_helpers import running_server

PARAMETERS = {
    "type": "object",
    "properties": {
        "label": {"enum": ["cat", "dog"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["label", "count"],
}
TOOL = {"type": "function", "name": "report", "description": "Report what is seen.", "parameters": PARAMETERS}
QUIET = {"max_output_tokens": 200, "extra_body": {"thinking": False}}


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def picture():
    return {"type": "input_image", "image_url": data_url(png_bytes((64, 64)))}


def test_text_and_an_image_in_a_response(client):
    response = client.responses.create(
        model="glm-4.6v-flash", instructions="Be brief.", max_output_tokens=8, extra_body={"thinking": False},
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, picture()]}],
    )  # fmt: skip
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert isinstance(response.output_text, str) and response.usage.output_tokens <= 8
    assert response.output[-1].type == "message"
    plain = client.responses.create(model="glm-4.6v-flash", input="hi", max_output_tokens=4)
    assert plain.usage.input_tokens < response.usage.input_tokens  # the image and instructions count


def test_a_forced_function_call_and_its_output_back(client):
    forced = client.responses.create(
        model="glm-4.6v-flash",
        input="Look.",
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        **QUIET,
    )
    calls = [item for item in forced.output if item.type == "function_call"]
    assert forced.status == "completed" and len(calls) == 1 and calls[0].name == "report"
    jsonschema.validate(json.loads(calls[0].arguments), PARAMETERS)

    def back(output):
        return [
            {"role": "user", "content": "Look."},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "report",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": output},
        ]

    seen = client.responses.create(model="glm-4.6v-flash", input=back([picture()]), tools=[TOOL], **QUIET)
    told = client.responses.create(model="glm-4.6v-flash", input=back("a cat"), tools=[TOOL], **QUIET)
    assert seen.usage.input_tokens > told.usage.input_tokens  # the image came back in


def test_streamed_events_add_up_to_the_response(client):
    named = {"type": "function", "name": "report"}
    ask = {"model": "glm-4.6v-flash", "input": "Look.", "tools": [TOOL], "tool_choice": named}
    events = list(client.responses.create(**ask, parallel_tool_calls=False, stream=True, **QUIET))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = events[-1].response
    (call,) = [item for item in done.output if item.type == "function_call"]
    assert call.arguments == arguments and call.name == "report"
    jsonschema.validate(json.loads(arguments), PARAMETERS)

    text = list(client.responses.create(model="glm-4.6v-flash", input="hi", max_output_tokens=6, stream=True))
    deltas = "".join(e.delta for e in text if e.type == "response.output_text.delta")
    assert (
        text[-1].type in ("response.completed", "response.incomplete")
        and text[-1].response.output_text == deltas
    )


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "hi", "text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"input": []}, "input"),
        ({"input": [{"type": "file_search_call"}]}, "input[0]"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
        (
            {"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "x", "output": "r"}]},
            "messages[0].tool_call_id",
        ),
        ({"input": "hi", "frobnicate": 1}, "frobnicate"),
    ],
)
def test_what_it_does_not_do_is_a_400(server, body, param):
    response = requests.post(f"{server}/v1/responses", json={"max_output_tokens": 2, **body}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
