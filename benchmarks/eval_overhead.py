"""What evaluation adds to a plain batch job: the same task over the same images, timed as
`run_job` alone and as `run_eval` (the job, then scoring, items.jsonl, scores.json) plus the HTML
report, in alternating rounds of one run (medians; fresh output folders each round).

    .venv/bin/python benchmarks/eval_overhead.py                 # tiny model on this machine
    .venv/bin/python benchmarks/eval_overhead.py --images 48 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

import glmflash
from glmflash.evaluate.compare import load_run
from glmflash.evaluate.data import load_labelled
from glmflash.evaluate.report import write_report
from glmflash.evaluate.run import run_eval
from glmflash.jobs.runner import run_job
from glmflash.jobs.tasks import load_task


def labelled(folder: Path, count: int) -> Path:
    rows = []
    for i in range(count):
        name = f"img{i:03d}.png"
        Image.new("RGB", (64 + i % 9 * 8, 48 + i % 5 * 8), (i * 11 % 256, 90, 160)).save(folder / name)
        rows.append({"image": name, "expected": ("allow", "review", "block")[i % 3]})
    path = folder / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "expected"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    engine = glmflash.load(args.model, args.precision, args.device)
    task = load_task("moderation")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_path = labelled(root, args.images)
        paths = [item.image for item in load_labelled(data_path).items]
        run_job(engine, task, paths[:2], root / "warm.jsonl")  # first-call costs out of the way
        job_s, eval_s, score_s = [], [], []
        for i in range(args.rounds):
            started = time.perf_counter()
            run_job(engine, task, paths, root / f"job{i}.jsonl", concurrency=args.concurrency)
            job_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            data = load_labelled(data_path)  # reading and hashing the labelled set is part of it
            run_eval(engine, task, data, root / f"eval{i}", concurrency=args.concurrency)
            write_report([load_run(root / f"eval{i}")], root / f"eval{i}" / "report.html")
            eval_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            run_eval(engine, task, data, root / f"eval{i}")  # everything done: only scoring again
            write_report([load_run(root / f"eval{i}")], root / f"eval{i}" / "report.html")
            score_s.append(time.perf_counter() - started)
    job, ev, score = statistics.median(job_s), statistics.median(eval_s), statistics.median(score_s)
    result = {
        "images": args.images,
        "rounds": args.rounds,
        "batch_job_s": round(job, 3),
        "eval_s": round(ev, 3),
        "eval_over_job": round(ev / job, 3),
        "scoring_and_report_s": round(score, 3),
        "model": engine.info.model_id,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
