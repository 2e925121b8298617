"""The values the engine hands out: streamed Chunks, the collected Reply, usage, timings, info."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FINISH_REASONS = ("stop", "length", "cancelled", "tool_calls")


@dataclass(frozen=True)
class Usage:
    """Token counts. Image tokens are part of the prompt, reasoning tokens part of the completion;
    cached tokens are prompt tokens whose keys and values a recent request had computed."""

    prompt_tokens: int
    image_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds from the call to the first generated token, decode speed, and the whole call."""

    ttft_s: float
    tokens_per_s: float
    total_s: float


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: OpenAI's id, the function's name, its arguments as JSON."""

    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI sends it

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Chunk:
    """One piece of a stream: text in one channel, or (last chunk only) the closing figures."""

    text: str = ""
    reasoning: bool = False
    boxed: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    parsed: Any = None  # last chunk, with a response_format: the validated JSON value
    cut_in_reasoning: bool = False  # last chunk: the budget ran out while the model was still thinking
    boxes: tuple = ()  # last chunk: the grounding.Box values found in the answer
    tool_calls: tuple[ToolCall, ...] = ()  # last chunk: the calls made (finish_reason "tool_calls")

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Reply:
    """A whole answer: `text` is the answer only; `reasoning` the thinking; `boxed` the key answer."""

    text: str
    reasoning: str
    finish_reason: str
    usage: Usage
    timings: Timings
    boxed: str = ""
    parsed: Any = None  # with a response_format: the answer as a validated JSON value
    cut_in_reasoning: bool = False  # finish_reason "length" while still thinking: no answer yet
    boxes: tuple = ()  # grounding.Box: boxes and points in the answer, in pixels of the original image
    tool_calls: tuple[ToolCall, ...] = ()  # the functions the model called (finish_reason "tool_calls")

    @classmethod
    def collect(cls, chunks) -> Reply:
        answer, reasoning, boxed, final = [], [], [], None
        for chunk in chunks:
            if chunk.is_final:
                final = chunk
            elif chunk.reasoning:
                reasoning.append(chunk.text)
            else:
                answer.append(chunk.text)
                if chunk.boxed:
                    boxed.append(chunk.text)
        if final is None:
            raise RuntimeError("the stream ended without its final chunk")
        return cls(
            "".join(answer),
            "".join(reasoning),
            final.finish_reason,
            final.usage,
            final.timings,
            "".join(boxed),
            final.parsed,
            final.cut_in_reasoning,
            final.boxes,
            final.tool_calls,
        )


@dataclass(frozen=True)
class Memory:
    """An engine's accelerator memory in bytes: allocated now, the peak since the last reset."""

    allocated_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class EngineInfo:
    """What is loaded, where, and how big it is; how it decodes (compiled, the quantizer)."""

    model_id: str
    source: str
    precision: str
    device: str
    dtype: str
    parameters: int
    memory_bytes: int
    max_image_pixels: int
    demo_model: bool
    placement_reason: str = ""
    compiled: bool = False  # static KV cache + torch.compile'd decoding (GLMFLASH_COMPILE) in effect
    quantizer: str = ""  # the library behind int8/int4 weights; empty otherwise
    adapters: tuple[str, ...] = ()  # the LoRA adapters a request may choose by name
    adapter: str = ""  # the one a request that names none takes ("": the base model)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
