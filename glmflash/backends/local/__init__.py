"""The local engine: loading the model (load.py), the decode loop where requests join and leave
per token (scheduler.py, with prefill.py, rows.py and slots.py: its KV cache of fixed slots and
its decode step, eager or compiled; decoding.py: the compiled step's warm-up) and grammar masks
(grammar.py). Importing this package imports no
torch; its modules do.
"""

from ..registry import register

# Every model argument that no other backend claims: "auto", "tiny", a folder, a hub id.
register("local", claims=lambda _: True, open="glmflash.backends.local.backend:open_local", fallback=True)


def local_engine(engine, needed_by: str):
    """`engine` when it is the local one; a clear error for another (a remote URL) where
    `needed_by` (a command) works on the model's weights."""
    from ...errors import InvalidRequestError
    from .engine import Engine

    if not isinstance(engine, Engine):
        raise InvalidRequestError(
            f"{needed_by} needs a local model (a folder, a hub id or tiny), not the backend "
            f"{engine.info.source or engine.info.model_id}: pass --model and unset GLMFLASH_BACKEND_URL.",
            param="model",
        )
    return engine
