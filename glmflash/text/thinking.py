"""Incremental split of generated text into reasoning and answer.

`<think>…</think>` delimits reasoning, `<|begin_of_box|>…<|end_of_box|>` marks the key answer.
Markers may arrive split over any number of pieces; other special-token text is dropped, so
nothing of the model's control vocabulary reaches a reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"


@dataclass(frozen=True)
class Segment:
    """A run of text in one channel. `boxed` marks the model's highlighted key answer."""

    text: str
    reasoning: bool
    boxed: bool = False


class ThinkingSplitter:
    """Feed decoded text pieces in order; get back segments as soon as they are unambiguous."""

    def __init__(self, *, start_in_reasoning: bool = False, drop: Iterable[str] = ()):
        self.reasoning = start_in_reasoning
        self.boxed = False
        self.saw_think_marker = False
        self._markers = {THINK_OPEN, THINK_CLOSE, BOX_OPEN, BOX_CLOSE}
        self._markers.update(token for token in drop if token)
        self._longest = max(len(m) for m in self._markers)
        self._first_chars = {m[0] for m in self._markers}
        self._buffer = ""
        self._pending_space = ""  # trailing whitespace held until we know the channel goes on
        self._pending_boxed = False
        self._started = {True: False, False: False}  # has this channel shown text yet?

    def feed(self, text: str) -> list[Segment]:
        self.saw_think_marker = False
        self._buffer += text
        out: list[Segment] = []
        while self._buffer:
            index, marker = self._first_marker()
            if marker is None:
                cut = len(self._buffer) - self._partial_marker_length()
                ready, self._buffer = self._buffer[:cut], self._buffer[cut:]
                self._emit(ready, out)
                break
            self._emit(self._buffer[:index], out)
            self._buffer = self._buffer[index + len(marker) :]
            self._apply(marker)
        return out

    def flush(self) -> list[Segment]:
        """End of generation: release held text (a dangling partial marker is plain text)."""
        out: list[Segment] = []
        rest, self._buffer = self._buffer, ""
        self._emit(rest, out)
        self._pending_space = ""
        return out

    def _first_marker(self) -> tuple[int, str | None]:
        best, found = len(self._buffer), None
        for marker in self._markers:
            index = self._buffer.find(marker)
            if index != -1 and (index < best or (index == best and len(marker) > len(found or ""))):
                best, found = index, marker
        return best, found

    def _partial_marker_length(self) -> int:
        """Length of the longest buffer suffix that could still grow into a marker."""
        buffer = self._buffer
        for k in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-k:]
            if tail[0] in self._first_chars and any(m.startswith(tail) for m in self._markers):
                return k
        return 0

    def _apply(self, marker: str) -> None:
        if marker in (THINK_OPEN, THINK_CLOSE):
            self.saw_think_marker = True
            new_state = marker == THINK_OPEN
            if new_state != self.reasoning:
                self._pending_space = ""
            self.reasoning = new_state
        elif marker == BOX_OPEN:
            self.boxed = True
        elif marker == BOX_CLOSE:
            self.boxed = False

    def _emit(self, text: str, out: list[Segment]) -> None:
        if not text:
            return
        if not self._started[self.reasoning]:
            text = text.lstrip()
            if not text:
                return
            self._started[self.reasoning] = True
        stripped = text.rstrip()
        if stripped and self._pending_space:
            _append(out, self._pending_space, self.reasoning, self._pending_boxed)
        if stripped:
            _append(out, stripped, self.reasoning, self.boxed)
            self._pending_space = ""
        self._pending_space += text[len(stripped) :]
        self._pending_boxed = self.boxed


def _append(out: list[Segment], text: str, reasoning: bool, boxed: bool) -> None:
    if out and out[-1].reasoning == reasoning and out[-1].boxed == boxed:
        out[-1] = Segment(out[-1].text + text, reasoning, boxed)
    else:
        out.append(Segment(text, reasoning, boxed))
