"""The Dockerfile (no Docker engine here): hadolint-clean, non-root, health-checked, pinned, and
everything it copies exists; .dockerignore keeps the virtualenv, caches and outputs out."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import ROOT

DOCKERFILE = Path(ROOT, "Dockerfile")


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def values(keyword: str) -> list[str]:
    return [rest for key, rest in instructions() if key == keyword]


def test_hadolint_passes():
    hadolint = os.path.join(ROOT, ".venv/bin/hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_base_image_is_pinned():
    (base,) = values("FROM")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base


def test_runs_as_a_non_root_user():
    user = values("USER")[-1].split(":")[0]
    assert user not in ("root", "0")


def test_health_check_probes_health_with_a_long_start_period():
    (check,) = values("HEALTHCHECK")
    assert "scripts/probe.py" in check  # whose default URL is /health on GLMFLASH_PORT
    assert "/health" in Path(ROOT, "scripts/probe.py").read_text()
    period = re.search(r"--start-period=(\d+)m", check)
    assert period and int(period.group(1)) >= 10  # minutes: loading (or downloading) the model


def test_ports_volume_and_entry_point():
    assert set(" ".join(values("EXPOSE")).split()) == {"8080", "8888"}
    assert any("/home/glmflash/.cache/huggingface" in v for v in values("VOLUME"))
    assert "HF_HOME=/home/glmflash/.cache/huggingface" in " ".join(values("ENV")).split()
    assert values("ENTRYPOINT") == ['["/app/start.sh", "--container"]']


def test_no_secrets_and_nothing_installed_at_start():
    env = " ".join(values("ENV") + values("ARG"))
    assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", env, re.I)
    start = Path(ROOT, "start.sh").read_text()
    container_branch = start.split('if [ "$container" = 1 ]; then\n  py=')[1].split("else")[0]
    assert "pip" not in container_branch and "venv" not in container_branch


def test_everything_copied_exists_and_is_not_ignored():
    ignored = [
        line for line in Path(ROOT, ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    ]
    for rest in values("COPY"):
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert Path(ROOT, source).exists(), source
            assert source not in ignored, source
    for kept_out in (".venv", ".git", "**/__pycache__", "**/.ipynb_checkpoints", "*.jsonl"):
        assert kept_out in ignored
