"""RemoteEngine: the engine contract (contract.EngineBase) over any OpenAI-compatible endpoint:
vLLM, SGLang, or another glmflash server. It speaks HTTP only (no torch).

Requests are checked and images decoded and downscaled here under the same guards as locally
(pipeline.prepare), then sent as base64 PNG data URLs (lossless). What comes back goes through the
same text stage as the local engine's tokens: reasoning (`reasoning_content`, or vLLM's
`reasoning`) stays apart, and `<think>` or box markers a backend leaves in the content are split
out. Thinking on/off travels as `chat_template_kwargs.enable_thinking`; `response_format` passes
through and the answer is validated here too. Tools pass through (a vLLM or SGLang backend needs
`--tool-call-parser glm45`; vLLM also `--enable-auto-tool-choice`), earlier calls go back with
their arguments as JSON strings, and the backend's `tool_calls` deltas are collected into the same
Reply.tool_calls (a backend without a tool parser leaves `<tool_call>` text in: parsed here).
429, 503 and connection failures are retried with backoff before the first token (4xx answers
are not); setting the stop event or closing the stream closes the connection, which stops the
backend's generation.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import httpx

from ..config import EngineSettings, Settings
from ..contract import EngineBase
from ..errors import GlmflashError, ImageError, InvalidRequestError
from ..inputs.images import ImagePolicy
from ..options import to_openai
from ..pipeline import Clock, Request, closing, prepare
from ..replies import Chunk, EngineInfo, ToolCall, Usage
from ..text.stage import FAMILY_CONTROL_TOKENS, TextStage
from ..text.structured import OutputError, TruncatedOutputError
from ..text.tools import new_call_id
from .registry import engine_settings, is_url, register

RETRY_STATUS = (429, 502, 503)
log = logging.getLogger("glmflash")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request in our logs


class BackendError(GlmflashError):
    status = 503
    code = "backend_unavailable"


class RemoteEngine(EngineBase):
    """Talks to `base_url` (ending in /v1). Build one with `glmflash.load("http://host:8000/v1")`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        settings: EngineSettings | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.settings = (settings or Settings.from_env()).for_engine()  # never the server's part
        self.image_policy = ImagePolicy.from_limits(self.settings.limits)
        self.retries, self.backoff_s = retries, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), headers=headers)
        self._inflight = 0
        self._count_lock = threading.Lock()
        listed = self._models(required=model is None)
        self.model_name = model or listed[0]["id"]
        self.info = EngineInfo(
            model_id=self.model_name,
            source=self.base_url,
            precision="remote",
            device="remote",
            dtype="",
            parameters=0,
            memory_bytes=0,
            max_image_pixels=self.settings.limits.max_image_pixels,
            demo_model=False,
            placement_reason=f"OpenAI-compatible backend at {self.base_url}",
            adapters=_adapters(listed, self.model_name),
        )

    @property
    def busy(self) -> bool:
        return self._inflight > 0

    def stream(
        self,
        messages: Sequence[dict],
        *,
        stop_event: threading.Event | None = None,
        image_policy: ImagePolicy | None = None,
        adapter: str | None = None,
        **gen,
    ) -> Iterator[Chunk]:
        """Check and encode now (errors raise here); stream chunks as the backend sends them."""
        model = self.choose_adapter(adapter) or self.model_name
        request = prepare(
            messages, gen, self.settings.limits, image_policy or self.image_policy,
            control_tokens=FAMILY_CONTROL_TOKENS, started=time.perf_counter(),
        )  # fmt: skip
        return self._stream(request, self._body(request, model), stop_event or threading.Event())

    def close(self) -> None:
        self._client.close()

    # -- requests ---------------------------------------------------------------------------

    def choose_adapter(self, adapter: str | None) -> str | None:
        if adapter and adapter not in self.info.adapters:  # the backend may have loaded it since
            adapters = _adapters(self._models(required=False), self.model_name)
            self.info = dataclasses.replace(self.info, adapters=adapters)
        return super().choose_adapter(adapter)

    def _models(self, *, required: bool) -> list[dict]:
        """The backend's /models entries. When a model was named they are only a nicety (which
        adapters it serves): one quick try, and a backend without the route lists none."""
        try:
            if required:
                response = self._send("GET", "/models", None, threading.Event())
                response.read()
                response.close()
            else:
                response = self._client.get(self.base_url + "/models", timeout=5.0)
                response.raise_for_status()
            models = [m for m in response.json().get("data") or [] if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            if required:
                raise BackendError(f"{self.base_url}/models gave no list of models: pass model=...") from None
            log.warning(
                "%s/models could not be read (%s): its LoRA adapters are not known", self.base_url, exc
            )
            return []
        if required and not models:
            raise BackendError(f"{self.base_url}/models lists no model: pass model=... explicitly.")
        return models

    def _body(self, request: Request, model: str) -> dict:
        pictures = iter(request.images)
        conversation = [
            {
                **message,
                "content": [
                    {"type": "image_url", "image_url": {"url": _data_url(next(pictures))}}
                    if part["type"] == "image"
                    else part
                    for part in message["content"]
                ],
            }
            for message in request.conversation
        ]
        for message in conversation:
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                    for c in message["tool_calls"]
                ]
        body = {
            "model": model,
            "messages": conversation,
            "stream": True,
            "stream_options": {"include_usage": True},
            **to_openai(request.options.given()),
        }
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.tools is not None:
            choice = request.tools.choice
            named = {"type": "function", "function": {"name": choice}}
            body["tools"] = list(request.tools.tools)
            body["tool_choice"] = choice if choice in ("none", "auto", "required") else named
            body["parallel_tool_calls"] = request.tools.parallel
        return body

    def _send(self, method: str, path: str, body, stop: threading.Event) -> httpx.Response:
        """A response with a 2xx status, its body not read yet; retries what is worth retrying."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self._client.build_request(method, self.base_url + path, json=body)
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                if last or stop.is_set():
                    raise BackendError(f"Cannot reach the backend at {self.base_url}: {exc}") from None
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                if response.status_code not in RETRY_STATUS or last or stop.is_set():
                    raise _error(response)
            if stop.wait(self.backoff_s * 2**attempt):
                break
        raise BackendError("Cancelled while waiting to retry.", code="cancelled")

    def _stream(self, request: Request, body: dict, stop: threading.Event) -> Iterator[Chunk]:
        with self._count_lock:
            self._inflight += 1
        try:
            response = self._send("POST", "/chat/completions", body, stop)
            done = threading.Event()
            watcher = threading.Thread(target=_close_on_stop, args=(stop, done, response), daemon=True)
            watcher.start()
            stops = request.options.stop  # sent to the backend, and applied here whatever it does
            stage, clock = TextStage(control_tokens=FAMILY_CONTROL_TOKENS, stops=stops), Clock()
            stage = request.text_stage(stage)
            finish, usage, cut = None, None, False
            calls: dict[int, dict] = {}  # streamed tool calls by index
            try:
                for event in _events(response):
                    if "error" in event:
                        raise _error_from(event["error"], 500)
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        content = delta.get("content")
                        if thought or content:
                            clock.tick()
                        if thought:  # the backend split it already
                            yield Chunk(thought, True)
                        if content:  # markers a backend left in go through the same split
                            yield from stage.feed(content)
                        for piece in delta.get("tool_calls") or []:
                            _add_call(calls, piece)
                        finish = choice.get("finish_reason") or finish
                        cut = cut or bool(choice.get("cut_in_reasoning"))
                    if stage.stopped:  # closing the connection stops the backend
                        finish = "stop"
                        break
            except (httpx.TransportError, httpx.StreamError):
                if not stop.is_set():
                    raise BackendError(
                        "The backend closed the stream before the answer was complete."
                    ) from None
            finally:
                done.set()
                response.close()
            yield from stage.flush()
            if stop.is_set() and finish is None:
                finish = "cancelled"
            made = _calls(calls) if calls else None  # the backend's own parse, else the stage's
            finish = (
                "stop" if finish == "tool_calls" and not (made or getattr(stage, "calls", ())) else finish
            )
            final = closing(
                request, stage, clock, finish=finish or "stop", usage=_usage(usage, clock), calls=made
            )
            if final.finish_reason == "length" and not final.cut_in_reasoning:
                # a glmflash backend says so; any other: the budget ran out with no answer yet
                thinking = cut or (clock.count > 0 and not "".join(stage.answer).strip())
                final = dataclasses.replace(final, cut_in_reasoning=thinking)
            yield final
        finally:
            with self._count_lock:
                self._inflight -= 1


def _add_call(calls: dict[int, dict], piece) -> None:
    """One streamed tool-call delta into the calls so far (by index: id and name once, the
    arguments in pieces)."""
    if not isinstance(piece, dict):
        return
    index = piece.get("index", len(calls))
    call = calls.setdefault(
        index if isinstance(index, int) else len(calls), {"id": "", "name": "", "arguments": ""}
    )
    function = piece.get("function") or {}
    call["id"] = piece.get("id") or call["id"]
    call["name"] = function.get("name") or call["name"]
    call["arguments"] += function.get("arguments") or ""


def _calls(calls: dict[int, dict]) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(c["id"] or new_call_id(), c["name"], c["arguments"] or "{}")
        for _, c in sorted(calls.items())
        if c["name"]
    )


def _events(response: httpx.Response) -> Iterator[dict]:
    for line in _lines(response):
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise BackendError(f"The backend sent an event that is not JSON: {data[:100]!r}") from None


def _lines(response: httpx.Response) -> Iterator[str]:
    """SSE lines, split on newlines only: the JSON may hold U+2028 or U+0085, which
    str.splitlines (and so httpx's iter_lines) would take for line ends."""
    pending = b""
    for data in response.iter_bytes():
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def _close_on_stop(stop: threading.Event, done: threading.Event, response: httpx.Response) -> None:
    while not done.wait(0.05):
        if stop.is_set():
            response.close()  # the backend sees the disconnect and stops generating
            return


def _usage(usage: dict | None, clock: Clock) -> Usage:
    """The backend's counts; without them, what arrived (one token per delta, a lower bound)."""
    usage = usage or {}
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(prompt.get("image_tokens") or 0),
        int(usage.get("completion_tokens") or clock.count),
        int(completion.get("reasoning_tokens") or 0),
        int(prompt.get("cached_tokens") or 0),  # what the backend's prefix cache served
    )


