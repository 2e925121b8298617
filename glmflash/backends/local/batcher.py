"""Static batching for compiled decoding: concurrent requests share one batched `model.generate`
(its only caller), over a static cache whose shapes CUDA graphs replay. Without GLMFLASH_COMPILE
the per-token scheduler (scheduler.py) runs instead.

One worker thread takes the oldest waiting request, waits up to `max_wait_s` for requests that
are already on their way (still decoding their images; those with the same sampling settings
join, at most `max_batch_size`), left-pads them into one batch and generates.
Each row streams its tokens to its own caller as they are made and ends on its own (its stop
token, its own max_new_tokens, its cancel): a finished or cancelled row returns at once while the
batch goes on for the others. Under greedy decoding every row gets the tokens it would get alone.
Requests that arrive during a batch wait for the next one (no continuous batching).

A batch that fails fails its own rows, and the next batch starts afresh; batches failing in a row,
or the worker's thread ending, mark the engine broken (rows.Line).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import deque

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .decoding import CacheKeeper, cache_tokens, is_compiled
from .prefill import collate
from .rows import Line, Row, describe, remember

STEADY_S = 1.0  # a batch starting within this of the last one's end is steady traffic


class Batcher(Line):
    """Owns the worker thread; `tokens()` is what the engine calls per request."""

    def __init__(
        self,
        model,
        stop_ids,
        pad_id: int,
        *,
        max_batch_size: int,
        max_wait_s: float,
        constraints,
        callers,
        cache_limit: int | None = None,
        think_ids: tuple[int, int] | None = None,
        router=None,
    ):
        self.model, self.stop_ids, self.pad_id = model, set(stop_ids), pad_id
        self.router = router
        self.think_ids = think_ids  # the ids of <think> and </think>, for thinking budgets
        # compiled decoding: the static cache kept between batches, and its longest length
        self.caches = CacheKeeper(model.config.get_text_config(decoder=True))
        self.cache_limit = cache_limit or model.config.get_text_config().max_position_embeddings
        self.callers = callers  # () -> requests called but not yet queued here: worth waiting for
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.constraints = constraints  # () -> structured.Constraints, made on first use
        self.waiting: deque[Row] = deque()
        self.ready = threading.Condition()
        self.sizes: list[int] = []  # recent batches' sizes, oldest first (HISTORY at most)
        self.waits: list[float] = []  # how long each of those waited for company
        self._closed = False
        self._last_size = 1
        self._last_end = 0.0  # when the last batch ended: after a pause, traffic is not steady
        self._last_key = None  # its sampling settings: other requests are not its traffic
        self.generating = False
        self.preparing = False  # making the first row's inputs
        self.current: list[Row] = []  # the batch in hand
        self._thread = threading.Thread(target=self._loop, name="glmflash-batcher", daemon=True)
        self._thread.start()
        # A thread that ran torch must end before the interpreter does, or the process aborts.
        atexit.register(self.close)

    @property
    def busy(self) -> bool:
        """A batch is generating, or requests are waiting for one."""
        return self.generating or self.preparing or bool(self.waiting)

    def close(self) -> None:
        """Finish the batch in hand, then end the worker; later requests are refused."""
        with self.ready:
            self._closed = True
            self.ready.notify_all()
        self._thread.join(timeout=30)
        atexit.unregister(self.close)  # nothing left to hold the model

    # -- the worker ---------------------------------------------------------------------------

    def _loop(self) -> None:
        reason = "its thread has ended"
        try:
            while self.broken is None:
                rows = self._collect()
                if rows is None:
                    return
                if rows:  # else its one request failed before it began
                    self._run(rows)
        except BaseException as exc:
            reason = f"its thread ended on {describe(exc)}"
        finally:
            if not self._closed:
                self._break(reason)

    def _run(self, rows: list[Row]) -> None:
        failure = None
        try:
            self._generate(rows)
        except BaseException as exc:  # handed to every caller of the batch
            failure = exc
            for row in rows:
                if not row.ended:
                    row.fail(exc)
        finally:
            for row in rows:
                row.end()
            self.current = []
            self._remember_demand(rows)
        if failure is None:
            self._worked()
        else:
            self._failed(failure)

    def _held(self) -> list[Row]:
        return list(self.current)

    def _remember_demand(self, rows: list[Row]) -> None:
        """The demand this batch saw: its rows, and rows that could have joined it and came while
        it ran, before any of its own rows ended (a caller that got its answer and asked again
        is not new demand). Callers in a loop (a batch job, a load test) come back together;
        waiting for all of them merges two half batches into one instead of alternating."""
        first_end = min(row.ended_at for row in rows)
        with self.ready:
            came = sum(1 for row in self.waiting if row.key == rows[0].key and row.queued < first_end)
        self._last_size = min(self.max_batch_size, len(rows) + came)
        self._last_key, self._last_end = rows[0].key, time.monotonic()

    def _collect(self) -> list[Row] | None:
        with self.ready:
            while not self.waiting and not self._closed:
                self.ready.wait()
            if self._closed:
                for row in self.waiting:
                    row.end()
                return None
            first = self.waiting.popleft()
            self.current, self.preparing = [first], True
        try:  # its inputs, when the batcher makes them: outside the lock, so others can queue meanwhile
            if not first.made():
                return []
        finally:
            self.preparing = False
        with self.ready:
            rows, started = [first], time.monotonic()
            self.current = rows  # and the rows that join it
            steady_traffic = first.key == self._last_key and started - self._last_end < STEADY_S
            steady = self._last_size if steady_traffic else 1
            while len(rows) < self.max_batch_size:
                rows += self._take(first.key, self.max_batch_size - len(rows))
                # Wait for requests on their way (decoding images) and, while traffic is steady,
                # for as many as the last batch saw; a lone request on an idle engine starts at once.
                expected = min(self.max_batch_size, max(len(rows) + self.callers(), steady))
                left = started + self.max_wait_s - time.monotonic()
                if len(rows) >= expected or left <= 0:
                    break
                self.ready.wait(left)
        remember(self.waits, time.monotonic() - started)
        return rows

    def _take(self, key, room: int) -> list[Row]:
        taken = [row for row in self.waiting if row.key == key][:room]
        for row in taken:
            self.waiting.remove(row)
        return taken

    def _generate(self, rows: list[Row]) -> None:
        rows = [row for row in rows if not row.finished() and row.made()]  # cancelled: no prefill
        if not rows:
            return
        remember(self.sizes, len(rows))
        config = _batch_config(rows)
        inputs = dict(collate([row.inputs for row in rows], self.pad_id))
        compiled = is_compiled(config)
        if compiled:  # a static cache: round its length up to a bucket (fewer compilations)
            width = inputs["input_ids"].shape[1]
            length = cache_tokens(width + config.max_new_tokens - 1, self.cache_limit)
            # Rows end on their own max_new_tokens; the batch's larger one only sizes the cache.
            config.max_new_tokens = length - width + 1
        processors = [_RowMinTokens(rows, self.stop_ids)]
        templates = [row.template for row in rows]
        if any(t is not None for t in templates):
            from .grammar import JsonLogitsProcessor

            processors.append(JsonLogitsProcessor(templates, self.constraints()))
        if self.think_ids and any(row.thinking_budget for row in rows):  # after the grammar: see there
            processors.append(_RowThinkingBudget(rows, *self.think_ids))
        if rows[0].seed is not None:
            torch.manual_seed(rows[0].seed)
        self.generating = True
        try:
            with torch.inference_mode(), self._adapters(rows):  # a kept cache's tensors are inference tensors
                if compiled:
                    inputs["past_key_values"] = self.caches.get(len(rows), length)
                self.model.generate(
                    **inputs,
                    generation_config=config,
                    streamer=_Fanout(rows, self.stop_ids),
                    logits_processor=LogitsProcessorList(processors),
                    stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
                )
        finally:
            self.generating = False


def row_config(options, base, stop_ids, device: str | None):
    """The GenerationConfig `generate` runs a row's resolved options with (a copy of the
    checkpoint's, `base`), compiled on `device` when given, and the key of the rows it may share
    a batch with (every batch-wide setting alike)."""
    import copy

    from .decoding import compiled_config

    config = copy.deepcopy(base)
    config.do_sample = bool(options.sample)
    config.max_new_tokens, config.min_new_tokens = options.max_new_tokens, options.min_new_tokens
    config.repetition_penalty = options.repetition_penalty or 1.0
    if config.do_sample:
        config.temperature, config.top_p = options.temperature or 1.0, options.top_p or 1.0
        config.top_k = options.top_k or 0
    else:  # greedy: neutral sampling knobs, which generate() neither uses nor warns about
        config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
    config.eos_token_id = sorted(stop_ids)
    if device is not None:
        config = compiled_config(config, device)
    else:  # a checkpoint's own compile_config must not turn compiled batches on
        config.compile_config = None
    key = (config.do_sample, config.temperature, config.top_p, config.top_k, config.repetition_penalty)
    return config, key


def _batch_config(rows: list[Row]):
    import copy

    config = copy.deepcopy(rows[0].config)
    config.max_new_tokens = max(row.config.max_new_tokens for row in rows)
    config.min_new_tokens = None  # per row, by _RowMinTokens
    return config


class _Fanout(BaseStreamer):
    """Each step's tokens, one per row, go to that row's caller until the row has ended."""

    def __init__(self, rows: list[Row], stop_ids: set[int]):
        self.rows, self.stop_ids = rows, stop_ids
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if not row.ended:  # an ended row's caller was answered; the batch goes on
                row.emit(token, now, self.stop_ids)

    def end(self):
        pass


class _RowsDone(StoppingCriteria):
    """Per row: done when it has ended or was cancelled; generation stops when all are."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        done = [row.finished() for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowMinTokens(LogitsProcessor):
    """min_new_tokens per row: its stop tokens are masked until it has that many."""

    def __init__(self, rows: list[Row], stop_ids: set[int]):
        self.rows, self.stop_ids = rows, sorted(stop_ids)
        self.step = 0

    def __call__(self, input_ids, scores):
        held = [i for i, row in enumerate(self.rows) if self.step < (row.config.min_new_tokens or 0)]
        self.step += 1
        if held:
            rows = torch.tensor(held, device=scores.device)
            stops = torch.tensor(self.stop_ids, device=scores.device)
            scores[rows[:, None], stops] = float("-inf")
        return scores


