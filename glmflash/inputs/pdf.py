"""PDF documents become their pages as images (pypdfium2: PDFium under Apache-2.0/BSD-3).

Every page is rendered at `pdf_dpi` (200: small print stays legible) but never above the image
budget (`max_image_pixels`; the model would see no more), so a page costs what an image costs.
Limits, each a clear ImageError: the byte limit (the image one), pages per document
(`max_pdf_pages`, checked before anything is rendered, so a 10,000-page file is refused at once),
pages per request (they count as images), a time limit per document, absurd page sizes, and
password-protected, truncated, malformed or empty files. The time limit holds inside a page too:
pages are drawn with PDFium's progressive renderer, which asks a pause callback between drawing
steps (every few page objects, and while large images decode), and the render stops there once
the deadline has passed; one drawing step cannot be cut short, and each page's bitmap is bounded
by the pixel budget. PDFium is not thread-safe: one document renders at a time (a lock), and its
C calls run without the GIL, so a page being rendered does not stall the model's Python threads.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from PIL import Image

from ..errors import ImageError
from .pixels import visual_tokens

_LOCK = threading.Lock()
MAX_PAGE_POINTS = 14_400  # the PDF format's own limit: 200 inches a side
POINTS_PER_INCH = 72


def is_pdf(data: bytes) -> bool:
    """PDF files start with "%PDF-" (the standard allows a little junk before it)."""
    return b"%PDF-" in data[:1024]


@dataclass(frozen=True)
class PdfLimits:
    max_pages: int = 16
    dpi: int = 200
    timeout_s: float = 20.0
    max_image_pixels: int = 1_048_576


def page_count(data: bytes) -> int:
    """How many pages, without rendering any."""
    with _LOCK, _opened(data) as document:
        return len(document)


def check_pages(count: int, max_pages: int) -> None:
    """The per-document page limit (and no empty documents), before anything is rendered."""
    if count == 0:
        raise ImageError("The PDF has no pages.", code="invalid_pdf")
    if count > max_pages:
        raise ImageError(
            f"The PDF has {count:,} pages; at most {max_pages} are read per document "
            "(GLMFLASH_MAX_PDF_PAGES): send the pages you need.",
            code="too_many_pages",
        )


def plan(data: bytes, limits: PdfLimits) -> list[dict]:
    """What reading the document costs, before any page is rendered: per page its rendered size
    and the visual tokens the model spends on it (from the page size and the pixel budget)."""
    with _LOCK, _opened(data) as document:
        out = []
        for number in range(1, len(document) + 1):
            page = document[number - 1]
            try:
                width, height = page.get_size()
            finally:
                page.close()
            scale = _scale(width, height, limits)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            out.append({"page": number, "width": w, "height": h, "visual_tokens": visual_tokens(w, h)})
        return out


def _scale(width: float, height: float, limits: PdfLimits) -> float:
    return min(limits.dpi / POINTS_PER_INCH, math.sqrt(limits.max_image_pixels / (width * height)))


def render_pdf(data: bytes, limits: PdfLimits, pages: list[int] | None = None) -> list[Image.Image]:
    """Pages as RGB images (1-based `pages`, all when None), each at most the image budget."""
    deadline = time.monotonic() + limits.timeout_s
    with _LOCK, _opened(data) as document:
        count = len(document)
        check_pages(count, limits.max_pages)
        chosen = pages or list(range(1, count + 1))
        outside = [p for p in chosen if not 1 <= p <= count]
        if outside:
            raise ImageError(f"The PDF has {count} pages; there is no page {outside[0]}.", code="invalid_pdf")
        check_pages(len(chosen), limits.max_pages)
        out = []
        for number in chosen:
            if time.monotonic() > deadline:
                raise _timeout(limits, number, count)
            image = _render(document, number, limits, deadline)
            if image is None:
                raise _timeout(limits, number, count)
            out.append(image)
        return out


def _timeout(limits: PdfLimits, number: int, count: int) -> ImageError:
    return ImageError(
        f"Rendering the PDF took over {limits.timeout_s:g} s (page {number} of {count}): "
        "send fewer or simpler pages.",
        code="pdf_timeout",
    )


def _render(document, number: int, limits: PdfLimits, deadline: float) -> Image.Image | None:
    """The page as an RGB image, or None when the deadline passed while it was being drawn."""
    import pypdfium2 as pdfium
    import pypdfium2.internal as pdfium_i
    import pypdfium2.raw as pdfium_c

    page = document[number - 1]
    try:
        width, height = page.get_size()  # points, after the page's rotation
        if not (0 < width <= MAX_PAGE_POINTS and 0 < height <= MAX_PAGE_POINTS):
            raise ImageError(
                f"Page {number} of the PDF has an impossible size ({width:g} x {height:g} points)."
            )
        scale = _scale(width, height, limits)
        w, h = math.ceil(width * scale), math.ceil(height * scale)  # as PdfPage.render sizes it
        bitmap = pdfium.PdfBitmap.new_native(w, h, format=pdfium_c.FPDFBitmap_BGR)
        try:
            bitmap.fill_rect((255, 255, 255, 255), 0, 0, w, h)
            pause = pdfium_c.IFSDK_PAUSE(version=1)
            pdfium_i.set_callback(pause, "NeedToPauseNow", lambda _: time.monotonic() > deadline)
            status = pdfium_c.FPDF_RenderPageBitmap_Start(
                bitmap, page, 0, 0, w, h, 0, pdfium_c.FPDF_ANNOT, pause
            )
            try:
                while status == pdfium_c.FPDF_RENDER_TOBECONTINUED:
                    if time.monotonic() > deadline:
                        return None
                    status = pdfium_c.FPDF_RenderPage_Continue(page, pause)
            finally:
                pdfium_c.FPDF_RenderPage_Close(page)
            if status != pdfium_c.FPDF_RENDER_DONE:
                raise ImageError(
                    f"Page {number} of the PDF cannot be drawn: it may be damaged.", code="invalid_pdf"
                )
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()


class _opened:
    """The document, opened and closed, with PDFium's errors said in words."""

    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self):
        import pypdfium2 as pdfium

        try:
            self.document = pdfium.PdfDocument(self.data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise ImageError(
                    "The PDF is password-protected: remove the password and send it again.",
                    code="pdf_encrypted",
                ) from None
            raise ImageError(
                f"The PDF cannot be read ({exc}): it may be truncated or damaged.", code="invalid_pdf"
            ) from None
        return self.document

    def __exit__(self, *exc) -> None:
        self.document.close()
