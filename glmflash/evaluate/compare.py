"""Runs side by side: the same labelled data through two or more configurations (precisions,
prompts, an adapter, the local model against any OpenAI-compatible endpoint), in one table of
accuracy, images/s and cost per 1,000 images and per 1,000 correct answers, with the images on
which their answers disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .score import same


def load_run(folder: str | Path) -> dict:
    """A scored run folder: scores.json plus its items, checked for the shape the table and the
    report read (a folder from elsewhere is data: its values are shown, escaped, never trusted)."""
    folder = Path(folder)
    not_a_run = InvalidRequestError(
        f"{folder} is not a scored run: run `python -m glmflash eval DATA --out {folder}` first.",
        param="compare",
    )
    try:
        scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
        lines = (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise not_a_run from None
    problem = (
        _shape(scores, RUN, "scores.json")
        or _kind(scores)
        or next(
            (p for n, item in enumerate(items, 1) if (p := _shape(item, ITEM, f"items.jsonl line {n}"))), None
        )
    )
    if problem:
        raise InvalidRequestError(f"{folder} is not a scored run this version can read: {problem}.",
                                  param="compare")  # fmt: skip
    return {**scores, "folder": str(folder), "items": items}


DETECTION_METRICS = ("iou_threshold", "precision", "recall", "f1", "mean_iou", "true_positives",
                     "false_positives", "false_negatives")  # fmt: skip
# What the table and the report read: a dict's keys, each with the type its value must have
# (object: any value). Numbers are not checked: they are formatted whatever they hold.
Shape = dict[str, Any]
RUN: Shape = {
    "name": str,
    "config": {"data": str, "data_hash": str, "task": object,
               "model": {"model_id": object, "precision": object}},
    "scores": {"kind": str, "accuracy": object, "n": object, "answered": object},
    "cost": {"pricing": object, "currency": object, "per_1000_images": object, "per_1000_correct": object,
             "inputs": object},
    "throughput": {"images_per_s": object},
}  # fmt: skip
KINDS: dict[str, Shape] = {
    "classification": {"per_class": dict, "classes": list, "confusion": list},
    "extraction": {"field_accuracy": object, "invented_total": object, "per_field": dict, "invented": dict},
    "detection": dict.fromkeys(DETECTION_METRICS, object),
}
ITEM: Shape = {"row": object, "image": str, "expected": object, "predicted": object, "correct": object,
        "wrong_fields": list}  # fmt: skip


def _kind(scores: dict) -> str | None:
    kind = scores["scores"]["kind"]
    if kind not in KINDS:
        return f"scores.json: its kind {kind!r} is not one of {', '.join(KINDS)}"
    return _shape(scores["scores"], KINDS[kind], "scores.json: scores")


def _shape(value, shape: Shape, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} is not an object"
    for key, kind in shape.items():
        if key not in value:
            return f"{where} has no {key!r}"
        if isinstance(kind, dict):
            problem = _shape(value[key], kind, f"{where}: {key}")
            if problem:
                return problem
        elif not isinstance(value[key], kind):
            return f"{where}: {key!r} is not a {kind.__name__}"
    return None


def compare_runs(runs: list[dict]) -> dict:
    """The table and the disagreements; the runs must cover the same data."""
    if len(runs) < 2:
        raise InvalidRequestError("--compare needs two or more run folders.", param="compare")
    hashes = {run["config"]["data_hash"] for run in runs}
    if len(hashes) > 1:
        names = ", ".join(f"{run['folder']} ({run['config']['data_hash'][:12]})" for run in runs)
        raise InvalidRequestError(f"The runs are over different data: {names}.", param="compare")
    if len({len(run["items"]) for run in runs}) > 1:
        counts = ", ".join(f"{run['folder']} ({len(run['items'])})" for run in runs)
        raise InvalidRequestError(f"The runs hold different numbers of images: {counts}.", param="compare")
    table = [row(run) for run in runs]
    disagreements = []
    for items in zip(*(run["items"] for run in runs), strict=True):
        answers = [item["predicted"] for item in items]
        if any(not same(answers[0], other) for other in answers[1:]):
            disagreements.append({
                "row": items[0]["row"],
                "image": items[0]["image"],
                "expected": items[0]["expected"],
                "answers": {run["name"]: item["predicted"] for run, item in zip(runs, items, strict=True)},
                "correct": {run["name"]: item["correct"] for run, item in zip(runs, items, strict=True)},
            })  # fmt: skip
    return {"table": table, "disagreements": disagreements, "data_hash": hashes.pop()}


def row(run: dict) -> dict:
    scores, cost = run["scores"], run["cost"]
    return {
        "run": run["name"],
        "model": run["config"]["model"]["model_id"],
        "precision": run["config"]["model"]["precision"],
        "task": run["config"]["task"],
        "accuracy": scores["accuracy"],
        "field_accuracy": scores.get("field_accuracy"),
        "answered": f"{scores['answered']}/{scores['n']}",
        "images_per_s": run["throughput"]["images_per_s"],
        "pricing": cost["pricing"],
        "cost_per_1000_images": cost["per_1000_images"],
        "cost_per_1000_correct": cost["per_1000_correct"],
        "currency": cost["currency"],
    }


def format_table(rows: list[dict]) -> str:
    """The table as plain text for a terminal."""
    head = ["run", "model", "precision", "accuracy", "answered", "images/s", "per 1,000", "per 1,000 correct"]
    body = [[
        r["run"], r["model"], r["precision"], number(r["accuracy"], ".1%"), r["answered"],
        number(r["images_per_s"], ".2f"),
        f"{number(r['cost_per_1000_images'], '.2f')} {r['currency']} ({r['pricing']})",
        "-" if r["cost_per_1000_correct"] is None
        else f"{number(r['cost_per_1000_correct'], '.2f')} {r['currency']}",
    ] for r in rows]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(head, *body, strict=True)]
    lines = ("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body])
    return "\n".join(line.rstrip() for line in lines)


def number(value, spec: str) -> str:
    """A number in `spec`'s format; anything else (a run folder from elsewhere may hold anything)
    as its text, for the caller to escape where it goes into HTML; None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)
