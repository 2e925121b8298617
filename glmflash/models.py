"""The model ids a server or page answers to, and the adapter each one selects: one mapping that
the HTTP server and the page both read, without importing each other."""

from __future__ import annotations

from .errors import InvalidRequestError


def served_models(info, served_name: str) -> dict[str, str]:
    """The model ids a server answers to, each with the adapter it selects ("": the base model).
    The served name is the base model; an adapter answers to its name (as vLLM's --lora-modules
    names do) and to SERVED+NAME."""
    if served_name in info.adapters:
        raise InvalidRequestError(
            f"An adapter is named {served_name!r}, as the served model is: rename it (NAME=FOLDER) or "
            "set GLMFLASH_SERVED_MODEL_NAME.",
            param="adapter",
        )
    ids = {served_name: ""}
    for name in info.adapters:
        ids[name] = ids[f"{served_name}+{name}"] = name
    return ids
