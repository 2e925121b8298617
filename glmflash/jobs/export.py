"""CSV exports of batch results: a flat table that a spreadsheet opens safely.

Cells that would start a formula are neutralised by OWASP's rule against CSV injection (CWE-1236):
a text cell (or column name) that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets
a leading single quote, so a spreadsheet shows it as text instead of running it. The model's
answers, file names and field names are all text someone else may have chosen. Numbers stay
numbers (a negative total is still -12.5).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def export_csv(jsonl: str | Path, csv_path: str | Path) -> int:
    """A flat table of the records: nested fields as dotted columns, lists as JSON, every text
    cell neutralised (see the module's docstring). Returns the number of rows."""
    rows = []
    for line in Path(jsonl).read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or "id" not in record or "source" not in record:
            continue  # not a record of ours
        row = {"id": record["id"], "source": record["source"]}
        result = record.get("result")
        row.update(_flatten(result) if isinstance(result, dict) else {})
        usage, timings = record.get("usage") or {}, record.get("timings") or {}
        row.update({"completion_tokens": usage.get("completion_tokens"), "total_s": timings.get("total_s")})
        rows.append({safe_cell(key): safe_cell(value) for key, value in row.items()})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def safe_cell(value):
    """`value` as a spreadsheet should see it: text that starts a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            flat.update(_flatten(item, name + "."))
        elif isinstance(item, list):
            flat[name] = json.dumps(item, ensure_ascii=False)
        else:
            flat[name] = item
    return flat
