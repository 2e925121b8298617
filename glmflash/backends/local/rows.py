"""One request's row as the decode loop (scheduler.py) sees it: what it asks (RowRequest), the
queue its tokens go to its caller through, the line it waits in and the loop's health (Line),
and its own token choice (RowSampler: sampling settings, seed, minimum length, thinking budget
and JSON grammar, each per row, read from its options).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ...errors import EngineFailedError
from ...options import GenerationOptions

END = object()
COALESCE_S = 0.02  # after a token, a reader looks again at most this often
HISTORY = 1000  # recent sizes kept for tests and inspection
FAILURES_TO_BREAK = 3  # failures in a row, no decode step working between them: the loop is broken
WATCH_S = 0.5  # a reader with nothing to read checks this often that the loop is still there
log = logging.getLogger("glmflash")


@dataclass(eq=False)
class RowRequest:
    """What one request asks. `options`: its generation options, resolved against the
    checkpoint's defaults (options.GenerationOptions.resolved); its sampler applies them as they
    are."""

    inputs: Any  # its model inputs (batch dimension 1), or a function that makes them
    options: GenerationOptions
    stops: tuple[threading.Event, ...]  # any of them set: the row ends (a cancel, a stop string)
    template: object = None  # its compiled JSON grammar, or None
    thinking_open: bool = False  # the prompt itself opened <think>
    adapter: str | None = None  # the LoRA adapter it takes (None: the base model)
    reused: dict = field(default_factory=dict)  # the loop says here what it reused (cached_tokens)

    @property
    def seed(self) -> int | None:
        return self.options.seed

    @property
    def thinking_budget(self) -> int | None:
        """Thinking tokens before </think> is forced (none when thinking is off)."""
        return self.options.thinking_budget if self.options.thinking else None


@dataclass(eq=False)
class Row(RowRequest):
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    gone: threading.Event = field(default_factory=threading.Event)  # the caller stopped reading
    over: threading.Event = field(default_factory=threading.Event)  # no more tokens will come
    count: int = 0
    ended: bool = False
    queued: float = field(default_factory=time.monotonic)  # when it reached the scheduler
    ended_at: float = 0.0  # when it ended (0: not yet)

    def end(self) -> None:
        if not self.ended:
            self.ended_at = time.monotonic()
        self.ended = True
        self.tokens.put(END)
        self.over.set()

    def finished(self) -> bool:
        return self.ended or self.gone.is_set() or any(stop.is_set() for stop in self.stops)

    def emit(self, token: int, at: float, stop_ids) -> None:
        """Hand one token to the caller; the row ends on a stop token or its own length."""
        if self.finished():  # cancelled: its caller is answered now, within a token
            self.end()
            return
        self.count += 1
        self.tokens.put((token, at))
        if token in stop_ids or self.count >= self.options.max_new_tokens:
            self.end()

    def made(self) -> bool:
        """Make the model inputs here when the row brought a function for them (torch's CPU
        worker pool belongs to the thread that uses it: one thread for the processor and the
        model is faster on a small machine); a row whose inputs fail gets the error and ends."""
        if callable(self.inputs):
            try:
                self.inputs = self.inputs()
            except BaseException as exc:  # the caller's error (e.g. context too long)
                self.fail(exc)
                return False
        return True

    def fail(self, exc: BaseException) -> None:
        self.tokens.put(exc)
        self.end()


class Line:
    """The decode loop's waiting line, `tokens()` (what the engine calls per request), and
    the health of the loop that serves it. A subclass sets `ready` (a Condition), `waiting` (a
    deque), `_closed`, `router` and `_thread` (the loop's), and says which rows it holds beyond
    the line (`_held`).

    A failure fails the rows it concerns and the loop goes on (the subclass says which rows; it
    calls `_failed`). FAILURES_TO_BREAK failures in a row with no decode step working between them
    (`_worked`), or the loop's thread ending other than by close(), break it: every row open gets
    EngineFailedError at once, later requests are refused at once, and `health()` says why (the
    server's /health and /ready answer 503 with it). A broken loop is not restarted in the
    process: after failures that repeat, the model's state is not to be trusted (a CUDA error
    stays with the process), so it is the process that is restarted (the container's health
    check reads /health).
    """

    ready: threading.Condition
    waiting: deque
    _closed: bool
    _thread: threading.Thread
    router = None  # adapters.Router when LoRA adapters are loaded: each row's own adapter
    broken: str | None = None  # why the loop cannot go on
    _failures = 0  # failures since the last decode step that worked

    def health(self) -> str | None:
        """None while the loop serves; else why it cannot."""
        if self.broken is not None:
            return self.broken
        if not self._closed and not self._thread.is_alive():
            return "its thread has ended"
        return None

    def check(self) -> None:
        """Raise EngineFailedError if the loop cannot serve."""
        reason = self.health()
        if reason is not None:
            raise refusal(reason)

    def _held(self) -> list[Row]:
        """The rows the loop holds outside the waiting line."""
        return []

    def _worked(self) -> None:
        self._failures = 0

    def _failed(self, exc: BaseException) -> None:
        """Count a failure whose rows were failed; at FAILURES_TO_BREAK in a row, break."""
        self._failures += 1
        log.error("decode loop: %s (%d in a row)", describe(exc), self._failures, exc_info=exc)
        if self._failures >= FAILURES_TO_BREAK:
            self._break(f"{self._failures} failures in a row, the last {describe(exc)}")

    def _break(self, reason: str) -> None:
        """Mark the loop broken (the first reason stays) and fail every row open, at once."""
        with self.ready:
            if self.broken is None:
                self.broken = reason
                log.critical("decode loop broken: %s; restart the server", reason)
            rows = [*self.waiting, *self._held()]
            self.waiting.clear()
            error = refusal(self.broken)
        for row in rows:
            if not row.ended:
                row.fail(error)

    def _adapters(self, rows: list[Row]):
        """Each row's own LoRA adapter for the forward in hand (nothing to choose without any)."""
        return self.router.rows([row.adapter for row in rows]) if self.router else contextlib.nullcontext()

    def tokens(self, request: RowRequest) -> Iterator[tuple[int, float]]:
        """Queue one request (its inputs may be a function that makes them on the model's
        thread); yield (token id, time) as its row produces them."""
        row = Row(**{f.name: getattr(request, f.name) for f in fields(RowRequest)})
        with self.ready:
            if self._closed:
                raise RuntimeError("This engine was closed.")
            self.check()
            self.waiting.append(row)
            self.ready.notify()
        return read(row, self)


def refusal(reason: str) -> EngineFailedError:
    return EngineFailedError(
        f"The model's decode loop has stopped ({reason}); this engine answers no more requests "
        "until it is restarted."
    )


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def read(row: Row, line: Line) -> Iterator[tuple[int, float]]:
    """Yield (token id, time) as the row's tokens come; raise the error it was handed, or
    EngineFailedError once `line`'s loop cannot serve it (looked at every WATCH_S of silence)."""
    try:
        while True:
            try:
                items = drain(row.tokens, END, WATCH_S)
            except queue.Empty:
                line.check()
                continue
            for item in items:
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
            # Let tokens gather before waking again: eight readers waking on every token take
            # the cores the model needs.
            row.over.wait(COALESCE_S)
    finally:
        row.gone.set()


def drain(tokens: queue.SimpleQueue, end, timeout: float | None = None) -> list:
    """Block for one item (queue.Empty after `timeout`), then take whatever else is there,
    stopping after `end`."""
    items = [tokens.get(timeout=timeout)]
    while items[-1] is not end:
        try:
            items.append(tokens.get_nowait())
        except queue.Empty:
            break
    return items


def remember(history: list, value) -> None:
    """Append, keeping only the newest HISTORY values: a server runs for months."""
    history.append(value)
    if len(history) > HISTORY:
        del history[: len(history) - HISTORY]


class RowSampler:
    """One row's own token choice: its settings and what it has to remember between steps.

    The order is generate()'s: repetition penalty, the minimum length (stop tokens masked), the
    JSON grammar, the thinking budget (only </think> once spent), then temperature, top-k and
    top-p, and a greedy or a sampled pick; a seeded row draws from its own generator, so its
    answer repeats whatever company it has. `pick` applies them to all rows at once.
    """

    def __init__(self, row: Row, stop_ids, think_ids, constraints):
        options = row.options  # resolved: what is None here is neutral
        self.min_new = options.min_new_tokens or 0
        self.sample = bool(options.sample)
        self.penalty = float(options.repetition_penalty or 1.0)
        self.temperature = float(options.temperature or 1.0) if self.sample else 1.0
        self.top_k = int(options.top_k or 0) if self.sample else 0
        self.top_p = float(options.top_p or 1.0) if self.sample else 1.0
        self.grammar: Any = None
        if row.template is not None:
            from .grammar import JsonLogitsProcessor

            self.grammar = JsonLogitsProcessor([row.template], constraints())
        self.budget = row.thinking_budget if think_ids else None
        self.think_ids = think_ids
        self.thinking, self.spent = row.thinking_open, 0
        self.generator = (
            torch.Generator().manual_seed(row.seed) if self.sample and row.seed is not None else None
        )
        self.seen: torch.Tensor | None = None  # (vocab,) tokens in the row so far, for the penalty

    def reads_history(self, count: int) -> bool:
        """Whether its next pick reads the row's tokens: a grammar always, the penalty once (at
        the first pick, for the prompt's tokens)."""
        return self.grammar is not None or (self.penalty != 1.0 and count == 0)

    def constrain(self, scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The JSON grammar and the thinking budget on this row's (1, vocab) scores. A spent
        budget forces </think> as soon as the grammar allows it: not in the middle of a
        character that a byte token began."""
        if self.grammar is not None:
            scores = self.grammar(history, scores)
        if self.budget and self.thinking and self.spent >= self.budget:
            close = self.think_ids[1]
            kept = scores[0, close].clone()
            if self.grammar is None or torch.isfinite(kept):
                scores[:] = float("-inf")
                scores[0, close] = kept if torch.isfinite(kept) else 0.0
        return scores

    def uniform(self) -> float:
        return float(torch.rand(1, generator=self.generator))

    def saw(self, token: int) -> None:
        """Remember the token the row was given (penalty, thinking)."""
        if self.seen is not None:
            self.seen[token] = True
        if not self.think_ids:
            return
        if token == self.think_ids[0]:
            self.thinking, self.spent = True, 0
        elif token == self.think_ids[1]:
            self.thinking = False
        elif self.thinking:
            self.spent += 1


def pick(
    samplers: list[RowSampler], logits: torch.Tensor, histories, counts, stop_ids
) -> tuple[list[int], dict[int, Exception]]:
    """Each row's next token from its (rows, vocab) float logits, every setting per row and
    vectorised across rows (only grammars and thinking budgets are applied row by row), and the
    errors of rows whose own part failed (their grammar, say: the other rows go on; their tokens
    mean nothing). `histories[i]`: what row i's sampler reads (RowSampler.reads_history), else None."""
    device, vocab = logits.device, logits.shape[-1]
    penalised = [i for i, s in enumerate(samplers) if s.penalty != 1.0]
    if penalised:
        marks: list[torch.Tensor] = []
        for i in penalised:
            mark = samplers[i].seen
            if mark is None:  # the prompt's tokens count, as in generate
                mark = torch.zeros(vocab, dtype=torch.bool, device=device)
                mark[histories[i][0]] = True
                samplers[i].seen = mark
            marks.append(mark)
        index = torch.tensor(penalised, device=device)
        seen = torch.stack(marks)
        factor = torch.tensor([samplers[i].penalty for i in penalised], device=device)[:, None]
        rows = logits[index]
        logits[index] = torch.where(seen, torch.where(rows < 0, rows * factor, rows / factor), rows)
    held = [i for i, s in enumerate(samplers) if counts[i] < s.min_new]
    if held:
        logits[torch.tensor(held, device=device)[:, None], torch.tensor(sorted(stop_ids), device=device)] = (
            float("-inf")
        )
    errors: dict[int, Exception] = {}
    for i, s in enumerate(samplers):
        if s.budget or s.grammar is not None:
            try:
                logits[i : i + 1] = s.constrain(logits[i : i + 1], histories[i])
            except Exception as exc:  # this row's alone
                errors[i] = exc
                logits[i] = 0.0
    picks = logits.argmax(-1)
    sampled = [i for i, s in enumerate(samplers) if s.sample]
    if sampled:
        index = torch.tensor(sampled, device=device)
        picks[index] = _sample(logits[index], [samplers[i] for i in sampled])
    tokens = picks.tolist()
    for i, (sampler, token) in enumerate(zip(samplers, tokens, strict=True)):
        if i not in errors:
            sampler.saw(token)
    return tokens, errors


def _sample(logits: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """Temperature, top-k, top-p and a draw, per row: each row's uniform number comes from its
    own generator (or the global one) and picks from its distribution by inverse CDF."""
    device, vocab = logits.device, logits.shape[-1]
    temperature = torch.tensor([s.temperature for s in samplers], device=device)[:, None]
    ordered, order = (logits / temperature).sort(dim=-1, descending=True)
    top_k = torch.tensor([s.top_k or vocab for s in samplers], device=device)[:, None]
    ordered = ordered.masked_fill(torch.arange(vocab, device=device)[None] >= top_k, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    top_p = torch.tensor([s.top_p if s.top_p < 1.0 else 2.0 for s in samplers], device=device)[:, None]
    probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # the top always stays
    cdf = probs.cumsum(-1)
    draws = torch.tensor([s.uniform() for s in samplers], device=device)[:, None] * cdf[:, -1:]
    chosen = torch.searchsorted(cdf, draws).clamp(max=vocab - 1)
    return order.gather(1, chosen).squeeze(1)
