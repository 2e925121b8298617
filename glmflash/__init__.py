"""glmflash: self-hosted image understanding with GLM-4.6V-Flash.

The public API: `load()` returns an engine (`Engine` here, `RemoteEngine` for a backend URL), both
`EngineBase`: `stream()` yields `Chunk`s, `chat()` returns a `Reply`, `ask()` is the one-liner;
`run_tools()` runs Python functions for the model's tool calls until it answers.
Importing glmflash does not import torch; loading a model does.
"""

from ._version import __version__ as __version__
from .backends.registry import load
from .config import Settings
from .contract import EngineBase
from .errors import (
    EngineFailedError,
    GenerationError,
    GlmflashError,
    ImageError,
    InsufficientMemoryError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    PrecisionError,
)
from .inputs.images import ImagePolicy
from .replies import Chunk, EngineInfo, Memory, Reply, Timings, ToolCall, Usage
from .text.tool_loop import ToolRun, run_tools

__all__ = [
    "Chunk",
    "Engine",
    "EngineBase",
    "EngineFailedError",
    "EngineInfo",
    "GenerationError",
    "GlmflashError",
    "ImageError",
    "ImagePolicy",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "Memory",
    "MissingDependencyError",
    "ModelNotFoundError",
    "PrecisionError",
    "RemoteEngine",
    "Reply",
    "Settings",
    "Timings",
    "ToolCall",
    "ToolRun",
    "Usage",
    "load",
    "run_tools",
]


def __getattr__(name: str):
    """The engines, imported when first named: the local one brings torch with it."""
    if name == "Engine":
        from .backends.local.engine import Engine

        return Engine
    if name == "RemoteEngine":
        from .backends.remote import RemoteEngine

        return RemoteEngine
    raise AttributeError(f"module 'glmflash' has no attribute {name!r}")
