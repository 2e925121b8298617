"""`python -m glmflash check` (and `./start.sh --check`): can this machine run glmflash, and how?

Reports Python and torch, each CUDA GPU with its free memory against what each precision of the
real model needs, whether torchao and compiled decoding can work when asked for, where the
checkpoint comes from (and the disk for downloading it), and whether the ports are free.
Nothing is loaded or downloaded. Exit status 1 when something blocks a start.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_MODEL, Settings

GiB = 1024**3
CHECKPOINT_BYTES = 21 * 10**9  # GLM-4.6V-Flash's safetensors (about 20.6 GB)
MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | fail
    topic: str
    detail: str


def run_checks(settings: Settings, *, jupyter_port: int | None) -> list[Finding]:
    findings = [_python(), *_gpus(settings), _placement(settings), *_decoding(settings), _model(settings)]
    findings += [_port(settings.server.host, settings.server.port, "app")]
    if jupyter_port is not None:
        findings += [_port(settings.server.host, jupyter_port, "JupyterLab")]
        if importlib.util.find_spec("jupyterlab") is None:
            findings += [Finding("fail", "JupyterLab", "not installed (pip install -r requirements.txt)")]
    return findings


def format_report(findings: list[Finding]) -> str:
    width = max(len(f.topic) for f in findings)
    lines = [f"[{MARKS[f.level]}] {f.topic:<{width}}  {f.detail}" for f in findings]
    failed = sum(f.level == "fail" for f in findings)
    lines.append("ready to start" if not failed else f"{failed} problem(s) above stop a start")
    return "\n".join(lines)


def _python() -> Finding:
    import torch
    import transformers

    version = ".".join(map(str, sys.version_info[:3]))
    level = "ok" if sys.version_info >= (3, 10) else "fail"
    return Finding(
        level, "python", f"{version}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def _gpus(settings: Settings) -> list[Finding]:
    import torch

    from ..backends.local.load import estimate_memory, full_size_config

    needs = estimate_memory(full_size_config(), "bf16")
    need_text = ", ".join(f"{p} {needs[p] / GiB:.1f}" for p in ("bf16", "int8", "int4"))
    if not torch.cuda.is_available():
        level = "fail" if settings.model.device.startswith("cuda") else "warn"
        return [
            Finding(
                level,
                "gpu",
                f"no CUDA GPU visible (torch {torch.__version__}): the real model needs one to be "
                f"useful (GiB needed: {need_text}); the CPU runs the tiny demo model and tests.",
            )
        ]
    findings = []
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        fits = [p for p in ("bf16", "int8", "int4") if needs[p] <= free and (p == "bf16" or has_bnb)]
        level = "ok" if fits else "fail"
        verdict = f"fits: {', '.join(fits)}" if fits else "too little free memory for any precision"
        findings.append(
            Finding(
                level,
                f"cuda:{index}",
                f"{torch.cuda.get_device_name(index)}, {free / GiB:.1f} of {total / GiB:.1f} GiB free; "
                f"GiB needed: {need_text} -> {verdict}",
            )
        )
    if not has_bnb:
        findings.append(Finding("warn", "bitsandbytes", "not installed: int8 and int4 are unavailable"))
    return findings


def _placement(settings: Settings) -> Finding:
    from ..backends.local.load import choose_placement
    from ..errors import GlmflashError

    try:
        return Finding(
            "ok", "precision", choose_placement(settings.model.precision, settings.model.device).reason
        )
    except GlmflashError as exc:
        return Finding("fail", "precision", exc.message)


def _decoding(settings: Settings) -> list[Finding]:
    """GLMFLASH_QUANTIZER=torchao and GLMFLASH_COMPILE, when asked for: can they work here?"""
    findings = []
    if settings.model.quantizer == "torchao":
        level, detail = _torchao(settings)
        findings.append(Finding(level, "quantizer", detail))
    if settings.model.compile:
        level, detail = _compile(settings)
        findings.append(Finding(level, "compile", detail))
    return findings


def _torchao(settings: Settings) -> tuple[str, str]:
    if importlib.util.find_spec("torchao") is None:
        return "fail", "torchao is not installed (pip install -r requirements.txt)"
    if settings.model.precision != "int8":
        return "warn", f"torchao is used for int8 only, not {settings.model.precision}"
    return "ok", "torchao int8 weight-only"


def _compile(settings: Settings) -> tuple[str, str]:
    import torch

    on_gpu = settings.model.device.startswith("cuda") or (
        settings.model.device == "auto" and torch.cuda.is_available()
    )
    if settings.model.precision in ("int8", "int4") and settings.model.quantizer == "bitsandbytes":
        return "warn", "ignored: bitsandbytes weights cannot be compiled"
    if on_gpu and importlib.util.find_spec("triton") is None:
        return "fail", "torch.compile on a GPU needs triton (pip install triton)"
    if not on_gpu and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "fail", "torch.compile on the CPU needs a C++ compiler (apt install g++)"
    return "ok", "static cache + torch.compile, compiled before serving"


def _model(settings: Settings) -> Finding:
    from huggingface_hub import constants

    from ..backends.local.load import cached_snapshot, hub_status

    model = settings.model.name
    if model == "tiny":
        return Finding("ok", "model", "tiny demo model (built locally; answers are meaningless)")
    folder = Path(model).expanduser()
    if folder.is_dir():
        ok = (folder / "config.json").is_file()
        return Finding("ok" if ok else "fail", "model", f"{folder}" + ("" if ok else " has no config.json"))
    if model.startswith(("/", ".", "~")):
        return Finding("fail", "model", f"folder {model} does not exist")
    repo = DEFAULT_MODEL if model == "auto" else model
    cached = cached_snapshot(repo)
    if cached:
        return Finding("ok", "model", f"{repo} is in the local cache ({cached})")
    cache = Path(constants.HF_HUB_CACHE)
    existing = next((p for p in (cache, *cache.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    reachable, missing = hub_status(repo)
    if missing:
        return Finding("fail", "model", f"there is no model {repo!r} on the Hugging Face hub")
    if not reachable:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        if model == "auto":
            return Finding(
                "warn", "model", f"{repo} is not cached and {why}: the TINY DEMO model starts instead"
            )
        return Finding("fail", "model", f"{repo} is not cached and {why}: copy the checkpoint here")
    room = f"{free / 1e9:.0f} GB free in {cache}, the download needs about {CHECKPOINT_BYTES / 1e9:.0f} GB"
    level = "ok" if free > CHECKPOINT_BYTES * 1.1 else "fail"
    return Finding(level, "model", f"{repo} will be downloaded on first start; {room}")


def _port(host: str, port: int, what: str) -> Finding:
    from .ports import cannot_listen

    reason = cannot_listen(host, port)
    if reason:
        return Finding("fail", f"port {port}", f"{what}: cannot listen on {host}:{port} ({reason})")
    return Finding("ok", f"port {port}", f"{what}: {host}:{port} is free")
