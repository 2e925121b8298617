"""The table of backends and `load()`, which picks one by its model argument.

A backend is one module under glmflash/backends/ that registers itself with one line,
`register("name", claims=..., open=...)`: `claims(target)` says whether it serves a model
argument (a folder, a hub id, "tiny", a URL), `open(target, precision, device, settings, options)`
returns its engine. The modules are imported on the first load(), not at `import glmflash`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import EngineSettings, Settings
from ..contract import EngineBase
from ..errors import InvalidRequestError

Opener = Callable[[str, "str | None", "str | None", EngineSettings, dict], EngineBase]


@dataclass(frozen=True)
class Backend:
    name: str
    claims: Callable[[str], bool]
    open: Opener | str  # the function, or "module:function" to import when first used
    fallback: bool = False  # asked only when no other backend claims the model argument

    def opener(self) -> Opener:
        if callable(self.open):
            return self.open
        module, _, function = self.open.partition(":")
        return getattr(importlib.import_module(module), function)


BACKENDS: dict[str, Backend] = {}
_found = False


def register(name: str, *, claims: Callable[[str], bool], open: Opener | str, fallback: bool = False) -> None:
    """Add (or replace) the backend `name` in the table."""
    BACKENDS[name] = Backend(name, claims, open, fallback)


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def backend_for(target: str) -> Backend:
    """The backend that serves `target`: the first that claims it, the fallback after the rest."""
    _discover()
    for backend in sorted(BACKENDS.values(), key=lambda b: (b.fallback, b.name)):
        if backend.claims(target):
            return backend
    raise InvalidRequestError(f"No backend serves the model {target!r}.", param="model")


def load(model: str | None = None, precision: str | None = None, device: str | None = None, **options):
    """Load GLM-4.6V-Flash (or the tiny demo model) and return a ready `Engine`.

    `model`: "auto" (default), a hub id, a local folder, "tiny", or the http(s) URL of an
    OpenAI-compatible backend (`api_key=`; also GLMFLASH_BACKEND_URL), which returns a
    RemoteEngine with the same contract. `precision`: auto, bf16, fp16,
    fp32, int8, int4. `device`: auto, cpu, cuda, cuda:N. Unset arguments come from GLMFLASH_*
    variables; `options` are further settings by their flat names (max_image_pixels,
    max_new_tokens, ...; see config.py), or `settings=` a whole Settings.
    """
    base = options.pop("settings", None) or Settings.from_env()
    chosen = target(model, base)
    return backend_for(chosen).opener()(chosen, precision, device, base, options)


def target(model: str | None, settings: EngineSettings) -> str:
    """What load(model) serves: `model`, else the settings' backend URL, else their model."""
    return model or settings.model.backend_url or settings.model.name


def engine_settings(base: EngineSettings, options: dict[str, Any]) -> EngineSettings:
    """The engine's part of `base` with `options` (flat setting names) applied: an engine never
    holds the server's settings or secrets."""
    try:
        return base.for_engine().replace(**options)
    except InvalidRequestError as error:
        raise TypeError(f"load() got an unknown option {error.param!r}") from None


def _discover() -> None:
    """Import every module of this package once: each backend registers itself."""
    global _found
    if _found:
        return
    from .. import backends

    for module in pkgutil.iter_modules(backends.__path__):
        if module.name != "registry":
            importlib.import_module(f"{backends.__name__}.{module.name}")
    _found = True
