"""Batch jobs: one task over many images, resumable, into append-only JSON lines.

Each record has a stable id (image bytes + task + model), the source path, the parsed answer,
usage and timings, and is flushed and fsynced as it is written. A restart skips ids already in
the results or errors file and first cuts off a half-written last line. Images that are refused
go to the errors file (never retried); transient failures are retried with backoff, then
dead-lettered there too. Setting `stop` (SIGINT/SIGTERM in the CLI) ends the job between records.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import GlmflashError, ImageError
from ..inputs.images import ImagePolicy
from ..inputs.pdf import check_pages, is_pdf, page_count, render_pdf
from ..text.structured import TruncatedOutputError
from .export import export_csv
from .inputs import expand_inputs
from .tasks import Task

__all__ = ["JsonlFile", "Summary", "default_errors_path", "expand_inputs", "export_csv", "job_id", "run_job"]

log = logging.getLogger("glmflash.jobs.runner")
RETRY_BUDGET = 4  # a cut-off answer is tried once more with this many times its budget
TRANSIENT = ("insufficient_memory", "generation_failed", "server_busy", "timeout", "backend_unavailable")


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    skipped: int = 0  # done before (results or errors file)
    duplicates: int = 0  # the same bytes as another input in this run
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        state = "interrupted" if self.interrupted else "finished"
        return (
            f"{state}: {self.done} done, {self.skipped} skipped (done before), {self.duplicates} duplicates, "
            f"{self.failed} failed, of {self.total} inputs in {self.seconds:.1f} s "
            f"({self.images_per_s:.2f} images/s)"
        )


def job_id(data: bytes, task: Task, model_id: str) -> str:
    digest = hashlib.sha256(data)
    digest.update(f"\0{task.key()}\0{model_id}".encode())
    return digest.hexdigest()[:32]


class JsonlFile:
    """Append-only JSON lines, each flushed and fsynced; opening repairs a torn last line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ids = self._repair_and_read()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _repair_and_read(self) -> set[str]:
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a record cut short by a crash: it is redone
            keep = data.rfind(b"\n") + 1
            log.warning("%s: removing a half-written last line (%d bytes)", self.path, len(data) - keep)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        ids = set()
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d is not a record; ignored", self.path, number)
        return ids

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.ids.add(record["id"])

    def close(self) -> None:
        self._file.close()


def run_job(
    engine,
    task: Task,
    paths: list[Path],
    out: str | Path,
    *,
    errors: str | Path | None = None,
    concurrency: int = 1,
    retries: int = 3,
    backoff_s: float = 1.0,
    stop: threading.Event | None = None,
    progress: Callable[[Summary], None] | None = None,
    per_page: bool = False,
) -> Summary:
    """Run `task` over `paths` into `out` (JSONL); refused and failed inputs go to `errors`.
    A PDF is one request with all its pages, or with `per_page` one request (and record, with its
    `page` number) per page."""
    stop = stop or threading.Event()
    results = JsonlFile(out)
    failures = JsonlFile(errors or default_errors_path(out))
    summary = Summary(total=len(paths))
    model_id = engine.info.model_id
    seen: set[str] = set()
    started = time.perf_counter()

    policy = ImagePolicy.from_limits(engine.settings.limits)

    def pending():
        for path in paths:
            if stop.is_set():
                return
            data, problem = _read(path, engine.settings.limits.max_image_bytes)
            pages: list[int | None] = [None]
            if per_page and data and not problem and is_pdf(data):
                try:
                    pages = list(range(1, _pages(data, policy) + 1))
                    summary.total += len(pages) - 1
                except ImageError as exc:
                    problem = exc.message
            for page in pages:
                # An unreadable file is known by its path (its bytes may not exist, or all be empty).
                key = str(path.resolve()).encode() if problem else data
                ident = job_id(key + (f"#page={page}".encode() if page else b""), task, model_id)
                if ident in seen:
                    summary.duplicates += 1
                elif ident in results.ids or ident in failures.ids:
                    summary.skipped += 1
                elif problem:
                    failures.append(_error(ident, path, task, model_id, problem, "unreadable", False))
                    summary.failed += 1
                else:
                    seen.add(ident)
                    yield ident, path, data, page
                    continue  # reported once its answer is in
                _report(summary, started, progress)

    def work(item):
        data, page = item[2], item[3]
        if page is not None:  # one page of a PDF, as an image
            try:
                data = _page_png(data, page, policy)
            except ImageError as exc:
                return item, (None, exc)
        return item, _attempt(engine, task, data, retries, backoff_s, stop)

    def record(outcome) -> None:
        (ident, path, _, page), (reply, error) = outcome
        where = {"page": page} if page is not None else {}
        if error is None and reply.finish_reason == "cancelled":
            return  # stopped half-way: done again on the next run
        if error is None:
            results.append({**_record(ident, path, task, model_id, reply), **where})
            summary.done += 1
        elif not (stop.is_set() and error.code == "cancelled"):
            transient = error.code in TRANSIENT
            failed = _error(ident, path, task, model_id, error.message, error.code, transient)
            failures.append({**failed, **where})
            summary.failed += 1
        _report(summary, started, progress)

    try:
        if concurrency <= 1:  # on this thread: no hop, and signals stay prompt
            for item in pending():
                record(work(item))
        else:
            _run_pool(pending(), work, record, concurrency, stop)
    finally:
        summary.interrupted = stop.is_set()
        summary.seconds = time.perf_counter() - started
        results.close()
        failures.close()
    return summary


