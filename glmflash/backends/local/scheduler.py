"""Iteration-level scheduling: the local engine's own decode loop, on the model's forward.

One thread owns the model. Each turn of its loop does at most one prefill chunk for the request
next in line, then one decode step for every running row:
- A request waits in arrival order for a free slot (`max_batch_size` slots). Its prompt is
  prefilled alone, its images encoded once, `prefill_chunk` tokens per turn, so a long prompt
  stalls the running rows by one chunk at a time. When its prefill ends it picks its first token
  and joins the running batch at the next step.
- A row that ends (its stop token, its length, a stop string, a cancel, a caller gone) leaves
  before the next step and frees its slot.
- Every setting is the row's own (rows.RowSampler): sampling, seed, minimum length, thinking
  budget, JSON grammar; so does its position: GLM-4.6V's rotary positions have three streams,
  and after the image tokens a row's text positions run ahead of its length by its own offset.

The KV cache is one of fixed slots (slots.py): each running row has its own slot and writes at
its own column, so a decode step has the same shapes whoever joins or leaves. Its size is bounded
by a budget (GLMFLASH_KV_CACHE_MB, or a share of the free memory): each slot may hold
`slot_tokens` tokens, prompt and answer, and the engine refuses a request that needs more. With
GLMFLASH_COMPILE the decode step runs compiled (torch.compile; CUDA graphs on a GPU), in this
same loop: compiled rows, too, join and leave at any token.

Greedy tokens are those of the request alone (`model.generate`), compiled or eager.

Failures (an out-of-memory error, a grammar that raises) fail only the rows they concern, and the
loop goes on: a row's own sampler or grammar, that row; making inputs or prefilling, the rows
being prefilled (not those put back in line); the running batch's step, a row leaving or a
group joining, every running row, and the shared cache is dropped (its state is not known); an
error outside any stage, every row the loop holds. Rows still waiting in line are kept. The loop
is not restarted: failures that repeat with no decode step working between them, or its thread
ending, mark it broken (rows.Line): every caller is answered at once and health() says why.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from . import decoding  # noqa: F401  (quiets the cache keyword's rename warning)
from .prefill import Prefill, group
from .reuse import Reuse, image_keys
from .rows import Line, Row, RowSampler, describe, pick, remember
from .slots import Decoder, Slots

log = logging.getLogger("glmflash")
GPU_SHARE, RAM_SHARE = 0.4, 0.25  # of the free memory, for the KV cache when no budget is set


def kv_bytes_per_token(model) -> int:
    """Bytes one token takes in the KV cache (keys and values, every layer)."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    return 2 * config.num_hidden_layers * heads * head_dim * size


def kv_budget(device: str, megabytes: int) -> int:
    """The KV cache's budget in bytes: the setting, else a share of the memory free now."""
    if megabytes > 0:
        return megabytes * 2**20
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * GPU_SHARE)
    try:
        with open("/proc/meminfo") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        available = 8 * 2**30
    return int(available * RAM_SHARE)


@dataclass(eq=False)
class _Live:
    """A running row: its sampler, its next rotary position, its cache column, its newest token."""

    row: Row
    sampler: RowSampler
    position: int  # the rotary position its next input token takes
    prompt: torch.Tensor  # (1, prompt tokens)
    start: int = 0  # where its prompt begins in its prefill's cache (until it joins)
    column: int = 0  # its slot's column its next input token's key and value go to
    last: int = 0  # its newest token, the next step's input
    fed: list[int] = field(default_factory=list)  # its tokens given to the model after the prompt

    def history(self) -> torch.Tensor | None:
        """What its sampler reads of the tokens so far: the prompt at its first pick (the
        penalty's token set starts from it), then its newest token (all a grammar consumes);
        None when it reads nothing."""
        if not self.sampler.reads_history(self.row.count):
            return None
        return self.prompt if self.row.count == 0 else torch.tensor([[self.last]])


