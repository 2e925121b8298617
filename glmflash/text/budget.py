"""The most tokens a structured answer can take: an upper bound from its JSON Schema under the
grammar's rules (structured.JSON_STYLE: one-line JSON, no \\uXXXX escapes; MAX_DIGIT_RUN), so a
task's budget never cuts off an answer the grammar lets through.

Every token is at least one byte, so the bound counts bytes: a string character at most 4 (UTF-8;
an escape such as \\n takes 2), a number its sign, integer digits (from its bounds) and fraction.
A schema that leaves a length open (a string without maxLength, an array without maxItems,
additional properties) has no bound: None.
"""

from __future__ import annotations

import json
import re

from .structured import MAX_DIGIT_RUN

CHAR_BYTES = 4
SLACK = 2  # the newline the grammar allows before the JSON, and the stop token after it
SEPARATOR = 2  # ", " and ": " (JSON_STYLE)
FORMAT_CHARS = {"date": 10, "time": 8, "uuid": 36}


class _Unbounded(Exception):
    pass


def worst_case_tokens(schema: dict | None) -> int | None:
    """At most this many tokens for any answer the grammar allows, or None when unbounded."""
    if schema is None:
        return None
    try:
        return SLACK + _bytes(schema)
    except _Unbounded:
        return None


def _bytes(schema) -> int:
    if not isinstance(schema, dict) or "$ref" in schema or not schema:
        raise _Unbounded
    if "const" in schema:
        return _dumped(schema["const"])
    if "enum" in schema:
        return max(_dumped(value) for value in schema["enum"])
    for key in ("anyOf", "oneOf"):  # each branch alone allows at least as much as with the rest
        if key in schema:
            return max(_bytes(branch) for branch in schema[key])
    if "allOf" in schema:
        bounds = [_maybe(part) for part in schema["allOf"]] + [_maybe(_without(schema, "allOf"))]
        if all(b is None for b in bounds):
            raise _Unbounded
        return min(b for b in bounds if b is not None)
    kind = schema.get("type") or _implied_type(schema)
    if isinstance(kind, list):
        return max(_bytes({**schema, "type": one}) for one in kind)
    if not isinstance(kind, str):
        raise _Unbounded
    measure = {
        "null": lambda s: 4,
        "boolean": lambda s: 5,
        "integer": lambda s: _number(s, fraction=False),
        "number": lambda s: _number(s, fraction=True),
        "string": _string,
        "array": _array,
        "object": _object,
    }.get(kind)
    if measure is None:
        raise _Unbounded
    return measure(schema)


def _maybe(schema) -> int | None:
    try:
        return _bytes(schema)
    except _Unbounded:
        return None


def _without(schema: dict, key: str) -> dict:
    return {k: v for k, v in schema.items() if k != key}


def _implied_type(schema: dict) -> str | None:
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _dumped(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode())


def _number(schema: dict, *, fraction: bool) -> int:
    low = _first(schema, "minimum", "exclusiveMinimum")
    high = _first(schema, "maximum", "exclusiveMaximum")
    if low is None or high is None:  # llguidance allows an exponent then: each part a digit run
        return 1 + MAX_DIGIT_RUN + (1 + MAX_DIGIT_RUN if fraction else 0) + 2 + MAX_DIGIT_RUN
    digits = len(str(int(max(abs(low), abs(high)))))
    return (1 if low < 0 else 0) + digits + (1 + MAX_DIGIT_RUN if fraction else 0)


def _first(schema: dict, *names: str):
    values = [schema[name] for name in names if isinstance(schema.get(name), (int, float))]
    return values[0] if values else None


def _string(schema: dict) -> int:
    bounds = []
    if isinstance(schema.get("maxLength"), int):
        bounds.append(schema["maxLength"])
    if isinstance(schema.get("pattern"), str):
        bounds.append(_pattern_chars(schema["pattern"]))
    if schema.get("format") in FORMAT_CHARS:
        bounds.append(FORMAT_CHARS[schema["format"]])
    bounds = [b for b in bounds if b is not None]
    if not bounds:
        raise _Unbounded
    return 2 + min(bounds) * CHAR_BYTES


def _pattern_chars(pattern: str) -> int | None:
    """The longest string a pattern anchored at both ends (^...$) matches; None otherwise (a
    JSON Schema pattern matches anywhere in a longer string)."""
    try:
        from re import _parser as parser  # type: ignore[attr-defined]  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as parser

    try:
        parsed = parser.parse(pattern)
    except re.error:
        return None
    items = list(parsed)
    at = parser.AT
    anchored = (
        len(items) >= 2
        and items[0] == (at, parser.AT_BEGINNING)
        and items[-1] in ((at, parser.AT_END), (at, parser.AT_END_STRING))
    )
    width = parsed.getwidth()[1]
    return width if anchored and width < parser.MAXREPEAT else None


def _array(schema: dict) -> int:
    prefix = schema.get("prefixItems") or []
    items = schema.get("items", True)
    count = schema.get("maxItems")
    if items is False:
        count = min(count, len(prefix)) if isinstance(count, int) else len(prefix)
    if not isinstance(count, int):
        raise _Unbounded
    if count == 0:
        return 2
    parts = [_bytes(p) for p in prefix[:count]]
    if count > len(prefix):
        parts += [_bytes(items)] * (count - len(prefix))
    return 2 + sum(parts) + SEPARATOR * (count - 1)


def _object(schema: dict) -> int:
    if schema.get("additionalProperties", True) is not False or schema.get("patternProperties"):
        raise _Unbounded
    properties = schema.get("properties") or {}
    if not properties:
        return 2
    fields = [_dumped(name) + SEPARATOR + _bytes(value) for name, value in properties.items()]
    return 2 + sum(fields) + SEPARATOR * (len(fields) - 1)
