"""The engine contract: what every backend offers (the local transformers engine,
backends.local.engine.Engine, and the OpenAI-compatible remote one, backends.remote.RemoteEngine),
and all that the server, page, CLI, jobs, bench and notebooks may use. Both engines pass one
contract test suite (tests/test_contract.py); nobody probes for attributes beyond this.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Iterator, Sequence

from .config import EngineSettings
from .errors import InvalidRequestError
from .inputs.images import ImagePolicy
from .inputs.messages import ask_messages
from .replies import Chunk, EngineInfo, Memory, Reply


class EngineBase(abc.ABC):
    """An engine: `info` says what runs where, `settings` its model, request limits
    and batching (config.EngineSettings: never the server's part)."""

    info: EngineInfo
    settings: EngineSettings

    @abc.abstractmethod
    def stream(
        self,
        messages: Sequence[dict],
        *,
        stop_event: threading.Event | None = None,
        image_policy: ImagePolicy | None = None,
        adapter: str | None = None,
        **gen,
    ) -> Iterator[Chunk]:
        """Validate now (a GlmflashError raises here, before any generation), then yield Chunks as
        they are generated; the last one carries finish_reason, usage and timings. Setting
        `stop_event`, or closing the iterator, stops the generation. `adapter`: one of
        `info.adapters` answers, "" the base model, None the default (`info.adapter`).
        `gen`: the options of options.GenerationOptions, and `response_format`."""

    def chat(self, messages: Sequence[dict], **kwargs) -> Reply:
        """The whole reply: the same chunks as `stream`, collected."""
        return Reply.collect(self.stream(messages, **kwargs))

    def ask(self, image, question: str, **gen) -> Reply:
        """One question about one image (or a list of images, or None)."""
        return self.chat(ask_messages(image, question), **gen)

    @property
    @abc.abstractmethod
    def busy(self) -> bool:
        """Generating, or requests are waiting for the model."""

    def choose_adapter(self, adapter: str | None) -> str | None:
        """The adapter a request takes (None: the base model); an unknown name is refused."""
        adapters = self.info.adapters
        if adapter is None:
            adapter = self.info.adapter
        if adapter == "":
            return None
        if adapter not in adapters:
            listed = ", ".join(adapters) or "none are loaded"
            raise InvalidRequestError(f"No adapter named {adapter!r} (adapters: {listed}).", param="adapter")
        return adapter

    def with_adapter(self, adapter: str) -> EngineBase:
        """This engine answering with `adapter` ("": the base model) where a request names none,
        under the model id BASE+NAME (so batch job ids and eval runs tell them apart)."""
        chosen = self.choose_adapter(adapter) or ""
        if chosen == self.info.adapter:
            return self
        return _AdapterView(self, chosen)

    def health(self) -> str | None:
        """None while the engine can serve; else why it cannot (a sentence for an operator: the
        local engine's decode loop failed for good). Cheap: the server's /health and /ready read
        it on every probe. A remote engine says None: its backend's state shows per request."""
        return None

    def warm_up(self) -> float:
        """Do before serving what would otherwise make the first callers wait (compiling);
        returns the seconds it took."""
        return 0.0

    def memory(self) -> Memory | None:
        """This engine's accelerator memory, or None where it has none here (CPU, remote)."""
        return None

    def reset_peak_memory(self) -> None:  # noqa: B027 - optional: an engine without memory has none
        """Start a new peak for memory().peak_bytes."""

    def close(self) -> None:  # noqa: B027 - optional: an engine may hold nothing
        """Release what the engine holds; it serves nothing after this."""


class _AdapterView(EngineBase):
    """An engine whose requests take another adapter by default (EngineBase.with_adapter); it
    owns nothing, so closing it leaves the engine serving."""

    def __init__(self, engine: EngineBase, adapter: str):
        info = engine.info
        base = info.model_id.removesuffix(f"+{info.adapter}") if info.adapter else info.model_id
        self.engine, self.settings = engine, engine.settings
        self.info = dataclasses.replace(
            info, model_id=f"{base}+{adapter}" if adapter else base, adapter=adapter
        )

    def stream(self, messages, *, adapter: str | None = None, **kwargs) -> Iterator[Chunk]:
        return self.engine.stream(
            messages, adapter=self.info.adapter if adapter is None else adapter, **kwargs
        )

    @property
    def busy(self) -> bool:
        return self.engine.busy

    def health(self) -> str | None:
        return self.engine.health()

    def memory(self) -> Memory | None:
        return self.engine.memory()

    def reset_peak_memory(self) -> None:
        self.engine.reset_peak_memory()