def _adapters(listed: list[dict], model: str) -> tuple[str, ...]:
    """The LoRA adapters a backend serves on `model`: the /models entries whose parent it is, as
    vLLM's --lora-modules and glmflash's --adapter list them."""
    return tuple(entry["id"] for entry in listed if entry.get("parent") == model)


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the backend sees the very pixels we checked
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _error(response: httpx.Response) -> GlmflashError:
    try:
        detail = response.json().get("error") or {}
    except ValueError:
        detail = {"message": response.text[:300]}
    if not isinstance(detail, dict):
        detail = {"message": str(detail)}
    return _error_from(detail, response.status_code)


def _error_from(detail: dict, status: int) -> GlmflashError:
    message = f"The backend refused the request ({status}): {detail.get('message') or 'no reason given'}"
    param, code = detail.get("param"), detail.get("code")
    if status == 422 or code == "invalid_output":
        cut = param in ("max_tokens", "max_new_tokens")  # a glmflash backend's cut-off JSON answer
        return (TruncatedOutputError if cut else OutputError)(message, param=param)
    if code == "invalid_image":
        return ImageError(message, param=param)
    if status in (400, 404, 413):
        return InvalidRequestError(message, param=param, code=code)
    error = GlmflashError(message, param=param, code=code or ("timeout" if status == 504 else None))
    error.status = status if status in (401, 403, 503, 504) else 502
    if status in RETRY_STATUS:
        error.code = "server_busy"
    return error


def open_remote(url: str, precision, device, base: EngineSettings, options: dict) -> RemoteEngine:
    """The remote backend's opener (backends.registry.load picks it for an http(s) URL)."""
    api_key = options.pop("api_key", None) or base.model.backend_api_key or None
    return RemoteEngine(url, api_key=api_key, settings=engine_settings(base, options))


register("remote", claims=is_url, open=open_remote)
