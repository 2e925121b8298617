"""The OpenAI chat-completions request (checked field by field) and the response/chunk shapes."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from ..options import OPTIONS, from_openai
from .errors import ApiError

# Fields OpenAI clients send that change nothing at their neutral value; anything else is refused.
NEUTRAL: dict[str, tuple] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "functions": (None, []),
    "function_call": (None, "none"),
    "modalities": (None, ["text"]),
    "reasoning_effort": (None,),
}
IGNORED = {"user", "metadata", "store", "service_tier", "stream_options"}
TYPES = {"int": int, "float": float, "bool": bool, "stops": str | list[str]}
TEMPLATE_KWARGS = {
    key.split(".", 1)[1] for o in OPTIONS.values() for key in o.api if key.startswith("chat_template_kwargs.")
}


class Message(BaseModel):
    """One chat message; content parts are checked by the core (glmflash.inputs.messages)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class _Request(BaseModel):
    """POST /v1/chat/completions, less the generation options (added from glmflash.options)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Message]
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    tools: Any = None  # checked by the core (glmflash.text.tools), which names the bad field
    tool_choice: Any = None
    parallel_tool_calls: Any = None

    def generation_options(self) -> dict:
        """The engine's keyword arguments, after refusing what we do not support."""
        extras = dict(self.model_extra or {})
        for name, value in extras.items():
            if name in NEUTRAL:
                if value not in NEUTRAL[name]:
                    raise ApiError(
                        400, f"'{name}' is not supported by this server.", code="unsupported", param=name
                    )
            elif name not in IGNORED:
                raise ApiError(400, f"Unknown field '{name}'.", code="unknown_field", param=name)
        if self.n not in (None, 1):
            raise ApiError(400, "Only n=1 is supported.", code="unsupported", param="n")
        template = self.chat_template_kwargs or {}
        unknown = set(template) - TEMPLATE_KWARGS
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(
                400,
                f"chat_template_kwargs.{name} is not supported.",
                code="unsupported",
                param=f"chat_template_kwargs.{name}",
            )
        options = from_openai(self.model_dump(), objects={"chat_template_kwargs": template})
        if self.response_format is not None:
            options["response_format"] = self.response_format
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options

    def message_dicts(self) -> list[dict]:
        return [message.model_dump() for message in self.messages]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


_OPTION_FIELDS: dict[str, Any] = {
    key: (TYPES[o.kind] | None, None) for o in OPTIONS.values() for key in o.api if "." not in key
}
if TYPE_CHECKING:  # to a type checker it is the base; FastAPI sees the option fields too
    ChatCompletionRequest = _Request
else:
    ChatCompletionRequest = create_model(
        "ChatCompletionRequest",
        __base__=_Request,
        __doc__="POST /v1/chat/completions: OpenAI's fields, with vLLM's top_k, min_tokens, "
        "repetition_penalty and chat_template_kwargs, and glmflash's thinking and thinking_budget.",
        **_OPTION_FIELDS,
    )


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_dict(usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "image_tokens": usage.image_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def completion(reply, *, request_id: str, model: str) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text or (None if reply.tool_calls else ""),
                    "reasoning_content": reply.reasoning or None,
                    **boxes(reply),
                    **({"tool_calls": [c.to_dict() for c in reply.tool_calls]} if reply.tool_calls else {}),
                },
                "finish_reason": finish(reply.finish_reason),
                "logprobs": None,
                **cut(reply),
            }
        ],
        "usage": usage_dict(reply.usage),
    }


def boxes(reply) -> dict:
    """The extension field `boxes` (only when the answer has some): each box's label, its 0-1000
    box, its pixel box in the original image and which image; `content` keeps the model's text."""
    return {"boxes": [box.to_dict() for box in reply.boxes]} if reply.boxes else {}


def chunk(
    request_id: str, model: str, created: int, delta: dict, finish_reason=None, usage=None, extra=None
) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None, **(extra or {})}
    body = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if usage is not None else [choice],
    }
    if usage is not None:
        body["usage"] = usage_dict(usage)
    return body


def cut(final) -> dict:
    """The choice's `cut_in_reasoning` field: only when the budget ran out inside the thinking
    (finish_reason "length" with no answer yet), so a client can tell "raise max_tokens"."""
    return {"cut_in_reasoning": True} if final.cut_in_reasoning else {}


def finish(reason: str) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"


def tool_call_deltas(calls, piece: int = 24) -> list[dict]:
    """The streamed form of the calls, as OpenAI streams them: per call a delta with its index,
    id, type and name (arguments ""), then its arguments in pieces."""
    out = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call.id, "type": "function"}
        out.append({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
        for at in range(0, len(call.arguments), piece):
            part = call.arguments[at : at + piece]
            out.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    return out
