"""glmflash: self-hosted image understanding with GLM-4.6V-Flash.

The public API: `load()` returns an `Engine`; `Engine.stream()` yields `Chunk`s, `Engine.chat()`
returns a `Reply`, `Engine.ask()` is the one-liner.
"""

from .chunks import Chunk, EngineInfo, Reply, Timings, Usage
from .config import Settings
from .engine import Engine
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
    "EngineInfo",
    "GenerationError",
    "GlmflashError",
    "ImageError",
    "ImagePolicy",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "PrecisionError",
    "Reply",
    "Settings",
    "Timings",
    "Usage",
    "load",
]
