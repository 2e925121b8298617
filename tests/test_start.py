"""start.sh for real: both services on free ports with the tiny model, tokens, supervision, signals,
refusals, --check, and --docker against stand-in `docker` commands (no Docker engine here)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai
import psutil
import pytest
import requests

from tests.conftest import ROOT, data_url, png_bytes
from tests.server_helpers import free_port, wait_until

START = os.path.join(ROOT, "start.sh")
SHELL_SCRIPTS = [
    "start.sh",
    "test.sh",
    *sorted(str(p.relative_to(ROOT)) for p in Path(ROOT, "scripts").glob("*.sh")),
]


def launch(tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLMFLASH_", "JUPYTER_"))}
    env.update(env_extra or {})
    log = open(tmp_path / "start.log", "w+b")  # noqa: SIM115 - read back by `output`
    process = subprocess.Popen(
        ["bash", START, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    process.log = log
    return process


def output(process) -> str:
    return Path(process.log.name).read_text(errors="replace")


def family(process) -> list[psutil.Process]:
    """start.sh and everything it started (JupyterLab's kernels run in their own sessions)."""
    return [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]


def gone(processes) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def started(tmp_path, cache_dir):
    """./start.sh --model tiny on free ports, waited for until it prints the URLs."""
    port, jport = free_port(), free_port()
    process = launch(
        tmp_path, "--model", "tiny", "--port", str(port), "--jupyter-port", str(jport),
        env_extra={"GLMFLASH_CACHE_DIR": cache_dir},
    )  # fmt: skip
    try:
        wait_until(lambda: "glmflash is ready" in output(process) or process.poll() is not None, 180)
        assert process.poll() is None, output(process)
        token = re.search(r"/lab\?token=([\w-]+)", output(process)).group(1)
        yield process, port, jport, token
    finally:
        if process.poll() is None:
            for p in family(process):
                p.kill()
        process.wait(30)


def test_both_services_come_up_and_sigterm_stops_everything(started):
    process, port, jport, token = started
    text = output(process)
    assert f"http://127.0.0.1:{port}/" in text and f"http://127.0.0.1:{port}/v1" in text
    jupyter = f"http://127.0.0.1:{jport}"
    assert requests.get(f"{jupyter}/api/status", timeout=10).status_code == 403
    assert requests.get(f"{jupyter}/api/status", params={"token": "wrong"}, timeout=10).status_code == 403
    assert requests.get(f"{jupyter}/api/status", params={"token": token}, timeout=10).status_code == 200
    assert requests.get(f"{jupyter}/lab", params={"token": token}, timeout=10).status_code == 200
    listed = requests.get(f"{jupyter}/api/contents", params={"token": token}, timeout=10).json()
    assert {"05_cost_analysis.ipynb"} <= {
        item["name"] for item in listed["content"]
    }  # notebooks/ is the root
    kernel = requests.post(
        f"{jupyter}/api/kernels",
        json={"name": "python3"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert kernel.status_code == 201

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    content = [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
        {"type": "text", "text": "Hi?"},
    ]
    reply = client.chat.completions.create(
        model="glm-4.6v-flash", messages=[{"role": "user", "content": content}], max_tokens=4
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4

    wait_until(lambda: any("ipykernel" in " ".join(p.cmdline()) for p in family(process)), 30)
    everything = family(process)
    assert len(everything) >= 4  # start.sh, the app, JupyterLab, the kernel
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    assert process.returncode == 0
    wait_until(lambda: gone(everything), 5)
    assert "stopped" in output(process)


def test_the_app_dying_stops_jupyter_and_fails(started):
    process = started[0]
    everything = family(process)
    app = next(p for p in everything if "glmflash serve" in " ".join(p.cmdline()))
    app.kill()
    process.wait(20)
    assert process.returncode != 0
    assert "app exited" in output(process)
    wait_until(lambda: gone(everything), 5)


def run_start(tmp_path, *args, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLMFLASH_", "JUPYTER_"))}
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", START, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model"], "--model needs a value"),
        (["--port", "80x"], "--port must be a port number"),
        (["--jupyter-port", "70000"], "--jupyter-port must be a port number"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--port", "9000", "--jupyter-port", "9000"], "are both 9000"),
    ],
)
def test_bad_flags_are_one_clear_line(tmp_path, args, message):
    result = run_start(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_refuses_jupyter_without_token_off_loopback(tmp_path):
    result = run_start(
        tmp_path, "--host", "0.0.0.0", "--port", str(free_port()), "--jupyter-port", str(free_port()),
        env_extra={"GLMFLASH_JUPYTER_TOKEN": ""},
    )  # fmt: skip
    assert result.returncode == 2 and "without a token" in result.stderr


def test_a_busy_port_is_refused_before_loading(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_start(tmp_path, "--model", "tiny", "--port", str(port), "--no-jupyter")
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "starting the app" not in result.stderr


def test_check_reports_and_fails_on_an_impossible_choice(tmp_path):
    ok = run_start(tmp_path, "--check", "--model", "tiny", "--port", str(free_port()), "--no-jupyter")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for topic in ("python", "gpu", "precision", "model", "port"):
        assert re.search(rf"^\[(ok  |warn)\] {topic}", ok.stdout, re.M), ok.stdout
    assert "GiB needed: bf16" in ok.stdout and "ready to start" in ok.stdout
    bad = run_start(tmp_path, "--check", "--model", "tiny", "--precision", "int4", "--device", "cpu")
    assert bad.returncode == 1 and re.search(r"\[FAIL\] precision +int4 needs a CUDA GPU", bad.stdout)


def fake_docker(tmp_path, *, engine: bool, nvidia: bool) -> dict:
    """A stand-in `docker` first on PATH that logs its arguments and answers `info` as told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "docker.log"
    runtimes = '{"nvidia":{},"runc":{}}' if nvidia else '{"runc":{}}'
    script = f"""#!/bin/bash
echo "$*" >> {log}
if [ "$1" = info ]; then
  {"true" if engine else "echo 'Cannot connect to the Docker daemon' >&2; exit 1"}
  [ "$2" = --format ] && echo '{runtimes}'
fi
exit 0
"""
    (bin_dir / "docker").write_text(script)
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "log": str(log)}


def test_docker_mode_says_what_is_missing(tmp_path):
    no_docker = run_start(tmp_path, "--docker", env_extra={"PATH": "/usr/bin:/bin"})
    assert no_docker.returncode == 2 and "Docker is not installed" in no_docker.stderr
    no_engine = run_start(
        tmp_path, "--docker", env_extra=fake_docker(tmp_path / "a", engine=False, nvidia=False)
    )
    assert no_engine.returncode == 2 and "its engine does not answer" in no_engine.stderr
    no_gpu = run_start(tmp_path, "--docker", env_extra=fake_docker(tmp_path / "b", engine=True, nvidia=False))
    assert no_gpu.returncode == 2 and "nvidia-container-toolkit" in no_gpu.stderr


def test_docker_mode_builds_and_runs_the_image(tmp_path):
    env = fake_docker(tmp_path / "a", engine=True, nvidia=True)
    model = tmp_path / "b" / "glm46v"
    model.mkdir(parents=True)
    env.update({"GLMFLASH_API_KEYS": "k1", "HF_HUB_OFFLINE": "1"})
    result = run_start(tmp_path, "--docker", "--model", str(model), "--port", "9080", env_extra=env)
    assert result.returncode == 0, result.stderr
    build, run = Path(env["log"]).read_text().splitlines()[-2:]
    assert build.startswith("build --tag glmflash:latest")
    assert (
        "--gpus all" in run
        and "--publish 127.0.0.1:9080:8080" in run
        and "--publish 127.0.0.1:8888:8888" in run
    )
    assert "--volume glmflash-hf-cache:/home/glmflash/.cache/huggingface" in run
    assert f"--volume {model}:/models/glm46v:ro" in run
    assert (
        "--env GLMFLASH_MODEL " in run
        and "--env GLMFLASH_API_KEYS " in run
        and "--env HF_HUB_OFFLINE " in run
    )
    assert "k1" not in run  # values travel in the environment, not on the command line
    assert run.endswith("glmflash:latest --port 8080 --jupyter-port 8888")


def test_container_mode_installs_nothing_and_listens_everywhere(tmp_path, cache_dir):
    port = free_port()
    process = launch(
        tmp_path, "--container", "--no-jupyter", "--model", "tiny", "--port", str(port),
        env_extra={"GLMFLASH_CACHE_DIR": cache_dir, "PYTHON": os.path.join(ROOT, ".venv/bin/python")},
    )  # fmt: skip
    try:
        wait_until(lambda: "glmflash is ready" in output(process) or process.poll() is not None, 120)
        text = output(process)
        assert f"starting the app on 0.0.0.0:{port}" in text and "installing" not in text
        assert "JupyterLab" not in text.split("glmflash is ready")[1]
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert process.returncode == 0


def test_shell_scripts_are_shellcheck_clean():
    shellcheck = os.path.join(ROOT, ".venv/bin/shellcheck")
    result = subprocess.run([shellcheck, *SHELL_SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_probe_script(tmp_path):
    probe = [os.path.join(ROOT, ".venv/bin/python"), os.path.join(ROOT, "scripts/probe.py")]
    assert subprocess.run([*probe, f"http://127.0.0.1:{free_port()}/health", "1"]).returncode == 1
    assert subprocess.run([*probe, "not a url"]).returncode == 1
    start = time.monotonic()
    env = {**os.environ, "GLMFLASH_PORT": str(free_port())}
    assert subprocess.run(probe, env=env).returncode == 1 and time.monotonic() - start < 10
