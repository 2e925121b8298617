"""The library's error hierarchy: every error carries a one-line message a person can act on.

The front ends (server, page, CLI) translate these once (HTTP: OpenAI's error shape and a
status; CLI: one line and exit 2). "Adapter" in glmflash always means a LoRA adapter.
"""

from __future__ import annotations


class GlmflashError(Exception):
    """Base class. `param` names the offending input field, `code` is a stable machine tag."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(GlmflashError, ValueError):
    """The caller sent something malformed or out of range."""

    status = 400
    code = "invalid_request"


class ImageError(InvalidRequestError):
    """An image could not be accepted (size, format, corrupt data, refused URL)."""

    code = "invalid_image"


class ModelNotFoundError(GlmflashError):
    """The named checkpoint is neither a local folder, nor cached, nor downloadable."""

    code = "model_not_found"


class CheckpointError(GlmflashError):
    """The checkpoint's files disagree with each other (its config and its tokenizer)."""

    code = "invalid_checkpoint"


class PrecisionError(GlmflashError, ValueError):
    """Unknown precision, or one this device cannot run."""

    code = "unsupported_precision"


class MissingDependencyError(GlmflashError, ImportError):
    """An optional package needed for the requested feature is not installed."""

    code = "missing_dependency"


class InsufficientMemoryError(GlmflashError):
    """The model does not fit in the device's free memory at this precision."""

    status = 503
    code = "insufficient_memory"


class GenerationError(GlmflashError):
    """Generation failed inside the model; the engine stays usable."""

    code = "generation_failed"


class EngineFailedError(GlmflashError):
    """The engine's decode loop cannot go on: it answers nothing more until it is restarted."""

    status = 503
    code = "engine_failed"
