"""One evaluation run: the task over the labelled images as a resumable batch job (the same ids,
the same crash safety as `glmflash batch`), then its answers scored against the labels.

A run folder holds results.jsonl and results.errors.jsonl (the job's), run.json (what produced
it: task, model, data hash; and the measured throughput summed over resumed invocations),
items.jsonl (each image: expected, answered, right or wrong and which fields), scores.json
(the metrics and the cost per correct answer) and report.html.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .._version import __version__
from ..cost import compare
from ..errors import InvalidRequestError
from ..jobs.runner import Summary, run_job
from ..jobs.tasks import Task
from .data import Labelled
from .score import is_detection, label_fields, score_classification, score_detection, score_extraction


def run_eval(
    engine,
    task: Task,
    data: Labelled,
    out: str | Path,
    *,
    concurrency: int = 1,
    pricing: str | None = None,
    cost_inputs: dict | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[Summary], None] | None = None,
    label_field: str | None = None,
) -> dict:
    """Run (or resume) and score; returns scores.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _start(out, engine, task, data, pricing)
    paths = sorted({item.image for item in data.items})
    summary = run_job(engine, task, paths, out / "results.jsonl", concurrency=concurrency, stop=stop,
                      progress=progress)  # fmt: skip
    meta["done"] += summary.done
    meta["seconds"] += summary.seconds
    meta["interrupted"] = summary.interrupted
    _write_json(out / "run.json", meta)
    return score_run(out, data, task, cost_inputs=cost_inputs, label_field=label_field)


def score_run(out: Path, data: Labelled, task: Task, *, cost_inputs=None, label_field=None) -> dict:
    """Join the job's records with the labels, score, and write items.jsonl and scores.json."""
    meta = json.loads((out / "run.json").read_text())
    answers = _latest(out / "results.jsonl", "result")
    errors = _latest(out / "results.errors.jsonl", "error")
    pairs = [(item.expected, answers.get(str(item.image))) for item in data.items]
    if data.kind == "classification":
        label, confidence = label_fields(task.schema)
        label = label_field or label
        if not label:
            raise InvalidRequestError(
                "Labels are plain values, but the task's answer has no enum field to compare them with: "
                "give --label-field.", param="label_field",
            )  # fmt: skip
        scored = score_classification(pairs, label, confidence)
    elif all(is_detection(item.expected) for item in data.items):
        scored = score_detection(pairs)
    else:
        scored = score_extraction(pairs)
    with (out / "items.jsonl").open("w", encoding="utf-8") as f:
        for item, detail in zip(data.items, scored["items"], strict=True):
            row = {"row": item.row, "image": str(item.image), **detail, "error": errors.get(str(item.image))}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    scores = scored["scores"]
    images_per_s = meta["done"] / meta["seconds"] if meta["done"] and meta["seconds"] > 0 else None
    result = {
        "name": meta["name"],
        "config": {k: meta[k] for k in ("task", "task_hash", "model", "data", "data_hash", "pricing")},
        "scores": scores,
        "throughput": {"images_per_s": images_per_s, "images": meta["done"], "seconds": meta["seconds"]},
        "cost": cost_of(meta["pricing"], images_per_s, scores["accuracy"], cost_inputs or {}),
        "complete": scores["answered"] + len(errors) >= len(data.items) and not meta.get("interrupted"),
        "problems": data.problems,  # rows of DATA left out, each with its reason
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": __version__,
    }
    _write_json(out / "scores.json", result)
    return result


def cost_of(pricing: str, images_per_s: float | None, accuracy: float, changes: dict) -> dict:
    """Cost per 1,000 images and per 1,000 correct answers, from the cost calculator: the cloud
    API's price per call, or self-hosting at this run's measured images/s (its other inputs, such
    as the server price, are the calculator's defaults unless `changes` set them)."""
    if pricing == "api":
        result = compare(**changes)
        per_1000 = result.api["per_1000_images"]
    else:
        measured = {"images_per_second_per_gpu": images_per_s} if images_per_s else {}
        result = compare(**{**changes, **measured})
        per_1000 = result.self_hosted["per_1000_images"]
    return {
        "pricing": pricing,
        "currency": result.inputs["currency"],
        "per_1000_images": per_1000,
        "per_1000_correct": per_1000 / accuracy if accuracy > 0 else None,
        "inputs": result.inputs,
    }


def _start(out: Path, engine, task: Task, data: Labelled, pricing: str | None) -> dict:
    task_hash = hashlib.sha256(json.dumps([task.prompt, task.schema], sort_keys=True).encode()).hexdigest()
    fresh = {
        "name": out.name,
        "task": task.name,
        "task_hash": task_hash,
        "model": engine.info.to_dict(),
        "data": str(data.path),
        "data_hash": data.digest,
        "pricing": pricing or ("api" if engine.info.device == "remote" else "self-hosted"),
        "done": 0,
        "seconds": 0.0,
    }
    path = out / "run.json"
    if not path.exists():
        return fresh
    meta = json.loads(path.read_text())
    before = {**meta, "model": (meta.get("model") or {}).get("model_id")}
    now = {**fresh, "model": engine.info.model_id}
    for key, what in (("data_hash", "data"), ("task_hash", "task"), ("model", "model")):
        if before.get(key) != now[key]:
            raise InvalidRequestError(
                f"{out} holds a run of another {what}; resume it with the same {what}, or give a new --out.",
                param="out",
            )
    return {**fresh, "done": meta.get("done", 0), "seconds": meta.get("seconds", 0.0)}


def _latest(path: Path, field: str) -> dict:
    """source path -> its last record's `field` (an answer, or an error message)."""
    found = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line: the job cuts it off when it resumes
            found[record.get("source")] = record.get(field)
    return found


def _write_json(path: Path, value: dict) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
    staging.replace(path)
