"""The page's "Batch" tab: a task over uploaded images via run_job, a live table, Stop, downloads."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from ..errors import GlmflashError
from ..jobs.runner import Summary, default_errors_path, export_csv, run_job
from ..jobs.tasks import DEFAULT_FIND, DEFAULT_LANGUAGE, PRESETS, load_task, preset_titles
from .background import Background, StopSwitches
from .documents import upload_path
from .labels import labels

POLL_S = 0.5  # how often the page hears about a running job
LANGUAGES = ["English", "中文", "日本語", "한국어", "Español", "Français", "Deutsch", "Português", "Русский"]
CELL_CHARS = 160  # table cells are cut here; the downloads have everything
LONG_CELL = 40


def build_batch_tab(engine, settings, model_choice, engines: dict) -> None:
    """Add the tab's components and events to the Blocks being built. `model_choice`: the header's
    model selector (a State of None without adapters), whose value picks the engine from
    `engines` (model id -> engine; `engine` for any other)."""
    t = labels(settings.server.lang)
    switches = StopSwitches()

    gr.Markdown(t["batch_intro"], elem_id="batch-intro")
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            # No file_types: Gradio would refuse the whole upload for one stray file; instead each
            # file that is not an image becomes a row in the errors table.
            files = gr.File(label=t["batch_files"], file_count="multiple", elem_id="batch-files")
            task_name = gr.Radio(
                preset_titles(settings.server.lang),
                value="moderation" if "moderation" in PRESETS else PRESETS[0],
                label=t["batch_task"], elem_id="batch-task",
            )  # fmt: skip
            language = gr.Dropdown(
                LANGUAGES, value="中文" if settings.server.lang == "zh" else DEFAULT_LANGUAGE,
                allow_custom_value=True, label=t["batch_language"], elem_id="batch-language",
            )  # fmt: skip
            find = gr.Textbox(
                value=DEFAULT_FIND, label=t["batch_find"], max_lines=1, elem_id="batch-find"
            )  # what the detect task looks for
            with gr.Row():
                run = gr.Button(t["batch_run"], variant="primary", elem_id="batch-run")
                stop = gr.Button(t["batch_stop"], variant="stop", elem_id="batch-stop")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="batch-status")
            table = gr.Dataframe(
                interactive=False, wrap=True, visible=False, elem_id="batch-table", show_label=False
            )
            errors = gr.Dataframe(
                headers=[t["batch_file"], t["batch_error"]], label=t["batch_errors"], interactive=False,
                wrap=True, column_widths=["30%", "70%"], visible=False, elem_id="batch-errors",
            )  # fmt: skip
            downloads = gr.File(
                label=t["batch_downloads"], interactive=False, visible=False, elem_id="batch-downloads"
            )

    def run_batch(uploads, name, lang, what, model, request: gr.Request):
        try:
            paths = [Path(upload_path(f)) for f in uploads or []]
        except GlmflashError as exc:
            gr.Warning(exc.message)
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        if not paths:
            gr.Warning(t["batch_no_files"])
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            task = load_task(
                name, language=(lang or "").strip() or DEFAULT_LANGUAGE, find=what or DEFAULT_FIND
            )
        except GlmflashError as exc:
            gr.Warning(exc.message)
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        folder = Path(tempfile.mkdtemp(prefix="glmflash-batch-"))  # fresh per run: nothing is skipped
        job = _Job(engines.get(model, engine), task, paths, folder)
        switches.hold(request, job)
        shown = None  # (results, errors) counts last sent: the tables are only resent when they grow
        try:
            job.start()
            while True:
                finished = not job.running()
                results, failures = job.rows()
                fresh = finished or (len(results), len(failures)) != shown
                yield (
                    job.status(t),
                    _table(results, task, t) if fresh else gr.skip(),
                    _errors(failures, t) if fresh else gr.skip(),
                    _downloads(job) if finished else _downloads(None) if shown is None else gr.skip(),
                    gr.update(interactive=finished) if finished or shown is None else gr.skip(),
                )
                if finished:
                    return
                shown = (len(results), len(failures))
                job.wait(POLL_S)
        finally:  # also when the browser goes away mid-run
            job.stop.set()
            job.wait(None)
            switches.release(request)
            shutil.rmtree(folder, ignore_errors=True)  # the downloads were copied into Gradio's cache

    # One batch at a time; a second one waits in the queue (the engine runs one generation anyway).
    run.click(
        run_batch,
        [files, task_name, language, find, model_choice],
        [status, table, errors, downloads, run],
        concurrency_limit=1,
    )
    stop.click(switches.stop, None, None, queue=False)


class _Job(Background):
    """jobs.runner.run_job on a background thread, and what it has written so far."""

    def __init__(self, engine, task, paths, folder: Path):
        super().__init__("glmflash-batch")
        self.engine, self.task, self.paths = engine, task, paths
        self.out = folder / f"{task.name}.jsonl"
        self.errors_path = default_errors_path(self.out)
        self.summary = Summary(total=len(paths))
        self.results, self.failures = _Lines(self.out), _Lines(self.errors_path)

    def work(self) -> None:
        self.summary = run_job(
            self.engine, self.task, self.paths, self.out, errors=self.errors_path, stop=self.stop,
            progress=lambda s: setattr(self, "summary", s),
            concurrency=max(1, self.engine.settings.batching.max_batch_size),  # batched if it can
        )  # fmt: skip

    def rows(self) -> tuple[list[dict], list[dict]]:
        return list(self.results.read()), list(self.failures.read())

    def status(self, t) -> str:
        s, running = self.summary, self.running()
        state = "batch_running" if running else "batch_interrupted" if s.interrupted else "batch_finished"
        elapsed = s.seconds if not running and s.seconds else time.perf_counter() - self.started
        text = t["batch_status"].format(
            state=t[state],
            handled=s.done + s.failed + s.skipped + s.duplicates,
            total=s.total,
            done=s.done,
            failed=s.failed,
            duplicates=t["batch_duplicates"].format(n=s.duplicates) if s.duplicates else "",
            elapsed=elapsed,
            rate=s.done / elapsed if elapsed else 0.0,
        )
        if self.failure is not None:
            text += "\n\n" + self.failure_text()
        return text

    def downloads(self) -> list[str] | None:
        files = [p for p in (self.out, self.errors_path) if p.exists() and p.stat().st_size]
        if self.out in files:
            csv_path = self.out.with_suffix(".csv")
            export_csv(self.out, csv_path)
            files.insert(1, csv_path)
        return [str(p) for p in files] or None


class _Lines:
    """The complete records of a JSON lines file that another thread is appending to."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.records: list[dict] = []

    def read(self) -> list[dict]:
        if not self.path.exists():
            return self.records
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            try:
                self.records.append(json.loads(line))
            except ValueError:
                continue
        return self.records


