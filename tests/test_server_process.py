"""`python -m glmflash serve` as a real process: SIGTERM drains in-flight requests, then exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import requests

from tests.conftest import ROOT
from tests.server_helpers import free_port


def start(cache_dir, *args):
    port = free_port()
    env = {**os.environ, "GLMFLASH_CACHE_DIR": str(cache_dir), "GLMFLASH_DRAIN_TIMEOUT": "20"}
    process = subprocess.Popen(
        [sys.executable, "-m", "glmflash", "serve", "--model", "tiny", "--port", str(port), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
    process.kill()
    raise AssertionError("the server did not become ready")


def test_sigterm_lets_the_running_stream_finish_then_exits(cache_dir):
    process, url = start(cache_dir)
    try:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1200,
            "min_tokens": 1200,
            "stream": True,
        }
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            lines = response.iter_lines(decode_unicode=True)
            next(lines)
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        final = json.loads(rest[-2][6:])
        assert final["choices"][0]["finish_reason"] == "length"
        # uvicorn re-raises the signal after its graceful shutdown, as a supervisor expects
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_non_loopback_host_without_auth_warns(cache_dir):
    process, _ = start(cache_dir, "--host", "0.0.0.0")
    try:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert "without authentication" in output and "GLMFLASH_API_KEYS" in output


def test_compiled_decoding_compiles_before_the_server_is_ready(cache_dir, monkeypatch):
    monkeypatch.setenv("GLMFLASH_COMPILE", "1")
    process, url = start(cache_dir)
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
        reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        assert reply["usage"]["completion_tokens"] >= 1
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    compiled, serving = output.index("compiled in"), output.index("serving glmflash/tiny")
    assert "for batches of 1, 2 and 8" in output and compiled < serving, output


def test_the_served_api_needs_its_key_though_the_engine_never_holds_it(cache_dir, monkeypatch):
    monkeypatch.setenv("GLMFLASH_API_KEYS", "process-key")
    process, url = start(cache_dir)
    try:
        assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
        allowed = requests.get(
            f"{url}/v1/models", headers={"Authorization": "Bearer process-key"}, timeout=10
        )
        assert allowed.status_code == 200
    finally:
        process.terminate()
        process.wait(30)
