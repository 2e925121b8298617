"""A real uvicorn server on 127.0.0.1 in a background thread, for the API tests; and a scripted
OpenAI-compatible backend that answers a fixed text (what a vLLM server would send)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import uvicorn

from glmflash.backends.local.engine import Engine
from glmflash.config import Settings
from glmflash.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_with(engine: Engine, **settings) -> Engine:
    """The same loaded model under other limits (tests run one at a time, so sharing is safe)."""
    return Engine(
        engine.model,
        engine.processor,
        engine.info,
        Settings.build(cache_dir=engine.settings.model.cache_dir, **settings),
    )


@contextlib.contextmanager
def running_server(engine: Engine, app=None, **settings):
    settings = Settings.build(**settings)
    app = app or create_app(engine, settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}", app
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.glmflash.audit.close()


def wait_until(predicate, timeout: float) -> float:
    """Seconds until predicate() is true; raises AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


class Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible backend that streams a fixed answer in small pieces, the model's
    markers left in, and remembers the request bodies it got."""

    pieces: ClassVar[list[str]] = []
    bodies: ClassVar[list[dict]] = []
    deltas: ClassVar[list[dict]] = []  # sent instead of `pieces` when set (tool_calls deltas)
    finish_reason: ClassVar[str] = "stop"

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "glm-4.6v-flash", "object": "model"}]})

    def do_POST(self):
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for delta in self.deltas or [{"content": piece} for piece in self.pieces]:
            self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]})
        usage = {
            "prompt_tokens": 20,
            "completion_tokens": len(self.pieces),
            "total_tokens": 20 + len(self.pieces),
        }
        self._event({"choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, body):
        self.wfile.write(f"data: {json.dumps(body)}\n\n".encode())
        self.wfile.flush()

    def _json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def scripted_backend():
    """A Scripted backend on a free loopback port; yields its /v1 URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.bodies.clear()
    Scripted.deltas, Scripted.finish_reason = [], "stop"
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