def _table(records: list[dict], task, t):
    """One row per image: the file name, the answer's fields (nested ones dotted), the seconds."""
    flat = [_flatten(r.get("result") or {}) for r in records]
    order = list((task.schema or {}).get("properties", {}))  # the task's own field order first
    columns = list(dict.fromkeys([*order, *(key for row in flat for key in row)]))
    columns = [c for c in columns if any(c in row for row in flat)] if flat else order
    data = [
        [Path(r["source"]).name, *(_cell(row.get(c)) for c in columns), _seconds(r)]
        for r, row in zip(records, flat, strict=True)
    ]
    headers = [t["batch_file"], *columns, t["batch_seconds"]]
    # Short columns first, long texts last: they wrap there instead of pushing the numbers out of view.
    longest = [max([len(h) + 2, *(len(row[i]) for row in data)]) for i, h in enumerate(headers)]
    order = sorted(range(len(headers)), key=lambda i: i > 0 and longest[i] > LONG_CELL)
    widths = [f"{min(max(longest[i], 5) * 8 + 20, 260)}px" for i in order]
    value = {"headers": [headers[i] for i in order], "data": [[row[i] for i in order] for row in data]}
    return gr.update(value=value, column_widths=widths, visible=True)


def _downloads(job):
    files = job.downloads() if job else None
    return gr.update(value=files, visible=bool(files))


def _errors(records: list[dict], t):
    data = [[Path(r["source"]).name, _plain(str(r.get("error", "")))] for r in records]
    return gr.update(value={"headers": [t["batch_file"], t["batch_error"]], "data": data}, visible=bool(data))


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _seconds(record: dict) -> str:
    seconds = (record.get("timings") or {}).get("total_s")
    return f"{seconds:.1f}" if isinstance(seconds, int | float) else ""


def _plain(message: str) -> str:
    """Drop the "messages[0].content[0]: " prefix: the page sent the message, not the person."""
    return message.split(": ", 1)[1] if message.startswith("messages[") and ": " in message else message
