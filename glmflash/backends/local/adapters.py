"""LoRA adapters on the local engine's model: attached in place (transformers' PEFT integration,
so the model keeps its class and its decode loop) and chosen per request. Training is
adapt/train.py's, merging into the base weights adapt/merge.py's.

Several adapters can be loaded at once. Each request names the one it wants (or the base model),
and requests for different adapters still decode in one batch: the Router hands every LoRA layer
the adapter of each row in the batch (peft's mixed-batch forward), so a row gets its own
adapter's delta and nobody else's.

An adapter trained for another base model or another architecture is refused with a clear
message, before anything is changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import InvalidRequestError, MissingDependencyError

log = logging.getLogger("glmflash")

BASE_ROW = "__base__"  # peft's name for a row that takes no adapter
NAME = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]*")  # an adapter's name: also a module key and a model id
# adapter_config.json settings whose weights sit outside the LoRA layers or that peft cannot mix
# in one batch: such an adapter could not be chosen per request
UNSERVABLE = ("use_dora", "modules_to_save", "trainable_token_indices", "target_parameters")
# What an adapter covers (what finetune trains, adapt/train.py says why): the language model's
# attention q/k/v/o and its MLP's fused gate_up and down projections.
TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_up_proj|down_proj)"


def require_peft():
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("LoRA adapters need peft: pip install peft") from None
    return peft


def parse_adapters(spec: str | Sequence[str] | dict | None) -> list[tuple[str, Path]]:
    """Adapters as (name, folder): `spec` is a folder, `NAME=FOLDER`, several of them (a list,
    or one string with commas, as GLMFLASH_ADAPTER holds them) or {name: folder}. A name is its
    folder's name unless given."""
    if not spec:
        return []
    if isinstance(spec, dict):
        items = [f"{name}={folder}" for name, folder in spec.items()]
    elif isinstance(spec, str):
        items = spec.split(",")
    else:
        items = list(spec)
    adapters: list[tuple[str, Path]] = []
    for item in (str(item).strip() for item in items):
        if not item:
            continue
        name, given, folder = item.partition("=")
        if not given or "/" in name:  # a folder whose path holds an =
            name, folder = "", item
        path = Path(folder.strip()).expanduser()
        name = name.strip() or path.name
        problem = "" if NAME.fullmatch(name) else "is not letters, digits, - and _ (not starting with _)"
        problem = problem or ("is used twice" if any(name == seen for seen, _ in adapters) else "")
        if problem:
            raise InvalidRequestError(
                f"The adapter name {name!r} {problem}: give each adapter its own name, as NAME=FOLDER.",
                param="adapter",
            )
        adapters.append((name, path))
    return adapters


def adapter_config(path: str | Path) -> dict:
    folder = Path(path).expanduser()
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise InvalidRequestError(
            f"{folder} is not a LoRA adapter folder (no adapter_config.json): train one with "
            "`python -m glmflash finetune`.",
            param="adapter",
        )
    try:
        return json.loads(config.read_text("utf-8"))
    except ValueError:
        raise InvalidRequestError(f"{config} is not valid JSON.", param="adapter") from None


def attach_adapters(model, spec, *, base: str | None = None) -> list[str]:
    """Attach every adapter in `spec` (see parse_adapters); returns their names, in order.
    `base`: the loaded model's id, checked against the one each was trained on (glmflash.json)."""
    names: list[str] = []
    for name, folder in parse_adapters(spec):
        with _quiet() if names else contextlib.nullcontext():
            _attach(model, folder, name, base)
        names.append(name)
    return names


