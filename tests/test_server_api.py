"""The API as OpenAI clients use it: the official client, plain requests, streaming, images, metrics."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
import requests
from PIL import Image

from tests.server_helpers import running_server


def jpeg_data_url(size=(160, 120), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def image_tokens(usage) -> int:
    details = usage.prompt_tokens_details
    value = getattr(details, "image_tokens", None)
    return value if value is not None else details.model_extra["image_tokens"]


def image_message(text="What is in this image?", *urls):
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in (urls or (jpeg_data_url(),))]
    return [{"role": "user", "content": parts}]


def test_openai_client_non_streaming_with_an_image(client):
    response = client.chat.completions.create(
        model="glm-4.6v-flash", messages=image_message(), max_tokens=12, temperature=0.7
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert image_tokens(response.usage) > 0
    assert response.usage.completion_tokens_details.reasoning_tokens is not None


def test_openai_client_streaming_with_an_image(client):
    stream = client.chat.completions.create(
        model="glm-4.6v-flash",
        messages=image_message(),
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        seed=3,
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    text = "".join(d.content or "" for d in deltas)
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens == 20 or finishes == ["stop"]
    same = client.chat.completions.create(model="m", messages=image_message(), max_tokens=20, seed=3)
    assert same.choices[0].message.content == text
    assert (same.choices[0].message.model_extra.get("reasoning_content") or "") == reasoning


def test_classic_requests_snippet_works_unchanged(server):
    url = f"{server}/v1/chat/completions"
    response = requests.post(
        url,
        json={
            "model": "glm-4.6v-flash",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "发票上的金额是多少？"},
                        {"type": "image_url", "image_url": {"url": jpeg_data_url()}},
                    ],
                }
            ],
            "max_tokens": 512,
            "temperature": 0.7,
        },
        timeout=120,
    )
    assert response.status_code == 200
    assert isinstance(response.json()["choices"][0]["message"]["content"], str)


def test_two_images_in_one_request(client, engine):
    one = client.chat.completions.create(
        model="m", messages=image_message("x", jpeg_data_url()), max_tokens=2
    )
    two = client.chat.completions.create(
        model="m", messages=image_message("x", jpeg_data_url(), jpeg_data_url((300, 200))), max_tokens=2
    )
    tokens_one, tokens_two = image_tokens(one.usage), image_tokens(two.usage)
    grid = engine.processor.image_processor(images=[Image.new("RGB", (300, 200))], return_tensors="pt")
    assert tokens_two == tokens_one + int(grid["image_grid_thw"].prod()) // 4


def test_thinking_off_both_ways(client):
    on = client.chat.completions.create(model="m", messages=image_message(), max_tokens=2)
    off_vllm = client.chat.completions.create(
        model="m",
        messages=image_message(),
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    off_plain = client.chat.completions.create(
        model="m", messages=image_message(), max_tokens=2, extra_body={"thinking": False}
    )
    # "/nothink" and the empty think block make the prompt longer
    assert off_vllm.usage.prompt_tokens == off_plain.usage.prompt_tokens > on.usage.prompt_tokens


def test_models_health_ready(server):
    assert requests.get(f"{server}/v1/models", timeout=10).json()["data"][0]["id"] == "glm-4.6v-flash"
    assert requests.get(f"{server}/health", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{server}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["demo_model"] is True


def metric(server, name):
    for line in requests.get(f"{server}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move(server, client):
    ok = 'glmflash_requests_total{route="/v1/chat/completions",status="200"}'
    bad = 'glmflash_requests_total{route="/v1/chat/completions",status="400"}'
    before = {
        name: metric(server, name)
        for name in (ok, bad, "glmflash_images_total", "glmflash_completion_tokens_total")
    }
    client.chat.completions.create(model="m", messages=image_message(), max_tokens=3)
    requests.post(f"{server}/v1/chat/completions", json={"messages": []}, timeout=10)
    assert metric(server, ok) == before[ok] + 1
    assert metric(server, bad) == before[bad] + 1
    assert metric(server, "glmflash_images_total") == before["glmflash_images_total"] + 1
    assert metric(server, "glmflash_completion_tokens_total") > before["glmflash_completion_tokens_total"]
    text = requests.get(f"{server}/metrics", timeout=10).text
    names = ["glmflash_request_latency_seconds_bucket", "glmflash_time_to_first_token_seconds_bucket"]
    names += ["glmflash_queue_depth", "glmflash_prompt_tokens_total", "glmflash_gpu_memory_bytes"]
    assert all(name in text for name in names)


def test_stream_events_are_sse(server):
    body = {"messages": image_message(), "max_tokens": 4, "stream": True}
    with requests.post(f"{server}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)


def test_draining_server_is_not_ready_and_refuses_new_work(engine):
    with running_server(engine) as (url, app):
        app.state.glmflash.draining = True
        assert requests.get(f"{url}/ready", timeout=10).status_code == 503
        response = requests.post(
            f"{url}/v1/chat/completions", json={"messages": image_message(), "max_tokens": 2}, timeout=10
        )
        assert response.status_code == 503 and response.json()["error"]["code"] == "draining"
        assert requests.get(f"{url}/health", timeout=10).status_code == 200


# -- tool calls (the tiny random model cannot choose a tool: tool_choice forces it) -------------

TOOL_SHAPES = {
    "lookup": {
        "type": "object",
        "properties": {"query": {"type": "string", "maxLength": 16}, "lang": {"enum": ["en", "zh"]}},
        "required": ["query", "lang"],
    },
    "measure": {
        "type": "object",
        "properties": {"scale": {"type": "number", "minimum": 0, "maximum": 2}, "count": {"type": "integer"}},
        "required": ["scale", "count"],
    },
    "crop": {
        "type": "object",
        "properties": {
            "box": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                "minItems": 4,
                "maxItems": 4,
            },
            "note": {
                "type": "object",
                "properties": {"why": {"type": "string", "maxLength": 8}},
                "required": ["why"],
                "additionalProperties": False,
            },
        },
        "required": ["box", "note"],
    },
}
TOOL_LIST = [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in TOOL_SHAPES.items()]
FORCED = {"max_tokens": 200, "temperature": 1.0, "extra_body": {"thinking": False, "top_k": 0}}


@pytest.mark.parametrize("name", list(TOOL_SHAPES))
def test_forced_tool_calls_through_the_openai_client(client, name):
    import jsonschema

    named = {"type": "function", "function": {"name": name}}
    for choice in ("required", named):
        response = client.chat.completions.create(
            model="glm-4.6v-flash",
            messages=[{"role": "user", "content": "go"}],
            tools=TOOL_LIST,
            tool_choice=choice,
            seed=4,
            **FORCED,
        )
        result = response.choices[0]
        if result.finish_reason == "length":
            continue  # a random model may run a string to its budget
        assert result.finish_reason == "tool_calls" and result.message.content is None
        for call in result.message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            assert choice == "required" or call.function.name == name
            jsonschema.validate(json.loads(call.function.arguments), TOOL_SHAPES[call.function.name])


def test_streamed_tool_call_deltas_reassemble_to_the_same_call(client):
    ask = {
        "model": "glm-4.6v-flash",
        "messages": [{"role": "user", "content": "go"}],
        "tools": TOOL_LIST,
        "tool_choice": {"type": "function", "function": {"name": "crop"}},
        "seed": 7,
        **FORCED,
    }
    whole = client.chat.completions.create(**ask).choices[0]
    calls: dict[int, dict] = {}
    finish = None
    for event in client.chat.completions.create(**ask, stream=True):
        for choice in event.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == whole.finish_reason == "tool_calls"
    expected = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == expected
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_a_tool_result_image_goes_back_in(client):
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "crop", "arguments": '{"box": [0, 0, 500, 500]}'},
    }

    def answer(content):
        messages = [
            {"role": "user", "content": "zoom in"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_abc", "content": content},
        ]
        return client.chat.completions.create(
            model="glm-4.6v-flash",
            messages=messages,
            tools=TOOL_LIST,
            max_tokens=4,
            extra_body={"thinking": False},
        )

    text = answer("no image")
    image = answer([{"type": "image_url", "image_url": {"url": jpeg_data_url()}}])
    assert image_tokens(text.usage) == 0 and image_tokens(image.usage) > 0


def test_auto_tool_choice_answers_text_that_parses(client):
    for seed in range(2):
        result = client.chat.completions.create(
            model="glm-4.6v-flash",
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOL_LIST,
            seed=seed,
            max_tokens=60,
            extra_body={"thinking": False},
        ).choices[0]
        assert result.finish_reason in ("stop", "length", "tool_calls")
        for call in result.message.tool_calls or []:
            assert isinstance(json.loads(call.function.arguments), dict)


NOPE = {"type": "object", "properties": {"a": {"type": "nope"}}}


@pytest.mark.parametrize(
    "extra, param",
    [
        (
            {"tools": [{"type": "function", "function": {"name": "x", "parameters": NOPE}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": TOOL_LIST, "tool_choice": {"type": "function", "function": {"name": "missing"}}},
            "tool_choice",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "tool", "tool_call_id": "nope", "content": "r"},
                ]
            },
            "messages[1].tool_call_id",
        ),
    ],
)
def test_bad_tool_requests_are_400s(server, extra, param):
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
    response = requests.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
