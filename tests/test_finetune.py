"""Fine-tuning with the real tiny model: batch results (and corrections) to training rows and
back, a few LoRA steps lower the loss, the adapter loads and changes greedy answers, merged
weights give base+adapter's tokens, a killed run resumes from its checkpoint, and bad input
(missing images, too few rows, an adapter for another model) is a clear error."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import glmflash
from glmflash.adapt.examples import export_training, read_split
from glmflash.adapt.merge import merge
from glmflash.adapt.train import TARGET, TrainSettings, finetune
from glmflash.errors import InvalidRequestError
from glmflash.jobs.runner import expand_inputs, run_job
from glmflash.jobs.tasks import load_task
from tests.conftest import ROOT, png_bytes

pytest.importorskip("peft")

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}  # fmt: skip
QUICK = TrainSettings(rank=8, batch=2, epochs=3, learning_rate=2e-2, max_image_pixels=50_000)
QUESTION = [{"role": "user", "content": [{"type": "image", "image": png_bytes()},
                                         {"type": "text", "text": "Is it fine?"}]}]  # fmt: skip


def fresh(cache_dir, name="tiny", **options):
    """A model of its own: training changes the model it is given."""
    return glmflash.load(name, "fp32", "cpu", cache_dir=str(cache_dir), **options)


def greedy(engine) -> str:
    return engine.chat(QUESTION, max_new_tokens=12, temperature=0, thinking=False).text


@pytest.fixture(scope="module")
def made(tmp_path_factory, engine):
    """Ten images, a one-field task, its batch results, and the training rows from them."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "images").mkdir()
    for i in range(10):
        (root / "images" / f"i{i}.png").write_bytes(png_bytes(size=(32 + i, 32), color=(i * 20, 100, 50)))
    task_file = root / "task.json"
    task_file.write_text(json.dumps({"name": "ok", "prompt": "Is it fine?", "schema": SCHEMA}))
    task = load_task(str(task_file))
    results = root / "results.jsonl"
    run_job(engine, task, expand_inputs([str(root / "images")]), results)
    export_training(results, task, root / "data")
    return {"root": root, "task": task, "task_file": task_file, "results": results, "data": root / "data"}


@pytest.fixture(scope="module")
def adapter(made, cache_dir):
    out = made["root"] / "adapter"
    report = finetune(fresh(cache_dir), made["data"], out, QUICK, progress=False)
    return out, report


def test_results_and_corrections_become_training_rows(made, tmp_path):
    root, task = made["root"], made["task"]
    train, val = read_split(made["data"] / "train.jsonl"), read_split(made["data"] / "val.jsonl")
    assert len(train) + len(val) == 10 and val and train
    assert all(json.loads(row["answer"]).keys() == {"ok"} and row["prompt"] == "Is it fine?" for row in train)
    assert all(Path(row["image"]).is_file() for row in train + val)
    # corrections in the evaluation's labels shape override the answers; bad rows are counted
    fixes = tmp_path / "fixes.csv"
    with open(fixes, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "expected"])
        writer.writerow([str(root / "images" / "i3.png"), json.dumps({"ok": True})])
        writer.writerow([str(root / "images" / "i4.png"), json.dumps({"ok": False})])
    results = tmp_path / "results.jsonl"
    lines = made["results"].read_text().splitlines()
    lines.append(json.dumps({"id": "x", "source": str(tmp_path / "gone.png"), "result": {"ok": True}}))
    lines.append(json.dumps({"id": "y", "source": str(root / "images" / "i0.png"), "result": None}))
    results.write_text("\n".join(lines) + "\n")
    manifest = export_training(results, task, tmp_path / "data", corrections=fixes)
    assert manifest["corrected"] == 2 and manifest["left_out"]["missing image"] == 1
    assert manifest["left_out"]["no answer"] == 1  # i0's later record had none
    rows = read_split(tmp_path / "data" / "train.jsonl") + read_split(tmp_path / "data" / "val.jsonl")
    answers = {Path(row["image"]).name: json.loads(row["answer"]) for row in rows}
    assert (
        answers["i3.png"] == {"ok": True} and answers["i4.png"] == {"ok": False} and "i0.png" not in answers
    )
    again = export_training(results, task, tmp_path / "data", corrections=fixes)
    assert again == manifest  # the same rows, the same split
    with pytest.raises(InvalidRequestError, match="no usable rows"):
        export_training(tmp_path / "fixes.csv", task, tmp_path / "none")


