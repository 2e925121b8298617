"""Shared fixtures: the tiny model is built once per run into a temporary cache folder."""

from __future__ import annotations

import base64
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import glmflash
from glmflash.backends.local.tiny import MARKER_FILE, ensure_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("glmflash-cache")
    ensure_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def engine(cache_dir):
    return glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))


@pytest.fixture(scope="session")
def text_form_engine(cache_dir):
    """The tiny model with the text-family prompt form ("<|assistant|>" with no newline after it)."""
    folder = ensure_tiny_model(cache_dir, template="text")
    return glmflash.load(str(folder), "fp32", "cpu", cache_dir=str(cache_dir))


@pytest.fixture(params=["vision", "text"])
def form_engine(request):
    """The tiny model in each of the family's two prompt forms (the checkpoint's is not published)."""
    return request.getfixturevalue("engine" if request.param == "vision" else "text_form_engine")


def prompt_form(engine) -> str:
    """Which of testing.TEMPLATES the engine's tiny model was built with."""
    import json

    return json.loads((Path(engine.info.source) / MARKER_FILE).read_text())["template"]


def png_bytes(size=(64, 48), color=(200, 30, 30), mode="RGB", fmt="PNG", noise=False, seed=None) -> bytes:
    if noise:  # os.urandom unless `seed` is given: then the same noise on every run
        count = size[0] * size[1] * 3
        data = os.urandom(count) if seed is None else random.Random(seed).randbytes(count)
        image = Image.frombytes("RGB", size, data)
    else:
        image = Image.new(mode, size, color if mode == "RGB" else None)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def run_cli(*args, env_extra=None, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "glmflash", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def favour(engine, *tokens: str) -> None:
    """Make the model prefer these tokens, the later ones most, whatever it reads: its output head
    gets a bias (real weights, real generation; only what it likes is changed)."""
    head = engine.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        for rank, token in enumerate(tokens, 1):
            biased.bias[engine.tokenizer.convert_tokens_to_ids(token)] = 1000.0 * rank
    engine.model.lm_head = biased
