"""Where the model comes from, which device and precision it runs in (and why), and loading it.

The real checkpoint and the tiny test model go through the same AutoProcessor /
AutoModelForImageTextToText path; quantization libraries are imported only when asked for.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from ...config import DEFAULT_MODEL, EngineSettings
from ...errors import (
    CheckpointError,
    InsufficientMemoryError,
    MissingDependencyError,
    ModelNotFoundError,
    PrecisionError,
)
from .tiny import TINY_ID, ensure_tiny_model, is_tiny_model

log = logging.getLogger("glmflash")


class _TorchaoImportNoise(logging.Filter):
    """transformers imports torchao whenever it is installed, and torchao registers two enums in a
    way torch now calls deprecated: a warning on every start that no user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "register_constant() on Enum" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_TorchaoImportNoise())

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "int8", "int4")
GiB = 1024**3
HEADROOM_BYTES = 2 * GiB  # activations, KV cache and one ~1 MP image on top of the weights
DEMO_WARNING = (
    "!!! GLM-4.6V-Flash is not available here: running the TINY DEMO MODEL with random weights. "
    "Its answers are MEANINGLESS. Download the checkpoint (hf download %s) or set "
    "GLMFLASH_MODEL to a local folder holding it. !!!"
)


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model source: a local folder (or a hub id to download) and what it is."""

    source: str
    model_id: str
    demo: bool


@dataclass(frozen=True)
class Placement:
    """Device, precision and torch dtype, with the human reason for the choice."""

    device: str
    precision: str
    dtype_name: str
    reason: str


def resolve_checkpoint(model: str, settings: EngineSettings) -> Checkpoint:
    """Map "auto" / "tiny" / a folder / a hub id to something from_pretrained can load."""
    if model == "tiny":
        return Checkpoint(str(ensure_tiny_model(settings.model.cache_dir)), TINY_ID, True)
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} is a folder but has no config.json: not a model checkpoint.")
        return Checkpoint(str(folder), str(folder), is_tiny_model(folder))
    if model.startswith(("/", ".", "~")) or (model.count("/") != 1 and model != "auto"):
        raise ModelNotFoundError(
            f"Model folder {model!r} does not exist. Set GLMFLASH_MODEL (or --model) to a folder "
            f"holding the checkpoint, or to a hub id such as {DEFAULT_MODEL}."
        )
    repo = DEFAULT_MODEL if model == "auto" else model
    cached = cached_snapshot(repo)
    if cached:
        return Checkpoint(cached, repo, False)
    reachable, missing = hub_status(repo)
    if reachable and not missing:
        log.info("%s is not in the local cache: downloading it (about 20 GB for GLM-4.6V-Flash)", repo)
        return Checkpoint(repo, repo, False)
    if model == "auto":
        log.warning(DEMO_WARNING, DEFAULT_MODEL)
        return Checkpoint(str(ensure_tiny_model(settings.model.cache_dir)), TINY_ID, True)
    if missing:
        raise ModelNotFoundError(f"There is no model {repo!r} on the Hugging Face hub: check the name.")
    raise ModelNotFoundError(
        f"{repo} is not in the local cache and the hub cannot be reached. On a machine with "
        f"internet run `hf download {repo} --local-dir /models/glm46v-flash`, copy the folder here "
        "and set GLMFLASH_MODEL=/models/glm46v-flash (or pass --model)."
    )


def cached_snapshot(repo: str) -> str | None:
    """The folder of `repo`'s complete snapshot in the hub cache (config and weights), or None."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        return None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return str(path) if (path / "config.json").is_file() and has_weights else None


def hub_status(repo: str) -> tuple[bool, bool]:
    """(hub reachable, repo missing there). Offline mode counts as unreachable."""
    from huggingface_hub import HfApi, is_offline_mode
    from huggingface_hub.errors import RepositoryNotFoundError

    if is_offline_mode():
        return False, False
    try:
        HfApi().model_info(repo, timeout=10)
    except RepositoryNotFoundError:
        return True, True
    except Exception:
        return False, False
    return True, False


