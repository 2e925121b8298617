"""The Responses API subset agent SDKs use (POST /v1/responses): the request turned into chat
messages and options for the engine, and the reply into a response object or its stream of events.

Supported: `input` as text or items (messages with input_text / input_image / output_text parts,
function_call and function_call_output items, images in a function's output too), `instructions`,
function `tools`, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`,
`top_p`, `stream`; glmflash's `thinking`. Not stateful: nothing is stored, and
`previous_response_id` is refused (send the whole conversation as `input`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import GlmflashError
from .errors import ApiError
from .protocol import finish

IGNORED = {"store", "metadata", "user", "truncation", "include", "service_tier", "stream_options"}


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: Any = None
    instructions: str | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    thinking: bool | None = None
    seed: int | None = None

    def chat(self) -> tuple[list[dict], dict]:
        """(chat messages, the engine's keyword arguments); an ApiError for what is not supported."""
        for name in self.model_extra or {}:
            if name not in IGNORED:
                raise ApiError(400, f"Unknown field '{name}'.", code="unknown_field", param=name)
        if self.previous_response_id is not None:
            raise ApiError(
                400,
                "This server stores no responses: send the whole conversation as input.",
                code="unsupported",
                param="previous_response_id",
            )
        fmt = (self.text or {}).get("format") or {"type": "text"}
        if fmt.get("type") != "text":
            raise ApiError(
                400, "Only text.format 'text' is supported here.", code="unsupported", param="text.format"
            )
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += to_messages(self.input)
        options: dict = {}
        for name, key in (
            ("max_output_tokens", "max_new_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("thinking", "thinking"),
            ("seed", "seed"),
        ):
            if getattr(self, name) is not None:
                options[key] = getattr(self, name)
        if self.tools is not None:
            options["tools"] = to_chat_tools(self.tools)
        if self.tool_choice is not None:
            options["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = self.parallel_tool_calls
        return messages, options


def to_chat_tools(tools) -> Any:
    """Responses' flat function tools ({"type": "function", "name", "parameters"}) in chat form;
    anything else is left for the core to refuse by its place."""
    if not isinstance(tools, list):
        return tools
    out = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function" and "function" not in tool:
            function = {k: v for k, v in tool.items() if k in ("name", "description", "parameters", "strict")}
            out.append({"type": "function", "function": function})
        else:
            out.append(tool)
    return out


def to_messages(items) -> list[dict]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ApiError(
            400, "input must be text or a non-empty list of items.", code="invalid_request", param="input"
        )
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _parts(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _parts(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind != "reasoning":  # earlier reasoning items are not sent back to the model
            raise ApiError(
                400, f"{where} has unsupported type {kind!r}.", code="invalid_request", param=where
            )
    return messages


def _parts(content, where: str):
    """Responses content parts as chat parts (input_text/output_text -> text, input_image ->
    image_url); the core checks what they hold."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400, f"{where}.content must be text or a list of parts.", code="invalid_request", param=where
        )
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                here = f"{where}.content[{j}].image_url"
                raise ApiError(
                    400,
                    f"{here} must be a URL or data URL (file_id is not supported).",
                    code="invalid_request",
                    param=here,
                )
            out.append({"type": "image_url", "image_url": {"url": url}})
        else:
            out.append(part)  # the core names what it cannot take
    return out


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def usage(u) -> dict:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": getattr(u, "cached_tokens", 0)},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


def reasoning_item(text: str, item_id: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [{"type": "summary_text", "text": text}]}


def message_item(text: str, item_id: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def call_item(call, status: str = "completed") -> dict:
    arguments = call.arguments if status == "completed" else ""
    return {
        "type": "function_call",
        "id": "fc_" + call.id.removeprefix("call_"),
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def response_object(body: ResponsesRequest, model: str, response_id: str, output: list, final=None) -> dict:
    """The response: in progress (final None) or done with `final` (a Reply or last Chunk)."""
    reason = finish(final.finish_reason) if final is not None else None
    incomplete = reason == "length"
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "in_progress" if final is None else "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "instructions": body.instructions,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_output_tokens": body.max_output_tokens,
        "previous_response_id": None,
        "store": False,
        "text": {"format": {"type": "text"}},
        "metadata": {},
        "usage": usage(final.usage) if final is not None else None,
    }


def output_of(reply) -> list[dict]:
    """A whole Reply's output items: its reasoning, its answer, its calls."""
    out = [reasoning_item(reply.reasoning, new_id("rs"))] if reply.reasoning else []
    if reply.text or not reply.tool_calls:
        out.append(message_item(reply.text, new_id("msg")))
    return out + [call_item(call) for call in reply.tool_calls]


class Events:
    """Chunks in, Responses streaming events out (each with its type and sequence number):
    the reasoning as one item when the answer starts, the answer's text deltas, each call's
    arguments, then response.completed with the whole response."""

    def __init__(self, body: ResponsesRequest, model: str):
        self.body, self.model, self.id = body, model, new_id("resp")
        self.sequence = 0
        self.output: list[dict] = []
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.message_id: str | None = None

    def event(self, kind: str, **fields) -> dict:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def start(self) -> list[dict]:
        created = response_object(self.body, self.model, self.id, [])
        return [
            self.event("response.created", response=created),
            self.event("response.in_progress", response=created),
        ]

    def chunk(self, chunk) -> list[dict]:
        if chunk.reasoning:
            self.reasoning.append(chunk.text)
            return []
        out = self._open_message()
        self.text.append(chunk.text)
        ids = {"item_id": self.message_id, "output_index": len(self.output) - 1, "content_index": 0}
        return [*out, self.event("response.output_text.delta", delta=chunk.text, logprobs=[], **ids)]

    def final(self, final) -> list[dict]:
        out = self._reasoning()
        if self.message_id is not None or not final.tool_calls:
            out += self._open_message()
            text, index = "".join(self.text), len(self.output) - 1
            ids = {"item_id": self.message_id, "output_index": index}
            part = {"type": "output_text", "text": text, "annotations": []}
            item = message_item(text, self.message_id or "")
            self.output[index] = item
            out += [
                self.event("response.output_text.done", text=text, content_index=0, logprobs=[], **ids),
                self.event("response.content_part.done", content_index=0, part=part, **ids),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        for call in final.tool_calls:
            index, item = len(self.output), call_item(call)
            self.output.append(item)
            ids = {"item_id": item["id"], "output_index": index}
            out += [
                self.event(
                    "response.output_item.added", output_index=index, item=call_item(call, "in_progress")
                ),
                self.event("response.function_call_arguments.delta", delta=call.arguments, **ids),
                self.event("response.function_call_arguments.done", arguments=call.arguments, **ids),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        done = response_object(self.body, self.model, self.id, self.output, final)
        kind = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        return [*out, self.event(kind, response=done)]

    def _reasoning(self) -> list[dict]:
        if not self.reasoning:
            return []
        item = reasoning_item("".join(self.reasoning), new_id("rs"))
        self.reasoning = []
        self.output.append(item)
        index = len(self.output) - 1
        return [
            self.event("response.output_item.added", output_index=index, item={**item, "summary": []}),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def _open_message(self) -> list[dict]:
        if self.message_id is not None:
            return []
        out = self._reasoning()
        self.message_id = new_id("msg")
        self.output.append(message_item("", self.message_id, "in_progress"))
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            *out,
            self.event("response.output_item.added", output_index=index, item=self.output[index]),
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                part=part,
            ),
        ]


def sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


async def stream(first, events: Events, next_item, deadline_error, done):
    """The SSE text of a streamed response: created, the output's events as chunks arrive
    (`next_item()` awaits the next), then completed; `done(usage, timings, status)` at the end."""
    status, usage, timings = 200, None, None
    try:
        for event in events.start():
            yield sse(event)
        item = first
        while True:
            if item.is_final and item.finish_reason == "cancelled":
                raise deadline_error()
            for event in events.final(item) if item.is_final else events.chunk(item):
                yield sse(event)
            if item.is_final:
                usage, timings = item.usage, item.timings
                return
            item = await next_item()
            if isinstance(item, BaseException):
                raise item
    except (ApiError, GlmflashError) as exc:
        status = exc.status
        error = ApiError.from_library(exc) if isinstance(exc, GlmflashError) else exc
        yield sse(events.event("error", code=error.code, message=error.message, param=error.param))
    except BaseException:  # the client went away (cancelled) or something broke: stop the model
        status = 499
        raise
    finally:
        done(usage, timings, status)
