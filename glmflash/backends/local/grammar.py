"""Grammar-constrained decoding for the local engine: the tokenizer wrapped for llguidance, compiled
grammars (structured._grammar per schema, text.tool_grammar per tool spec) cached, and the logits
processor that masks each row to what its grammar allows (with the digit-run cap that keeps
numbers bounded).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import numpy as np
import torch
from transformers import LogitsProcessor

from ...text.structured import MAX_DIGIT_RUN, SchemaError, _grammar
from ...text.tool_grammar import ANSWER_TOKENS, tool_lark
from ...text.tools import ARG_KEY, ARG_KEY_CLOSE, ARG_VALUE, ARG_VALUE_CLOSE, CALL_CLOSE, CALL_OPEN

TOOL_MARKERS = (CALL_OPEN, CALL_CLOSE, ARG_KEY, ARG_KEY_CLOSE, ARG_VALUE, ARG_VALUE_CLOSE, *ANSWER_TOKENS)

_SHIFTS = torch.arange(32, dtype=torch.int32)


class Constraints:
    """Per engine: the tokenizer wrapped for llguidance, digit tokens, and compiled schemas (LRU)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids, *, cache_size: int = 128):
        import llguidance.hf

        self.vocab_size = vocab_size  # the lm_head's width, which may exceed the tokenizer's
        self.stop_ids = sorted(stop_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.stop_ids)
        self.digits = np.zeros(vocab_size, dtype=np.int32)
        count = min(len(tokenizer), vocab_size)
        for i, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(count)))):
            if text and text.isascii() and text.isdigit():
                self.digits[i] = len(text)
        # room_bits[k]: every token but the digit runs longer than k (k = digits left in a run)
        self.room_bits = [~_bits(self.digits > k) for k in range(int(self.digits.max()))]
        vocab = tokenizer.get_vocab()
        self.markers = frozenset(t for t in TOOL_MARKERS if t in vocab)  # tool markers that are one token
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, schema: dict, *, thinking: str):
        """A matcher in its start state (a template, copied per generation); cached per schema."""
        import llguidance

        key = (json.dumps(schema), thinking)  # property order is output order: keys are not sorted
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        matcher = llguidance.LLMatcher(self.tokenizer, _grammar(schema, thinking=thinking), log_level=0)
        if matcher.is_error():
            raise SchemaError(
                f"response_format cannot be enforced: {matcher.get_error()}", param="response_format"
            )
        return self._keep(key, matcher)

    def compile_tools(self, spec, *, thinking: str):
        """A matcher for a text.tools.ToolSpec's calls, or None where it cannot be held (`auto`
        needs <tool_call> to be one token); cached per spec."""
        import llguidance

        if not spec.forced and CALL_OPEN not in self.markers:
            return None
        key = ("tools", spec.key(), thinking)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        lark = llguidance.LLMatcher.grammar_from_lark(tool_lark(spec, thinking=thinking, tokens=self.markers))
        matcher = llguidance.LLMatcher(self.tokenizer, lark, log_level=0)
        if matcher.is_error():
            raise SchemaError(f"tools cannot be enforced: {matcher.get_error()}", param="tools")
        return self._keep(key, matcher)

    def _keep(self, key, matcher):
        with self._lock:
            self._cache[key] = matcher
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return matcher


class JsonLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to what its grammar allows; one per generate() call.

    `templates[i]` is row i's compiled matcher, or None for a free row. It looks only at the newest
    token, so left padding is fine; a row that emitted a stop token is held to stop tokens.
    """

    def __init__(self, templates, constraints: Constraints):
        self.matchers: list = [t.deep_copy() if t is not None else None for t in templates]  # None: free row
        self.rows = [i for i, m in enumerate(self.matchers) if m is not None]
        self.stop_ids = constraints.stop_ids
        self.digits, self.room_bits = constraints.digits, constraints.room_bits
        self.bitmask = torch.full(
            (len(self.rows), (constraints.vocab_size + 31) // 32), -1, dtype=torch.int32
        )
        self.stop_mask = torch.zeros(self.bitmask.shape[1], dtype=torch.int32)
        for token in self.stop_ids:
            bit = 1 << (token % 32)
            self.stop_mask[token // 32] |= bit - (1 << 32) if bit >= 1 << 31 else bit
        self.ended: set[int] = set()
        self.errors: dict[int, str] = {}
        self.digit_run = [0] * len(self.matchers)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        if self.started:
            self._consume(input_ids[:, -1].tolist())
        self.started = True
        for k, i in enumerate(self.rows):
            row = self.bitmask[k]
            if i in self.ended or i in self.errors:
                row.copy_(self.stop_mask)
                continue
            self.matchers[i].unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
            room = max(0, MAX_DIGIT_RUN - self.digit_run[i])
            if room < len(self.room_bits):  # only shorter digit tokens fit, where the number can go on
                fewer = row & self.room_bits[room]
                if bool(fewer.any()):
                    row.copy_(fewer)
        return self._apply(scores)

    def _consume(self, tokens: list[int]) -> None:
        for i in self.rows:
            if i in self.ended or i in self.errors:
                continue
            token = tokens[i]
            digits = int(self.digits[token]) if token < len(self.digits) else 0
            self.digit_run[i] = self.digit_run[i] + digits if digits else 0
            if token in self.stop_ids:
                self.ended.add(i)
            elif not self.matchers[i].consume_token(token):
                self.errors[i] = self.matchers[i].get_error() or f"token {token} was not allowed"

    def _apply(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        allowed = _unpack(self.bitmask, scores.device)
        if allowed.shape[1] < vocab:  # ids past the bitmask are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        allowed = allowed[:, :vocab]
        if len(self.rows) == scores.shape[0]:
            scores.masked_fill_(~allowed, float("-inf"))
        else:
            index = torch.tensor(self.rows, device=scores.device)
            scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
        # An earlier processor (min_new_tokens) may have removed every token the grammar allows:
        # let the stop tokens through rather than sample from nothing (NaN).
        stops = torch.tensor(self.stop_ids, device=scores.device)
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores[:, stops] = torch.where(dead, 0.0, scores[:, stops])
        return scores


def _bits(flags: np.ndarray) -> torch.Tensor:
    """bool per token -> the int32 bitmask llguidance uses (bit k of the mask is token k)."""
    packed = np.packbits(np.pad(flags, (0, -len(flags) % 32)), bitorder="little")
    return torch.from_numpy(packed.view(np.int32).copy())


def _unpack(bitmask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """int32 bitmask (rows, V/32) -> bool (rows, V) on `device`; bit k of the mask is token k."""
    if device.type == "cpu":  # numpy unpacks ~4x faster than torch ops here
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    mask = bitmask.to(device, non_blocking=True)
    return ((mask.unsqueeze(-1) >> _SHIFTS.to(device)) & 1).bool().flatten(1)
