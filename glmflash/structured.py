"""Structured answers: OpenAI's `response_format` enforced by grammar-constrained decoding.

`{"type": "json_object"}` and `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`
become an llguidance grammar; a logits processor masks every token the grammar forbids, and once
the JSON value is closed only the stop tokens remain, so generation ends there. llguidance was
chosen because it alone produced valid, schema-true JSON on every seed of the random-weights test
model, refuses unsupported keywords at compile time (a 400 that names them) and keeps the model's
special tokens out of strings. Every answer is still validated with `jsonschema` before use.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict

import numpy as np
import torch
from transformers import LogitsProcessor

from .errors import GlmflashError, InvalidRequestError

# One-line JSON ('{"a": 1, "b": [2, 3]}'): no free whitespace for a weak model to wander in, and
# no \uXXXX escapes (a character is then at most 4 bytes), so an answer's length is bounded by
# its schema (worst_case_tokens).
JSON_STYLE = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allowed_escapes": '"\\bfnrt',
}
# JSON numbers have unbounded digits (even under minimum/maximum); a degenerate model can write
# "0.3333..." until its budget runs out. A run of digits stops at this many (more than a double's
# 17 significant digits) wherever the grammar lets the number end.
MAX_DIGIT_RUN = 20
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHIFTS = torch.arange(32, dtype=torch.int32)


class SchemaError(InvalidRequestError):
    code = "unsupported_schema"


class OutputError(GlmflashError):
    """The model's answer is not valid for the requested format: never passed on."""

    status = 422
    code = "invalid_output"


class TruncatedOutputError(OutputError):
    """The JSON answer ran out of tokens before it was complete: a larger budget may finish it."""


def requested_schema(response_format, param: str = "response_format") -> dict | None:
    """Check an OpenAI response_format; the JSON Schema to enforce, or None for plain text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError("response_format must be an object.", param=param)
    kind = response_format.get("type")
    extra = set(response_format) - {"type", "json_schema"}
    if extra:
        raise InvalidRequestError(f"Unknown field {param}.{sorted(extra)[0]}.", param=param)
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise InvalidRequestError(
            f"{param}.type must be 'text', 'json_object' or 'json_schema', not {kind!r}.",
            param=f"{param}.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(f"{param}.json_schema must be an object.", param=f"{param}.json_schema")
    unknown = set(spec) - {"name", "schema", "strict", "description"}
    if unknown:
        name = f"{param}.json_schema.{sorted(unknown)[0]}"
        raise InvalidRequestError(f"Unknown field {name}.", param=name)
    if not isinstance(spec.get("name"), str) or not NAME.match(spec["name"]):
        raise InvalidRequestError(
            f"{param}.json_schema.name must be 1-64 letters, digits, '_' or '-'.",
            param=f"{param}.json_schema.name",
        )
    if "strict" in spec and not isinstance(spec["strict"], bool | None):
        raise InvalidRequestError(
            f"{param}.json_schema.strict must be true or false.", param=f"{param}.json_schema"
        )
    schema = spec.get("schema", {"type": "object"})
    check_schema(schema, param=f"{param}.json_schema.schema")
    return schema


def check_schema(schema, *, param: str) -> None:
    """A valid JSON Schema whose every keyword we can enforce; else SchemaError naming the problem."""
    import jsonschema
    import llguidance

    if not isinstance(schema, dict):
        raise SchemaError(f"{param} must be a JSON Schema object.", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.path))
        raise SchemaError(
            f"{param} is not a valid JSON Schema: {exc.message} (at '{where}').", param=param
        ) from None
    problem = llguidance.LLMatcher.validate_grammar(_grammar(schema, thinking="off"))
    if problem:
        reason = problem.split("failed to compile JSON schema: ", 1)[-1]
        reason = " ".join(re.split(r"\n\s+1 \| ", reason)[0].split())  # drop llguidance's grammar echo
        raise SchemaError(f"{param} uses what cannot be enforced: {reason}", param=param)


def validate_answer(text: str, schema: dict, finish_reason: str, max_new_tokens: int):
    """The parsed answer, or OutputError (a cut-off answer says how to get a whole one)."""
    import jsonschema

    if finish_reason == "length":
        raise TruncatedOutputError(
            f"The JSON answer was cut off at max_tokens={max_new_tokens} before it was complete: allow "
            "more tokens, or bound the schema (maxLength, maxItems).",
            param="max_new_tokens",
        )
    try:
        value = json.loads(text)
        jsonschema.validate(value, schema)
        _finite(value)
    except (ValueError, jsonschema.ValidationError) as exc:
        message = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
        raise OutputError(f"The model's answer does not match the requested format: {message}") from None
    return value


THINKING = {  # how the reasoning before the JSON looks, by what the prompt already holds
    "off": "",  # the prompt holds an empty <think></think>: the JSON comes first
    # The model writes its own <think>...</think>, after a newline in the text-family prompt form.
    # llguidance treats every added token as special (flagged so or not, as <think> is not in the
    # real tokenizer), so <think> here is the single token and THOUGHT cannot swallow </think>.
    "model-opens": "NL? <think> THOUGHT </think> ",
    "opened": "THOUGHT </think> ",  # the prompt ends in <think>: reasoning, then </think>
}


def _finite(value) -> None:
    """JSON has no Infinity: a number too big for a float (1e999) is not passed on."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a number is out of range ({value})")
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _finite(item)


def _grammar(schema: dict, *, thinking: str) -> str:
    """Lark for llguidance: the reasoning part, an optional newline (the chat format puts one
    after </think>, and the text-family form before an answer without thinking), then the JSON
    value. A lexeme cannot hold a special token, so THOUGHT ends at the model's </think>."""
    import llguidance

    lark = f"start: {THINKING[thinking]}NL? json\nNL: /\\n/\n"
    if thinking != "off":
        lark += "THOUGHT: /(.|\\n)*/\n"
    lark += f"json: %json {json.dumps({**schema, 'x-guidance': JSON_STYLE})}\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)


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
        self.matchers = [t.deep_copy() if t is not None else None for t in templates]
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
