"""Runs `model.generate` (its only caller) and hands out (token id, time produced) pairs.

`stream_tokens` runs it on a fresh thread so tokens can be read while they are made; `run_tokens`
runs it on the caller's thread and replays the tokens after (what `Engine.chat` needs, without a
thread hop). Stopping is a stopping criterion tied to events, so the model stops within a token
of a cancel; the thread is always joined before the iterator finishes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

_END = object()
COALESCE_S = 0.02  # after the first token, the reader looks at most this often (50 times a second)
Timed = tuple[int, float]


class _StopOnEvent(StoppingCriteria):
    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _Recorder(BaseStreamer):
    """Collects generated ids with the time each was produced (the first put is the prompt)."""

    def __init__(self, sink: Callable[[Timed], None]):
        self.sink = sink
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter()
        for token in value.reshape(-1).tolist():
            self.sink((token, now))

    def end(self):
        pass


def _generate(model, make_inputs, config, streamer, processors, *stop_events: threading.Event) -> None:
    with torch.inference_mode():
        model.generate(
            **make_inputs(),
            generation_config=config,
            streamer=streamer,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([_StopOnEvent(*stop_events)]),
        )


def run_tokens(model, make_inputs, config, stop: threading.Event, processors=()) -> Iterator[Timed]:
    """Generate on this thread, then yield the tokens with the times they were produced."""
    tokens: list[Timed] = []
    _generate(model, make_inputs, config, _Recorder(tokens.append), processors, stop)
    yield from tokens


def stream_tokens(model, make_inputs, config, stop: threading.Event, processors=()) -> Iterator[Timed]:
    """Generate on a fresh thread and yield tokens as they come; closing cancels and joins.

    `make_inputs()` runs the processor on that thread too: torch's CPU worker pool belongs to the
    thread that uses it, and two pools busy at once on a small machine slow the model down.
    """
    tokens: queue.SimpleQueue = queue.SimpleQueue()
    ended = threading.Event()
    abandoned = threading.Event()  # the reader went away: stop without touching `stop`
    failure: list[BaseException] = []
    first = []

    def sink(item: Timed) -> None:
        tokens.put(item)
        if not first:
            first.append(item)
            time.sleep(0)  # hand the GIL to the waiting reader now: time to first token

    def run():
        try:
            _generate(model, make_inputs, config, _Recorder(sink), processors, stop, abandoned)
        except BaseException as exc:  # handed to the reader, never lost in the thread
            failure.append(exc)
        finally:
            tokens.put(_END)
            ended.set()

    thread = threading.Thread(target=run, name="glmflash-generate", daemon=True)
    thread.start()
    try:
        finished = False
        while not finished:
            for item in drain(tokens, _END):
                if item is _END:
                    finished = True
                    break
                yield item
            else:
                # Let tokens gather before looking again (or until generation ends): each wake
                # of this thread takes a core from torch's workers on a small CPU.
                ended.wait(COALESCE_S)
    finally:
        abandoned.set()
        thread.join()
    if failure:
        raise failure[0]


def drain(tokens: queue.SimpleQueue, end) -> list:
    """Block for one item, then take whatever else is there, stopping after `end`."""
    items = [tokens.get()]
    while items[-1] is not end:
        try:
            items.append(tokens.get_nowait())
        except queue.Empty:
            break
    return items


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
