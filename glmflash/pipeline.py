"""The request pipeline both engines share: `prepare` checks everything before any generation
(options, response format, tools, messages, images), and `closing` builds the last chunk (finish
reason, usage, timings with one definition, the validated JSON answer, the tool calls). Between
them each backend produces text that goes through text.stage.TextStage.

Timings mean the same on every engine: time to first token counts from the call (validation and
image decoding included) to the first generated token; tokens/s is (generated tokens - 1) over the
time from the first to the last one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .config import RequestLimits
from .errors import InvalidRequestError
from .inputs.images import ImagePolicy, load_images, original_size
from .inputs.messages import neutralize_all, to_conversation
from .options import GenerationOptions
from .replies import Chunk, Timings, Usage
from .text.boxes import find_boxes
from .text.stage import TextStage
from .text.structured import requested_schema, validate_answer
from .text.tools import ToolSpec, ToolStage, requested_tools


@dataclass
class Request:
    """One checked request: the conversation for the chat template, its decoded images in order,
    the generation options, the JSON Schema its answer must match (or None) and its tools."""

    conversation: list[dict]
    images: list
    options: GenerationOptions
    schema: dict | None
    response_format: dict | None
    started: float
    tools: ToolSpec | None = None  # None: no tools offered
    listed_tools: list[dict] | None = None  # for the template's tools block: control text neutralised

    def template_tools(self) -> list[dict] | None:
        """The tools for the chat template's tools block (none with tool_choice "none")."""
        if self.tools is None or self.tools.choice == "none":
            return None
        return self.listed_tools

    def text_stage(self, stage: TextStage, *, start_in_reasoning: bool = False):
        """`stage`, or with tools on offer the stage that keeps calls out of the answer."""
        if self.tools is None or self.tools.choice == "none":
            return stage
        return ToolStage(stage, self.tools, start_in_reasoning=start_in_reasoning)


def prepare(
    messages,
    gen: dict,
    limits: RequestLimits,
    policy: ImagePolicy,
    *,
    control_tokens: Iterable[str],
    started: float,
) -> Request:
    """Validate everything a caller sent; raises a GlmflashError before any generation."""
    gen = dict(gen)
    response_format = gen.pop("response_format", None)
    schema = requested_schema(response_format)
    tools = requested_tools(
        gen.pop("tools", None), gen.pop("tool_choice", None), gen.pop("parallel_tool_calls", None)
    )
    if tools is not None and tools.choice != "none" and schema is not None:
        raise InvalidRequestError(
            "response_format and tools cannot be combined: a tool's arguments follow its own schema.",
            param="response_format",
        )
    options = GenerationOptions.build(
        default_max_new_tokens=limits.max_new_tokens,
        max_new_tokens_limit=limits.max_new_tokens_limit,
        **gen,
    )
    conversation, images = to_conversation(
        messages,
        load_image=lambda source: load_images(source, policy),
        max_images=limits.max_images,
        control_tokens=control_tokens,
    )
    listed = None if tools is None else neutralize_all(list(tools.tools), control_tokens)
    return Request(conversation, images, options, schema, response_format, started, tools, listed)


@dataclass
class Clock:
    """When generated tokens arrived: the first, the last, and how many."""

    count: int = 0
    first: float | None = None
    last: float | None = None

    def tick(self, at: float | None = None, tokens: int = 1) -> None:
        at = time.perf_counter() if at is None else at
        self.first = self.first if self.first is not None else at
        self.last = at
        self.count += tokens


def closing(
    request: Request, stage: TextStage, clock: Clock, *, finish: str, usage: Usage, calls=None
) -> Chunk:
    """The last chunk of a stream; raises OutputError when a JSON answer does not hold. `calls`:
    the tool calls a backend parsed itself (else those the stage found in the text)."""
    calls = tuple(getattr(stage, "calls", ()) if calls is None else calls) if finish != "cancelled" else ()
    if calls and finish == "stop":
        finish = "tool_calls"
    parsed = None
    if request.schema is not None and finish != "cancelled":
        parsed = validate_answer(
            "".join(stage.answer).strip(), request.schema, finish, request.options.max_new_tokens
        )
    boxes: tuple = ()
    if finish != "cancelled":
        sizes = [original_size(image) for image in request.images]
        boxes = tuple(find_boxes("".join(stage.answer), sizes))
    end = time.perf_counter()
    tokens = usage.completion_tokens
    span = (clock.last or end) - (clock.first or end)
    rate = (tokens - 1) / span if tokens > 1 and span > 0 else 0.0
    return Chunk(
        finish_reason=finish,
        usage=usage,
        timings=Timings((clock.first or end) - request.started, rate, end - request.started),
        parsed=parsed,
        cut_in_reasoning=finish == "length" and stage.in_reasoning,
        boxes=boxes,
        tool_calls=calls,
    )
