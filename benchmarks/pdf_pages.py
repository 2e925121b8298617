"""Render time and visual tokens per PDF page at the default settings (200 dpi capped by the
image budget), on a document made here: Letter, A4 and landscape pages full of text at 6-12 pt.

    .venv/bin/python benchmarks/pdf_pages.py               # 12 pages, 3 rounds, medians
    .venv/bin/python benchmarks/pdf_pages.py --pages 40 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

from PIL import Image, ImageDraw

from glmflash.config import RequestLimits
from glmflash.inputs.images import ImagePolicy, load_images
from glmflash.inputs.pdf import plan
from glmflash.inputs.pixels import visual_tokens

SIZES = ((612, 792), (595, 842), (792, 612))  # Letter, A4, Letter landscape, in points


def document(pages: int) -> bytes:
    images = []
    for i in range(pages):
        size = SIZES[i % len(SIZES)]
        page = Image.new("RGB", (size[0] * 2, size[1] * 2), "white")  # 144 dpi source
        draw = ImageDraw.Draw(page)
        y = 60
        while y < page.height - 60:
            points = 6 + (y // 40) % 7
            draw.text((60, y), f"Line {y}: item, quantity 3, unit price 12.50, amount 37.50", fill="black",
                      font_size=points * 2)  # fmt: skip
            y += points * 3
        images.append(page)
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=144)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    policy = ImagePolicy.from_limits(RequestLimits(max_pdf_pages=max(args.pages, 16)))
    data = document(args.pages)
    load_images(data, policy)  # PDFium's first load out of the way
    per_page = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        pages = load_images(data, policy)
        per_page.append((time.perf_counter() - started) / len(pages))
    costs = plan(data, policy.pdf_limits())
    result = {
        "pages": args.pages,
        "rounds": args.rounds,
        "dpi": policy.pdf_dpi,
        "max_image_pixels": policy.max_image_pixels,
        "render_ms_per_page_median": round(statistics.median(per_page) * 1000, 1),
        "visual_tokens_per_page": sorted({c["visual_tokens"] for c in costs}),
        "page_sizes_px": sorted({(p.width, p.height) for p in pages}),
        "visual_tokens_per_page_from_pixels": sorted({visual_tokens(p.width, p.height) for p in pages}),
        "pdf_bytes": len(data),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
