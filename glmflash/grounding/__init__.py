"""Grounding: where the model looks. parse.py finds boxes and points in an answer and converts
them to pixels of the original image; draw.py draws them (Pillow, CJK-capable labels)."""

from .parse import Box, find_boxes

__all__ = ["Box", "find_boxes"]
