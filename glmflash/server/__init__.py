"""The HTTP adapter: an OpenAI-compatible API around an Engine (FastAPI; the core never imports it)."""

from .app import create_app

__all__ = ["create_app"]