def _attach(model, folder: Path, name: str, base: str | None) -> None:
    """Load one adapter into `model`, refusing (with nothing left attached) one that could not
    be chosen per request: not plain LoRA, or changing anything but the language model's layers
    (a batch's images are encoded together and its embeddings looked up together, so no row
    could have its own vision or embedding adapter; merge such an adapter with merge-adapter)."""
    require_peft()
    config = adapter_config(folder)
    odd = [key for key in UNSERVABLE if config.get(key)]
    kind = config.get("peft_type", "LORA")
    if odd or kind != "LORA":
        raise InvalidRequestError(
            f"The adapter in {folder} is not a plain LoRA adapter ({', '.join(odd) or kind}): it "
            "cannot be chosen per request. Serve a merged copy instead (python -m glmflash merge-adapter).",
            param="adapter",
        )
    _check_base(folder, model, base)
    try:
        loaded = model.load_adapter(str(folder), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names that do not fit
        _detach(model, name)
        raise InvalidRequestError(
            f"The adapter in {folder} does not fit this model (trained for another base model or "
            f"another rank?): {str(exc).splitlines()[0][:300]}",
            param="adapter",
        ) from None
    # transformers only warns about weights the folder lacks (they would stay at their start values)
    missing = sorted(k for k in getattr(loaded, "missing_keys", ()) if _ours(k, name))
    if missing:
        _detach(model, name)
        raise InvalidRequestError(
            f"The adapter in {folder} is incomplete: {len(missing)} of its weights are missing "
            f"(e.g. {missing[0]}).",
            param="adapter",
        )
    touched = sorted({n.split(".lora_")[0] for n, _ in model.named_parameters()
                      if _ours(n, name) and ".language_model.layers." not in n})  # fmt: skip
    if touched:
        _detach(model, name)
        raise InvalidRequestError(
            f"The adapter in {folder} changes modules outside the language model's layers "
            f"({touched[0]}, ...): it cannot be chosen per request. Serve a merged copy instead "
            "(python -m glmflash merge-adapter).",
            param="adapter",
        )


def _ours(key: str, name: str) -> bool:
    """A LoRA weight of the adapter `name` (its name is one part of the key's dotted path)."""
    return ".lora_" in key and f".{name}." in f"{key}."


class Router:
    """Tells each LoRA layer which adapter every row of the batch at hand takes. A decode loop
    wraps each forward in `rows(names)` (per thread: engines sharing a model do not mix); a
    forward outside one (a caller's own `generate`) takes `default` for every row. Names are
    adapter names, None for the base model."""

    @classmethod
    def of(cls, model, default: str | None) -> Router:
        """The model's one router (engines sharing a model share it: one set of hooks)."""
        router = getattr(model, "_glmflash_router", None)
        if router is None:
            router = cls(model, default)
            model._glmflash_router = router
        router.default = default
        return router

    def __init__(self, model, default: str | None):
        from peft.tuners.lora import LoraLayer

        self.default = default
        self._local = threading.local()  # .names and .same for the forward in hand on this thread
        for module in model.modules():
            if isinstance(module, LoraLayer):  # an nn.Module too
                module.register_forward_pre_hook(self._hook, with_kwargs=True)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def rows(self, names: Sequence[str | None]) -> Iterator[None]:
        local = self._local
        local.names = [name or BASE_ROW for name in names]
        local.same = local.names[0] if len(set(local.names)) == 1 else None
        try:
            yield
        finally:
            local.names = local.same = None

    def _hook(self, module, args, kwargs):
        names = getattr(self._local, "names", None)
        same = self._local.same if names else self.default or BASE_ROW
        if same is not None and module.active_adapters == [same]:
            return None  # every row takes the layer's active adapter: peft's plain path, no row gathering
        width = len(args[0]) if args else len(kwargs["x"])
        return args, {**kwargs, "adapter_names": names or [same] * width}


def base_shape(config) -> dict:
    """What identifies a base model's architecture, as training records it (glmflash.json)."""
    text = config.get_text_config(decoder=True)
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    return {name: getattr(text, name, None) for name in names}


def _check_base(folder: Path, model, base: str | None) -> None:
    """Refuse an adapter trained on another base model (its glmflash.json says which; adapters
    from elsewhere say nothing). The same model loaded from a folder has another id: there the
    recorded architecture decides, with a warning."""
    try:
        trained = json.loads((folder / "glmflash.json").read_text("utf-8"))
        trained_on, shape = trained.get("base_model"), trained.get("base_shape")
    except (OSError, ValueError, AttributeError):
        return
    if not base or not trained_on or trained_on == base:
        return
    same_shape = shape is None or shape == base_shape(model.config)
    if same_shape and (_is_folder(base) or _is_folder(trained_on)):
        log.warning("The adapter in %s was trained on %s and %s is loaded: use it only if that is the "
                    "same model.", folder, trained_on, base)  # fmt: skip
        return
    raise InvalidRequestError(
        f"The adapter in {folder} was trained on {trained_on}, but {base} is loaded: load that model, "
        "or train an adapter for this one.",
        param="adapter",
    )


def _is_folder(model_id: str) -> bool:
    """A model id that names a folder (here, or where the adapter was trained), not a hub id."""
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().is_dir()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """A second adapter: transformers reports the first one's weights as missing from its
    folder, and peft warns that the model now holds several. Both are what was asked for."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _detach(model, name: str) -> None:
    with contextlib.suppress(Exception):  # nothing was attached
        model.delete_adapter(name)
