"""Generated text, from token ids or a backend's deltas to Chunks: incremental detokenising (local
engine) and the one text stage both engines share (thinking and box split, control tokens dropped).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..replies import Chunk
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

    def __init__(self, tokenizer, skip_ids) -> None:
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
    answer marked, control-token text dropped, and the answer cut before the first of `stops`
    (then `stopped` is true and nothing more comes out). Keeps the answer (for JSON validation).

    Stop strings apply to the answer, not to the thinking: a stop of "\n" must not end a model
    that is still reasoning. Answer text that could be the start of a stop string is held back
    until the next piece decides."""

    def __init__(
        self,
        *,
        start_in_reasoning: bool = False,
        control_tokens: Iterable[str] = (),
        stops: Iterable[str] = (),
    ):
        self.splitter = ThinkingSplitter(
            start_in_reasoning=start_in_reasoning,
            drop=[t for t in control_tokens if t not in MARKERS],
        )
        self.answer: list[str] = []
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._held: list[Chunk] = []  # answer text not yet shown: it may be part of a stop string

    @property
    def in_reasoning(self) -> bool:
        """The text so far has opened a think block and not closed it."""
        return self.splitter.reasoning

    @property
    def saw_marker(self) -> bool:
        """The last piece fed held <think> or </think>."""
        return self.splitter.saw_think_marker

    def feed(self, text: str) -> list[Chunk]:
        return self._chunks(self.splitter.feed(text), final=False)

    def flush(self) -> list[Chunk]:
        return self._chunks(self.splitter.flush(), final=True)

    def _chunks(self, segments, *, final: bool) -> list[Chunk]:
        out: list[Chunk] = []
        for segment in segments:
            if self.stopped:
                break
            chunk = Chunk(segment.text, segment.reasoning, segment.boxed)
            if segment.reasoning or not self.stops:
                out += [*self._release(len(self._held)), chunk]
            else:
                self._held.append(chunk)
                out += self._cut()
        if final and not self.stopped:
            out += self._release(len(self._held))
        for chunk in out:
            if not chunk.reasoning:
                self.answer.append(chunk.text)
        return out

    def _cut(self) -> list[Chunk]:
        """Held answer text up to the first stop string (then stop), or all that cannot start one."""
        text = "".join(c.text for c in self._held)
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._split(min(found), keep=False)
        longest = max(len(s) for s in self.stops) - 1
        safe = len(text) - next((k for k in range(min(longest, len(text)), 0, -1)
                                 if any(s.startswith(text[-k:]) for s in self.stops)), 0)  # fmt: skip
        return self._split(safe, keep=True)

    def _split(self, at: int, *, keep: bool) -> list[Chunk]:
        """The held chunks' first `at` characters out; the rest held (keep) or dropped."""
        out, rest, seen = [], [], 0
        for chunk in self._held:
            if seen + len(chunk.text) <= at:
                out.append(chunk)
            elif seen >= at:
                rest.append(chunk)
            else:
                cut = at - seen
                out.append(Chunk(chunk.text[:cut], chunk.reasoning, chunk.boxed))
                rest.append(Chunk(chunk.text[cut:], chunk.reasoning, chunk.boxed))
            seen += len(chunk.text)
        self._held = rest if keep else []
        return out

    def _release(self, count: int) -> list[Chunk]:
        out, self._held = self._held[:count], self._held[count:]
        return out