class _RowThinkingBudget(LogitsProcessor):
    """thinking_budget per row: once a row has written that many tokens inside <think>, only
    </think> may come next (as soon as its JSON grammar allows it: it runs first), and the model
    goes on to its answer."""

    def __init__(self, rows: list[Row], open_id: int, close_id: int):
        self.rows, self.open_id, self.close_id = rows, open_id, close_id
        self.thinking = [row.thinking_open for row in rows]
        self.spent = [0] * len(rows)
        self.step = 0

    def __call__(self, input_ids, scores):
        if self.step:  # the newest token of each row (at step 0 it is the prompt's)
            for i, token in enumerate(input_ids[:, -1].tolist()):
                if token == self.open_id:
                    self.thinking[i], self.spent[i] = True, 0
                elif token == self.close_id:
                    self.thinking[i] = False
                elif self.thinking[i]:
                    self.spent[i] += 1
        self.step += 1
        for i, row in enumerate(self.rows):
            if row.thinking_budget and self.thinking[i] and self.spent[i] >= row.thinking_budget:
                closing = scores[i, self.close_id].clone()
                if row.template is not None and not torch.isfinite(closing):
                    continue  # its grammar is mid-character (a byte token): close at the next one
                scores[i] = float("-inf")
                scores[i, self.close_id] = closing if torch.isfinite(closing) else 0.0
        return scores
