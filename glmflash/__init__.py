"""glmflash: self-hosted image understanding with GLM-4.6V-Flash.

The public API: `load()` returns an engine (`Engine` here, `RemoteEngine` for a backend URL), both
`EngineBase`: `stream()` yields `Chunk`s, `chat()` returns a `Reply`, `ask()` is the one-liner.
Importing glmflash does not import torch; loading a model does.
"""

from .chunks import Chunk, EngineInfo, Memory, Reply, Timings, Usage
from .config import Settings
from .contract import EngineBase
from .errors import (
    GenerationError,
    GlmflashError,
    ImageError,
    InsufficientMemoryError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    PrecisionError,
)
from .images import ImagePolicy
from .load import load

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "Engine",
    "EngineBase",
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
    "Usage",
    "load",
]


def __getattr__(name: str):
    """The engines, imported when first named: the local one brings torch with it."""
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "RemoteEngine":
        from .remote import RemoteEngine

        return RemoteEngine
    raise AttributeError(f"module 'glmflash' has no attribute {name!r}")
