"""Labelled data: a CSV or JSONL of `image, expected` rows, each image path checked, and one hash
over the labels and the image bytes, so a report says exactly which data produced it.

`expected` is a label (a string: "block") or a JSON object of expected fields
(`{"total_amount": 1280.0, ...}`); in a CSV an object is written as JSON text. Relative image
paths are read from the data file's folder.

A bad row (a missing image, no label, malformed JSON, the same image twice, a label the task
cannot answer) never stops the others: it is left out and named in `problems`, each with its row
and what to change, and the caller shows them all. Only a file with no usable row is an error.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError

MAX_ROWS = 100_000


@dataclass(frozen=True)
class Item:
    row: int  # 1-based, as a person counts the data rows
    image: Path  # resolved
    expected: Any  # a label or a dict of fields


@dataclass(frozen=True)
class Labelled:
    path: Path
    items: list[Item]
    digest: str  # sha256 over the rows and every image's bytes
    problems: list[str] = field(default_factory=list)  # rows left out, each with the reason

    @property
    def kind(self) -> str:
        """classification (labels) or extraction (objects of fields; detection when they are the
        detect task's objects with boxes, which the runner tells apart)."""
        return "extraction" if isinstance(self.items[0].expected, dict) else "classification"


def load_labelled(path: str | Path, labels: list[str] | None = None) -> Labelled:
    """Read DATA; `labels` are the answers the task can give (a label outside them is a bad row)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"No such data file: {path}.", param="data")
    rows = _rows(path)
    if not rows:
        raise InvalidRequestError(
            f"{path} has no rows: it needs `image` and `expected` on each.", param="data"
        )
    if len(rows) > MAX_ROWS:
        raise InvalidRequestError(f"{path} has {len(rows):,} rows; at most {MAX_ROWS:,}.", param="data")
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[Path, int] = {}
    digest = hashlib.sha256()
    for number, row in enumerate(rows, 1):
        try:
            item = _item(path, number, row)
        except InvalidRequestError as exc:
            problems.append(exc.message)
            continue
        if item.image in seen:
            problems.append(
                f"row {number}: the same image as row {seen[item.image]}; keep one row per image."
            )
            continue
        if items and isinstance(item.expected, dict) != isinstance(items[0].expected, dict):
            problems.append(f"row {number}: mixes labels and objects; use one kind of `expected` throughout.")
            continue
        if labels and isinstance(item.expected, str) and item.expected not in labels:
            problems.append(
                f"row {number}: unknown label {item.expected!r}; the task answers {', '.join(labels)}."
            )
            continue
        seen[item.image] = number
        items.append(item)
        digest.update(json.dumps([str(row.get("image")), item.expected], sort_keys=True).encode())
        digest.update(hashlib.sha256(item.image.read_bytes()).digest())
    if not items:
        raise InvalidRequestError(f"{path} has no usable row: " + " ".join(problems[:5]), param="data")
    return Labelled(path, items, digest.hexdigest(), problems)


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"image", "expected"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidRequestError(
                f"{path} needs the columns image and expected (missing: {', '.join(sorted(missing))}).",
                param="data",
            )
        return list(reader)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise InvalidRequestError(f"{path}: give a .csv or .jsonl file of image, expected.", param="data")
    rows: list[dict] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row = {"_problem": f"row {len(rows) + 1} (line {number}) is not JSON: {exc.msg}."}
        if not isinstance(row, dict):
            row = {"_problem": f"row {len(rows) + 1} (line {number}) must be an object."}
        rows.append(row)
    return rows


def _item(path: Path, number: int, row: dict) -> Item:
    where = f"row {number}"
    if "_problem" in row:
        raise InvalidRequestError(row["_problem"], param="data")
    image, expected = row.get("image"), row.get("expected")
    if not isinstance(image, str) or not image.strip():
        raise InvalidRequestError(f"{where} has no image path.", param="data")
    if expected is None or (isinstance(expected, str) and not expected.strip()):
        raise InvalidRequestError(f"{where} has no expected answer.", param="data")
    if isinstance(expected, str) and expected.lstrip().startswith("{"):  # an object written in a CSV
        try:
            expected = json.loads(expected)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"{where}: expected is not valid JSON: {exc.msg}.", param="data"
            ) from None
    if not isinstance(expected, str | dict):
        raise InvalidRequestError(f"{where}: expected must be a label or a JSON object.", param="data")
    resolved = (path.parent / image.strip()).resolve()
    if not resolved.is_file():
        raise InvalidRequestError(
            f"{where}: no such image {image!r} (read from {path.parent}).", param="data"
        )
    return Item(number, resolved, expected.strip() if isinstance(expected, str) else expected)
