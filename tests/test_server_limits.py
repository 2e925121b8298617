"""Every limit and fault answers in OpenAI's error shape with the right status, and the server
keeps serving: each bad request is followed by a good one that succeeds."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import requests
import torch

from tests.server_helpers import engine_with, running_server, wait_until
from tests.test_server_api import image_message, jpeg_data_url

GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(url, body=None, **kwargs):
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=60, **kwargs)


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code, error
    if param:
        assert error["param"] == param, error


def assert_serving(url):
    response = post(url, GOOD)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def limited(engine):
    small = engine_with(
        engine, max_images=2, max_new_tokens=8, max_new_tokens_limit=64, max_context_tokens=600
    )
    with running_server(small, max_body_bytes=300_000, max_image_bytes=150_000) as (url, _app):
        yield url, small


def raw_post(url, headers, body: bytes):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        if headers.get("Transfer-Encoding") == "chunked":
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.send(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


SET = {"type": "array", "uniqueItems": True}  # valid JSON Schema, but not enforceable
BAD = {"type": "object", "properties": {"a": {"type": "strnig"}}}  # not a valid JSON Schema


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"messages": []}, 400, None, "messages"),
        ({"messages": "hello"}, 400, None, "messages"),
        ({}, 400, None, "messages"),
        ({**GOOD, "temperature": "hot"}, 400, None, "temperature"),
        ({**GOOD, "temperature": 7}, 400, None, "temperature"),
        ({**GOOD, "max_tokens": 10_000}, 400, None, "max_tokens"),
        ({**GOOD, "n": 2}, 400, "unsupported", "n"),
        (
            {**GOOD, "tools": [{"type": "function", "function": {"name": "f g"}}]},
            400,
            None,
            "tools[0].function.name",
        ),
        (
            {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"},
            400,
            None,
            "tool_choice",
        ),
        ({**GOOD, "tool_choice": {"type": "function", "function": {"name": "f"}}}, 400, None, "tool_choice"),
        ({**GOOD, "response_format": {"type": "xml"}}, 400, None, "response_format.type"),
        ({**GOOD, "response_format": {"type": "json_schema"}}, 400, None, "response_format.json_schema"),
        (
            {
                **GOOD,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            },
            400,
            None,
            "response_format.json_schema.name",
        ),
        (
            {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SET}}},
            400,
            "unsupported_schema",
            "response_format.json_schema.schema",
        ),
        (
            {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": BAD}}},
            400,
            "unsupported_schema",
            "response_format.json_schema.schema",
        ),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),  # OpenAI allows 4
        ({**GOOD, "thinking_budget": 0}, 400, None, "thinking_budget"),
        ({**GOOD, "frobnicate": 1}, 400, "unknown_field", "frobnicate"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, None, "messages[0].role"),
        (
            {"messages": [GOOD["messages"][0], {"role": "tool", "content": "x"}]},
            400,
            None,
            "messages[1].tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            400,
            None,
            "messages[0].content[0].type",
        ),
        ({**GOOD, "chat_template_kwargs": {"tools": []}}, 400, "unsupported", "chat_template_kwargs.tools"),
        ({**GOOD, "repetition_penalty": 1e-320}, 400, None, "repetition_penalty"),
        ({"messages": [{"role": "user", "content": "lone \ud800"}]}, 400, None, "messages[0].content[0]"),
    ],
)
def test_malformed_requests_are_400_and_the_server_goes_on(limited, body, status, code, param):
    url, _ = limited
    assert_error(post(url, body), status, code, param)
    assert_serving(url)


def test_malformed_json(limited):
    url, _ = limited
    response = requests.post(f"{url}/v1/chat/completions", data=b"{not json", timeout=10,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert_error(response, 400, "invalid_json")
    assert_serving(url)


@pytest.mark.parametrize(
    ("url_value", "code", "match"),
    [
        ("data:image/png;base64,!!!!", "invalid_image", "base64"),
        ("data:image/png;base64,", "invalid_image", "empty"),
        ("/etc/passwd", "invalid_image", "data: URL"),
        ("http://169.254.169.254/latest", "invalid_image", "disabled"),
    ],
)
def test_image_guards_answer_400(limited, url_value, code, match):
    url, _ = limited
    response = post(url, {"messages": image_message("x", url_value), "max_tokens": 2})
    assert_error(response, 400, code, "messages[0].content[1]")
    assert match in response.json()["error"]["message"]
    assert_serving(url)


def test_too_many_images(limited):
    url, _ = limited
    response = post(url, {"messages": image_message("x", *[jpeg_data_url()] * 3), "max_tokens": 2})
    assert_error(response, 400, "too_many_images")
    assert_serving(url)


def test_image_over_the_byte_limit(limited):
    url, _ = limited
    big = "data:image/png;base64," + "A" * 240_000
    assert_error(post(url, {"messages": image_message("x", big), "max_tokens": 2}), 400, "invalid_image")
    assert_serving(url)


def test_body_over_the_limit_is_refused_before_reading(limited):
    url, _ = limited
    status, body = raw_post(url, {"Content-Type": "application/json", "Content-Length": "5000000"}, b"{}")
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = raw_post(
        url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, b" " * 400_000
    )
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert_serving(url)


def test_context_length_exceeded(limited):
    url, _ = limited
    response = post(url, {"messages": image_message("x", jpeg_data_url((900, 700))), "max_tokens": 8})
    assert_error(response, 400, "context_length_exceeded", "messages")
    assert_serving(url)


def test_queue_full_is_503_at_once_with_retry_after(engine):
    with running_server(engine, max_queue=0) as (url, app):
        body = {**GOOD, "max_tokens": 3000, "min_tokens": 3000, "stream": True}
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as first:
            lines = first.iter_lines()  # keep a reference: a dropped iterator closes the connection
            next(lines)
            started = time.monotonic()
            busy = post(url, GOOD)
            assert time.monotonic() - started < 1.0
            assert_error(busy, 503, "queue_full")
            assert int(busy.headers["Retry-After"]) >= 1
        wait_until(lambda: app.state.glmflash.active == 0, 5)
        assert_serving(url)


def test_request_deadline_is_504_and_frees_the_engine(engine):
    with running_server(engine, request_timeout=0.5) as (url, _app):
        assert_error(post(url, {**GOOD, "max_tokens": 5000, "min_tokens": 5000}), 504, "request_timeout")
        wait_until(lambda: not engine.busy, 2)
        assert_serving(url)


def test_client_disconnect_mid_stream_frees_the_engine_within_a_second(engine):
    with running_server(engine) as (url, app):
        body = {**GOOD, "max_tokens": 5000, "min_tokens": 5000, "stream": True}
        response = requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60)
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert engine.busy
        response.close()
        assert wait_until(lambda: not engine.busy and app.state.glmflash.active == 0, 1.0) < 1.0
        assert_serving(url)


def test_client_disconnect_while_waiting_for_a_whole_answer(engine):
    with running_server(engine) as (url, app):
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(f"{url}/v1/chat/completions", json={**GOOD, "max_tokens": 5000, "min_tokens": 5000},
                          timeout=(5, 0.5))  # fmt: skip
        wait_until(lambda: not engine.busy and app.state.glmflash.active == 0, 1.5)
        assert_serving(url)


def _failing_forward(engine, exc_factory, after_calls):
    """Wrap the model's real forward so that it fails after some real steps (fault injection)."""
    real, count = engine.model.forward, [0]

    def forward(*args, **kwargs):
        count[0] += 1
        if count[0] > after_calls:
            raise exc_factory()
        return real(*args, **kwargs)

    return forward


