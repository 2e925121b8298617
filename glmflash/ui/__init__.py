"""The web page (Gradio): build_demo(engine, settings), and mount_ui() onto the API's app at "/"."""

from .demo import build_demo


def mount_ui(app, engine, settings):
    """Serve the page at / on the same FastAPI app (and port) as the API."""
    import gradio as gr

    return gr.mount_gradio_app(app, build_demo(engine, settings), path="/")


__all__ = ["build_demo", "mount_ui"]
