"""Generated text, from token ids or a backend's deltas to Chunks: incremental detokenising (local
engine) and the one text stage both engines share (thinking and box split, control tokens dropped).
"""

from __future__ import annotations

from collections.abc import Iterable

from .chunks import Chunk
from .thinking import THINK_CLOSE, THINK_OPEN, ThinkingSplitter

# The model family's control vocabulary (reference notes): never shown to a reader, and neutralised
# where a user types it. The local engine adds whatever else its tokenizer holds.
FAMILY_CONTROL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|image|>", "<|video|>", "<think>", "</think>", "/nothink", "<|begin_of_box|>",
    "<|end_of_box|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)  # fmt: skip
MARKERS = {THINK_OPEN, THINK_CLOSE, "<|begin_of_box|>", "<|end_of_box|>"}


class Detokenizer:
    """Incremental decoding that never splits a multi-byte character and leaves stop tokens out."""

    def __init__(self, tokenizer, skip_ids):
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer: far less overhead
        self.skip_ids = set(skip_ids)
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        if token_id in self.skip_ids:
            return ""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        # Hold back an incomplete multi-byte character, but never more than one character's bytes.
        complete = not after.endswith("\ufffd") or len(self.ids) - self._read >= 4
        if len(after) > len(before) and complete:
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class TextStage:
    """Text as the model wrote it in, Chunks out: reasoning apart from the answer, the boxed key
    answer marked, control-token text dropped. Keeps the answer (for JSON validation)."""

    def __init__(self, *, start_in_reasoning: bool = False, control_tokens: Iterable[str] = ()):
        self.splitter = ThinkingSplitter(
            start_in_reasoning=start_in_reasoning,
            drop=[t for t in control_tokens if t not in MARKERS],
        )
        self.answer: list[str] = []

    @property
    def in_reasoning(self) -> bool:
        """The text so far has opened a think block and not closed it."""
        return self.splitter.reasoning

    @property
    def saw_marker(self) -> bool:
        """The last piece fed held <think> or </think>."""
        return self.splitter.saw_think_marker

    def feed(self, text: str) -> list[Chunk]:
        return self._chunks(self.splitter.feed(text))

    def flush(self) -> list[Chunk]:
        return self._chunks(self.splitter.flush())

    def _chunks(self, segments) -> list[Chunk]:
        for segment in segments:
            if not segment.reasoning:
                self.answer.append(segment.text)
        return [Chunk(s.text, s.reasoning, s.boxed) for s in segments]
