"""Structured answers: OpenAI's `response_format` checked, turned into an llguidance grammar, and
every answer validated. No torch here: the remote engine uses it too.

`{"type": "json_object"}` and `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`
become an llguidance grammar; locally a logits processor (grammar.py) masks every token the grammar
forbids, and once the JSON value is closed only the stop tokens remain, so generation ends there.
llguidance was chosen because it alone produced valid, schema-true JSON on every seed of the
random-weights test model, refuses unsupported keywords at compile time (a 400 that names them)
and keeps the model's special tokens out of strings. Every answer is still validated with
`jsonschema` before use.
"""

from __future__ import annotations

import json
import math
import re

from ..errors import GlmflashError, InvalidRequestError

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
