"""The GPU run, dry: scripts/gpu_measure.sh end to end on this CPU, as the lent GPU machine would
run it but for the GPU. Its packages only (tests/gpu_machine hides every other one, and
glmflash's editable install), its transformers, accelerate and peft versions (PINS, installed
once with pip into .venv/gpu-machine), a shrunken copy of the full-size architecture that keeps
the real vocabulary, token ids and vision patch/merge sizes, and QUICK=1 workloads. An
unconditional import of a package that machine lacks, an API its transformers lacks, or a flag
the script passes and the command no longer takes fails here, not in the one GPU run.

Not imitated: torch itself (2.11 there, too large to pin here) and Python 3.12. Compiled
variants are skipped (no CUDA); int4 and int8 run into their clean errors (no bitsandbytes: its
wheel travels only to the GPU)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PINS = ("transformers==5.17.0", "accelerate==1.15.0", "peft==0.21.2", "huggingface_hub==1.33.0")
PINNED = Path(sys.prefix) / "gpu-machine"

pytestmark = pytest.mark.slow


def pinned_packages() -> Path | None:
    """PINS in PINNED (pip install --no-deps --target, once); None when pip cannot get them."""
    stamp = PINNED / "pins.txt"
    if stamp.is_file() and stamp.read_text() == "\n".join(PINS):
        return PINNED
    staging = Path(tempfile.mkdtemp(prefix=".gpu-machine-", dir=PINNED.parent))
    try:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
        done = subprocess.run(
            [*pip, "--target", str(staging), *PINS], capture_output=True, text=True, timeout=600
        )
        if done.returncode:
            warnings.warn(
                f"the dry run keeps this venv's versions: pip could not install {PINS}: {done.stderr[-500:]}",
                stacklevel=2,
            )
            return None
        (staging / "pins.txt").write_text("\n".join(PINS))
        shutil.rmtree(PINNED, ignore_errors=True)
        with contextlib.suppress(OSError):  # another run put it there first
            staging.rename(PINNED)
        return PINNED
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def shrunken_config(path: Path) -> Path:
    """glmflash/data/full_size_config.json cut down in every width and depth; its vocabulary, token
    ids and vision patch, merge and temporal sizes kept."""
    data = json.loads((ROOT / "glmflash/data/full_size_config.json").read_text())
    data["text_config"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    data["text_config"]["rope_parameters"]["mrope_section"] = [2, 3, 3]  # head_dim 32 * 0.5 / 2
    data["vision_config"].update(
        depth=2, hidden_size=64, num_heads=4, intermediate_size=128, out_hidden_size=128
    )
    path.write_text(json.dumps(data))
    return path


def dry_run(out: Path, tmp: Path, **env) -> tuple[dict, float]:
    """Run the script; {step: its steps.jsonl line} and the wall time."""
    pins = pinned_packages()
    paths = [str(ROOT / "tests/gpu_machine"), *([str(pins)] if pins else [])]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLMFLASH_", "PYTHON"))}
    (tmp / "no-wheels").mkdir(exist_ok=True)
    settings = {"PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join(paths), "DEVICE": "cpu",
                "ARCH_CONFIG": str(shrunken_config(tmp / "arch.json")), "QUICK": "1",
                "WHEELS": str(tmp / "no-wheels"), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1",
                "GLMFLASH_CACHE_DIR": str(tmp / "cache"), **env}  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(["bash", "scripts/gpu_measure.sh", str(out)], cwd=ROOT, env={**clean, **settings},
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - began
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines}, wall


def log(out: Path, step: str) -> str:
    path = out / f"{step}.log"
    return path.read_text()[-4000:] if path.is_file() else "(no log)"


def test_the_gpu_run_works_on_the_gpu_machines_packages(tmp_path):
    out = tmp_path / "out"
    steps, wall = dry_run(out, tmp_path)
    print(f"dry run: {wall:.1f} s")
    for name in ("setup", "tests", "bench-bf16", "qlora"):
        assert steps[name].get("exit") == 0, f"{name}: {steps[name]}\n{log(out, name)}"
    for name in ("bench-int4", "bench-int8"):  # no bitsandbytes, or no CUDA: a clean error, exit 1
        assert steps[name].get("exit") == 1, f"{name}: {steps[name]}\n{log(out, name)}"
    for name in ("bench-bf16+compile", "tests-compile", "bench-int8+torchao+compile"):
        assert steps[name]["status"] == "skipped: cpu is not a CUDA device"
    machine = (out / "machine.txt").read_text()
    if pinned_packages():
        assert "transformers 5.17.0" in machine, machine

    bf16 = json.loads((out / "bench-bf16.json").read_text())
    assert bf16["bf16"].get("error") is None, bf16["bf16"]
    assert [level["concurrency"] for level in bf16["bf16"]["levels"]] == [1, 2]
    assert bf16["bf16"]["decode_fraction_of_limit"] > 0 and bf16["image"] == "112x112"
    assert "random checkpoint written" in log(out, "bench-bf16")
    for name in ("bench-int4", "qlora", "bench-int8"):  # one checkpoint for all
        assert "random checkpoint reused" in log(out, name), log(out, name)
    assert "int4 needs a CUDA GPU" in json.loads((out / "bench-int4.json").read_text())["int4"]["error"]
    assert "needs bitsandbytes" in json.loads((out / "bench-int8.json").read_text())["int8"]["error"]
    qlora = json.loads((out / "qlora.json").read_text())
    assert qlora["steps"] == 1 and qlora["device"] == "cpu" and qlora["used_gib"] > 0
    assert "passed" in log(out, "tests")  # the gpu tests skip here; the import check runs


def test_steps_and_the_deadline(tmp_path):
    """STEPS picks steps (a rerun); a step whose turn comes too late is skipped, not started."""
    out = tmp_path / "out"
    steps, _ = dry_run(out, tmp_path, STEPS="bench-bf16+compile,qlora", TOTAL_SECONDS="20")
    assert set(steps) == {"setup", "qlora", "bench-bf16+compile"}
    assert steps["qlora"]["status"].startswith("skipped:") and steps["qlora"]["status"].endswith("s left")
