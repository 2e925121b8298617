"""Compiled decoding (GLMFLASH_COMPILE): a static KV cache and the decode step under torch.compile,
and the warm-up that compiles it before a server takes requests.

The request's GenerationConfig carries a CompileConfig, and the batcher hands `generate` a
StaticCache: transformers then runs every step after the prefill through `torch.compile` (CUDA
graphs on a GPU, which removes the per-kernel launch cost that dominates one stream's
decoding). The prefill, with its images, stays eager. A new shape compiles again, so the cache
length is rounded up to a few buckets; all compiled generation runs on the batcher's one thread
(CUDA graphs belong to a thread), and the cache is kept from one batch to the next of the same
shape, so the graphs find it at the address they were recorded with.
"""

from __future__ import annotations

import threading
import time
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


def warm_up(engine) -> float:
    """Compile `engine`'s decode step for what a server meets before a caller waits for it (one
    request, two, a full batch; a short and a default answer budget, whose static caches differ
    in length). Returns the seconds it took; raises GenerationError if compiling fails."""
    from PIL import Image

    from ...errors import GenerationError
    from ...inputs.messages import ask_messages

    started = time.perf_counter()
    messages = ask_messages(Image.new("RGB", (224, 224), (128, 128, 128)), "Warm-up")
    failures: list[BaseException] = []

    def ask(budget: int) -> None:
        stop = threading.Event()
        options = {"max_new_tokens": budget, "min_new_tokens": min(8, budget), "temperature": 0}
        try:
            for count, _ in enumerate(engine.stream(messages, stop_event=stop, thinking=False, **options)):
                if count == 8:
                    stop.set()  # compiled by now: the rest of the budget is not needed
        except BaseException as exc:  # handed to the caller of warm_up
            failures.append(exc)

    limits = engine.settings.limits
    budget = min(limits.max_new_tokens, limits.max_new_tokens_limit)
    for size, tokens in (
        (1, 16),
        (1, budget),
        (2, budget),
        (max(1, engine.settings.batching.max_batch_size), budget),
    ):
        callers = [threading.Thread(target=ask, args=(tokens,)) for _ in range(size)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        if failures:
            raise GenerationError(
                f"Compiled decoding failed while warming up ({failures[0]}). Unset GLMFLASH_COMPILE "
                "to decode without compiling."
            )
    return time.perf_counter() - started
