"""create_app(engine, settings): the OpenAI-compatible routes, health, readiness and metrics."""

from __future__ import annotations

import json
import logging
import time

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..config import Settings
from ..errors import GlmflashError
from ..inputs.images import ImagePolicy
from ..models import served_models
from . import protocol, responses
from .bridge import DONE, WAITING, EngineCall
from .errors import ApiError, error_body, error_response
from .observability import AuditLog, Metrics
from .security import Authenticator, ClientAllowList, GuardMiddleware

log = logging.getLogger("glmflash.server")
POLL_S = 0.25  # how often a waiting request checks for a client that went away
ROUTES = {"/v1/chat/completions", "/v1/responses", "/v1/models", "/health", "/ready", "/metrics"}


class ServerState:
    """What the routes share: the engine, settings, counters and the admission count."""

    def __init__(self, engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.metrics = Metrics(engine)
        self.audit = AuditLog(
            settings.server.audit_log, settings.server.audit_log_max_bytes, settings.server.audit_log_prompts
        )
        self.auth = Authenticator(settings.server.api_keys, settings.server.jwt_secret)
        self.image_policy = ImagePolicy.from_limits(settings.limits, allow_local_files=False)
        self.active = 0  # admitted chat requests: one generating, the rest waiting for the engine
        self.draining = False

    def admit(self) -> None:
        if self.draining:
            raise ApiError(503, "The server is shutting down.", code="draining", headers={"Retry-After": "5"})
        if self.active >= self.settings.server.max_queue + 1:
            raise ApiError(
                503,
                f"The server is busy ({self.active} requests ahead). Retry shortly.",
                code="queue_full",
                headers={"Retry-After": "2"},
            )
        self.active += 1
        self.metrics.queue_depth.set(self.active)

    def release(self) -> None:
        self.active -= 1
        self.metrics.queue_depth.set(self.active)


def create_app(engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    state = ServerState(engine, settings)
    app = FastAPI(
        title="glmflash", version=__version__, description="OpenAI-compatible API for GLM-4.6V-Flash"
    )
    app.state.glmflash = state
    _install_error_handlers(app)

    def caller(request: Request) -> str:
        identity = state.auth.identify(request.headers.get("authorization"))
        if identity is None:
            raise ApiError(
                401, "Missing or invalid API key: send Authorization: Bearer <key>.", code="invalid_api_key"
            )
        return identity

    def failed() -> JSONResponse | None:
        """503 once the engine cannot serve (its decode loop failed for good): a container's
        health check then marks it unhealthy, a load balancer leaves it out."""
        reason = engine.health()
        if reason is None:
            return None
        return JSONResponse({"status": "failed", "reason": reason}, status_code=503)

    @app.get("/health")
    async def health():
        return failed() or {"status": "ok"}

    @app.get("/ready")
    async def ready():
        info = engine.info
        if (answer := failed()) is not None:
            return answer
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ready", "model": info.model_id, "adapters": list(info.adapters),
                "demo_model": info.demo_model}  # fmt: skip

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    served = settings.server.served_model_name
    choices = served_models(engine.info, served)  # model id -> the adapter it selects
    if engine.info.adapters:
        log.info(
            "model ids: %s is the base model; LoRA adapters: %s (a request naming none gets %s)",
            served, ", ".join(engine.info.adapters), engine.info.adapter or served,
        )  # fmt: skip

    @app.get("/v1/models")
    async def models(identity: str = Depends(caller)):
        entry = {"object": "model", "created": 0, "owned_by": "glmflash"}
        data = [{"id": served, **entry, "root": served, "parent": None}]
        data += [{"id": name, **entry, "root": name, "parent": served} for name in engine.info.adapters]
        return {"object": "list", "data": data}

    def chosen(model: str | None) -> tuple[str, dict]:
        """The model id a reply names, and the engine's adapter argument for it. Without adapters
        any id is accepted; with them, the id chooses, and an unknown one is refused."""
        if not engine.info.adapters:
            return served, {}
        if model is None:  # the default: the first adapter, named as /v1/models lists it
            return engine.info.adapter or served, {}
        if model not in choices:
            listed = ", ".join([served, *engine.info.adapters])
            raise ApiError(
                404, f"The model {model!r} does not exist here: choose one of {listed} (GET /v1/models).",
                code="model_not_found", param="model",
            )  # fmt: skip
        return model, {"adapter": choices[model]}

    def begin(request: Request, identity, messages: list, options: dict, model: str | None, stream):
        """Admit a request (503 when the queue is full) and start its engine call: the call, its
        audit record, and the model id its reply names. Chat completions and responses share it."""
        named, adapter = chosen(model)
        state.admit()
        record = {**_audit_record(request, identity, messages, stream), "model": named}
        call = EngineCall(
            engine, messages, {**options, **adapter}, state.image_policy,
            stream=bool(stream), timeout=settings.server.request_timeout, on_done=state.release,
        )  # fmt: skip
        return call, record, named

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: protocol.ChatCompletionRequest, request: Request, identity: str = Depends(caller)
    ):
        options = body.generation_options()
        call, record, model = begin(request, identity, body.message_dicts(), options, body.model, body.stream)
        handed_over = False
        try:
            first = await _next(call, request, settings)
            if isinstance(first, BaseException):
                raise first
            if body.stream:
                handed_over = True
                stream = _sse(call, first, body, state, record, model)
                return StreamingResponse(
                    stream,
                    media_type="text/event-stream",
                    # any nginx in front passes tokens on at once, even one without our config
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            reply = first
            if reply.finish_reason == "cancelled":  # only our deadline (or a gone client) cancels
                raise _deadline_error(settings)
            _finish(state, record, call, reply.usage, reply.timings, 200)
            return protocol.completion(reply, request_id=protocol.new_id(), model=model)
        except (ApiError, GlmflashError) as exc:
            status = exc.status
            _finish(state, record, call, None, None, status)
            raise
        finally:
            if not handed_over:
                call.cancel()

    @app.post("/v1/responses")
    async def responses_create(
        body: responses.ResponsesRequest, request: Request, identity: str = Depends(caller)
    ):
        """The Responses API subset (server/responses.py): the same engine call as a chat."""
        messages, options = body.chat()
        call, record, model = begin(request, identity, messages, options, body.model, body.stream)
        handed_over = False
        try:
            first = await _next(call, request, settings)
            if isinstance(first, BaseException):
                raise first
            if body.stream:
                handed_over = True

                def done(usage, timings, status):
                    call.cancel()
                    _finish(state, record, call, usage, timings, status)

                stream = responses.stream(
                    first, responses.Events(body, model), lambda: _next(call, None, settings),
                    lambda: _deadline_error(settings), done,
                )  # fmt: skip
                return StreamingResponse(
                    stream, media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )  # fmt: skip
            if first.finish_reason == "cancelled":
                raise _deadline_error(settings)
            _finish(state, record, call, first.usage, first.timings, 200)
            output = responses.output_of(first)
            return responses.response_object(body, model, responses.new_id("resp"), output, first)
        except (ApiError, GlmflashError) as exc:
            _finish(state, record, call, None, None, exc.status)
            raise
        finally:
            if not handed_over:
                call.cancel()

    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=settings.server.max_body_bytes,
        allow_list=ClientAllowList(settings.server.allowed_ips),
    )
    app.add_middleware(_CountRequests, metrics=state.metrics)
    return app


