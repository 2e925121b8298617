"""The local engine: the registry's opener (backend.py), where the model comes from and how it
is placed and loaded (load.py), the tiny demo model (tiny.py), LoRA adapters chosen per request
(adapters.py), and the engine with its decode loop (engine.py, scheduler.py and the modules
beside them). Importing this package imports no torch; its modules do.
"""

from ..registry import register

# Every model argument that no other backend claims: "auto", "tiny", a folder, a hub id.
register("local", claims=lambda _: True, open="glmflash.backends.local.backend:open_local", fallback=True)


def as_local(engine):
    """`engine` when it runs on this machine (an `Engine`, whose model and processor a caller may
    use directly), else None."""
    from .engine import Engine

    return engine if isinstance(engine, Engine) else None


def local_engine(engine, needed_by: str):
    """`engine` when it runs on this machine; a clear error for another (a remote backend) where
    `needed_by` (a command) works on the model's weights."""
    local = as_local(engine)
    if local is None:
        raise _not_local(needed_by, engine.info.source or engine.info.model_id)
    return local


def require_local(model: str | None, settings, needed_by: str) -> None:
    """Before anything loads: the same error when `model` (or the settings' backend URL) would
    not be loaded on this machine."""
    from ..registry import backend_for, target

    where = target(model, settings)
    if backend_for(where).name != "local":
        raise _not_local(needed_by, where)


def _not_local(needed_by: str, where: str):
    from ...errors import InvalidRequestError

    return InvalidRequestError(
        f"{needed_by} needs a model loaded on this machine (a folder, a hub id or tiny), not the "
        f"backend {where}: pass --model, and unset GLMFLASH_BACKEND_URL.",
        param="model",
    )
