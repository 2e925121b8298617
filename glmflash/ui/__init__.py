"""The web page (Gradio): build_demo(engine, settings), and mount_ui() onto the API's app at "/"."""

from collections.abc import Callable

from . import uploads
from .demo import build_demo


def mount_ui(app, engine, settings, *, identify: Callable[[str], str | None] | None = None):
    """Serve the page at / on the same FastAPI app (and port) as the API. `identify`: the API's
    check of an `Authorization` header (None when the API takes everyone). When the API needs keys
    (GLMFLASH_API_KEYS or GLMFLASH_JWT_SECRET), so does the page: Gradio's sign-in form takes one
    of them as the password (any user name), and every page endpoint (uploads, the queue, files)
    refuses callers who have not signed in. Either way the page reads and serves only files
    uploaded to it (ui/uploads.py)."""
    import gradio as gr

    auth = None
    if identify is not None:

        def auth(_user: str, password: str) -> bool:
            return identify(f"Bearer {password}") is not None

    message = "Sign in with an API key of this server (or a JWT) as the password; any user name."
    demo = build_demo(engine, settings)  # makes the upload folder first: every component uses it
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, auth_message=message)
    uploads.guard(demo, settings)
    app.add_middleware(uploads.UploadBudget, janitor=uploads.janitor(settings))
    return app


__all__ = ["build_demo", "mount_ui"]
