"""Boxes drawn on the picture: coloured outlines, a filled label tag per box (Chinese labels too),
points as rings. Pure Pillow.

Labels need a font with both Latin and CJK glyphs. None is shipped (such a font is 4-20 MB); the
first of these found on the machine is used, checked to hold the glyphs: WenQuanYi Micro Hei
(Debian's `fonts-wqy-microhei`, Apache-2.0 or GPLv3 with the font exception; what ./test.sh and
the Dockerfile install), Noto Sans CJK (`fonts-noto-cjk`, SIL OFL 1.1), WenQuanYi Zen Hei, or any
font fontconfig lists for Chinese; `font=` (on the page, GLMFLASH_FONT) names another file.
Without one, Pillow's own font draws Latin labels and a Chinese label is replaced by its box
number, so nothing shows as empty squares.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..text.boxes import Box

log = logging.getLogger("glmflash.grounding")
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)
PROBE = "Aa9猫图"  # glyphs the font must have: Latin and Chinese (a "fallback" font may lack Latin)


@functools.lru_cache(maxsize=4)
def cjk_font_path(named: str = "") -> str | None:
    """A font file on this machine that holds Chinese glyphs (`named` first), or None."""
    named = named.strip()
    listed = _fontconfig_chinese()
    for path in ([named] if named else []) + list(CANDIDATES) + listed:
        if path and Path(path).is_file() and _has_glyphs(path):
            return path
    log.warning(
        "No CJK font found: Chinese box labels are shown as numbers (apt install fonts-wqy-microhei)."
    )
    return None


def _fontconfig_chinese() -> list[str]:
    if not shutil.which("fc-list"):
        return []
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())


def _has_glyphs(path: str) -> bool:
    try:
        from matplotlib.ft2font import FT2Font

        charmap = FT2Font(path).get_charmap()
    except Exception:
        return False
    return all(ord(c) in charmap for c in PROBE)


def _font(size: int, named: str = "") -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    path = cjk_font_path(named)
    if path:
        return ImageFont.truetype(path, size), True
    return ImageFont.load_default(size), False


def draw_boxes(
    image: Image.Image, boxes: Sequence[Box], *, width: int | None = None, font: str = ""
) -> Image.Image:
    """A copy of `image` (the original, EXIF-oriented) with each box drawn and labelled. `font`:
    a font file to try before the ones looked for."""
    from PIL import ImageOps

    picture = ImageOps.exif_transpose(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    side = min(picture.size)
    line = width or max(2, side // 200)
    font_face, cjk = _font(max(12, side // 30), font)
    for number, box in enumerate(boxes, 1):
        colour = COLOURS[(number - 1) % len(COLOURS)]
        x1, y1, x2, y2 = box.pixels or _scaled(box, picture.size)
        if box.point:
            r = max(4, side // 80)
            draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], outline=colour, width=line)
        else:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = box.label if box.label and (cjk or box.label.isascii()) else str(number)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font_face)
        tag_h = bottom - top + 2 * line
        ty = y1 - tag_h if y1 - tag_h >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 2 * line, ty + tag_h], fill=colour)
        draw.text((x1 + line - left, ty + line - top), text, fill="white", font=font_face)
    return picture


def _scaled(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    x1, y1, x2, y2 = box.box
    return (round(x1 / 1000 * w), round(y1 / 1000 * h), round(x2 / 1000 * w), round(y2 / 1000 * h))
