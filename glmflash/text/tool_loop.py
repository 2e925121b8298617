"""The tool loop: `run_tools` asks an engine, runs the Python functions its calls name, hands the
results (text, JSON or PIL images) back as `tool` messages, and asks again until the model answers
or the step limit is reached. No torch here: any engine of the contract will do.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidRequestError
from ..replies import Reply, ToolCall

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class ToolRun:
    """What a loop did: the final reply, the whole conversation (for a follow-up question) and
    each step's call with what its function returned."""

    reply: Reply
    messages: list[dict]
    steps: list[tuple[ToolCall, object]] = field(default_factory=list)


def describe(function: Callable) -> dict:
    """An OpenAI function tool for a Python function: its name, its docstring's first line, and a
    parameter per argument (typed by its annotation; required unless it has a default)."""
    try:
        signature = inspect.signature(function, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # annotations that name what cannot be found
        signature = inspect.signature(function)
    properties, required = {}, []
    for name, parameter in signature.parameters.items():
        kind = _JSON_TYPES.get(parameter.annotation) if isinstance(parameter.annotation, type) else None
        properties[name] = {"type": kind} if kind else {}
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
    doc = (inspect.getdoc(function) or "").strip().split("\n")[0]
    parameters = {"type": "object", "properties": properties, "required": required}
    described = {"name": function.__name__, **({"description": doc} if doc else {}), "parameters": parameters}
    return {"type": "function", "function": described}


def run_tools(
    engine,
    messages: Sequence[dict],
    functions: Mapping[str, Callable] | Sequence[Callable],
    *,
    tools: list[dict] | None = None,
    tool_choice="auto",
    max_steps: int = 5,
    **gen,
) -> ToolRun:
    """Ask `engine` with `functions` on offer until it answers without calling one.

    `functions`: by name, or a list (named by `__name__`). `tools`: their OpenAI descriptions
    (default: `describe` of each). `tool_choice` holds for the first request only (later ones are
    "auto"), so "required" or a named function makes the model start with a call. After
    `max_steps` rounds of calls the model is asked once more with tool_choice "none", so a run
    always ends in an answer. A function that raises gives the model the error as its result."""
    if not isinstance(max_steps, int) or max_steps < 0:
        raise InvalidRequestError("max_steps must be a whole number, 0 or more.", param="max_steps")
    table = dict(functions) if isinstance(functions, Mapping) else {f.__name__: f for f in functions}
    tools = tools if tools is not None else [describe(f) for f in table.values()]
    conversation = list(messages)
    steps: list[tuple[ToolCall, object]] = []
    for step in range(max_steps + 1):
        choice = "none" if step == max_steps else tool_choice if step == 0 else "auto"
        reply = engine.chat(conversation, tools=tools, tool_choice=choice, **gen)
        if not reply.tool_calls:
            return ToolRun(reply, [*conversation, {"role": "assistant", "content": reply.text}], steps)
        conversation.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [c.to_dict() for c in reply.tool_calls],
            }
        )
        for call in reply.tool_calls:
            result = _call(table, call)
            steps.append((call, result))
            conversation.append({"role": "tool", "tool_call_id": call.id, "content": _content(result)})
    raise AssertionError("unreachable: the last round offers no tools")


def _call(table: Mapping[str, Callable], call: ToolCall):
    function = table.get(call.name)
    if function is None:
        return f"Error: there is no function named {call.name!r}."
    try:
        arguments = json.loads(call.arguments)
        return function(**arguments)
    except Exception as exc:  # the model reads the error and may try again
        return f"Error: {type(exc).__name__}: {exc}"


def _content(result) -> str | list[dict]:
    """A function's result as a tool message's content: text, JSON, or image parts (a PIL image,
    or a list mixing text and images)."""
    items = result if isinstance(result, list | tuple) and any(_is_image(r) for r in result) else [result]
    if len(items) == 1 and isinstance(items[0], str):
        return items[0]
    parts: list[dict] = []
    for item in items:
        if _is_image(item):
            parts.append({"type": "image", "image": item})
        else:
            text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)
            parts.append({"type": "text", "text": text})
    return parts


def _is_image(value) -> bool:
    return hasattr(value, "getbbox") and hasattr(value, "size")  # a PIL image, without importing PIL
