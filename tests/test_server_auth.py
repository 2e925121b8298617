"""Auth with API keys (list or file) and HS256 JWTs, the client allow-list, and the audit log."""

from __future__ import annotations

import json
import time

import jwt
import openai
import pytest
import requests

from tests.server_helpers import running_server
from tests.test_server_api import image_message

GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def call(url, token=None, path="/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path.endswith("completions"):
        return requests.post(f"{url}{path}", json=GOOD, headers=headers, timeout=60)
    return requests.get(f"{url}{path}", headers=headers, timeout=60)


def assert_401(response):
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_api_keys_from_a_list(engine):
    with running_server(engine, api_keys="alpha-key, beta-key") as (url, _):
        assert_401(call(url))
        assert_401(call(url, "wrong"))
        assert_401(call(url, path="/v1/models"))
        assert call(url, "beta-key").status_code == 200
        assert call(url, "alpha-key", "/v1/models").status_code == 200
        assert requests.get(f"{url}/health", timeout=10).status_code == 200  # probes stay open
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="alpha-key", max_retries=0)
        assert client.chat.completions.create(model="m", messages=GOOD["messages"], max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_api_keys_from_a_file(engine, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nfile-key-1\n\nfile-key-2\n")
    with running_server(engine, api_keys=str(keys)) as (url, _):
        assert call(url, "file-key-2").status_code == 200
        assert_401(call(url, "# team keys"))


def test_jwt(engine):
    secret = "a-test-secret-that-is-32-bytes-long!"
    with running_server(engine, jwt_secret=secret) as (url, _):
        valid = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
        expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, secret, algorithm="HS256")
        wrong = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60},
            "another-secret-also-32-bytes-long!!",
            algorithm="HS256",
        )
        no_exp = jwt.encode({"sub": "alice"}, secret, algorithm="HS256")
        assert call(url, valid).status_code == 200
        for token in (expired, wrong, no_exp, None):
            assert_401(call(url, token))


def test_client_allow_list(engine):
    with running_server(engine, allowed_ips=("10.0.0.0/8",)) as (url, _):
        response = call(url)
        assert response.status_code == 403 and response.json()["error"]["code"] == "ip_not_allowed"
        for probe in ("/health", "/ready"):  # a container's health check still passes
            assert requests.get(url + probe, timeout=10).status_code == 200
    with running_server(engine, allowed_ips=("127.0.0.0/8", "::1/128")) as (url, _):
        assert call(url).status_code == 200


def test_audit_log_lines(engine, tmp_path):
    log = tmp_path / "audit.jsonl"
    with running_server(engine, audit_log=str(log), api_keys="audit-key") as (url, _):
        body = {"messages": image_message("secret question"), "max_tokens": 3}
        headers = {"Authorization": "Bearer audit-key"}
        requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        requests.post(f"{url}/v1/chat/completions", json={"messages": []}, headers=headers, timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    ok = lines[0]
    assert ok["status"] == 200 and ok["images"] == 1 and ok["image_bytes"] > 100
    assert ok["key_id"].startswith("key-") and "audit-key" not in log.read_text()
    assert ok["client"] == "127.0.0.1" and ok["completion_tokens"] <= 3 and ok["latency_s"] > 0
    assert "prompt" not in ok and "base64" not in log.read_text() and "secret question" not in log.read_text()


def test_audit_log_with_prompts_when_enabled(engine, tmp_path):
    log = tmp_path / "audit.jsonl"
    with running_server(engine, audit_log=str(log), audit_log_prompts=True) as (url, _):
        requests.post(
            f"{url}/v1/chat/completions",
            json={"messages": image_message("the question"), "max_tokens": 2},
            timeout=60,
        )
    record = json.loads(log.read_text().splitlines()[0])
    assert record["prompt"] == "the question" and "base64" not in log.read_text()


def test_key_files_fail_closed(engine, tmp_path):
    from glmflash.config import Settings
    from glmflash.errors import InvalidRequestError
    from glmflash.server import create_app

    empty = tmp_path / "keys.txt"
    empty.write_text("# nothing here yet\n")
    with pytest.raises(InvalidRequestError, match="holds no key"):
        create_app(engine, Settings.build(api_keys=str(empty)))
    with pytest.raises(InvalidRequestError, match="does not exist"):
        create_app(engine, Settings.build(api_keys="/etc/glmflash/missing-keys.txt"))
