"""Boxes and points in an answer, decided by content (the box markers also wrap plain key
answers such as a price, and the text stage has already removed them).

GLM-4.6V answers grounding questions with boxes `[x1, y1, x2, y2]` normalised to 0-1000 of the
image's width and height (origin top-left), alone or several as `[[...], [...]]`, with bracket
styles that vary (`[]`, `[[ ]]`, `()`), and with labels when asked for JSON such as
`[{"label": "cat", "bbox_2d": [x1, y1, x2, y2]}]` (`point_2d` for points). Found here:
- JSON the model wrote (objects with `bbox_2d`/`bbox`/`box` or `point_2d`/`point`, and a `label`),
  at any depth, also inside a ```json fence;
- otherwise bracketed groups of four numbers (boxes) anywhere in the text, and of two numbers
  (points) only when the whole answer is such groups.
Not boxes: a group with a number above 1000 or below 0, three or five numbers, a box without area,
prices and other single numbers. Corners are ordered; pixels follow the official helper
(each value clamped to 0-999, divided by 1000, times the original width or height).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

SCALE = 1000
NUMBER = r"[-+]?\d+(?:\.\d+)?"
GROUP = re.compile(rf"[\[(]\s*({NUMBER}(?:\s*,\s*{NUMBER})*)\s*[\])]")
ONLY_GROUPS = re.compile(rf"^[\s\[\](),]*(?:[\[(]\s*{NUMBER}\s*,\s*{NUMBER}\s*[\])][\s\[\](),]*)+$")
BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
POINT_KEYS = ("point_2d", "point")
KEYS_IN_TEXT = re.compile(r'"(?:bbox_2d|bbox|box|box_2d|point_2d|point)"\s*:')


@dataclass(frozen=True)
class Box:
    """One box (or point: `box` then has x1 == x2 and y1 == y2) found in an answer."""

    label: str  # "" when the answer gave none
    box: tuple[float, float, float, float]  # normalised 0-1000, corners ordered
    pixels: tuple[int, int, int, int] | None  # in the original (EXIF-oriented) image; None without one
    image: int = 0  # which of the request's images (the last one when there were several)
    point: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def find_boxes(text: str, sizes: list[tuple[int, int]] | None = None) -> list[Box]:
    """Every box and point in `text`; `sizes` are the request's images (width, height) after EXIF
    orientation and before any downscale, so pixel boxes land on the picture the person sent."""
    found = _from_json(text)
    if not found:
        found = _from_groups(text)
    index = len(sizes) - 1 if sizes else 0
    size = sizes[index] if sizes else None
    return [Box(label, box, _pixels(box, size), index, point) for label, box, point in found]


def _from_json(text: str) -> list[tuple[str, tuple, bool]]:
    found: list[tuple[str, tuple, bool]] = []
    if not KEYS_IN_TEXT.search(text):  # every reply passes here: most have no box keys at all
        return found
    for value in _json_values(text):
        _walk(value, found)
    return found


def _json_values(text: str):
    """JSON values embedded in the text: each `[` or `{` that starts a parseable value."""
    decoder = json.JSONDecoder()
    at = 0
    while True:
        starts = [i for i in (text.find("[", at), text.find("{", at)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        yield value
        at = end


def _walk(value: Any, found: list) -> None:
    if isinstance(value, list):
        for item in value:
            _walk(item, found)
    elif isinstance(value, dict):
        label = value.get("label", value.get("name", ""))
        label = str(label).strip() if isinstance(label, str | int | float) else ""
        for keys, point in ((BOX_KEYS, False), (POINT_KEYS, True)):
            for key in keys:
                if key in value:
                    shape = _shape(value[key], point)
                    if shape is not None:
                        found.append((label, shape, point))
                    break
        for key, item in value.items():
            if key not in BOX_KEYS + POINT_KEYS and isinstance(item, list | dict):
                _walk(item, found)


def _from_groups(text: str) -> list[tuple[str, tuple, bool]]:
    points_too = bool(ONLY_GROUPS.match(text.strip()))
    found = []
    for match in GROUP.finditer(text):
        numbers = [float(n) for n in match.group(1).split(",")]
        point = len(numbers) == 2
        if point and not points_too:
            continue
        shape = _shape(numbers, point)
        if shape is not None:
            found.append(("", shape, point))
    return found


def _shape(values: Any, point: bool) -> tuple[float, float, float, float] | None:
    if not isinstance(values, list) or len(values) != (2 if point else 4):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    if any(v < 0 or v > SCALE for v in values):
        return None
    if point:
        x, y = values
        return (x, y, x, y)
    x1, y1, x2, y2 = values
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x1 == x2 or y1 == y2:
        return None  # no area: a line, not a box
    return (x1, y1, x2, y2)


def _pixels(box: tuple, size: tuple[int, int] | None) -> tuple[int, int, int, int] | None:
    if size is None:
        return None
    width, height = size
    scale = (width, height, width, height)
    return tuple(round(min(max(v, 0), SCALE - 1) / SCALE * s) for v, s in zip(box, scale, strict=True))
