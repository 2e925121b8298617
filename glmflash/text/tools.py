"""Tool calls in the model's own format (docs/model-reference.md): OpenAI's `tools`, `tool_choice`
and `parallel_tool_calls` checked, the model's `<tool_call>` text parsed into OpenAI tool calls,
and the text stage that keeps a call's text out of the answer while it streams. No torch here: the
remote engine uses it too; the grammar that forces calls is in tool_grammar.py.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import string
from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..replies import Chunk, ToolCall
from .structured import NAME, check_schema

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ARG_KEY, ARG_KEY_CLOSE = "<arg_key>", "</arg_key>"
ARG_VALUE, ARG_VALUE_CLOSE = "<arg_value>", "</arg_value>"
MAX_TOOLS = 64  # per request
MAX_PARAMETERS_BYTES = 16_384  # one tool's parameters schema, as JSON
CHOICES = ("none", "auto", "required")
_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
_ID_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ToolSpec:
    """A request's checked tools: `tools` as the template lists them, `choice` one of CHOICES or
    the one function's name a call must use, `parallel` whether several calls may follow."""

    tools: tuple[dict, ...]
    choice: str
    parallel: bool = True

    @property
    def parameters(self) -> dict[str, dict]:
        """Each function's parameters schema, by name."""
        return {t["function"]["name"]: t["function"]["parameters"] for t in self.tools}

    @property
    def forced(self) -> bool:
        """The answer must be a call: `required` or a named function."""
        return self.choice not in ("none", "auto")

    @property
    def allowed(self) -> list[str]:
        """The functions a call may name."""
        names = list(self.parameters)
        return names if self.choice in CHOICES else [self.choice]

    def key(self) -> str:
        """One string per distinct spec (for caching its compiled grammar)."""
        return json.dumps([self.tools, self.choice, self.parallel], sort_keys=False)


def requested_tools(tools, tool_choice=None, parallel_tool_calls=None) -> ToolSpec | None:
    """Check OpenAI's tool fields; the spec, or None when the request has no tools to offer."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequestError("parallel_tool_calls must be true or false.", param="parallel_tool_calls")
    checked = _check_tools(tools)
    choice = _check_choice(tool_choice, checked)
    if not checked or choice == "none":
        return None if not checked else ToolSpec(tuple(checked), "none", parallel_tool_calls is not False)
    return ToolSpec(tuple(checked), choice, parallel_tool_calls is not False)


def _check_tools(tools) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a list of function tools.", param="tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"At most {MAX_TOOLS} tools per request, not {len(tools)}.", param="tools")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequestError(
                f'{where} must be {{"type": "function", "function": {{...}}}}.', param=where
            )
        extra = set(tool) - {"type", "function"}
        if extra:
            raise InvalidRequestError(f"Unknown field {where}.{sorted(extra)[0]}.", param=where)
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequestError(f"{where}.function must be an object.", param=f"{where}.function")
        extra = set(function) - {"name", "description", "parameters", "strict"}
        if extra:
            field = f"{where}.function.{sorted(extra)[0]}"
            raise InvalidRequestError(f"Unknown field {field}.", param=field)
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequestError(
                f"{where}.function.name must be 1-64 letters, digits, '_' or '-'.",
                param=f"{where}.function.name",
            )
        if name in seen:
            raise InvalidRequestError(f"Two tools are named {name!r}.", param=f"{where}.function.name")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(
                f"{where}.function.description must be a string.", param=f"{where}.function.description"
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        _check_parameters(parameters, f"{where}.function.parameters")
        clean = {
            "name": name,
            **({"description": description} if description else {}),
            "parameters": parameters,
        }
        out.append({"type": "function", "function": clean})
    return out


def _check_parameters(parameters, where: str) -> None:
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"{where} must be a JSON Schema object.", param=where)
    if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
        raise InvalidRequestError(
            f"{where} is over {MAX_PARAMETERS_BYTES} bytes of JSON: send a smaller schema.", param=where
        )
    if parameters.get("type", "object") != "object":
        raise InvalidRequestError(
            f"{where} must have type 'object' (a tool takes named arguments).", param=where
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        raise InvalidRequestError(f"{where}.properties must be an object.", param=where)
    for key in properties:
        if not key or any(c in key for c in "<>\n"):
            raise InvalidRequestError(
                f"{where}: argument name {key!r} cannot be written in the model's call format "
                "(no '<', '>' or newlines).",
                param=where,
            )
    check_schema(parameters, param=where)
    for key, schema in properties.items():
        if not is_string(schema):
            check_schema(argument_schema(parameters, key), param=f"{where}.properties.{key}")


def _check_choice(tool_choice, tools: list[dict]) -> str:
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in CHOICES:
            raise InvalidRequestError(
                f"tool_choice must be 'none', 'auto', 'required' or a function, not {tool_choice!r}.",
                param="tool_choice",
            )
        if tool_choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools.", param="tool_choice")
        return tool_choice
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(tool_choice, dict) and name is None and tool_choice.get("type") == "function":
        name = tool_choice.get("name")  # the Responses API's flat form
    if (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise InvalidRequestError(
            'tool_choice must be a string or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if name not in names:
        listed = ", ".join(names) or "none were sent"
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not one of the tools ({listed}).", param="tool_choice"
        )
    return name


def is_string(schema) -> bool:
    """A property the model writes as raw text (the chat template's rule, and vLLM's)."""
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "string":
        return True
    values = schema.get("enum", schema.get("const", None))
    if "type" not in schema and values is not None:
        values = values if isinstance(values, list) else [values]
        return bool(values) and all(isinstance(v, str) for v in values)
    return False


def argument_schema(parameters: dict, key: str) -> dict:
    """One property's schema on its own, with the root's definitions for its $refs."""
    schema = dict(parameters.get("properties", {}).get(key, {}))
    for defs in ("$defs", "definitions"):
        if defs in parameters and defs not in schema:
            schema[defs] = parameters[defs]
    return schema


# -- what the model wrote ----------------------------------------------------------------------


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def parse_calls(text: str, spec: ToolSpec | None) -> list[ToolCall]:
    """Every complete `<tool_call>…</tool_call>` in `text` as an OpenAI tool call. A value stays a
    string where the tool's schema says string, else it is read as JSON (then a Python literal,
    then kept as text), as vLLM reads it."""
    parameters = spec.parameters if spec is not None else {}
    calls: list[ToolCall] = []
    at = 0
    while True:
        start = text.find(CALL_OPEN, at)
        end = text.find(CALL_CLOSE, start + len(CALL_OPEN)) if start >= 0 else -1
        if start < 0 or end < 0:
            return calls
        body = text[start + len(CALL_OPEN) : end]
        at = end + len(CALL_CLOSE)
        cut = min(i for i in (body.find("\n"), body.find(ARG_KEY), len(body)) if i >= 0)
        name = body[:cut].strip()
        if not name:
            continue
        properties = parameters.get(name, {}).get("properties", {})
        arguments = {}
        for key, value in _ARG.findall(body[cut:]):
            key = key.strip()
            arguments[key] = value if is_string(properties.get(key)) else _value(value.strip())
        calls.append(ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False)))


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text


def render_arguments(arguments: str, where: str) -> dict:
    """An assistant message's call arguments (OpenAI's JSON string) as the object the template
    iterates; a 400 when they are not a JSON object."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be a JSON object (as a string).", param=where)
    return value


