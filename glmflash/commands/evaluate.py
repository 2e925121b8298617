"""`python -m glmflash eval`: a task over labelled images, scored, with a report; or runs compared.

python -m glmflash eval labels.csv --task moderation --out runs/bf16
python -m glmflash eval labels.csv --task moderation --out runs/cloud --backend https://api.example.com/v1
python -m glmflash eval --compare runs/bf16 runs/cloud --report compare.html
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from ..cost import CostInputs
from ..errors import InvalidRequestError
from ..jobs.tasks import DEFAULT_FIND, DEFAULT_LANGUAGE, PRESETS, load_task


def add_parser(commands, model_flags) -> None:
    parser = commands.add_parser(
        "eval",
        help="score a task on your labelled images (accuracy, errors, cost per correct answer)",
        description="Run a task over DATA (a CSV or JSONL of image, expected) as a resumable batch job, "
        "score it against the labels and write OUT/scores.json, OUT/items.jsonl and OUT/report.html. "
        "With --compare, put finished runs side by side.",
    )
    model_flags(parser)
    parser.add_argument(
        "data", nargs="?", help="CSV or JSONL with columns image, expected (images inside its folder)"
    )
    parser.add_argument("--task", help=f"{' or '.join(PRESETS)}, or a task JSON file")
    parser.add_argument("--out", help="the run's folder (rerun to resume)")
    parser.add_argument("--backend", help="an OpenAI-compatible /v1 URL to evaluate instead of a local model")
    parser.add_argument("--api-key", help="its key (default: GLMFLASH_BACKEND_API_KEY)")
    parser.add_argument("--label-field", help="the answer field compared with plain labels (the task's enum)")
    parser.add_argument("--language", default=DEFAULT_LANGUAGE, help="language of explanations (English)")
    parser.add_argument("--find", default=DEFAULT_FIND, help=f"what --task detect looks for ({DEFAULT_FIND})")
    parser.add_argument("--concurrency", type=int, help="images in flight (default GLMFLASH_MAX_BATCH_SIZE)")
    parser.add_argument(
        "--pricing",
        choices=("self-hosted", "api"),
        help="how to cost it (api for --backend, else self-hosted)",
    )
    parser.add_argument(
        "--cost", action="append", default=[], metavar="NAME=VALUE",
        help="a cost-calculator input, e.g. api_price_per_call=0.012 or server_price=30000 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN", help="finished run folders to put side by side"
    )
    parser.add_argument("--report", help="where --compare writes its HTML (default compare.html)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def cost_inputs(pairs: list[str]) -> dict:
    known = {f.name for f in fields(CostInputs)}
    values: dict = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise InvalidRequestError(
                f"--cost {pair!r}: give NAME=VALUE with NAME one of {', '.join(sorted(known))}.", param="cost"
            )
        if name == "currency":
            values[name] = raw.strip()
            continue
        try:
            values[name] = float(raw)
        except ValueError:
            raise InvalidRequestError(f"--cost {pair!r}: {raw!r} is not a number.", param="cost") from None
    return values


def run(args, load_engine) -> int:
    """Images are named relative to DATA's folder and must lie inside it, as on the page: a labels
    file may come from someone else, and its report is shared."""
    from ..config import Settings
    from ..evaluate.compare import compare_runs, format_table, load_run, row
    from ..evaluate.report import write_report
    from ..inputs.images import ImagePolicy

    changes = cost_inputs(args.cost)
    limits = Settings.from_env().limits
    policy = ImagePolicy.from_limits(limits)
    if args.compare:
        runs = [load_run(folder) for folder in args.compare]
        result = compare_runs(runs)
        print(format_table(result["table"]))
        report = write_report(runs, args.report or "compare.html", policy)
        print(
            f"{len(result['disagreements'])} images answered differently; report: {report}", file=sys.stderr
        )
        return 0
    if not (args.data and args.task and args.out):
        raise InvalidRequestError("eval needs DATA, --task and --out (or --compare RUN RUN ...).")
    if args.concurrency is not None and args.concurrency < 1:
        raise InvalidRequestError("--concurrency must be 1 or more.")
    from ..evaluate.data import load_labelled
    from ..evaluate.run import run_eval
    from ..evaluate.score import label_choices, label_fields
    from .batch import Progress

    task = load_task(args.task, language=args.language, find=args.find)
    field = args.label_field or label_fields(task.schema)[0]
    choices = label_choices(task.schema, field)
    # checked before a model loads
    data = load_labelled(args.data, labels=choices, max_image_bytes=limits.max_image_bytes)
    for problem in data.problems:
        print(f"left out: {problem}", file=sys.stderr)
    engine = load_engine(args.backend, args.api_key)  # no key given: GLMFLASH_BACKEND_API_KEY's
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = None if args.no_progress else Progress()
    try:
        result = run_eval(
            engine, task, data, args.out,
            concurrency=args.concurrency or max(1, engine.settings.batching.max_batch_size),
            pricing=args.pricing, cost_inputs=changes, stop=stop, progress=progress,
            label_field=args.label_field,
        )  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.close()
    if progress:
        progress.finish()
    run = load_run(args.out)
    report = write_report([run], Path(args.out) / "report.html", policy)
    print(format_table([row(run)]))
    state = "complete" if result["complete"] else "interrupted: rerun the same command to resume"
    print(f"{state}; report: {report}", file=sys.stderr)
    return 130 if stop.is_set() else 0