def test_error_mid_stream_is_an_sse_error_event(engine, monkeypatch):
    with running_server(engine) as (url, _app):
        monkeypatch.setattr(
            engine.model, "forward", _failing_forward(engine, lambda: RuntimeError("boom"), 5)
        )
        body = {**GOOD, "max_tokens": 50, "min_tokens": 50, "stream": True}
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            lines = [line for line in response.iter_lines(decode_unicode=True) if line]
        assert lines[-1] != "data: [DONE]"
        last = json.loads(lines[-1][6:])
        assert last["error"]["code"] == "generation_failed" and "boom" in last["error"]["message"]
        monkeypatch.undo()
        assert_serving(url)


def test_cuda_out_of_memory_is_503_and_the_next_request_succeeds(engine, monkeypatch):
    with running_server(engine) as (url, _app):
        oom = _failing_forward(engine, lambda: torch.cuda.OutOfMemoryError("CUDA out of memory"), 2)
        monkeypatch.setattr(engine.model, "forward", oom)
        assert_error(post(url, {**GOOD, "max_tokens": 20, "min_tokens": 20}), 503, "insufficient_memory")
        monkeypatch.undo()
        assert_serving(url)


def test_unknown_route_is_404_in_shape(limited):
    url, _ = limited
    assert_error(requests.get(f"{url}/v1/nothing", timeout=10), 404)


def test_concurrent_requests_all_succeed(engine):
    with running_server(engine, max_queue=8) as (url, _app):
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(post(url, GOOD).status_code)) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [200] * 6


def test_tiny_temperature_is_greedy_not_an_error(limited):
    url, _ = limited
    assert post(url, {**GOOD, "temperature": 1e-300}).status_code == 200


def test_requests_given_up_by_their_clients_keep_their_slot_until_the_work_stops(engine):
    one_at_a_time = engine_with(engine, max_batch_size=1)  # the second request waits for the first
    with running_server(one_at_a_time, max_queue=1) as (url, app):
        state = app.state.glmflash
        body = {**GOOD, "max_tokens": 5000, "min_tokens": 5000, "stream": True}
        holder = requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60)
        lines = holder.iter_lines()
        next(lines)
        with pytest.raises(requests.exceptions.ReadTimeout):  # admitted, waits for the engine, gives up
            requests.post(f"{url}/v1/chat/completions", json=GOOD, timeout=(5, 0.3))
        time.sleep(0.5)
        assert state.active == 2  # its worker still waits for the engine: the slot stays taken
        assert_error(post(url, GOOD), 503, "queue_full")
        holder.close()
        wait_until(lambda: state.active == 0, 3)  # the abandoned request never runs its prefill
        assert_serving(url)


def test_deadline_in_the_middle_of_a_stream_is_an_error_event(engine):
    with running_server(engine, request_timeout=0.5) as (url, _):
        body = {**GOOD, "max_tokens": 5000, "min_tokens": 5000, "stream": True}
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            lines = [line for line in response.iter_lines(decode_unicode=True) if line]
        assert lines[-1] != "data: [DONE]"
        assert json.loads(lines[-1][6:])["error"]["code"] == "request_timeout"
        wait_until(lambda: not engine.busy, 2)
        assert_serving(url)
