"""Reading a labels file (CSV or JSONL) row by row, with every limit enforced while it is read: the
file's size, the row count (refused at the cap, never read whole), a line's and a field's length,
NUL bytes, text that is not UTF-8 and JSON nested too deeply. A bad row becomes its message and the
others go on; only a file that cannot be read as rows at all is one error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidRequestError

MAX_ROWS = 100_000
MAX_BYTES = 128 * 1024 * 1024  # a labels file; 100k rows of ~1 KB fit many times over
MAX_FIELD = 128 * 1024  # characters in one CSV field (the csv module's own default limit)
MAX_LINE = 2 * MAX_FIELD  # bytes in one line; the rest of a longer line is skipped, not read
MAX_DEPTH = 32  # levels of nesting in an expected object
BOM = b"\xef\xbb\xbf"


class RowProblem(str):
    """A row that cannot be used, as the message that says why (the row number is in it)."""


Row = dict | RowProblem  # {"image": ..., "expected": ...} or why that row is left out


def read_rows(path: Path) -> Iterator[tuple[int, Row]]:
    """(row number, row) for each data row; raises InvalidRequestError for the whole file (its
    size, its header, more than MAX_ROWS rows: at the first row over the cap)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InvalidRequestError(
            f"{path.name} is {size / 1e6:,.0f} MB; a labels file may be at most {MAX_BYTES / 1e6:,.0f} MB.",
            param="data",
        )
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise InvalidRequestError(f"{path}: give a .csv or .jsonl file of image, expected.", param="data")
    with path.open("rb") as f:
        lines = Lines(f)
        rows = _csv_rows(path, lines) if suffix == ".csv" else _jsonl_rows(lines)
        for number, row in rows:
            if number > MAX_ROWS:
                raise InvalidRequestError(
                    f"{path.name} has more than {MAX_ROWS:,} rows; at most {MAX_ROWS:,} are read: "
                    "split it into several files.",
                    param="data",
                )
            yield number, row


class Lines:
    """A binary file's lines as text, each at most MAX_LINE bytes (the rest of a longer one is
    skipped and its number noted), bytes that are not UTF-8 kept as surrogates so that the row
    holding them can be refused on its own, and the whole read bounded by MAX_BYTES."""

    def __init__(self, f: BinaryIO):
        self.f, self.number, self.read, self.cut = f, 0, 0, set[int]()

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline(MAX_LINE + 1)
        if not raw:
            raise StopIteration
        self.number += 1
        if self.number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            self.cut.add(self.number)
            self._skip_rest()
            raw = b"\n"  # the row is refused by its number; what it said is not kept
        self.read += len(raw)
        if self.read > MAX_BYTES:  # the file grew while it was read
            raise InvalidRequestError(f"The labels file is over {MAX_BYTES / 1e6:,.0f} MB.", param="data")
        return raw.decode("utf-8", "surrogateescape")

    def _skip_rest(self) -> None:
        while True:
            rest = self.f.readline(MAX_LINE)
            self.read += len(rest)
            if not rest or rest.endswith(b"\n") or self.read > MAX_BYTES:
                return


def _csv_rows(path: Path, lines: Lines) -> Iterator[tuple[int, Row]]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None) or []
    except csv.Error:
        header = []
    if lines.cut or any(_not_text(name) for name in header):
        raise InvalidRequestError(f"{path.name}: the first line is not a readable header.", param="data")
    columns = [name.strip() for name in header]
    missing = {"image", "expected"} - set(columns)
    if missing:
        raise InvalidRequestError(
            f"{path} needs the columns image and expected (missing: {', '.join(sorted(missing))}).",
            param="data",
        )
    image_at, expected_at = columns.index("image"), columns.index("expected")
    number = 0
    while True:
        first = lines.number + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield number, RowProblem(f"row {number} ({_where(first, lines.number)}) {_csv_error(exc)}")
            continue
        cut = [n for n in range(first, lines.number + 1) if n in lines.cut]
        if not fields and not cut:
            continue  # a blank line
        number += 1
        where = f"row {number} ({_where(first, lines.number)})"
        if cut:
            yield number, RowProblem(f"{where} is longer than {MAX_LINE // 1024} KiB; it was not read.")
        elif any(len(value) > MAX_FIELD for value in fields):
            yield number, RowProblem(f"{where} has a field over {MAX_FIELD // 1024} KiB.")
        elif any(_not_text(value) for value in fields):
            yield number, RowProblem(f"{where} is not UTF-8 text: save the file as UTF-8.")
        elif any("\0" in value for value in fields):
            yield number, RowProblem(f"{where} holds a NUL byte.")
        else:
            yield number, {"image": _at(fields, image_at), "expected": _at(fields, expected_at)}


def _at(fields: list[str], index: int) -> str | None:
    return fields[index] if index < len(fields) else None  # a short row: that column is empty


def _where(first: int, last: int) -> str:
    return f"line {first}" if first >= last else f"lines {first}-{last}"


def _csv_error(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"has a field over {MAX_FIELD // 1024} KiB."
    return f"is not valid CSV: {exc}."


def _jsonl_rows(lines: Lines) -> Iterator[tuple[int, Row]]:
    number = 0
    for line in lines:
        if not line.strip() and lines.number not in lines.cut:
            continue
        number += 1
        where = f"row {number} (line {lines.number})"
        if lines.number in lines.cut:
            yield number, RowProblem(f"{where} is longer than {MAX_LINE // 1024} KiB; it was not read.")
            continue
        if _not_text(line):
            yield number, RowProblem(f"{where} is not UTF-8 text: save the file as UTF-8.")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, RowProblem(f"{where} is not JSON: {exc.msg}.")
            continue
        except RecursionError:
            yield number, RowProblem(f"{where} is nested too deeply (at most {MAX_DEPTH} levels).")
            continue
        if not isinstance(row, dict):
            yield number, RowProblem(f"{where} must be an object.")
            continue
        problem = check_value(row)
        yield number, RowProblem(f"{where} {problem}") if problem else row


def parse_object(text: str) -> object:
    """An expected object written as JSON text in a CSV cell; ValueError says why it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected is not valid JSON: {exc.msg}.") from None
    except RecursionError:
        raise ValueError(f"expected is nested too deeply (at most {MAX_DEPTH} levels).") from None
    problem = check_value(value)
    if problem:
        raise ValueError(f"expected {problem}")
    return value


def check_value(value: object) -> str | None:
    """What is wrong with a parsed value (nesting over MAX_DEPTH, a NUL in a string), or None."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"is nested too deeply (at most {MAX_DEPTH} levels)."
        if isinstance(item, str):
            if "\0" in item:
                return "holds a NUL byte."
        elif isinstance(item, dict):
            stack += [(key, depth + 1) for key in item]
            stack += [(child, depth + 1) for child in item.values()]
        elif isinstance(item, list):
            stack += [(child, depth + 1) for child in item]
    return None


def _not_text(value: str) -> bool:
    """True when decoding met bytes that are not UTF-8 (kept as lone surrogates)."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