class ToolStage:
    """A text stage (text.stage.TextStage) whose answer stops where the model opens its first
    `<tool_call>`: from there the text is the calls', kept apart and parsed at the end (`calls`).
    `<tool_call>` inside the reasoning is left to the reasoning."""

    _MARKERS = ("<think>", "</think>", CALL_OPEN)

    def __init__(self, stage, spec: ToolSpec, *, start_in_reasoning: bool = False):
        self.stage, self.spec = stage, spec
        self.reasoning = start_in_reasoning
        self.raw: str | None = None  # the calls' text, once the first call opened
        self._held = ""
        self.calls: list[ToolCall] = []

    def __getattr__(self, name):  # in_reasoning, saw_marker, stopped, answer: the stage's own
        return getattr(self.stage, name)

    def feed(self, text: str) -> list[Chunk]:
        if self.raw is not None:
            self.raw += text
            return []
        text, self._held = self._held + text, ""
        at = 0
        while True:
            found = [(text.find(m, at), m) for m in self._MARKERS]
            found = [(i, m) for i, m in found if i >= 0]
            if not found:
                break
            i, marker = min(found)
            if marker == CALL_OPEN and not self.reasoning:
                self.raw = text[i:]
                return self.stage.feed(text[:i])
            if marker != CALL_OPEN:
                self.reasoning = marker == "<think>"
            at = i + len(marker)
        keep = next((k for k in range(min(len(text), 10), 0, -1)
                     if any(m.startswith(text[-k:]) for m in self._MARKERS)), 0)  # fmt: skip
        self._held = text[len(text) - keep :] if keep else ""
        return self.stage.feed(text[: len(text) - keep])

    def flush(self) -> list[Chunk]:
        out = [] if self.raw is not None else self.stage.feed(self._held)
        self._held = ""
        self.calls = parse_calls(self.raw or "", self.spec)
        return out + self.stage.flush()
