"""The page's "Evaluate" tab: upload a labels file (CSV or JSONL of image, expected) with its
images or a zip of both, run a task over them (evaluate.run.run_eval on a background thread,
with Stop), and see the scores, the confusion matrix or per-field table, and the report to download.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

import gradio as gr

from ..errors import GlmflashError, InvalidRequestError
from ..evaluate.compare import load_run, row
from ..evaluate.data import load_labelled
from ..evaluate.report import write_report
from ..evaluate.run import run_eval
from ..evaluate.score import label_choices, label_fields
from ..inputs.images import ImagePolicy
from ..jobs.runner import Summary
from ..jobs.tasks import PRESETS, load_task, preset_titles
from .background import Background, StopSwitches
from .documents import upload_path
from .labels import labels

POLL_S = 0.5
LABEL_FILES = (".csv", ".jsonl", ".ndjson")
MAX_ZIP_ENTRIES = 5_000
MAX_ZIP_BYTES = 2_000_000_000  # unpacked, for one upload's zips and files together


def build_eval_tab(engine, settings, model_choice, engines: dict) -> None:
    """Add the tab's components and events to the Blocks being built. `model_choice`: the header's
    model selector (a State of None without adapters), whose value picks the engine from
    `engines` (model id -> engine; `engine` for any other)."""
    t = labels(settings.server.lang)
    switches = StopSwitches()

    gr.Markdown(t["eval_intro"], elem_id="eval-intro")
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            files = gr.File(label=t["eval_files"], file_count="multiple", elem_id="eval-files")
            task_name = gr.Radio(
                preset_titles(settings.server.lang),
                value="moderation" if "moderation" in PRESETS else PRESETS[0],
                label=t["batch_task"], elem_id="eval-task",
            )  # fmt: skip
            with gr.Row():
                run = gr.Button(t["batch_run"], variant="primary", elem_id="eval-run")
                stop = gr.Button(t["batch_stop"], variant="stop", elem_id="eval-stop")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="eval-status")
            table = gr.Dataframe(
                interactive=False, wrap=True, visible=False, elem_id="eval-table", show_label=False
            )
            details = gr.Dataframe(
                interactive=False, wrap=True, visible=False, elem_id="eval-details", show_label=False
            )
            plot = gr.Image(
                type="pil", visible=False, elem_id="eval-plot", show_label=False, interactive=False
            )
            report = gr.File(label=t["eval_report"], interactive=False, visible=False, elem_id="eval-report")

    skip = (gr.skip(),) * 6

    def evaluate(uploads, name, model, request: gr.Request):
        folder = Path(tempfile.mkdtemp(prefix="glmflash-eval-"))
        run_: _Run | None = None
        try:
            try:
                data_path = _gather([upload_path(f) for f in uploads or []], folder / "data")
                task = load_task(name)
                field = label_fields(task.schema)[0]
                data = load_labelled(
                    data_path,
                    labels=label_choices(task.schema, field),
                    max_image_bytes=settings.limits.max_image_bytes,
                )
            except GlmflashError as exc:
                gr.Warning(exc.message)
                yield skip
                return
            run_ = _Run(engines.get(model, engine), task, data, folder / "run")
            switches.hold(request, run_)
            run_.start()
            while run_.running():
                yield (
                    run_.status(t),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.update(interactive=False),
                )
                run_.wait(POLL_S)
            if run_.failure is not None:
                yield (
                    run_.failure_text(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.update(interactive=True),
                )
                return
            yield _results(run_, data, t, ImagePolicy.from_limits(settings.limits))
        finally:  # also when the browser goes away mid-run: stop it before its folder goes
            if run_ is not None:
                run_.stop.set()
                run_.wait(None)
            switches.release(request)
            shutil.rmtree(folder, ignore_errors=True)  # the report was copied into Gradio's cache

    run.click(
        evaluate,
        [files, task_name, model_choice],
        [status, table, details, plot, report, run],
        concurrency_limit=1,
    )
    stop.click(switches.stop, None, None, queue=False)


class _Run(Background):
    """evaluate.run.run_eval on a background thread."""

    def __init__(self, engine, task, data, out: Path):
        super().__init__("glmflash-eval")
        self.engine, self.task, self.data, self.out = engine, task, data, out
        self.summary = Summary(total=len({item.image for item in data.items}))

    def work(self) -> None:
        run_eval(
            self.engine, self.task, self.data, self.out, stop=self.stop,
            concurrency=max(1, self.engine.settings.batching.max_batch_size),
            progress=lambda s: setattr(self, "summary", s),
        )  # fmt: skip

    def status(self, t) -> str:
        s = self.summary
        return t["eval_running"].format(handled=s.done + s.failed + s.skipped + s.duplicates, total=s.total)


def _results(run_: _Run, data, t, policy: ImagePolicy):
    result = load_run(run_.out)
    html = write_report([result], run_.out / "report.html", policy)  # thumbnails under the engine's limits
    scores = result["scores"]
    head = row(result)
    state = t["batch_interrupted"] if run_.stop.is_set() else t["batch_finished"]
    text = t["eval_done"].format(
        state=state, accuracy=scores["accuracy"], n=scores["n"], answered=scores["answered"]
    )
    if data.problems:
        text += (
            "\n\n"
            + t["eval_left_out"].format(n=len(data.problems))
            + "\n"
            + "\n".join(f"- {p}" for p in data.problems[:20])
        )
    summary = {"headers": list(head), "data": [[_cell(v) for v in head.values()]]}
    if scores["kind"] == "classification":
        names = ["class", "precision", "recall", "f1", "support"]
        rows = [[c, *(_cell(v[k]) for k in names[1:])] for c, v in scores["per_class"].items()]
        from ..evaluate.report import confusion_plot

        picture = _picture(confusion_plot(scores))
    elif scores["kind"] == "detection":
        from ..evaluate.report import detection_row

        metrics = detection_row(scores)
        names, rows, picture = list(metrics), [[_cell(v) for v in metrics.values()]], None
    else:
        names = ["field", "accuracy", "invented"]
        rows = [[f, _cell(v), str(scores["invented"][f])] for f, v in scores["per_field"].items()]
        picture = None
    return (
        text,
        gr.update(value=summary, visible=True),
        gr.update(value={"headers": names, "data": rows}, visible=True),
        gr.update(value=picture, visible=picture is not None),
        gr.update(value=[str(html), str(run_.out / "items.jsonl")], visible=True),
        gr.update(interactive=True),
    )


def _picture(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _gather(paths: list[str], folder: Path) -> Path:
    """Copy the uploads into one folder by their own names, unpacking zips there (no path may
    leave it; one cap on entries and bytes for the whole upload, zips and files together);
    entries that cannot be unpacked are left out, each named in one notice. Returns the one
    labels file among them."""
    if not paths:
        raise InvalidRequestError(
            "Add a labels file (CSV or JSONL of image, expected) and its images, or a zip."
        )
    folder.mkdir(parents=True)
    budget = _Budget()
    skipped: list[str] = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".zip":
            skipped += _unzip(path, folder, budget)
            continue
        target = folder / path.name
        if path.name in ("", ".", "..") or target.exists():
            skipped.append(f"{path.name!r}: the same name as another upload, or no name; left out.")
            continue
        try:
            budget.take(path.name, 1, path.stat().st_size)
            shutil.copyfile(path, target)
        except OSError as exc:
            raise InvalidRequestError(f"Cannot read the upload {path.name}: {exc.strerror or exc}.") from None
    if skipped:
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        gr.Warning(f"Left out of the upload{more}: " + " ".join(skipped[:10]))
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in LABEL_FILES and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise InvalidRequestError(f"Give exactly one labels file (.csv or .jsonl); found: {names}.")
    return found[0]


class _Budget:
    """Files and unpacked bytes left for one upload, all its zips and files together."""

    def __init__(self):
        self.entries, self.bytes = MAX_ZIP_ENTRIES, MAX_ZIP_BYTES

    def take(self, name: str, entries: int, size: int) -> None:
        self.entries -= entries
        self.bytes -= size
        if self.entries < 0 or self.bytes < 0:
            raise InvalidRequestError(
                f"The upload is too big at {name}: at most {MAX_ZIP_ENTRIES:,} files and "
                f"{MAX_ZIP_BYTES / 1e9:g} GB unpacked, all zips and files together."
            )


def _unzip(path: Path, folder: Path, budget: _Budget | None = None) -> list[str]:
    """Unpack the zip into `folder`; returns what was left out, one message per entry (a link,
    a name that is no file inside the folder, an entry that cannot be read or written)."""
    budget = budget or _Budget()
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [e for e in archive.infolist() if not e.is_dir()]
            budget.take(path.name, len(entries), sum(e.file_size for e in entries))
            root = folder.resolve()
            problems = (_unpack(archive, entry, root) for entry in entries)
            return [f"{path.name}: {entry.filename[:120]!r} {problem}" for entry, problem in
                    zip(entries, problems, strict=True) if problem]  # fmt: skip
    except (zipfile.BadZipFile, OSError, EOFError):
        raise InvalidRequestError(f"{path.name} is not a readable zip file.") from None


def _unpack(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, root: Path) -> str | None:
    """Write one entry under `root`; None when done, else why it was left out."""
    if stat.S_ISLNK(entry.external_attr >> 16):
        return "is a symbolic link; left out (zip the file itself)."
    target = Path(os.path.normpath(root / entry.filename))
    if target == root or not target.is_relative_to(root):
        return "is not a file name inside the zip's folder; left out."
    created = False
    try:
        if target.exists() or target.is_symlink():
            return "appears twice (or as a folder too); the first is kept."
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            return "is not a file name inside the zip's folder; left out."
        with archive.open(entry) as source, target.open("xb") as out:
            created = True
            shutil.copyfileobj(source, out)  # at most its declared size: zipfile stops there
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as exc:
        problem = f"cannot be unpacked ({exc}); left out."
    except OSError as exc:
        problem = f"cannot be written ({exc.strerror or exc}); left out."
    else:
        return None
    if created:  # a part of it: not kept
        target.unlink(missing_ok=True)
    return problem
