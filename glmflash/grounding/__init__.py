"""Grounding: where the model looks. text/boxes.py finds boxes and points in an answer and
converts them to pixels of the original image (the pipeline does it for every reply); draw.py
draws them (Pillow, CJK-capable labels)."""

from ..text.boxes import Box, find_boxes

__all__ = ["Box", "find_boxes"]
