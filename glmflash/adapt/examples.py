"""Training data from what a team already has: a batch or eval run's results, optionally
corrected, become chat-format JSONL for fine-tuning, split into train and validation.

Each line is `{"id", "messages": [user: image path + the task's prompt, assistant: the answer]}`;
the answer is the task's JSON (thinking off), exactly what the model should write after the
prompt. Corrections are a labels file in the evaluation's shape (`image, expected`): a label
(classification) replaces the answer's label field, an object replaces the whole answer. Rows
without an answer, with a missing image, with an answer the task's schema refuses, or that cannot
be read (not UTF-8, nested too deep, a source that is no usable path) are left out and counted;
the files are written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import InvalidRequestError, MissingDependencyError
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
    answers, skipped, unreadable = _answers(Path(results))
    corrected = 0
    if corrections is not None:
        corrected = _correct(answers, Path(corrections), task)
    rows = []
    refused = {"no answer": skipped, "missing image": 0, "not the task's shape": 0, "unreadable": unreadable}
    valid = _validator(task.schema) if task.schema is not None else None
    for source, answer in sorted(answers.items()):
        reason = _refusal(source, answer, valid)
        if reason:
            refused[reason] += 1
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
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            user, assistant = row["messages"]
            image = next(part["image"] for part in user["content"] if part["type"] == "image")
            rows.append({"id": row.get("id", str(number)), "image": image,
                         "prompt": next(p["text"] for p in user["content"] if p["type"] == "text"),
                         "answer": assistant["content"]})  # fmt: skip
        except (ValueError, KeyError, TypeError, StopIteration, RecursionError):  # UnicodeDecodeError too
            raise InvalidRequestError(
                f"{path} line {number} is not a training row (messages: a user turn with an image and "
                "text, then the assistant's answer).",
                param="data",
            ) from None
    return rows


def _answers(results: Path) -> tuple[dict[str, object], int, int]:
    """source -> parsed answer (None when the run had none) from a results JSONL, the lines left
    out for having no answer, and those that cannot be read (each line on its own)."""
    if not results.is_file():
        raise InvalidRequestError(f"No such results file: {results}.", param="results")
    answers: dict[str, object] = {}
    skipped = unreadable = 0
    with results.open("rb") as lines:
        for raw in lines:
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, RecursionError):  # not UTF-8; nested deeper than the parser goes
                unreadable += 1
                continue
            except ValueError:
                skipped += 1  # a torn last line of a killed run
                continue
            if not isinstance(record, dict) or "source" not in record or record.get("page"):
                skipped += 1  # PDF pages: their image is not a file of its own
                continue
            source = _source(record["source"])
            if source is None:
                unreadable += 1
                continue
            answers[source] = record.get("result")
    return answers, skipped, unreadable


def _source(value) -> str | None:
    """The absolute path a results line names, or None for one no file can have."""
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    try:
        return str(Path(value).resolve())
    except (OSError, ValueError, RuntimeError):  # too long, a symlink loop
        return None


def _refusal(source: str, answer, valid) -> str | None:
    """Why a row is left out (a key of the manifest's left_out), or None to keep it."""
    if answer is None:
        return "no answer"
    try:
        if not Path(source).is_file():
            return "missing image"
    except (OSError, ValueError):  # e.g. a name longer than the file system takes
        return "missing image"
    try:
        if valid is not None and not valid(answer):
            return "not the task's shape"
    except RecursionError:  # nested deeper than the validator goes
        return "unreadable"
    return None


def _correct(answers: dict[str, object], corrections: Path, task: Task) -> int:
    from ..evaluate.data import load_labelled
    from ..evaluate.score import label_fields

    labelled = load_labelled(corrections, anywhere=True)  # the person's own files: batch results' sources
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


def _validator(schema: dict):
    """answer -> whether `schema` takes it; the schema is checked once, not per row. jsonschema is
    imported here: the QLoRA step imports this module on a machine without it."""
    try:
        import jsonschema
    except ImportError:
        raise MissingDependencyError(
            "training-data checks answers against the task's schema: pip install 'jsonschema>=4.20'."
        ) from None
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema).is_valid


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

    shares = [
        int(hashlib.sha256(f"{SPLIT_SEED}:{row['id']}".encode()).hexdigest()[:8], 16) / 2**32 for row in rows
    ]
    chosen = {i for i, share in enumerate(shares) if share < val_fraction}
    if not chosen and val_fraction > 0 and len(rows) > 1:
        chosen = {min(range(len(rows)), key=shares.__getitem__)}
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, "utf-8")
    os.replace(temporary, path)


def _counts(refused: dict) -> str:
    return ", ".join(f"{n} {why}" for why, n in refused.items() if n) or "nothing in it"
