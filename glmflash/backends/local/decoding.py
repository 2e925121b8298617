"""Compiled decoding (GLMFLASH_COMPILE): a static KV cache and the decode step under torch.compile.

The request's GenerationConfig carries a CompileConfig, and the batcher hands `generate` a
StaticCache: transformers then runs every step after the prefill through `torch.compile` (CUDA
graphs on a GPU, which removes the per-kernel launch cost that dominates one stream's
decoding). The prefill, with its images, stays eager. A new shape compiles again, so the cache
length is rounded up to a few buckets; all compiled generation runs on the batcher's one thread
(CUDA graphs belong to a thread), and the cache is kept from one batch to the next of the same
shape, so the graphs find it at the address they were recorded with.
"""

from __future__ import annotations

import warnings

# The cache goes to generate as `past_key_values`, the name transformers before 5.2x knows; later
# 5.x call it `cache` and warn about the old name until 6.0 (requirements stop before 6).
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

MIN_CACHE_TOKENS = 256  # cache lengths are powers of two from here: few shapes, few compilations


def compiled_config(config, device: str):
    """Set `config` (a request's own GenerationConfig) to ask generate for a compiled decode step
    (the batcher hands it the static cache); return it."""
    from transformers.generation.configuration_utils import CompileConfig

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
    return getattr(config, "compile_config", None) is not None


class CacheKeeper:
    """One static KV cache, kept while batches keep its shape (rows, length), else replaced.

    A fresh cache per `generate` would sit at a new address each time, and CUDA graphs recorded
    against the old one record again (older torch stops using them after 128 such records).
    """

    def __init__(self, text_config):
        self.text_config = text_config
        self.shape: tuple[int, int] | None = None
        self.cache = None

    def get(self, rows: int, length: int):
        """An empty cache for `rows` rows of `length` tokens: the kept one when it fits exactly."""
        from transformers import StaticCache

        if self.shape == (rows, length):
            self.cache.reset()  # zeroes it in place: same tensors, same addresses
        else:
            self.cache = None  # let its memory go before the new one is allocated
            self.cache = StaticCache(config=self.text_config, max_cache_len=length)
            self.shape = (rows, length)
        return self.cache
