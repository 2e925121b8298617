"""Batch jobs through the real tiny model: crash (SIGKILL) and resume without loss or duplicates,
bad files dead-lettered, reruns that do nothing, retries, signals, inputs and CSV export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from glmflash.errors import InsufficientMemoryError
from glmflash.jobs.runner import JsonlFile, expand_inputs, export_csv, run_job
from glmflash.jobs.tasks import custom_task, load_task
from tests.conftest import ROOT, png_bytes
from tests.server_helpers import engine_with, wait_until

# A small schema keeps each answer to a few tokens: these tests are about the job, not the model.
VERDICT = {
    "type": "object",
    "properties": {"verdict": {"enum": ["allow", "review", "block"]}, "score": {"type": "integer"}},
    "required": ["verdict", "score"],
    "additionalProperties": False,
}


def images(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"sub{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(size=(32 + i % 7, 32), color=(i * 4 % 256, 80, 160)))
        paths.append(path)
    return paths


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(VERDICT))
    return str(path)


def batch_cli(*args, cache_dir) -> list[str]:
    return [sys.executable, "-m", "glmflash", "batch", "--model", "tiny", "--no-progress", *args]


def env_for(cache_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMFLASH_")}
    return {**env, "GLMFLASH_CACHE_DIR": cache_dir}


def test_sigkill_midway_then_restart_gives_each_image_exactly_once(tmp_path, cache_dir, schema_file):
    folder, out = tmp_path / "in", tmp_path / "results.jsonl"
    images(folder, 60)
    args = batch_cli(
        str(folder), "--prompt", "Judge it", "--schema", schema_file, "--out", str(out), cache_dir=cache_dir
    )
    first = subprocess.Popen(args, cwd=ROOT, env=env_for(cache_dir), stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(lines(out)) >= 15 or first.poll() is not None, 240)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_before = len(lines(out))
    assert 15 <= done_before < 60
    with open(out, "a") as f:  # what a crash during a write leaves: half a record, no newline
        f.write('{"id": "half-writ')
    second = subprocess.run(
        args, cwd=ROOT, env=env_for(cache_dir), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    records = lines(out)  # parses: the torn line was cut off
    assert len(records) == 60 and len({r["id"] for r in records}) == 60
    assert len({r["source"] for r in records}) == 60
    assert all(r["result"]["verdict"] in ("allow", "review", "block") for r in records)
    assert f"{60 - done_before} done, {done_before} skipped" in second.stderr
    assert "half-written last line" in second.stderr


def test_bad_files_are_dead_lettered_and_a_rerun_does_nothing(tmp_path, cache_dir, schema_file):
    folder, out = tmp_path / "in", tmp_path / "r.jsonl"
    images(folder, 3)
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(png_bytes()[:60])
    (folder / "notes.txt").write_text("not an image at all")
    (folder / ".DS_Store").write_bytes(b"\0\0")  # hidden: not an input
    args = batch_cli(
        str(folder), "--prompt", "Judge it", "--schema", schema_file, "--out", str(out), "--format", "csv",
        cache_dir=cache_dir,
    )  # fmt: skip
    result = subprocess.run(
        args, cwd=ROOT, env=env_for(cache_dir), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "3 done, 0 skipped (done before), 0 duplicates, 3 failed, of 6 inputs" in result.stderr
    errors = {Path(e["source"]).name: e for e in lines(tmp_path / "r.errors.jsonl")}
    assert set(errors) == {"empty.png", "corrupt.jpg", "notes.txt"}
    assert "empty" in errors["empty.png"]["error"] and not any(e["transient"] for e in errors.values())
    assert errors["corrupt.jpg"]["code"] == errors["notes.txt"]["code"] == "invalid_image"
    csv_text = (tmp_path / "r.csv").read_text()
    assert csv_text.splitlines()[0].startswith("id,source,verdict,score") and len(csv_text.splitlines()) == 4

    before = (out.read_bytes(), (tmp_path / "r.errors.jsonl").read_bytes())
    again = subprocess.run(
        args, cwd=ROOT, env=env_for(cache_dir), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "0 done, 6 skipped (done before)" in again.stderr
    assert (out.read_bytes(), (tmp_path / "r.errors.jsonl").read_bytes()) == before


def test_sigterm_ends_between_records_and_the_rest_is_done_later(tmp_path, cache_dir, schema_file):
    folder, out = tmp_path / "in", tmp_path / "r.jsonl"
    images(folder, 24)
    args = batch_cli(
        str(folder), "--prompt", "Judge", "--schema", schema_file, "--out", str(out), cache_dir=cache_dir
    )
    job = subprocess.Popen(args, cwd=ROOT, env=env_for(cache_dir), stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(lines(out)) >= 5 or job.poll() is not None, 240)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 130 and "interrupted:" in stderr
    kept = lines(out)  # every line whole
    rest = subprocess.run(args, cwd=ROOT, env=env_for(cache_dir), capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0 and len(lines(out)) == 24 and lines(out)[: len(kept)] == kept


class Flaky:
    """The real engine behind a GPU that runs out of memory `failures` times first."""

    def __init__(self, engine, failures: int):
        self.engine, self.failures, self.calls = engine, failures, 0
        self.info, self.settings = engine.info, engine.settings

    def chat(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise InsufficientMemoryError("The GPU ran out of memory for this request.")
        return self.engine.chat(*args, **kwargs)


def test_transient_failures_are_retried_then_dead_lettered(engine, tmp_path):
    task = custom_task("Judge", None, max_new_tokens=64)
    task = replace(task, schema=VERDICT)
    paths = images(tmp_path / "in", 1)
    flaky = Flaky(engine, failures=2)
    summary = run_job(flaky, task, paths, tmp_path / "a.jsonl", backoff_s=0.01)
    assert (summary.done, summary.failed, flaky.calls) == (1, 0, 3)

    hopeless = Flaky(engine, failures=99)
    summary = run_job(hopeless, task, paths, tmp_path / "b.jsonl", retries=2, backoff_s=0.01)
    assert (summary.done, summary.failed, hopeless.calls) == (0, 1, 3)
    (error,) = lines(tmp_path / "b.errors.jsonl")
    assert error["transient"] and error["code"] == "insufficient_memory"


def test_duplicates_concurrency_and_stop(engine, tmp_path):
    task = replace(custom_task("Judge", None, max_new_tokens=64), schema=VERDICT)
    paths = images(tmp_path / "in", 6)
    twin = tmp_path / "in" / "twin.png"
    twin.write_bytes(paths[0].read_bytes())
    summary = run_job(engine, task, [*paths, twin], tmp_path / "r.jsonl", concurrency=3)
    assert (summary.done, summary.duplicates) == (6, 1) and len(lines(tmp_path / "r.jsonl")) == 6
    stop = threading.Event()
    stop.set()
    summary = run_job(engine, task, images(tmp_path / "more", 3, start=50), tmp_path / "r.jsonl", stop=stop)
    assert summary.interrupted and summary.done == 0
    other = run_job(engine, load_task("moderation", language="French"), paths[:1], tmp_path / "r.jsonl")
    assert other.done == 1  # another task (or language) is other work on the same image


def test_inputs_folders_globs_and_lists(tmp_path):
    paths = images(tmp_path / "in", 4)
    (tmp_path / "in" / ".hidden.png").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen\n{paths[0]}\n\n{paths[1]}\n")
    assert expand_inputs([str(tmp_path / "in")]) == sorted(paths)
    assert expand_inputs([str(tmp_path / "in" / "sub0" / "*.png")]) == [
        p for p in sorted(paths) if "sub0" in str(p)
    ]
    assert expand_inputs([str(tmp_path / "**" / "img00[01].png")]) == sorted(paths[:2])
    assert expand_inputs([], files_from=str(listing)) == sorted(paths[:2])
    with pytest.raises(Exception, match="no such file"):
        expand_inputs([str(tmp_path / "missing")])


def test_jsonl_file_ignores_foreign_lines_and_csv_flattens(tmp_path):
    path = tmp_path / "r.jsonl"
    first = {"id": "a", "source": "x.png", "result": {"seller": {"name": "ACME"}, "items": [1, 2]}}
    path.write_text(json.dumps(first) + "\ngarbage\n")
    store = JsonlFile(path)
    store.append({"id": "b", "source": "y.png", "result": {"seller": {"name": "Z"}}})
    store.close()
    assert store.ids == {"a", "b"}
    assert export_csv(path, tmp_path / "r.csv") == 2
    header, first, _ = (tmp_path / "r.csv").read_text().splitlines()
    assert header.startswith("id,source,seller.name,items") and '"[1, 2]"' in first


def test_cli_refuses_bad_arguments_before_loading(tmp_path, cache_dir, schema_file):
    cases = [
        (["--task", "moderation"], "No input files"),
        ([str(tmp_path), "--task", "nope"], "Unknown task 'nope'"),
        ([str(tmp_path), "--task", "invoice", "--schema", schema_file], "--schema goes with --prompt"),
        ([str(tmp_path / "absent")], "no such file"),
    ]
    for extra, message in cases:
        args = [*extra, "--out", str(tmp_path / "o.jsonl")]
        if "--task" not in extra:
            args += ["--prompt", "x"]
        result = subprocess.run(
            batch_cli(*args, cache_dir=cache_dir),
            cwd=ROOT,
            env=env_for(cache_dir),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_progress_bar_shows_counts_and_the_rate():
    import io

    from glmflash.commands.batch import Progress
    from glmflash.jobs.runner import Summary

    stream = io.StringIO()  # not a terminal: tqdm writes a line at most every 10 s
    progress = Progress(stream)
    progress(Summary(total=100, done=20, skipped=5, duplicates=1, failed=2, seconds=10.0))
    progress(Summary(total=100, done=21, skipped=5, duplicates=1, failed=2, seconds=10.5))
    progress.finish()
    lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert "29/100" in lines[-1] and "img/s" in lines[-1]
    assert "done=21" in lines[-1] and "skipped=6" in lines[-1] and "failed=2" in lines[-1]


class Budgets:
    """The real engine, noting the answer budget of every call."""

    def __init__(self, engine):
        self.engine, self.budgets = engine, []
        self.info, self.settings = engine.info, engine.settings

    def chat(self, *args, **kwargs):
        self.budgets.append(kwargs["max_new_tokens"])
        return self.engine.chat(*args, **kwargs)


def test_an_answer_cut_off_by_its_budget_is_tried_once_more_with_a_larger_one(engine, tmp_path):
    paths = images(tmp_path / "in", 2)
    tight = replace(load_task("invoice"), max_new_tokens=6)  # no invoice JSON fits in 6 tokens
    spy = Budgets(engine)
    summary = run_job(spy, tight, paths, tmp_path / "cut.jsonl")
    assert spy.budgets == [6, 24, 6, 24]  # once more each, four times the budget, then given up
    assert (summary.done, summary.failed) == (0, 2)
    errors = lines(tmp_path / "cut.errors.jsonl")
    assert {e["code"] for e in errors} == {"invalid_output"} and "max_tokens=24" in errors[0]["error"]

    spy = Budgets(engine_with(engine, max_new_tokens_limit=3000))
    summary = run_job(spy, replace(tight, max_new_tokens=10_000_000), paths[:1], tmp_path / "big.jsonl")
    assert spy.budgets == [3000] and summary.done == 1  # never past the engine's limit


@pytest.mark.parametrize("preset", ["moderation", "invoice"])
def test_a_preset_job_with_default_settings_loses_no_image(engine, tmp_path, preset):
    """As a new user runs it (python -m glmflash batch DIR --task moderation): the model's own
    sampling, 24 images, batched. The preset's budget covers the longest answer its schema allows,
    so nothing ends in the errors file."""
    paths = []
    for i in range(24):
        path = tmp_path / "in" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(size=(40 + i, 36), noise=True))
        paths.append(path)
    summary = run_job(engine, load_task(preset), paths, tmp_path / "out.jsonl", concurrency=8)
    assert lines(tmp_path / "out.errors.jsonl") == []
    assert (summary.done, summary.failed) == (24, 0) and len(lines(tmp_path / "out.jsonl")) == 24
