"""deploy/nginx.conf for real (Debian's nginx) in front of two glmflash servers on loopback:
requests spread over both, streams pass through unbuffered, and a batch job through it loses
nothing when one replica stops in the middle."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest
import requests

from glmflash.backends.remote import RemoteEngine
from glmflash.jobs.runner import run_job
from glmflash.jobs.tasks import custom_task
from tests.conftest import ROOT, png_bytes
from tests.server_helpers import free_port, running_server, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx)"
)


def config_for(tmp: Path, port: int, replicas: list[str]) -> Path:
    """The shipped nginx.conf with loopback addresses and files under `tmp`."""
    text = Path(ROOT, "deploy/nginx.conf").read_text()
    servers = re.findall(r" +server glmflash-\d:8080 ([^;]*);\n", text)
    assert len(servers) == 2
    text = re.sub(r"( +server glmflash-\d:8080 [^;]*;\n)+", "@@SERVERS@@", text)
    lines = "".join(f"        server {host} {servers[0]};\n" for host in replicas)
    text = text.replace("@@SERVERS@@", lines)
    for old, new in [
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("pid /run/nginx.pid;", f"pid {tmp}/nginx.pid;"),
        ("error_log /dev/stderr warn;", f"error_log {tmp}/error.log warn;"),
        ("access_log /dev/stdout;", f"access_log {tmp}/access.log;"),
    ]:
        assert old in text
        text = text.replace(old, new)
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


@contextlib.contextmanager
def nginx(tmp: Path, replicas: list[str]):
    port = free_port()
    conf = config_for(tmp, port, replicas)
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"], stderr=subprocess.PIPE
    )
    try:
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/nginx-health") or process.poll() is not None, 20
        )
        assert process.poll() is None, process.stderr.read().decode()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def two_replicas(engine):
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_server(engine, served_model_name="replica-a"))
        b_stack = contextlib.ExitStack()
        b = b_stack.enter_context(running_server(engine, served_model_name="replica-b"))
        try:
            yield [a[0], b[0]], b_stack
        finally:
            b_stack.close()


def hostport(url: str) -> str:
    return url.removeprefix("http://")


def test_requests_spread_and_streams_are_not_buffered(two_replicas, tmp_path):
    (a, b), _ = two_replicas
    with nginx(tmp_path, [hostport(a), hostport(b)]) as front:
        seen = {requests.get(f"{front}/v1/models", timeout=10).json()["data"][0]["id"] for _ in range(10)}
        assert seen == {"replica-a", "replica-b"}

        client = openai.OpenAI(base_url=f"{front}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens == 3

        body = {
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "max_tokens": 400,
            "min_tokens": 400,
        }
        start = time.monotonic()
        arrivals = []
        with requests.post(f"{front}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    arrivals.append(time.monotonic() - start)
        total = arrivals[-1]
        assert len(arrivals) > 10 and arrivals[0] < 0.5 * total  # the first tokens came long before the end
    assert "proxy_buffering off;" in Path(ROOT, "deploy/nginx.conf").read_text()
    short = {**body, "max_tokens": 2, "min_tokens": 2}
    with requests.post(f"{a}/v1/chat/completions", json=short, stream=True, timeout=60) as direct:
        assert direct.headers["x-accel-buffering"] == "no"  # for an nginx set up without our config


def test_a_replica_stopping_mid_job_loses_no_records(two_replicas, tmp_path):
    (a, b), stop_b = two_replicas
    paths = []
    for i in range(24):
        path = tmp_path / f"in/{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(size=(40 + i, 40), color=(i * 9, 40, 200)))
        paths.append(path)
    schema = {
        "type": "object",
        "properties": {"verdict": {"enum": ["allow", "review", "block"]}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    task = replace(custom_task("Judge", None), schema=schema, max_new_tokens=40)
    out = tmp_path / "results.jsonl"
    with nginx(tmp_path, [hostport(a), hostport(b)]) as front:
        remote = RemoteEngine(f"{front}/v1", retries=8, backoff_s=0.2)
        result = {}
        job = threading.Thread(
            target=lambda: result.update(
                summary=run_job(remote, task, paths, out, concurrency=4, backoff_s=0.2)
            )
        )
        job.start()
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, 60)
        stop_b.close()  # replica b drains its running requests and goes away
        job.join(180)
    summary = result["summary"]
    lines = out.read_text().splitlines()
    assert (summary.done, summary.failed) == (24, 0)
    assert len(lines) == 24 and len({line.split('"id": "')[1][:32] for line in lines}) == 24