def _pages(data: bytes, policy: ImagePolicy) -> int:
    count = page_count(data)
    check_pages(count, policy.max_pdf_pages)
    return count


def _page_png(data: bytes, page: int, policy: ImagePolicy) -> bytes:
    (image,) = render_pdf(data, policy.pdf_limits(), pages=[page])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _run_pool(items, work, record, concurrency: int, stop: threading.Event) -> None:
    with ThreadPoolExecutor(concurrency, thread_name_prefix="glmflash-job") as pool:
        running = set()
        for item in items:
            running.add(pool.submit(work, item))
            if len(running) >= concurrency:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    record(future.result())
            if stop.is_set():
                break
        for future in running:
            record(future.result())


def _attempt(engine, task: Task, data: bytes, retries: int, backoff_s: float, stop: threading.Event):
    """(reply, None) or (None, error); transient errors are retried with exponential backoff, and
    an answer cut off by its token budget is tried once more with a larger budget (RETRY_BUDGET
    times, up to the engine's limit) before it counts as failed."""
    limit = engine.settings.limits.max_new_tokens_limit
    generation = task.generation(limit)
    widened, attempt = False, 0
    while True:
        try:
            return engine.chat(task.messages(data), stop_event=stop, **generation), None
        except TruncatedOutputError as exc:
            larger = min(limit, generation["max_new_tokens"] * RETRY_BUDGET)
            if widened or larger <= generation["max_new_tokens"] or stop.is_set():
                return None, exc
            log.warning("%s; trying once more with max_tokens=%d", exc.message, larger)
            generation, widened = {**generation, "max_new_tokens": larger}, True
        except GlmflashError as exc:
            if exc.code not in TRANSIENT or attempt == retries or stop.is_set():
                return None, exc
            delay = backoff_s * 2**attempt
            attempt += 1
            log.warning("transient failure (%s), retrying in %.1f s", exc.message, delay)
            if stop.wait(delay):
                return None, exc
        except Exception as exc:  # a bug must not end a 100k-image job: record it, go on
            log.exception("unexpected failure")
            return None, GlmflashError(f"unexpected failure: {type(exc).__name__}: {exc}")


def _read(path: Path, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The file's bytes, read no further than `max_bytes` (even if it grows while it is read)."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as exc:
        return None, f"cannot read the file: {exc.strerror or exc}"
    if size > max_bytes or len(data) > max_bytes:
        size = max(size, len(data))
        return None, f"the file is {size} bytes, over the {max_bytes}-byte limit (GLMFLASH_MAX_IMAGE_BYTES)"
    if not data:
        return b"", "the file is empty (0 bytes)"
    return data, None


def _record(ident: str, path: Path, task: Task, model_id: str, reply) -> dict:
    boxes = {"boxes": [box.to_dict() for box in reply.boxes]} if reply.boxes else {}
    return {
        "id": ident,
        "source": str(path),
        "task": task.name,
        "model": model_id,
        "result": reply.parsed,
        **boxes,  # grounding answers: each box also in pixels of the original image
        "finish_reason": reply.finish_reason,
        "usage": asdict(reply.usage),
        "timings": asdict(reply.timings),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _error(ident, path, task, model_id, message, code, transient) -> dict:
    return {
        "id": ident,
        "source": str(path),
        "task": task.name,
        "model": model_id,
        "error": message,
        "code": code,
        "transient": transient,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _report(summary: Summary, started: float, progress) -> None:
    if progress:
        summary.seconds = time.perf_counter() - started
        progress(summary)


def default_errors_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".errors.jsonl")
