"""Notebooks run top to bottom (nbclient, a real kernel) and are committed without outputs.

Every notebook under notebooks/ runs against the tiny model (GLMFLASH_MODEL=tiny in the kernel's
environment); 02 talks to a real server on loopback. EXPECTED adds cheap checks per notebook;
a notebook not listed there must still run without errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT
from tests.server_helpers import running_server

NOTEBOOKS = sorted(Path(ROOT, "notebooks").glob("*.ipynb"))
API_KEY = "notebook-test-key"

# name -> (needs the API server, renders a matplotlib figure, texts its outputs must contain)
EXPECTED = {
    "01_quickstart.ipynb": (
        False,
        True,
        ["model:      glmflash/tiny", "tiny DEMO model", "--- answer ---", "finish_reason:", "int8:", "TTFT"],
    ),
    "02_api_client.ipynb": (
        True,
        False,
        [
            "is up",
            "models: ['glm-4.6v-flash']",
            "answer:",
            "content-type: text/event-stream",
            "broken image -> HTTP 400",
            "max_tokens=10,000,000 -> HTTP 400",
        ],
    ),
    "03_widgets_chat.ipynb": (False, False, ["answer:", "history: 4 messages", "finish_reason: cancelled"]),
    "04_moderation_batch.ipynb": (
        False,
        True,
        ["moderation: finished:", "invoice: finished:", "rerun skipped 3 of 3 images", "moderation.csv:"],
    ),
    "05_cost_analysis.ipynb": (False, True, ["moves the answer most:"]),
    "06_grounding.ipynb": (
        False,
        True,
        [
            "label font:",
            "answer:",
            "objects in the JSON",
            "pixel boxes: [(80, 120, 280, 320), (480, 240, 680, 440)]",
            "'[1, 2, 3]': 0 boxes",
        ],
    ),
    "08_lora_finetune.ipynb": (
        False,
        False,
        [
            "batch: finished:",
            "corrected: 12",
            "training loss:",
            "model: glmflash/tiny+warning - adapters: ('warning',)",
            "same answer as base + adapter: True",
        ],
    ),
    "07_evaluate.ipynb": (
        False,
        True,
        [
            "9 labelled images",
            "left out: row 10: no such image",
            "accuracy",
            "images answered differently",
            "self-contained: True",
        ],
    ),
}


@pytest.fixture(scope="module")
def api_url(engine):
    """A real server (with an API key, so the notebook must send it) for the API notebook."""
    with running_server(engine, api_keys=API_KEY) as (url, _app):
        yield f"{url}/v1"


@pytest.fixture
def kernel_env(monkeypatch, cache_dir):
    """The kernel inherits this process's environment: the tiny model, built once per run."""
    for name in list(os.environ):
        if name.startswith("GLMFLASH_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders the plots
    monkeypatch.setenv("GLMFLASH_MODEL", "tiny")
    monkeypatch.setenv("GLMFLASH_CACHE_DIR", str(cache_dir))
    return monkeypatch


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, kernel_env, request):
    needs_server, plots, texts = EXPECTED.get(path.name, (False, False, []))
    if needs_server:
        kernel_env.setenv("GLMFLASH_API_URL", request.getfixturevalue("api_url"))
        kernel_env.setenv("GLMFLASH_API_KEY", API_KEY)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    nbformat.write(notebook, tmp_path / path.name)  # kept for a look when something fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors
    if plots:
        figures = [o for o in outputs if "image/png" in o.get("data", {})]
        assert any(o["data"].get("text/plain", "").startswith("<Figure") for o in figures)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    missing = [text for text in texts if text not in printed]
    assert not missing, f"not in the outputs: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code"
    )
