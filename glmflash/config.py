"""Settings, split by owner, and the one place that reads GLMFLASH_* environment variables.

- `ModelSettings`: what runs and where (checkpoint or backend URL, precision, device, compile).
- `RequestLimits`: the one source of truth for what a single request may ask for and send; both
  engines check it in pipeline.prepare, the page and the server read their bounds from it.
- `BatchSettings`: how the local engine shares the model between concurrent requests.
- `ServerSettings`: the HTTP server and the page (address, access control, queue, audit log).

An engine holds `EngineSettings` (model, limits, batching) and never the server's part, so nothing
that holds an engine holds its API keys or JWT secret; `Settings` adds the server and the CLI's
`debug`. Every field maps to GLMFLASH_<FIELD> (ModelSettings.name to GLMFLASH_MODEL), and field
names are unique across groups, so `Settings.build(max_images=3, port=9000)` and
`settings.replace(...)` take them flat. Everything else receives settings or plain arguments, so
tests and adapters never depend on the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError

DEFAULT_MODEL = "zai-org/GLM-4.6V-Flash"


def _default_cache_dir() -> str:
    return str(Path.home() / ".cache" / "glmflash")


@dataclass(frozen=True)
class ModelSettings:
    """What runs and where."""

    name: str = field(default="auto", metadata={"env": "MODEL"})  # auto, a hub id, a folder, or "tiny"
    backend_url: str = ""  # an OpenAI-compatible /v1 URL (vLLM, SGLang, glmflash): use it, load nothing
    backend_api_key: str = ""  # the key that backend wants
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 | int8 | int4
    quantizer: str = "bitsandbytes"  # int8/int4 library: bitsandbytes (least memory) | torchao (int8)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile'd decode step (CUDA graphs on a GPU), compiled at warm-up
    # LoRA adapter folders (python -m glmflash finetune): FOLDER or NAME=FOLDER, commas between
    # several; a request chooses one by name (the API's `model`), the first is the default
    adapter: str = ""
    cache_dir: str = field(default_factory=_default_cache_dir)  # where the tiny model is built


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for and send (the same on every engine and entry point)."""

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
    max_pdf_pages: int = 16  # pages read per PDF (a PDF becomes its pages; they count as images)
    pdf_dpi: int = 200  # render resolution, capped by max_image_pixels (small print stays legible)
    pdf_render_timeout: float = 20.0  # seconds to render one PDF


@dataclass(frozen=True)
class BatchSettings:
    """How the local engine shares the model between concurrent requests."""

    max_batch_size: int = 8  # requests decoded together, each joining at the next token (1: one at a time)
    kv_cache_mb: int = 0  # KV cache budget for all rows; 0: 40% of free GPU memory / 25% of free RAM
    prefill_chunk: int = 2048  # prompt tokens prefilled between two decode steps of the running rows
    prefix_cache_mb: int = 512  # recent prompts' KV and images' features kept for reuse; 0: off


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP server and the page it serves."""

    host: str = "127.0.0.1"
    port: int = 8080
    # the id /v1/models lists: without adapters any id is accepted, with them it is the base model
    served_model_name: str = "glm-4.6v-flash"
    api_keys: str = ""  # comma-separated keys, or the path of a file with one key per line
    jwt_secret: str = ""  # HS256 secret; tokens must carry `exp`
    allowed_ips: tuple[str, ...] = ()  # client CIDRs; empty = everyone
    max_body_bytes: int = 60_000_000  # whole request body (413 above, before it is read)
    max_queue: int = 16  # requests waiting for the engine (503 with Retry-After above)
    request_timeout: float = 300.0  # seconds a request may take in all (504 after)
    drain_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM
    audit_log: str = ""  # JSON-lines file; empty = no audit log
    audit_log_max_bytes: int = 50_000_000  # rotate above this size (5 files kept)
    audit_log_prompts: bool = False  # also log the prompt text (never the images)
    lang: str = "en"  # the web page's language: en or zh
    font: str = ""  # a font file for the page's box labels (Latin and CJK); empty: the first found
    upload_dir: str = ""  # where the page's private upload folder is made; empty: the temp folder
    upload_max_bytes: int = 2_000_000_000  # the page's disk budget: uploads, its cache, unpacked zips
    upload_max_age: float = 21_600.0  # seconds an uploaded or cached file is kept (6 h)


GROUPS = {
    "model": ModelSettings,
    "limits": RequestLimits,
    "batching": BatchSettings,
    "server": ServerSettings,
}


def _flat_name(f) -> str:
    return f.metadata.get("env", f.name).lower()


# flat name (GLMFLASH_<NAME>) -> (group attribute, field); `debug` is Settings' own
FIELDS: dict[str, tuple[str, Any]] = {
    _flat_name(f): (group, f) for group, cls in GROUPS.items() for f in fields(cls)
}
FIELDS["debug"] = ("", None)


@dataclass(frozen=True)
class EngineSettings:
    """What an engine holds: its model, the request limits and its batching (no server part)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    batching: BatchSettings = field(default_factory=BatchSettings)

    def for_engine(self) -> EngineSettings:
        """Only the engine's part: the server's settings (and its secrets) left out."""
        return EngineSettings(self.model, self.limits, self.batching)

    def replace(self, **flat: Any) -> Any:
        """A copy with some fields changed, named flat (`max_images=3`); None leaves one as is."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            if value is None:
                continue
            group, f = FIELDS.get(name, ("?", None))
            if not hasattr(self, group or name):
                raise InvalidRequestError(f"Unknown setting {name!r}.", param=name)
            changes.setdefault(group, {})[f.name if f is not None else name] = value
        top = changes.pop("", {})
        groups = {group: replace(getattr(self, group), **values) for group, values in changes.items()}
        return replace(self, **groups, **top)


@dataclass(frozen=True)
class Settings(EngineSettings):
    """Everything: the engine's part, the server's, and the CLI's `debug`."""

    server: ServerSettings = field(default_factory=ServerSettings)
    debug: bool = False  # show tracebacks in the CLI

    @classmethod
    def build(cls, **flat: Any) -> Settings:
        """Defaults with some fields set, named flat: `Settings.build(model="tiny", port=9000)`."""
        return cls().replace(**flat)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read GLMFLASH_* variables; `overrides` (e.g. from CLI flags) win when not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (_, f) in FIELDS.items():
            raw = env.get(f"GLMFLASH_{name.upper()}")
            if raw is not None and raw.strip() != "":
                values[name] = _parse(name, f.type if f is not None else "bool", raw.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(**values)


def _parse(name: str, kind: Any, raw: str):
    var = f"GLMFLASH_{name.upper()}"
    kind = str(kind)
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