def choose_placement(precision: str, device: str) -> Placement:
    """Pick the device and precision once, with a reason that is logged."""
    import torch

    if precision not in PRECISIONS:
        raise PrecisionError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device, why_device = ("cuda:0", "CUDA device found") if has_cuda else ("cpu", "no CUDA device")
    else:
        why_device = "asked for"
        if device == "cuda":
            device = "cuda:0"
        if device.startswith("cuda") and not has_cuda:
            raise PrecisionError(f"Device {device!r} was asked for, but no CUDA GPU is visible.")
        if not (device == "cpu" or device.startswith("cuda:")):
            raise PrecisionError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.")
    on_gpu = device.startswith("cuda")
    if on_gpu:
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise PrecisionError(f"{device} does not exist: {torch.cuda.device_count()} GPU(s) visible.")
        major, _ = torch.cuda.get_device_capability(index)
        bf16_ok = major >= 8
    if precision == "auto":
        if not on_gpu:
            precision, why = "fp32", why_device
        elif bf16_ok:
            precision, why = "bf16", "Ampere or newer GPU"
        else:
            precision, why = "fp16", "this GPU has no bf16 (pre-Ampere, e.g. V100)"
    else:
        why = "asked for"
        if precision == "bf16" and on_gpu and not bf16_ok:
            raise PrecisionError(
                f"{device} has no bf16 support (pre-Ampere, e.g. V100): use --precision fp16."
            )
        if precision == "int4" and not on_gpu:
            raise PrecisionError("int4 needs a CUDA GPU; on the CPU use int8 or fp32.")
    dtype_name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(precision)
    if dtype_name is None:  # quantized: compute dtype of the non-quantized parts
        dtype_name = "float32" if not on_gpu else ("bfloat16" if bf16_ok else "float16")
    return Placement(device, precision, dtype_name, f"{precision} on {device} ({why})")


def estimate_memory(config, precision: str) -> dict[str, int]:
    """Bytes needed per precision (weights + headroom), from the architecture alone (no weights)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    quantizable = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not _skipped(name):
            quantizable += module.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    other = total - quantizable
    per_weight = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
    return {
        name: int(quantizable * size + other * (4.0 if name == "fp32" else 2.0)) + HEADROOM_BYTES
        for name, size in per_weight.items()
    }


def full_size_config():
    """The real GLM-4.6V-Flash architecture (shipped with the package: no download needed)."""
    import json
    from importlib import resources

    from transformers import Glm4vConfig

    data = json.loads(resources.files("glmflash").joinpath("data/full_size_config.json").read_text())
    data.pop("_comment", None)
    return Glm4vConfig(**data)


# Config fields that name a token, and the token: they must agree with the tokenizer, or every
# image fails at its first request ("Image features and image tokens do not match").
TOKEN_FIELDS = {
    "image_token_id": "<|image|>",
    "video_token_id": "<|video|>",
    "image_start_token_id": "<|begin_of_image|>",
    "image_end_token_id": "<|end_of_image|>",
    "video_start_token_id": "<|begin_of_video|>",
    "video_end_token_id": "<|end_of_video|>",
}
# A GLM turn has no end token of its own: the model ends it by starting the next role.
TURN_ENDS = ("<|user|>", "<|observation|>")


def check_token_ids(config, tokenizer) -> None:
    """CheckpointError when the config names a token by another id than the tokenizer does."""
    vocab = tokenizer.get_vocab()
    wrong = [
        f"{field}={getattr(config, field)} but the tokenizer's {token} is {vocab[token]}"
        for field, token in TOKEN_FIELDS.items()
        if token in vocab and getattr(config, field, None) not in (None, vocab[token])
    ]
    if wrong:
        raise CheckpointError(
            f"The checkpoint's config.json and tokenizer disagree: {'; '.join(wrong)}. Fix config.json "
            "(or use the tokenizer that came with these weights)."
        )


def stop_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a turn: the generation config's eos ids, the text config's, and the
    ids of <|user|> and <|observation|> where the tokenizer has them. A checkpoint (or a fine-tune)
    whose generation config lists only <|endoftext|> still ends its turn."""
    text_config = model.config.get_text_config(decoder=True)
    found = set()
    for eos in (model.generation_config.eos_token_id, text_config.eos_token_id, tokenizer.eos_token_id):
        found.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    vocab = tokenizer.get_vocab()
    found.update(vocab[token] for token in TURN_ENDS if token in vocab)
    return found


