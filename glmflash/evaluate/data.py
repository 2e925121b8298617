"""Labelled data: a CSV or JSONL of `image, expected` rows, each image path checked, and one hash
over the labels and the image bytes, so a report says exactly which data produced it.

`expected` is a label (a string: "block") or a JSON object of expected fields
(`{"total_amount": 1280.0, ...}`); in a CSV an object is written as JSON text. Image paths are
relative to the data file's folder and must lie inside it: an absolute path, `..` or a link that
leads out of it is refused with one message, whether or not such a file exists (a labels file
from someone else cannot read, or learn of, any other file).

A bad row (a missing image, an image outside the folder or over the size limit, no label,
malformed JSON, the same image twice, a label the task cannot answer, and whatever rows.py refuses
while reading) never stops the others: it is left out and named in `problems`, each with its row
and what to change, and the caller shows them all. Only a file with no usable row is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RequestLimits
from ..errors import InvalidRequestError
from .rows import RowProblem, parse_object, read_rows

MAX_NAME = 1_024  # characters in an image's path
CHUNK = 1 << 20


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


def load_labelled(
    path: str | Path,
    labels: list[str] | None = None,
    *,
    max_image_bytes: int | None = None,
    anywhere: bool = False,
) -> Labelled:
    """Read DATA; `labels` are the answers the task can give (a label outside them is a bad row).
    An image over `max_image_bytes` (the engine's limit; RequestLimits' default) is a bad row.
    `anywhere`: image paths may name any file the caller can read (a person's own command over
    their own files, such as training-data's corrections, which name batch results' sources);
    never for a labels file that came from someone else."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"No such data file: {path}.", param="data")
    cap = RequestLimits().max_image_bytes if max_image_bytes is None else max_image_bytes
    root = path.parent.resolve()
    try:
        rows = list(read_rows(path))  # at most MAX_ROWS: read_rows refuses the file at the cap
    except OSError as exc:
        raise InvalidRequestError(f"Cannot read {path}: {exc.strerror or exc}.", param="data") from None
    if not rows:
        raise InvalidRequestError(
            f"{path} has no rows: it needs `image` and `expected` on each.", param="data"
        )
    chosen: list[tuple[Item, str]] = []
    problems: list[tuple[int, str]] = []
    seen: dict[Path, int] = {}
    for number, row in rows:
        if isinstance(row, RowProblem):
            problems.append((number, str(row)))
            continue
        try:
            item = _item(root, number, row, anywhere)
        except InvalidRequestError as exc:
            problems.append((number, exc.message))
            continue
        if item.image in seen:
            problems.append(
                (number, f"row {number}: the same image as row {seen[item.image]}; keep one row per image.")
            )
            continue
        if chosen and isinstance(item.expected, dict) != isinstance(chosen[0][0].expected, dict):
            problems.append(
                (number, f"row {number}: mixes labels and objects; use one kind of `expected` throughout.")
            )
            continue
        if labels and isinstance(item.expected, str) and item.expected not in labels:
            problems.append(
                (
                    number,
                    f"row {number}: unknown label {item.expected!r}; the task answers {', '.join(labels)}.",
                )
            )
            continue
        seen[item.image] = number
        chosen.append((item, str(row.get("image"))))
    del rows
    items: list[Item] = []
    digest = hashlib.sha256()
    for item, named in chosen:
        try:
            image_digest = _image_digest(item, named, cap)
        except InvalidRequestError as exc:
            problems.append((item.row, exc.message))
            continue
        items.append(item)
        digest.update(json.dumps([named, item.expected], sort_keys=True).encode())
        digest.update(image_digest)
    problems.sort(key=lambda problem: problem[0])
    messages = [message for _, message in problems]
    if not items:
        raise InvalidRequestError(f"{path} has no usable row: " + " ".join(messages[:5]), param="data")
    return Labelled(path, items, digest.hexdigest(), messages)


def _item(root: Path, number: int, row: dict, anywhere: bool) -> Item:
    where = f"row {number}"
    image, expected = row.get("image"), row.get("expected")
    if not isinstance(image, str) or not image.strip():
        raise InvalidRequestError(f"{where} has no image path.", param="data")
    if expected is None or (isinstance(expected, str) and not expected.strip()):
        raise InvalidRequestError(f"{where} has no expected answer.", param="data")
    if isinstance(expected, str) and expected.lstrip().startswith("{"):  # an object written in a CSV
        try:
            expected = parse_object(expected)
        except ValueError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param="data") from None
    if not isinstance(expected, str | dict):
        raise InvalidRequestError(f"{where}: expected must be a label or a JSON object.", param="data")
    resolved = _resolve(root, image.strip(), where, anywhere)
    return Item(number, resolved, expected.strip() if isinstance(expected, str) else expected)


def _resolve(root: Path, name: str, where: str, anywhere: bool) -> Path:
    """The image's resolved path inside `root` (anywhere: wherever it leads)."""
    if len(name) > MAX_NAME:
        raise InvalidRequestError(
            f"{where}: the image's path is {len(name):,} characters long; at most {MAX_NAME:,}.", param="data"
        )
    if "\0" in name:
        raise InvalidRequestError(f"{where}: the image's path holds a NUL byte.", param="data")
    outside = InvalidRequestError(
        f"{where}: the image {_shown(name)} is not inside the labels file's folder; name each image "
        "by a path relative to that folder, within it (no absolute path, .. or link that leads out of it).",
        param="data",
    )  # the same words whether or not such a file exists
    candidate = root / name  # an absolute path stays itself: allowed when it lies inside
    if not anywhere and not _within(Path(os.path.normpath(candidate)), root):
        raise outside  # told by the text alone: nothing outside is looked at
    try:
        resolved = candidate.resolve()
        if not anywhere and not _within(resolved, root):
            raise outside
        found = resolved.is_file()
    except OSError as exc:
        raise InvalidRequestError(
            f"{where}: cannot read the image {_shown(name)}: {exc.strerror or exc}.", param="data"
        ) from None
    if not found:
        raise InvalidRequestError(f"{where}: no such image {_shown(name)} (read from {root}).", param="data")
    return resolved


def _within(path: Path, root: Path) -> bool:
    return path.is_relative_to(root)


def _image_digest(item: Item, named: str, cap: int) -> bytes:
    """sha256 of the image's bytes, read in chunks and refused past `cap` bytes."""
    where = f"row {item.row}"
    too_big = InvalidRequestError(
        f"{where}: the image {_shown(named)} is over the {cap:,}-byte limit (GLMFLASH_MAX_IMAGE_BYTES).",
        param="data",
    )
    digest = hashlib.sha256()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(item.image, flags)  # a link put in its place since the check is not followed
    except OSError as exc:
        raise InvalidRequestError(
            f"{where}: cannot read the image {_shown(named)}: {exc.strerror or exc}.", param="data"
        ) from None
    with open(fd, "rb", closefd=True) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequestError(f"{where}: {_shown(named)} is not a regular file.", param="data")
        if info.st_size > cap:
            raise too_big
        total = 0
        while chunk := f.read(CHUNK):
            total += len(chunk)
            if total > cap:  # it grew since it was looked at
                raise too_big
            digest.update(chunk)
    return digest.digest()


def _shown(name: str, limit: int = 120) -> str:
    return repr(name if len(name) <= limit else name[:limit] + "…")
