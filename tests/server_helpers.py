"""A real uvicorn server on 127.0.0.1 in a background thread, for the API tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

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