QUANT_SKIP = ("visual", "lm_head")  # the vision tower and head stay in 16-bit for quality


def _skipped(name: str) -> bool:
    return any(part in QUANT_SKIP for part in name.split("."))


def check_gpu_memory(needs: dict[str, int], precision: str, free: int, device: str) -> None:
    """Refuse early, with the numbers, when the weights cannot fit in the GPU's free memory."""
    if needs[precision] <= free:
        return
    options = ", ".join(f"{p} ~{needs[p] / GiB:.1f} GiB" for p in ("bf16", "int8", "int4"))
    smaller = [p for p in ("int8", "int4") if needs[p] <= free and p != precision]
    hint = f"Try --precision {smaller[0]}" if smaller else "Use a GPU with more memory"
    raise InsufficientMemoryError(
        f"Not enough GPU memory on {device}: {free / GiB:.1f} GiB free, {precision} needs about "
        f"{needs[precision] / GiB:.1f} GiB ({options}). {hint}, or free the GPU."
    )


QUANTIZERS = ("bitsandbytes", "torchao")


def quantization_config(precision: str, compute_dtype, quantizer: str = "bitsandbytes"):
    """The transformers quantization config for int8/int4, with a clear error when its library
    is missing. bitsandbytes: the least memory (int8 and int4), never compiled. torchao: int8
    weight-only tensors, which GLMFLASH_COMPILE can compile."""
    if quantizer == "torchao":
        return _torchao_config(precision)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"{precision} needs bitsandbytes: pip install 'bitsandbytes>=0.45'."
        ) from None
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        # With fp32 compute (the CPU) bitsandbytes says so on every matmul; once is enough here.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(QUANT_SKIP))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(QUANT_SKIP),
    )


def _torchao_config(precision: str):
    if precision != "int8":
        raise PrecisionError(
            f"The torchao quantizer does int8 only; {precision} needs GLMFLASH_QUANTIZER=bitsandbytes."
        )
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError:
        raise MissingDependencyError(
            "GLMFLASH_QUANTIZER=torchao needs torchao: pip install 'torchao>=0.14'."
        ) from None
    from transformers import TorchAoConfig

    # Newer transformers match these from the start of a module name, older ones anywhere in it.
    skip = [f"model.{name}" for name in QUANT_SKIP] + list(QUANT_SKIP)
    return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skip)


def weight_bytes(model) -> int:
    """Bytes the weights take in memory. Quantized tensor subclasses (torchao) count by the parts
    they hold: transformers' get_memory_footprint counts them at their full-width dtype."""
    import itertools

    return sum(_tensor_bytes(t) for t in itertools.chain(model.parameters(), model.buffers()))


def _tensor_bytes(tensor) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return tensor.nelement() * tensor.element_size()
    names, _ = flatten()
    return sum(_tensor_bytes(getattr(tensor, name)) for name in names)


def load_model(checkpoint: Checkpoint, placement: Placement, quantizer: str = "bitsandbytes"):
    """from_pretrained the processor and model at the chosen placement; return both."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, placement.dtype_name)
    kwargs = {"dtype": dtype, "device_map": {"": placement.device}}
    if placement.precision in ("int8", "int4"):
        kwargs["quantization_config"] = quantization_config(placement.precision, dtype, quantizer)
    config = AutoConfig.from_pretrained(checkpoint.source)
    if placement.device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(placement.device))
        check_gpu_memory(
            estimate_memory(config, placement.precision), placement.precision, free, placement.device
        )
    processor = AutoProcessor.from_pretrained(checkpoint.source)
    check_token_ids(config, processor.tokenizer)  # before the weights: a mismatch fails in seconds
    try:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint.source, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise InsufficientMemoryError(
            f"Ran out of GPU memory loading {checkpoint.model_id} in {placement.precision}: "
            "try --precision int8 or int4, or free the GPU."
        ) from None
    return model.eval(), processor