async def _next(call: EngineCall, request: Request | None, settings: Settings):
    """The next item from the engine, watching the deadline and (given `request`) the client.

    Streaming responses leave the client to Starlette, which cancels the stream on disconnect.
    """
    deadline = call.started + settings.server.request_timeout
    while True:
        now = time.perf_counter()
        if now >= deadline:
            call.cancel()
            raise _deadline_error(settings)
        if request is not None and now - call.checked >= POLL_S:
            call.checked = now
            if await request.is_disconnected():
                call.cancel()
                raise ApiError(499, "The client went away.", code="client_closed")
        item = await call.next(min(POLL_S, deadline - now))
        if item is DONE:
            raise ApiError(500, "The generation ended without a result.", code="internal_error")
        if item is not WAITING:
            return item


def _deadline_error(settings: Settings) -> ApiError:
    return ApiError(
        504, f"The request took longer than {settings.server.request_timeout:g} s.", code="request_timeout"
    )


async def _sse(call, first, body, state: ServerState, record, model: str):
    """SSE events: a role delta, content/reasoning deltas, the finish, optional usage, [DONE]."""
    request_id, created = protocol.new_id(), int(time.time())
    status = 200
    usage = timings = None
    try:
        yield _event(protocol.chunk(request_id, model, created, {"role": "assistant", "content": ""}))
        item = first
        while True:
            if item.is_final and item.finish_reason == "cancelled":
                raise _deadline_error(state.settings)
            if item.is_final:
                usage, timings = item.usage, item.timings
                for delta in protocol.tool_call_deltas(item.tool_calls):
                    yield _event(protocol.chunk(request_id, model, created, delta))
                reason = protocol.finish(item.finish_reason)
                delta = protocol.boxes(item)  # boxes arrive with the finish: they need the whole answer
                final = protocol.chunk(request_id, model, created, delta, reason, extra=protocol.cut(item))
                yield _event(final)
                if body.include_usage:
                    yield _event(protocol.chunk(request_id, model, created, {}, usage=item.usage))
                yield "data: [DONE]\n\n"
                return
            key = "reasoning_content" if item.reasoning else "content"
            yield _event(protocol.chunk(request_id, model, created, {key: item.text}))
            item = await _next(call, None, state.settings)
            if isinstance(item, BaseException):
                raise item
    except (ApiError, GlmflashError) as exc:
        status = exc.status
        error = ApiError.from_library(exc) if isinstance(exc, GlmflashError) else exc
        yield _event(error_body(error.status, error.message, error.code, error.param))
    except BaseException:  # the client went away (cancelled) or something broke: stop the model
        status = 499
        raise
    finally:
        call.cancel()
        _finish(state, record, call, usage, timings, status)


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _audit_record(request: Request, identity: str, messages: list[dict], stream) -> dict:
    images = image_bytes = 0
    prompt = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("image_url", "image"):
                images += 1
                url = part.get("image_url")
                url = url.get("url", "") if isinstance(url, dict) else url
                image_bytes += len(url) * 3 // 4 if isinstance(url, str) else 0
            elif isinstance(part.get("text"), str):
                prompt.append(part["text"])
    client = request.client.host if request.client else None
    return {"client": client, "key_id": identity, "images": images, "image_bytes": image_bytes,
            "stream": bool(stream), "prompt": "\n".join(prompt)}  # fmt: skip


def _finish(state: ServerState, record: dict, call, usage, timings, status: int) -> None:
    latency = time.perf_counter() - call.started
    state.metrics.latency.observe(latency)
    if usage is not None:
        state.metrics.observe(usage, timings, record["images"])
    tokens = (
        {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    )
    state.audit.write(**record, **tokens, latency_s=round(latency, 4), status=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(GlmflashError)
    async def library_error(request, exc: GlmflashError):
        return error_response(ApiError.from_library(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, "The request body is not valid JSON.", code="invalid_json"))
        param = _param_path(first.get("loc", ()))
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "The request body is invalid."
        return error_response(ApiError(400, message, code="invalid_value", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(ApiError(exc.status_code, str(exc.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        log.exception("unexpected error")
        return error_response(
            ApiError(500, "Internal error: the server logged the details.", code="internal_error")
        )


def _param_path(loc) -> str | None:
    """("body", "messages", 0, "role") -> "messages[0].role", the way the core names fields."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("str", "list[dict[str,any]]", "none"):  # pydantic's union branch names
            break
        else:
            path += f".{part}" if path else str(part)
    return path or None


class _CountRequests:
    """ASGI: count every response by route and status for /metrics."""

    def __init__(self, app, *, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
