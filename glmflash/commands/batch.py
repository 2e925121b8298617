"""`python -m glmflash batch`: the command around jobs.runner.run_job (flags, progress line, signals).

python -m glmflash batch photos/ --task moderation --out results.jsonl
python -m glmflash batch 'scans/**/*.jpg' --prompt "Read the meter" --schema meter.json --out m.jsonl
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from ..jobs.export import export_csv
from ..jobs.inputs import expand_inputs
from ..jobs.runner import Summary, default_errors_path, run_job
from ..jobs.tasks import DEFAULT_FIND, DEFAULT_LANGUAGE, PRESETS, custom_task, load_task


def add_parser(commands, model_flags) -> None:
    batch = commands.add_parser(
        "batch",
        help="a task over many images into JSON lines (resumable)",
        description="Run a task over folders, globs or files of images. Results are appended to --out "
        "(JSON lines); rerunning skips what is done. Refused images go to OUT.errors.jsonl.",
    )
    model_flags(batch)
    batch.add_argument("inputs", nargs="*", help="folders (recursive), globs ('**/*.jpg') or image files")
    batch.add_argument(
        "--files-from",
        help="a file listing image paths, one per line, relative to its folder and inside it",
    )
    what = batch.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help=f"{' or '.join(PRESETS)}, or a task JSON file (see glmflash/data/tasks)")
    what.add_argument("--prompt", help="your own instruction; the answer is JSON (shaped by --schema)")
    batch.add_argument("--schema", help="a JSON Schema file for --prompt's answers")
    batch.add_argument("--language", default=DEFAULT_LANGUAGE, help="language of explanations (English)")
    batch.add_argument("--find", default=DEFAULT_FIND, help=f"what --task detect looks for ({DEFAULT_FIND})")
    batch.add_argument("--out", required=True, help="results file (JSON lines, appended to)")
    batch.add_argument("--errors", help="refused / failed inputs (default: OUT.errors.jsonl)")
    batch.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="csv: also write OUT.csv")
    batch.add_argument("--max-new-tokens", type=int, help="answer budget (the task's own by default)")
    batch.add_argument(
        "--concurrency",
        type=int,
        help="images in flight; they share batches (default GLMFLASH_MAX_BATCH_SIZE)",
    )
    batch.add_argument("--retries", type=int, default=3, help="tries again on transient failures (3)")
    batch.add_argument(
        "--per-page", action="store_true", help="one record per PDF page (default: one per document)"
    )
    batch.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def build_task(args):
    if args.task:
        if args.schema:
            from ..errors import InvalidRequestError

            raise InvalidRequestError("--schema goes with --prompt; a task file carries its own schema.")
        task = load_task(args.task, language=args.language, find=args.find)
    else:
        task = custom_task(args.prompt, args.schema)
    if args.max_new_tokens:
        from dataclasses import replace

        task = replace(task, max_new_tokens=args.max_new_tokens)
    return task


def run(args, load_engine) -> int:
    """Check everything cheap first, then load the model and run; exit 130 when interrupted."""
    from ..errors import InvalidRequestError

    task = build_task(args)
    left_out: list[str] = []
    paths = expand_inputs(args.inputs, args.files_from, left_out)
    for problem in left_out:
        print(f"left out: {problem}", file=sys.stderr)
    if not paths:
        raise InvalidRequestError("No input files: give folders, globs or files (or --files-from).")
    if args.concurrency is not None and args.concurrency < 1:
        raise InvalidRequestError("--concurrency must be 1 or more.")
    engine = load_engine()
    concurrency = args.concurrency or max(1, engine.settings.batching.max_batch_size)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = None if args.no_progress else Progress()
    try:
        summary = run_job(
            engine,
            task,
            paths,
            args.out,
            errors=args.errors,
            concurrency=concurrency,
            retries=args.retries,
            stop=stop,
            progress=progress,
            per_page=args.per_page,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if progress:
        progress.finish()
    print(summary.line(), file=sys.stderr)
    print(f"results: {args.out}  errors: {args.errors or default_errors_path(args.out)}", file=sys.stderr)
    if args.format == "csv":
        csv_path = Path(args.out).with_suffix(".csv")
        print(f"csv: {csv_path} ({export_csv(args.out, csv_path)} rows)", file=sys.stderr)
    return 130 if summary.interrupted else 0


class Progress:
    """A tqdm bar over the inputs (tqdm.auto: a widget in a notebook), with done, skipped and
    failed counts; on a terminal it redraws itself, in a log it writes a line every 10 s."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.bar = stream, None

    def __call__(self, s: Summary) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            tty = self.stream.isatty()
            self.bar = tqdm(total=s.total, unit="img", file=self.stream, dynamic_ncols=tty,
                            mininterval=0.2 if tty else 10.0, maxinterval=10.0 if tty else 60.0)  # fmt: skip
        self.bar.set_postfix(done=s.done, skipped=s.skipped + s.duplicates, failed=s.failed, refresh=False)
        self.bar.update(s.done + s.skipped + s.duplicates + s.failed - self.bar.n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
