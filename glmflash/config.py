"""Settings: the one place that reads GLMFLASH_* environment variables.

Everything else receives a `Settings` (or plain arguments), so tests and adapters never depend on
the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import InvalidRequestError

DEFAULT_MODEL = "zai-org/GLM-4.6V-Flash"
SERVER_SECRETS = ("api_keys", "jwt_secret")


def _default_cache_dir() -> str:
    return str(Path.home() / ".cache" / "glmflash")


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Each field maps to GLMFLASH_<FIELD NAME IN CAPITALS>."""

    model: str = "auto"  # "auto", a hub id, a local folder, or "tiny"
    backend_url: str = ""  # an OpenAI-compatible /v1 URL (vLLM, SGLang, glmflash): use it, load nothing
    backend_api_key: str = ""  # the key that backend wants
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 | int8 | int4
    quantizer: str = "bitsandbytes"  # int8/int4 library: bitsandbytes (least memory) | torchao (int8)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_new_tokens: int = 8192  # default answer budget, thinking included (the official demos give 8192)
    max_new_tokens_limit: int = 32768  # the most a caller may ask for
    max_image_pixels: int = 1_048_576  # downscale budget, ~1,340 visual tokens
    max_image_bytes: int = 20_000_000  # encoded size accepted per image
    max_decoded_pixels: int = 64_000_000  # declared size above this is refused before decoding
    max_images: int = 8  # images per request
    allow_image_urls: bool = False  # fetch http(s) image URLs at all
    image_url_allowed_networks: tuple[str, ...] = ()  # CIDRs trusted despite being private
    image_url_timeout: float = 10.0  # seconds for a whole URL fetch
    max_context_tokens: int = 0  # prompt + answer ceiling; 0 = the model's own context length
    cache_dir: str = field(default_factory=_default_cache_dir)  # where the tiny model is built
    debug: bool = False  # show tracebacks in the CLI
    lang: str = "en"  # the web page's language: en or zh
    # -- the HTTP server --------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8080
    served_model_name: str = "glm-4.6v-flash"  # the id /v1/models lists; any id is accepted
    api_keys: str = ""  # comma-separated keys, or the path of a file with one key per line
    jwt_secret: str = ""  # HS256 secret; tokens must carry `exp`
    allowed_ips: tuple[str, ...] = ()  # client CIDRs; empty = everyone
    max_body_bytes: int = 60_000_000  # whole request body (413 above, before it is read)
    max_batch_size: int = 8  # concurrent requests generated together (1: one at a time)
    batch_wait_ms: float = 30.0  # the most a batch waits for requests on their way (busy times only)
    compile: bool = False  # static KV cache + torch.compile'd decoding (each new shape compiles first)
    max_queue: int = 16  # requests waiting for the engine (503 with Retry-After above)
    request_timeout: float = 300.0  # seconds a request may take in all (504 after)
    drain_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM
    audit_log: str = ""  # JSON-lines file; empty = no audit log
    audit_log_max_bytes: int = 50_000_000  # rotate above this size (5 files kept)
    audit_log_prompts: bool = False  # also log the prompt text (never the images)

    def without_secrets(self) -> Settings:
        """A copy for an engine: the server's own secrets (its API keys, its JWT secret) left
        out, so nothing that holds an engine (a notebook, a job, a log of engine.settings) holds
        them. The server gets the whole Settings."""
        return replace(self, **{name: "" for name in SERVER_SECRETS})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read GLMFLASH_* variables; `overrides` (e.g. from CLI flags) win when not None."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(f"GLMFLASH_{f.name.upper()}")
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, f.type, raw.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, kind: str, raw: str):
    var = f"GLMFLASH_{name.upper()}"
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "bool":
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise InvalidRequestError(f"{var}={raw!r} is not a valid {kind.split('[')[0]}.", param=var) from None
    return raw