class Scheduler(Line):
    """Owns the model's thread; `tokens()` is what the engine calls per request."""

    def __init__(
        self,
        model,
        stop_ids,
        pad_id: int,
        *,
        slots: int,
        prefill_chunk: int,
        constraints,
        think_ids: tuple[int, int] | None = None,
        router=None,
        slot_tokens: int,
        compiled: bool = False,
        prefix_cache_mb: int = 0,
    ):
        self.model, self.stop_ids, self.pad_id = model, set(stop_ids), pad_id
        self.router = router
        self.slots = max(1, slots)
        self.chunk = max(1, prefill_chunk)
        self.constraints, self.think_ids = constraints, think_ids
        self.waiting: deque[Row] = deque()
        self.ready = threading.Condition()
        self.live: list[_Live] = []  # the running rows: row i in slot i
        self.filling: Prefill | None = None
        self.taken: list[Row] = []  # rows taken from `waiting`, their inputs being made
        self.cache = Slots(model, self.slots, slot_tokens)  # the running rows' keys and values
        self.decoder = Decoder(model, self.cache, pad_id, compiled=compiled)
        self.reuse = Reuse(prefix_cache_mb, model.config.image_token_id)
        self._sizes: list[int] = []  # per busy spell: the most rows that decoded together
        self.prefills: list[tuple[int, int, int]] = []  # per prefill: rows, chunks, steps meanwhile
        self.steps = 0  # decode steps run
        self._peak = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="glmflash-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a thread that ran torch must end before the interpreter

    @property
    def sizes(self) -> list[int]:
        """Per busy spell (from idle to idle), the most rows that decoded together; the spell
        under way last."""
        return self._sizes + ([self._peak] if self._peak else [])

    @property
    def busy(self) -> bool:
        """Rows are running, being prefilled, or waiting."""
        return bool(self.live or self.filling or self.waiting or self.taken)

    def close(self) -> None:
        """End the loop after the step in hand; every row still open ends, later ones are refused."""
        with self.ready:
            self._closed = True
            self.ready.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        atexit.unregister(self.close)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        reason = "its thread has ended"
        try:
            while self.broken is None:
                try:
                    if not self._turn():
                        return
                except BaseException as exc:  # outside any stage: no row in hand is known to be sound
                    held = [*self.taken, *(self.filling.rows if self.filling is not None else [])]
                    self.taken = []
                    self._fail(exc, held, shared=True)
        except BaseException as exc:
            reason = f"its thread ended on {describe(exc)}"
        finally:
            if not self._closed:
                self._break(reason)

    def _turn(self) -> bool:
        """Rows taken from the line, a prefill chunk, a decode step; False once closed."""
        with self.ready:
            while not self.busy and not self._closed:
                if self._peak:  # a busy spell ended
                    remember(self._sizes, self._peak)
                    self._peak = 0
                self.ready.wait()  # idle: no turns, no CPU
            if self._closed:
                self._end_all()
                return False
            if self.filling is None:  # as many as there are free slots, in arrival order
                while self.waiting and len(self.live) + len(self.taken) < self.slots:
                    self.taken.append(self.waiting.popleft())
        with torch.inference_mode():
            if self.taken:
                self._guard(self._begin, self.taken, rows=self.taken)
                self.taken = []
            if self.filling is not None:  # the group's own cache: an error is its rows' alone
                job = self.filling
                lives = self._guard(self._fill, rows=job.rows)
                if lives:
                    self._guard(self._join, lives, job.cache, rows=[live.row for live in lives], shared=True)
            self._guard(self._leave, shared=True)
            if self.live:
                self._guard(self._step, shared=True)
                self._guard(self._leave, shared=True)
        return True

    def _guard(self, work, *args, rows: list[Row] | None = None, shared: bool = False):
        """work(*args), or None when it raised (see _fail)."""
        try:
            return work(*args)
        except BaseException as exc:
            self._fail(exc, rows or [], shared=shared)
            return None

    def _fail(self, exc: BaseException, rows: list[Row], *, shared: bool) -> None:
        """Hand `exc` to the callers of `rows` (but not of those back in line) and, when the
        running batch's cache is concerned (`shared`), of every running row, whose cache goes."""
        concerned = list(rows)
        if shared:
            concerned += [live.row for live in self.live]
            self.live = []
            self.cache.drop()
        with self.ready:
            concerned = [row for row in concerned if not row.ended and row not in self.waiting]
        for row in concerned:
            row.fail(exc)
        if self.filling is not None and all(row.ended for row in self.filling.rows):
            self.filling = None
        if shared:  # a prefill's failure is its request's (a hostile input must not break the loop)
            self._failed(exc)

    def _held(self) -> list[Row]:
        filling = self.filling.rows if self.filling is not None else []
        return [*self.taken, *filling, *(live.row for live in self.live)]

    def _end_all(self) -> None:
        for row in [*self.waiting, *self._held()]:
            row.end()
        self.waiting.clear()
        self.live, self.filling, self.taken = [], None, []
        self.cache.drop()

    # -- prefill ------------------------------------------------------------------------------

    def _begin(self, taken: list[Row]) -> None:
        """Make the taken rows' inputs; the first and those that fit beside it in one chunk are
        prefilled as a group, the rest go back to the front of the line."""
        chosen: list[Row] = []
        longest = 0
        for i, row in enumerate(taken):
            if row.finished():
                row.end()
                continue
            if not row.made():  # its caller has the error
                continue
            length = row.inputs["input_ids"].shape[1]
            if chosen and (len(chosen) + 1) * max(longest, length) > self.chunk:
                with self.ready:
                    self.waiting.extendleft(reversed(taken[i:]))
                break
            chosen.append(row)
            longest = max(longest, length)
        if chosen:
            self.filling = group(chosen, self.model, self.pad_id, self.steps, self.reuse)

    def _fill(self) -> list[_Live] | None:
        """Prefill the next chunk; after the last one each row picks its first token, and the
        rows are returned to join."""
        job = self.filling
        if job is None:
            return None
        if all(row.finished() for row in job.rows):
            for row in job.rows:
                row.end()
            self.filling = None
            return None
        alone = len(job.rows) == 1  # a group fits in one chunk; a row alone may take several
        end = min(job.width, job.done + self.chunk) if alone else job.width
        with self._adapters(job.rows):
            out = self.model(
                inputs_embeds=job.embeds[:, job.done : end],
                position_ids=job.positions[:, :, job.done : end],
                attention_mask=None if alone else job.mask,
                past_key_values=job.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        job.done, job.chunks = end, job.chunks + 1
        if end < job.width:
            return None
        self.filling = None
        remember(self.prefills, (len(job.rows), job.chunks, self.steps - job.steps_at))
        lives = []
        for row, offset in zip(job.rows, job.offsets, strict=True):
            ids = row.inputs["input_ids"]
            sampler = RowSampler(row, self.stop_ids, self.think_ids, self.constraints)
            length = ids.shape[1]
            lives.append(_Live(row, sampler, length + offset, ids, start=job.width - length, column=length))
        self._pick(lives, out.logits[:, -1].float())
        return lives

    # -- the running batch --------------------------------------------------------------------

    def _join(self, lives: list[_Live], cache) -> None:
        """Copy a prefilled group's keys and values into the next free slots (each row's prompt
        begins at its `start` in the group's left-padded cache)."""
        for i, live in enumerate(lives):
            self.cache.put(len(self.live) + i, cache, i, live.start, live.column)
        self.live.extend(lives)
        self._peak = max(self._peak, sum(not live.row.ended for live in self.live))

    def _leave(self) -> None:
        """Rows that ended or were cancelled leave now; the rows after them move up a slot, so
        the running rows keep slots 0..n-1."""
        keep = []
        for slot, live in enumerate(self.live):
            if live.row.finished():
                self._keep(slot, live)
                live.row.end()
            else:
                keep.append(live)
        if len(keep) == len(self.live):
            return
        if not keep:
            self.live = []
            return
        for slot, live in enumerate(keep):  # moving up only: a source is never an earlier target
            old = self.live.index(live)
            if old != slot:
                self.cache.move(old, slot, live.column)
        self.live = keep

    def _keep(self, slot: int, live: _Live) -> None:
        """Offer a leaving row's keys and values (prompt and answer) for prefix reuse; a failure
        here costs only the reuse."""
        if not self.reuse.on:
            return
        try:
            ids = torch.cat([live.prompt[0].cpu(), torch.tensor(live.fed, dtype=live.prompt.dtype)])
            n = live.column
            keys = [layer[slot, :, :n] for layer in self.cache.keys]
            values = [layer[slot, :, :n] for layer in self.cache.values]
            self.reuse.keep(live.row.adapter, ids[:n], image_keys(live.row.inputs), keys, values)
        except Exception as exc:  # memory, say: the next request prefills in full
            log.warning("prefix reuse: not kept (%s)", describe(exc))

    def _step(self) -> None:
        """One token for every running row."""
        lives = self.live
        with self._adapters([live.row for live in lives]):
            ids, positions = [live.last for live in lives], [live.position for live in lives]
            logits = self.decoder.step(ids, positions, [live.column for live in lives])
        self.steps += 1
        for live in lives:
            live.fed.append(live.last)
            live.position += 1
            live.column += 1
        self._pick(lives, logits)
        self._worked()

    def _pick(self, rows: list[_Live], logits: torch.Tensor) -> None:
        """Each row's next token (every setting its own), handed to its caller; a row whose own
        sampler failed (its grammar) gets the error instead, and leaves before the next step."""
        histories = [live.history() for live in rows]
        counts = [live.row.count for live in rows]
        tokens, errors = pick([live.sampler for live in rows], logits, histories, counts, self.stop_ids)
        now = time.perf_counter()
        for i, (live, token) in enumerate(zip(rows, tokens, strict=True)):
            if i in errors:
                log.warning("a row's token choice failed: %s", describe(errors[i]))
                live.row.fail(errors[i])
                continue
            live.last = token
            live.row.emit(token, now, self.stop_ids)


def slot_tokens(model, device: str, slots: int, megabytes: int, context: int) -> int:
    """How many tokens (prompt and answer) one slot may hold within the KV budget."""
    per_slot = kv_budget(device, megabytes) // (max(1, slots) * kv_bytes_per_token(model))
    return int(min(context, per_slot))
