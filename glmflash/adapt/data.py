"""Training data from what a team already has: a batch or eval run's results, optionally
corrected, become chat-format JSONL for fine-tuning, split into train and validation.

Each line is `{"id", "messages": [user: image path + the task's prompt, assistant: the answer]}`;
the answer is the task's JSON (thinking off), exactly what the model should write after the
prompt. Corrections are a labels file in the evaluation's shape (`image, expected`): a label
(classification) replaces the answer's label field, an object replaces the whole answer. Rows
without an answer, with a missing image, or with an answer the task's schema refuses are left
out and counted; the files are written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jsonschema

from ..errors import InvalidRequestError
from ..jobs.tasks import Task

SPLIT_SEED = "glmflash-split"


def export_training(
    results: str | Path,
    task: Task,
    out: str | Path,
    *,
    corrections: str | Path | None = None,
    val_fraction: float = 0.2,
) -> dict:
    """Write OUT/train.jsonl, OUT/val.jsonl and OUT/manifest.json; return the manifest."""
    if not 0 <= val_fraction < 1:
        raise InvalidRequestError("--val must be at least 0 and below 1.", param="val")
    answers, skipped = _answers(Path(results))
    corrected = 0
    if corrections is not None:
        corrected = _correct(answers, Path(corrections), task)
    rows, refused = [], {"no answer": skipped, "missing image": 0, "not the task's shape": 0}
    for source, answer in sorted(answers.items()):
        if answer is None:
            refused["no answer"] += 1
        elif not Path(source).is_file():
            refused["missing image"] += 1
        elif task.schema is not None and not _valid(answer, task.schema):
            refused["not the task's shape"] += 1
        else:
            rows.append(_line(source, task, answer))
    if not rows:
        raise InvalidRequestError(f"{results} gave no usable rows ({_counts(refused)}).", param="results")
    train, val = _split(rows, val_fraction)
    manifest = {"task": task.name, "prompt": task.prompt, "train": len(train), "val": len(val),
                "corrected": corrected, "left_out": refused, "results": str(results)}  # fmt: skip
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train.jsonl", train), ("val.jsonl", val)):
        _write(folder / name, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    _write(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def read_split(path: str | Path) -> list[dict]:
    """A train.jsonl or val.jsonl written by export_training."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            user, assistant = row["messages"]
            image = next(part["image"] for part in user["content"] if part["type"] == "image")
            rows.append({"id": row.get("id", str(number)), "image": image,
                         "prompt": next(p["text"] for p in user["content"] if p["type"] == "text"),
                         "answer": assistant["content"]})  # fmt: skip
        except (ValueError, KeyError, TypeError, StopIteration):
            raise InvalidRequestError(
                f"{path} line {number} is not a training row (messages: a user turn with an image and "
                "text, then the assistant's answer).",
                param="data",
            ) from None
    return rows


def _answers(results: Path) -> tuple[dict[str, object], int]:
    """source -> parsed answer (None when the run had none) from a results JSONL."""
    if not results.is_file():
        raise InvalidRequestError(f"No such results file: {results}.", param="results")
    answers: dict[str, object] = {}
    skipped = 0
    for line in results.read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1  # a torn last line of a killed run
            continue
        if not isinstance(record, dict) or "source" not in record or record.get("page"):
            skipped += 1  # PDF pages: their image is not a file of its own
            continue
        answers[str(Path(record["source"]).resolve())] = record.get("result")
    return answers, skipped


def _correct(answers: dict[str, object], corrections: Path, task: Task) -> int:
    from ..evaluate.data import load_labelled
    from ..evaluate.score import label_fields

    labelled = load_labelled(corrections)
    label, _ = label_fields(task.schema) if task.schema else (None, None)
    changed = 0
    for item in labelled.items:
        source = str(item.image.resolve())
        if isinstance(item.expected, dict):
            answers[source] = item.expected
        elif label and isinstance(answers.get(source), dict):
            answers[source] = {**answers[source], label: item.expected}  # type: ignore[dict-item]
        else:
            continue
        changed += 1
    return changed


def _valid(answer, schema: dict) -> bool:
    try:
        jsonschema.validate(answer, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _line(source: str, task: Task, answer) -> dict:
    content = [{"type": "image", "image": source}, {"type": "text", "text": task.prompt}]
    return {
        "id": hashlib.sha256(source.encode()).hexdigest()[:16],
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
        ],
    }


def _split(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """A split by each row's id, so it stays the same when rows are added; at least one row in
    validation when there are two or more and a fraction was asked for."""

    def share(row):
        return int(hashlib.sha256(f"{SPLIT_SEED}:{row['id']}".encode()).hexdigest()[:8], 16) / 2**32

    val = [row for row in rows if share(row) < val_fraction]
    if not val and val_fraction > 0 and len(rows) > 1:
        val = [min(rows, key=share)]
    train = [row for row in rows if row not in val]
    return train, val


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, "utf-8")
    os.replace(temporary, path)


def _counts(refused: dict) -> str:
    return ", ".join(f"{n} {why}" for why, n in refused.items() if n) or "nothing in it"
