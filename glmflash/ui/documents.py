"""PDFs on the chat tab: thumbnails of an attached PDF's pages with what reading them costs, and
the page range to send ("1-3, 5"; empty: every page, up to GLMFLASH_MAX_PDF_PAGES)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import gradio as gr

from ..errors import GlmflashError, InvalidRequestError
from ..inputs.images import ImagePolicy
from ..inputs.pdf import PdfLimits, is_pdf, page_count, plan, render_pdf
from .uploads import uploaded

THUMBNAIL_PIXELS = 180 * 240


def parse_pages(spec: str, count: int) -> list[int] | None:
    """ "1-3, 5" -> [1, 2, 3, 5]; empty -> None (every page)."""
    spec = (spec or "").strip()
    if not spec:
        return None
    pages: list[int] = []
    for part in spec.replace(";", ",").split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise InvalidRequestError(f"Pages {spec!r}: write them as 1-3, 5.") from None
        if not 1 <= low <= high <= count:
            raise InvalidRequestError(f"Pages {part.strip()!r}: the PDF has pages 1 to {count}.")
        pages += [p for p in range(low, high + 1) if p not in pages]
    return pages


def chosen(data: bytes, spec: str, policy: ImagePolicy) -> list[bytes]:
    """An upload as the images to send: a PDF with a page range as those pages (PNG), anything
    else (a PDF without a range too: the engine reads every page) as it is."""
    if not is_pdf(data) or not (spec or "").strip():
        return [data]
    pages = parse_pages(spec, page_count(data))
    out = []
    for image in render_pdf(data, policy.pdf_limits(), pages=pages):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def preview(message, shown, policy: ImagePolicy, t):
    """The attached PDFs' pages as thumbnails (only when the attachments changed)."""
    paths = []
    for file in (message or {}).get("files") or []:
        with contextlib.suppress(GlmflashError):  # sending it says why it is refused
            paths.append(Path(upload_path(file)))
    pdfs = [p for p in paths if p.suffix.lower() == ".pdf"]
    key = [str(p) for p in pdfs]
    if key == shown:
        return gr.skip(), gr.skip(), shown
    if not pdfs:  # and the range is cleared: it was for the document that went
        return gr.update(value=None, visible=False), gr.update(value="", visible=False), key
    thumbnails, notes = [], []
    small = PdfLimits(policy.max_pdf_pages, policy.pdf_dpi, policy.pdf_timeout, THUMBNAIL_PIXELS)
    for path in pdfs:
        try:
            data = path.read_bytes()
            costs = plan(data, policy.pdf_limits())
            pages = render_pdf(data, small, pages=list(range(1, min(len(costs), policy.max_pdf_pages) + 1)))
        except (GlmflashError, OSError) as exc:
            notes.append(f"{path.name}: {getattr(exc, 'message', exc)}")
            continue
        thumbnails += [(image, t["pdf_page"].format(name=path.name, n=n)) for n, image in enumerate(pages, 1)]
        tokens = sum(c["visual_tokens"] for c in costs[: policy.max_pdf_pages])
        notes.append(t["pdf_cost"].format(name=path.name, pages=len(costs), tokens=tokens))
    return (
        gr.update(value=thumbnails or None, visible=bool(thumbnails), label=" · ".join(notes)),
        gr.update(value="", visible=True, info=" · ".join(notes)),
        key,
    )


def upload_path(file) -> str:
    """A Gradio upload's path on the server (a dict with "path", or the path itself), refused
    unless the page received it (uploads.uploaded)."""
    return str(uploaded(file))
