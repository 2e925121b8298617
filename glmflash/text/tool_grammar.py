"""The llguidance grammar (Lark) that keeps tool calls valid: with `required` or a named function
the answer is one call (or, with parallel_tool_calls, up to MAX_CALLS) of the allowed tools, each
required argument present and each value matching its property's schema; with `auto` the model
writes freely until it opens `<tool_call>`, and the rest of the call is held the same way.

A marker the tokenizer has as one token (`tokens`) is written as that token (a lexeme can then
never contain it); the others as text. A string value is raw text (a lazy lexeme that ends at the
first `</arg_value>`, honouring enum, const, minLength and maxLength; `pattern` and `format` are
not enforced); any other value is `%json` of its schema. Properties come in the schema's order.
No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from .structured import JSON_STYLE, THINKING
from .tools import (
    ARG_KEY,
    ARG_KEY_CLOSE,
    ARG_VALUE,
    ARG_VALUE_CLOSE,
    CALL_CLOSE,
    CALL_OPEN,
    ToolSpec,
    argument_schema,
    is_string,
)

MAX_CALLS = 8  # calls in one answer with parallel_tool_calls: a runaway model stops there
# Special tokens an answer may hold in `auto` mode, where they are tokens (the key-answer box).
ANSWER_TOKENS = ("<|begin_of_box|>", "<|end_of_box|>")


def tool_lark(spec: ToolSpec, *, thinking: str, tokens: Collection[str] = ()) -> str:
    """The Lark text for llguidance (LLMatcher.grammar_from_lark compiles it)."""
    mark = {m: m if m in tokens else json.dumps(m) for m in
            (CALL_OPEN, CALL_CLOSE, ARG_KEY, ARG_KEY_CLOSE, ARG_VALUE, ARG_VALUE_CLOSE)}  # fmt: skip
    if spec.forced:
        body = "NL? calls"
    else:
        if CALL_OPEN not in tokens:
            raise ValueError("auto tool calls need <tool_call> to be one token")
        specials = [t for t in ANSWER_TOKENS if t in tokens]
        free = f"FREE? (({' | '.join(specials)}) FREE?)*" if specials else "FREE?"
        body = "free calls?"
        lines = [f"free: {free}", r"FREE: /(.|\n)+/"]
    lines = [f"start: {THINKING[thinking]}{body}", r"NL: /\n/", *(lines if not spec.forced else [])]
    if thinking != "off":
        lines.append(r"THOUGHT: /(.|\n)*/")
    more = "".join("(NL call" for _ in range(MAX_CALLS - 1)) + ")?" * (MAX_CALLS - 1)
    lines.append(f"calls: call {more}" if spec.parallel else "calls: call")
    names = spec.allowed
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(names))))
    parameters = spec.parameters
    for i, name in enumerate(names):
        lines += _call(f"call_{i}", name, parameters[name], mark)
    return "\n".join(lines) + "\n"


def _call(rule: str, name: str, parameters: dict, mark: dict) -> list[str]:
    properties = parameters.get("properties", {})
    required = set(parameters.get("required", []))
    parts, lines = [], []
    for k, key in enumerate(properties):
        arg = f"{rule}_a{k}"
        parts.append(arg if key in required else f"{arg}?")
        head = f"{mark[ARG_KEY]} {_literal(key)} {mark[ARG_KEY_CLOSE]} NL {mark[ARG_VALUE]}"
        lines.append(f"{arg}: {head} {arg}_v NL")
        lines.append(_value(f"{arg}_v", argument_schema(parameters, key), mark[ARG_VALUE_CLOSE]))
    args = " ".join(parts)
    lines.insert(0, f"{rule}: {mark[CALL_OPEN]} {_literal(name)} NL {args} {mark[CALL_CLOSE]}")
    return lines


def _value(rule: str, schema: dict, close: str) -> str:
    if not is_string(schema):
        style = {**schema, "x-guidance": JSON_STYLE}
        return f"{rule}: {rule}_j {close}\n{rule}_j: %json {json.dumps(style)}"
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is not None:
        choices = " | ".join(_literal(v) for v in values if isinstance(v, str)) or '""'
        return f"{rule}: ({choices}) {close}"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    span = f"{{{low},{int(high)}}}" if high is not None else (f"{{{low},}}" if low else "*")
    text = f"/(?s:.{span})/"
    # A text close marker ends a lazy match at its first occurrence: the value never holds it.
    lazy = "" if close.startswith("<") else "[lazy]"
    return f"{rule}{lazy}: {text} {close}"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
