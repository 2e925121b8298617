"""`python -m glmflash serve`: uvicorn around create_app, with draining on SIGTERM."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from .app import create_app

log = logging.getLogger("glmflash.server")


class _DrainingServer(uvicorn.Server):
    """On SIGINT/SIGTERM: mark the app as draining (/ready answers 503), then uvicorn's shutdown
    stops accepting and gives in-flight requests `timeout_graceful_shutdown` seconds."""

    def __init__(self, config, state):
        super().__init__(config)
        self.glmflash_state = state

    def handle_exit(self, sig, frame):
        self.glmflash_state.draining = True
        super().handle_exit(sig, frame)


def build_app(engine, settings, *, with_ui: bool = True):
    """The API, and (unless `with_ui` is False) the web page at / on the same app."""
    app = create_app(engine, settings)
    if with_ui:
        from ..ui import mount_ui

        keys = app.state.glmflash.auth  # the page asks for the API's keys
        app = mount_ui(app, engine, settings, identify=keys.identify if keys.enabled else None)
    return app


def serve(engine, settings, *, app=None) -> None:
    app = app or build_app(engine, settings)
    state = app.state.glmflash
    if not _is_loopback(settings.server.host) and not state.auth.enabled:
        log.warning(
            "WARNING: serving on %s without authentication: anyone who can reach this port can use the "
            "model. Set GLMFLASH_API_KEYS or GLMFLASH_JWT_SECRET (and GLMFLASH_ALLOWED_IPS).",
            settings.server.host,
        )
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        timeout_graceful_shutdown=int(settings.server.drain_timeout),
        log_level="info",
        access_log=False,
    )
    if engine.info.compiled:
        log.info("compiling the decode step (GLMFLASH_COMPILE=1) for batches of 1, 2 and %d ...",
                 settings.batching.max_batch_size)  # fmt: skip
    took = engine.warm_up()  # before /ready: no caller waits for a compilation
    if engine.info.compiled:
        log.info("compiled in %.1f s", took)
    log.info(
        "serving %s on http://%s:%s (API at /v1)",
        engine.info.model_id,
        settings.server.host,
        settings.server.port,
    )
    _DrainingServer(config, state).run()
    state.audit.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
