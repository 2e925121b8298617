"""The built-in zoom tool: the model names a region of one of the images it was shown, in its own
0-1000 box coordinates, and gets that region back as an image at full resolution (a tool result
the model reads: GLM-4.6V's multimodal function calling). For text.tool_loop.run_tools."""

from __future__ import annotations

from collections.abc import Sequence

from ..text.boxes import SCALE

MIN_SIDE = 28  # one merged patch: a smaller crop is grown around its centre to this many pixels

ZOOM_TOOL = {
    "type": "function",
    "function": {
        "name": "zoom_in",
        "description": "Look closer: crop a region of an image and see it at full resolution.",
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "description": "[x1, y1, x2, y2] in 0-1000 of the image's width and height",
                    "items": {"type": "integer", "minimum": 0, "maximum": SCALE},
                    "minItems": 4,
                    "maxItems": 4,
                },
                "image": {"type": "integer", "minimum": 1, "description": "which image, from 1"},
            },
            "required": ["bbox_2d"],
        },
    },
}


def zoom_tool(images: Sequence) -> tuple[dict, dict]:
    """(the tool to offer, {name: function}) for zooming into `images` (PIL images, in the order
    the model saw them)."""
    pictures = list(images)

    def zoom_in(bbox_2d: list, image: int = 1):
        if not pictures:
            return "Error: there is no image to zoom into."
        if not isinstance(image, int) or not 1 <= image <= len(pictures):
            return f"Error: image must be 1 to {len(pictures)}."
        return crop(pictures[image - 1], bbox_2d)

    return ZOOM_TOOL, {"zoom_in": zoom_in}


def crop(picture, box: Sequence) -> object:
    """The region `box` ([x1, y1, x2, y2] in 0-1000, corners in any order) of a PIL image, at
    least MIN_SIDE pixels each way (or the whole image where it is smaller)."""
    if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
        raise ValueError("bbox_2d must be four numbers [x1, y1, x2, y2] in 0-1000")
    width, height = picture.size
    x1, x2 = sorted(_pixel(v, width) for v in (box[0], box[2]))
    y1, y2 = sorted(_pixel(v, height) for v in (box[1], box[3]))
    x1, x2 = _grow(x1, x2, width)
    y1, y2 = _grow(y1, y2, height)
    return picture.crop((x1, y1, x2, y2))


def _pixel(value: float, size: int) -> int:
    return round(min(max(float(value), 0.0), SCALE) / SCALE * size)


def _grow(low: int, high: int, size: int) -> tuple[int, int]:
    side = min(MIN_SIDE, size)
    if high - low >= side:
        return low, high
    middle = (low + high) // 2
    low = min(max(middle - side // 2, 0), size - side)
    return low, low + side