def test_a_few_steps_lower_the_loss_and_the_adapter_changes_answers(made, adapter, cache_dir):
    out, report = adapter
    losses = report["train_loss"]
    assert report["steps"] >= 6 and losses[-1] < losses[0]
    assert report["val_loss"] and report["used_bytes"] > 0 and report["estimated_bytes"] > 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == TARGET and config["r"] == 8
    assert (out / "adapter_model.safetensors").is_file() and (out / "glmflash.json").is_file()
    base, tuned = fresh(cache_dir), fresh(cache_dir, adapter=str(out))
    assert tuned.info.model_id == f"{base.info.model_id}+adapter"  # batch job ids differ
    assert greedy(tuned) != greedy(base)
    tuned_names = {name for name, _ in tuned.model.named_modules() if "lora_A" in name}
    assert tuned_names and not any(".visual." in name for name in tuned_names)  # the vision tower untouched


def test_merged_weights_give_the_adapters_tokens(adapter, cache_dir, tmp_path):
    out, _ = adapter
    merged = merge(fresh(cache_dir), out, tmp_path / "merged")
    assert greedy(fresh(cache_dir, str(merged))) == greedy(fresh(cache_dir, adapter=str(out)))


def test_bad_adapters_and_bad_data_are_clear_errors(made, adapter, cache_dir, tmp_path):
    out, _ = adapter
    with pytest.raises(InvalidRequestError, match="not a LoRA adapter folder"):
        fresh(cache_dir, adapter=str(tmp_path))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config = json.loads((out / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_proj"]}))
    (foreign / "adapter_model.safetensors").write_bytes((out / "adapter_model.safetensors").read_bytes())
    with pytest.raises(InvalidRequestError, match="does not fit this model"):
        fresh(cache_dir, adapter=str(foreign))
    other = tmp_path / "other-base"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("checkpoints"))
    report = json.loads((other / "glmflash.json").read_text())
    (other / "glmflash.json").write_text(json.dumps({**report, "base_model": "zai-org/GLM-4.6V-Flash"}))
    with pytest.raises(InvalidRequestError, match="was trained on zai-org"):
        fresh(cache_dir, adapter=str(other))
    with pytest.raises(InvalidRequestError, match="fewer than one step's batch"):
        finetune(fresh(cache_dir), made["data"], tmp_path / "big", TrainSettings(batch=64), progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    rows = (made["data"] / "train.jsonl").read_text().replace("/images/", "/no-such-folder/")
    (broken / "train.jsonl").write_text(rows)
    with pytest.raises(InvalidRequestError, match="missing"):
        finetune(fresh(cache_dir), broken, tmp_path / "x", QUICK, progress=False)
    assert not (tmp_path / "x" / "adapter_model.safetensors").exists()  # nothing half-written


def test_a_killed_run_resumes_from_its_last_checkpoint(made, cache_dir, tmp_path):
    out = tmp_path / "adapter"
    args = [sys.executable, "-m", "glmflash", "finetune", str(made["data"]), "--model", "tiny",
            "--precision", "fp32", "--device", "cpu", "--out", str(out), "--rank", "4", "--batch", "2",
            "--epochs", "40", "--patience", "100", "--max-image-pixels", "50000",
            "--no-progress"]  # fmt: skip
    env = {"GLMFLASH_CACHE_DIR": str(cache_dir), "PATH": "/usr/bin:/bin"}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if len(list((out / "checkpoints").glob("checkpoint-*"))) >= 2:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "adapter_model.safetensors").exists()  # killed before the end
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((out / "glmflash.json").read_text())
    rows = len(read_split(made["data"] / "train.jsonl"))  # the split depends on the images' paths
    assert report["resumed"] and report["steps"] >= 40 * (rows // 2)  # 2 rows per step, 40 epochs
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("command", ["finetune", "merge-adapter"])
def test_commands_on_the_weights_refuse_a_remote_backend_in_one_line(command, monkeypatch, capsys, tmp_path):
    """With GLMFLASH_BACKEND_URL set, finetune and merge-adapter say they need a model loaded here,
    before anything loads or connects (not an AttributeError on the remote engine)."""
    from glmflash.cli import main

    monkeypatch.setenv("GLMFLASH_BACKEND_URL", "http://127.0.0.1:9/v1")
    target = str(tmp_path / "data") if command == "finetune" else str(tmp_path / "adapter")
    assert main([command, target, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {command} needs a model loaded on this machine")
    assert "http://127.0.0.1:9/v1" in err and "GLMFLASH_BACKEND_URL" in err
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_a_remote_engine_by_type(tmp_path):
    from types import SimpleNamespace

    remote = SimpleNamespace(info=SimpleNamespace(source="http://gpu-box:8000/v1", model_id="glm"))
    with pytest.raises(InvalidRequestError, match="merge-adapter needs a model loaded on this machine"):
        merge(remote, tmp_path, tmp_path / "out")
    with pytest.raises(InvalidRequestError, match="finetune needs a model loaded on this machine"):
        finetune(remote, tmp_path, tmp_path / "out", QUICK)
