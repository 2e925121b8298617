"""Compiled decoding (GLMFLASH_COMPILE): a static KV cache and the decode step under torch.compile.

Only the GenerationConfig changes: transformers' `generate` then allocates a StaticCache and
runs every step after the prefill through `torch.compile` (CUDA graphs on a GPU, which removes
the per-kernel launch cost that dominates one stream's decoding). The prefill, with its images,
stays eager. A new shape compiles again, so the cache length is rounded up to a few buckets and
all compiled generation runs on the batcher's one thread (CUDA graphs belong to a thread).
"""

from __future__ import annotations

MIN_CACHE_TOKENS = 256  # cache lengths are powers of two from here: few shapes, few compilations


def compiled_config(config, device: str):
    """Set `config` (a request's own GenerationConfig) to ask generate for a static cache and a
    compiled decode step; return it."""
    from transformers.generation.configuration_utils import CompileConfig

    config.cache_implementation = "static"
    on_gpu = device.startswith("cuda")
    # reduce-overhead = CUDA graphs; on the CPU plain inductor code (there are no graphs to replay).
    mode = "reduce-overhead" if on_gpu else "default"
    compile_config = CompileConfig(fullgraph=False, dynamic=None, mode=mode)
    if not on_gpu:
        compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    config.compile_config = compile_config
    return config


def cache_tokens(needed: int, limit: int) -> int:
    """The static cache length for `needed` tokens: the next bucket, but never past `limit`."""
    size = MIN_CACHE_TOKENS
    while size < needed:
        size *= 2
    return max(needed, min(size, limit))


def is_compiled(config) -> bool:
    return getattr(config, "cache_implementation", None) == "static"
