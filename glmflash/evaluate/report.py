"""The stakeholder's report: one self-contained HTML file (plots and thumbnails inlined, no
scripts, nothing fetched) with the comparison table and cost per correct answer, each run's
metrics, confusion matrix and threshold plots, its worst mistakes with thumbnails (expected vs
answered), the images on which runs disagree, and the exact configuration and data hash.

Run folders may come from elsewhere (`eval --compare`): every value that goes into the HTML is
escaped, numbers included, and a thumbnail is made only from an image inside the folder of the
run's data file, decoded through the engine's own image guard (inputs/images.py: size and
declared pixels checked before decoding).
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path

from ..errors import GlmflashError
from ..inputs.images import ImagePolicy, load_image
from .compare import DETECTION_METRICS, compare_runs, number, row

WORST = 12  # mistakes shown per run
DISAGREEMENTS = 50  # rows shown

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.ok{color:#176117}.bad{color:#a11}code{font-size:12px;word-break:break-all}
.mistake{display:flex;gap:12px;border-bottom:1px solid #eee;padding:6px 0}.mistake img{max-width:160px}
pre{white-space:pre-wrap;margin:0;font-size:12px}
"""


def write_report(runs: list[dict], path: str | Path, policy: ImagePolicy | None = None) -> Path:
    """Write the report for one run or several (compared) to `path`; thumbnails are decoded
    under `policy` (the engine's image limits; ImagePolicy's defaults when None)."""
    policy = policy or ImagePolicy()
    title = (
        "glmflash evaluation"
        if len(runs) == 1
        else "glmflash evaluation: " + " vs ".join(str(r["name"]) for r in runs)
    )
    parts = [f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title><style>{STYLE}</style>"]
    parts.append(f"<h1>{escape(title)}</h1>")
    parts.append(f"<p>Data: <code>{escape(runs[0]['config']['data'])}</code>, sha256 "
                 f"<code>{escape(runs[0]['config']['data_hash'])}</code></p>")  # fmt: skip
    problems = runs[0].get("problems") or []
    if isinstance(problems, list) and problems:
        listed = "".join(f"<li>{escape(str(p))}</li>" for p in problems[:50])
        parts.append(f"<p class=bad>{len(problems)} rows of the data were left out:</p><ul>{listed}</ul>")
    parts.append("<h2>Accuracy and cost</h2>" + _table([row(run) for run in runs]))
    parts.append("<p>Cost per 1,000 correct answers is the cost per 1,000 images divided by the accuracy. "
                 "Self-hosted figures use the run's measured images/s in the cost calculator; API figures "
                 "its price per call (inputs under each run).</p>")  # fmt: skip
    if len(runs) > 1:
        parts.append(_disagreements(compare_runs(runs)["disagreements"], runs, _Thumbnails(runs[0], policy)))
    for run in runs:
        parts.append(_run(run, _Thumbnails(run, policy)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>-</p>"
    head = "".join(f"<th>{escape(str(k).replace('_', ' '))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    return number(value, ".4g") if isinstance(value, float) else number(value, "")


def _text(value, spec: str = "") -> str:
    """Any value, formatted as a number when it is one, and escaped."""
    return escape(number(value, spec))


def _run(run: dict, thumbnails: _Thumbnails) -> str:
    s = run["scores"]
    parts = [f"<h2>Run {_text(run['name'])}</h2>"]
    parts.append(f"<p>Accuracy <b>{_text(s['accuracy'], '.1%')}</b> over {_text(s['n'])} images "
                 f"({_text(s['answered'])} answered).</p>")  # fmt: skip
    if s["kind"] == "classification":
        per_class = [
            {"class": c, **(v if isinstance(v, dict) else {"value": v})} for c, v in s["per_class"].items()
        ]
        parts.append("<h3>Per class</h3>" + _table(per_class))
        parts.append("<h3>Confusion matrix</h3>" + _plot(confusion_plot, s))
        if isinstance(s.get("thresholds"), list) and s["thresholds"]:
            rows = [r if isinstance(r, dict) else {"value": r} for r in s["thresholds"]]
            parts.append("<h3>Automatic above a confidence, a person below</h3>" + _table(rows))
            parts.append(_plot(threshold_plot, s["thresholds"]))
    elif s["kind"] == "detection":
        parts.append("<h3>Boxes matched by IoU</h3>" + _table([detection_row(s)]))
    else:
        fields = [
            {"field": k, "accuracy": v, "invented": s["invented"].get(k)} for k, v in s["per_field"].items()
        ]
        parts.append(f"<p>Field accuracy {_text(s['field_accuracy'], '.1%')}; invented values "
                     f"{_text(s['invented_total'])} (a field the document does not have, "
                     "filled in anyway).</p>")  # fmt: skip
        parts.append("<h3>Per field</h3>" + _table(fields))
    parts.append("<h3>Worst mistakes</h3>" + _mistakes(run, thumbnails))
    config = {**run["config"], "cost_inputs": run["cost"]["inputs"], "throughput": run["throughput"],
              "created": run.get("created"), "glmflash": run.get("version")}  # fmt: skip
    parts.append(
        f"<h3>Configuration</h3><pre>{escape(json.dumps(config, indent=1, ensure_ascii=False))}</pre>"
    )
    return "\n".join(parts)


def detection_row(s: dict) -> dict:
    return {k: s[k] for k in DETECTION_METRICS}


def _mistakes(run: dict, thumbnails: _Thumbnails) -> str:
    wrong = [item for item in run["items"] if not item["correct"]]
    # confident mistakes first; then those with the most wrong fields
    wrong.sort(
        key=lambda item: (-_real(item.get("confidence")), -len(item["wrong_fields"]), _real(item["row"]))
    )
    if not wrong:
        return "<p class=ok>None.</p>"
    out = []
    for item in wrong[:WORST]:
        answered = item.get("error") or item["predicted"]
        out.append(
            f"<div class=mistake>{thumbnails(item['image'])}<div><b>row {_text(item['row'])}</b> "
            f"<code>{escape(Path(item['image']).name)}</code>"
            f"<br>wrong: {escape(', '.join(map(str, item['wrong_fields'])))}"
            f"<br>expected <pre class=ok>{escape(_short(item['expected']))}</pre>"
            f"answered <pre class=bad>{escape(_short(answered))}</pre></div></div>"
        )
    more = f"<p>and {len(wrong) - WORST} more (items.jsonl).</p>" if len(wrong) > WORST else ""
    return "".join(out) + more


def _real(value) -> float:
    """A number to sort by (0 for anything else)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _disagreements(items: list[dict], runs: list[dict], thumbnails: _Thumbnails) -> str:
    if not items:
        return "<h2>Disagreements</h2><p>The runs answered alike on every image.</p>"
    head = (
        "<tr><th>row</th><th>image</th><th>expected</th>"
        + "".join(f"<th>{_text(r['name'])}</th>" for r in runs)
        + "</tr>"
    )
    body = ""
    for item in items[:DISAGREEMENTS]:
        cells = "".join(
            f"<td class={'ok' if item['correct'][name] else 'bad'}>"
            f"<pre>{escape(_short(item['answers'][name]))}</pre></td>"
            for name in (r["name"] for r in runs)
        )
        body += (f"<tr><td>{_text(item['row'])}</td><td>{thumbnails(item['image'], 96)}</td>"
                 f"<td><pre>{escape(_short(item['expected']))}</pre></td>{cells}</tr>")  # fmt: skip
    return f"<h2>Disagreements ({len(items)} images)</h2><table>{head}{body}</table>"


def _short(value, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


class _Thumbnails:
    """A run's thumbnails: images inside its data file's folder only, through the image guard."""

    def __init__(self, run: dict, policy: ImagePolicy):
        self.root = Path(run["config"]["data"]).parent.resolve()
        self.policy = policy

    def __call__(self, path: str, size: int = 160) -> str:
        try:
            return _img(thumbnail(path, self.root, self.policy, size), "image/jpeg")
        except (GlmflashError, OSError, ValueError):  # a missing, refused or unreadable image
            # still leaves a readable report
            return "<span>(no preview)</span>"


def thumbnail(path: str, root: Path, policy: ImagePolicy, size: int = 160) -> bytes:
    """A JPEG thumbnail of the image at `path`, which must lie inside `root`; ImageError when it
    does not, or when the engine would refuse it (before its pixels are decoded)."""
    from ..errors import ImageError

    try:
        file = Path(path).resolve()
    except (OSError, ValueError):
        raise ImageError("The image's path cannot be read.") from None
    if not file.is_relative_to(root):
        raise ImageError("The image is not inside the folder of the run's data.")
    image = load_image(file, policy)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _plot(draw, *args) -> str:
    """A plot of the run's numbers, or a note when they are not numbers (a folder from elsewhere)."""
    try:
        return _img(draw(*args))
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return "<p>(no plot: the run's figures are not numbers)</p>"


def _img(data: bytes, mime: str = "image/png") -> str:
    return f'<img alt="" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _figure(width: float, height: float):
    """A figure of its own (matplotlib's object API: no pyplot, so no global backend is switched
    and threads do not share state; a notebook's inline plots keep working)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def confusion_plot(scores: dict) -> bytes:
    classes, matrix = scores["classes"], scores["confusion"]
    size = 1.2 + 0.6 * len(classes)
    fig, ax = _figure(size + 1, size)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("answered")
    ax.set_ylabel("expected")
    top = max((max(r) for r in matrix), default=0)
    for i, line in enumerate(matrix):
        for j, count in enumerate(line):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    return _png(fig)


def threshold_plot(rows: list[dict]) -> bytes:
    fig, ax = _figure(6, 3.2)
    t = [r["threshold"] for r in rows]
    total = rows[0]["automatic"] + rows[0]["to_review"]
    ax.plot(t, [r["to_review"] / total for r in rows], marker="o", label="share sent to review")
    accuracy = [float("nan") if r["automatic_accuracy"] is None else r["automatic_accuracy"] for r in rows]
    ax.plot(t, accuracy, marker="s", label="accuracy of automatic decisions")
    ax.set_xlabel("confidence threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
