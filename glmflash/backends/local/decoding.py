"""Compiled decoding's warm-up (GLMFLASH_COMPILE): the decode step (slots.Decoder) compiled for what
a server meets before a caller waits for it. The step runs inside the one decode loop
(scheduler.py), on its thread (CUDA graphs belong to a thread); the prefill, with its images,
stays eager.
"""

from __future__ import annotations

import threading
import time
import warnings

# The cache goes to generate as `past_key_values`, the name transformers before 5.2x knows; later
# 5.x call it `cache` and warn about the old name until 6.0 (requirements stop before 6).
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)


def warm_up(engine) -> float:
    """Compile `engine`'s decode step for what a server meets before a caller waits for it (one
    request, two, a full batch: the step's row buckets; an answer that crosses the first
    attention window, so that later windows reuse the same code). Returns the seconds it took;
    raises GenerationError if compiling fails."""
    from PIL import Image

    from ...errors import GenerationError
    from ...inputs.messages import ask_messages
    from .slots import MIN_WINDOW

    started = time.perf_counter()
    messages = ask_messages(Image.new("RGB", (224, 224), (128, 128, 128)), "Warm-up")
    failures: list[BaseException] = []

    def ask(tokens: int) -> None:
        stop = threading.Event()
        options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0}
        try:
            for _ in engine.stream(messages, stop_event=stop, thinking=False, **options):
                pass
        except BaseException as exc:  # handed to the caller of warm_up
            failures.append(exc)

    limits = engine.settings.limits
    budget = min(limits.max_new_tokens, limits.max_new_tokens_limit, max(1, engine.slot_tokens() - 300))
    crossing = min(budget, MIN_WINDOW + 16)  # past the first window (the prompt's tokens count too)
    for size, tokens in (
        (1, 8),
        (1, crossing),
        (2, 8),
        (2, crossing),
        (max(1, engine.settings.batching.max_batch_size), 8),
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
