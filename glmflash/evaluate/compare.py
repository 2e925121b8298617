"""Runs side by side: the same labelled data through two or more configurations (precisions,
prompts, an adapter, the local model against any OpenAI-compatible endpoint), in one table of
accuracy, images/s and cost per 1,000 images and per 1,000 correct answers, with the images on
which their answers disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidRequestError
from .score import same


def load_run(folder: str | Path) -> dict:
    """A scored run folder: scores.json plus its items."""
    folder = Path(folder)
    try:
        scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
        lines = (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, json.JSONDecodeError):
        raise InvalidRequestError(
            f"{folder} is not a scored run: run `python -m glmflash eval DATA --out {folder}` first.",
            param="compare",
        ) from None
    return {**scores, "folder": str(folder), "items": [json.loads(line) for line in lines]}


def compare_runs(runs: list[dict]) -> dict:
    """The table and the disagreements; the runs must cover the same data."""
    if len(runs) < 2:
        raise InvalidRequestError("--compare needs two or more run folders.", param="compare")
    hashes = {run["config"]["data_hash"] for run in runs}
    if len(hashes) > 1:
        names = ", ".join(f"{run['folder']} ({run['config']['data_hash'][:12]})" for run in runs)
        raise InvalidRequestError(f"The runs are over different data: {names}.", param="compare")
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
        r["run"], r["model"], r["precision"], f"{r['accuracy']:.1%}", r["answered"],
        "-" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}",
        f"{r['cost_per_1000_images']:.2f} {r['currency']} ({r['pricing']})",
        "-" if r["cost_per_1000_correct"] is None else f"{r['cost_per_1000_correct']:.2f} {r['currency']}",
    ] for r in rows]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(head, *body, strict=True)]
    lines = ("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body])
    return "\n".join(line.rstrip() for line in lines)
