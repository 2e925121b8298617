"""Engine: the engine contract (contract.EngineBase) over a transformers model on this machine.

Every request goes through one path: checked and rendered here (pipeline.prepare), then generated
by the scheduler (scheduler.py: the engine's one decode loop, eager or compiled, where a request
joins the running rows at the next token and leaves when it ends), its tokens detokenised and
split into reasoning and answer (text/stage.py), and closed with usage and timings
(pipeline.closing).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import torch

from ...config import EngineSettings
from ...contract import EngineBase
from ...errors import GenerationError, GlmflashError, InsufficientMemoryError, InvalidRequestError
from ...inputs.images import ImagePolicy
from ...options import checkpoint_defaults
from ...pipeline import Clock, Request, closing, prepare
from ...replies import Chunk, EngineInfo, Memory, Timings, Usage
from ...text.stage import FAMILY_CONTROL_TOKENS, Detokenizer, TextStage
from ...text.thinking import THINK_CLOSE, THINK_OPEN
from .decoding import warm_up
from .load import stop_token_ids
from .reuse import image_hash
from .rows import RowRequest
from .scheduler import Scheduler, slot_tokens

log = logging.getLogger("glmflash")


class Engine(EngineBase):
    """A loaded model with its processor. Build one with `glmflash.load()`."""

    def __init__(self, model, processor, info: EngineInfo, settings: EngineSettings):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.info = info
        self.settings = settings = settings.for_engine()  # never the server's part
        self.image_policy = ImagePolicy.from_limits(settings.limits)
        self._setup_lock = threading.Lock()  # lazy grammar/scheduler set-up
        self._json = None  # grammar.Constraints, made when JSON output is first asked for
        self._batch: Scheduler | None = None
        self._slot_tokens: int | None = None  # what one request may hold in the KV cache
        self.stop_ids = stop_token_ids(model, self.tokenizer)
        self.defaults = checkpoint_defaults(model.generation_config)  # for options left unset
        self.image_token_id = model.config.image_token_id
        specials = set(self.tokenizer.all_special_tokens) | set(FAMILY_CONTROL_TOKENS)
        specials.update(t.content for t in self.tokenizer.added_tokens_decoder.values())
        self.control_tokens = tuple(sorted(specials))
        text_config = getattr(model.config, "text_config", model.config)
        self.context_tokens = settings.limits.max_context_tokens or text_config.max_position_embeddings
        quantizer = getattr(model, "hf_quantizer", None)
        self.compiled = settings.model.compile and (quantizer is None or quantizer.is_compileable)
        if settings.model.compile and not self.compiled:
            log.warning(
                "GLMFLASH_COMPILE is ignored: these %s weights cannot be compiled (for compiled int8 "
                "use GLMFLASH_QUANTIZER=torchao).",
                type(quantizer).__name__,
            )
        if self.compiled and info.adapters:  # each row's adapter is a Python choice per forward
            log.warning("GLMFLASH_COMPILE is ignored: LoRA adapters decode eager.")
            self.compiled = False
        self.router = None  # with adapters: which adapter each row of a batch takes
        if info.adapters:
            from .adapters import Router

            self.router = Router.of(model, info.adapter or None)
        quantized = info.precision in ("int8", "int4")
        self.info = dataclasses.replace(
            info, compiled=self.compiled, quantizer=settings.model.quantizer if quantized else ""
        )

    # -- public API -------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[dict],
        *,
        stop_event: threading.Event | None = None,
        image_policy: ImagePolicy | None = None,
        adapter: str | None = None,
        **gen,
    ) -> Iterator[Chunk]:
        """Validate and prepare now (errors raise here), then stream chunks as they are generated.

        `gen`: max_new_tokens, min_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
        thinking, response_format. `adapter`: see EngineBase.stream. Set `stop_event` (or close the
        iterator) to cancel.
        """
        started = time.perf_counter()
        if self._batch is not None:  # a broken loop refuses at once
            self._batch.check()
        chosen = self.choose_adapter(adapter)
        request = prepare(
            messages, gen, self.settings.limits, image_policy or self.image_policy,
            control_tokens=self.control_tokens, started=started,
        )  # fmt: skip
        prompt = self._template(request)
        template = self._grammar(request, prompt)
        return self._chunks(request, prompt, template, stop_event or threading.Event(), chosen)

    def warm_up(self) -> float:
        """With compiled decoding: compile the decode step for what a server meets before a caller
        waits for it (decoding.warm_up). Returns the seconds it took; raises if compiling fails."""
        return warm_up(self) if self.compiled else 0.0

    def health(self) -> str | None:
        """None while the decode loop serves (or has not started); else why it cannot."""
        return self._batch.health() if self._batch is not None else None

    def close(self) -> None:
        """End the scheduler's thread, which holds the model: the engine serves nothing after this."""
        if self._batch is not None:
            self._batch.close()

    @property
    def busy(self) -> bool:
        """The model is generating (or requests are waiting for it)."""
        return self._batch is not None and self._batch.busy

    def memory(self) -> Memory | None:
        if not self.info.device.startswith("cuda"):
            return None
        device = torch.device(self.info.device)
        return Memory(int(torch.cuda.memory_allocated(device)), int(torch.cuda.max_memory_allocated(device)))

    def reset_peak_memory(self) -> None:
        if self.info.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(self.info.device))

    def render_prompt(self, messages: Sequence[dict], *, thinking: bool = True) -> str:
        """The exact prompt text the model will see (images as placeholders)."""
        return self.prepare(messages, thinking=thinking)[0]

    def prepare(self, messages, *, thinking: bool = True, image_policy: ImagePolicy | None = None):
        """Messages -> (prompt text, model inputs on the device). Decodes and guards the images."""
        request = prepare(
            messages, {"thinking": thinking}, self.settings.limits, image_policy or self.image_policy,
            control_tokens=self.control_tokens, started=time.perf_counter(),
        )  # fmt: skip
        prompt = self._template(request)
        return prompt, self._tensors(prompt, request.images)

    def _template(self, request: Request) -> str:
        return self.processor.apply_chat_template(
            request.conversation,
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=request.options.thinking,
            tools=request.template_tools(),
        )

    def _grammar(self, request: Request, prompt: str):
        """The compiled grammar for a response_format or for tool calls, or None."""
        tools = request.template_tools() and request.tools
        if request.schema is None and not tools:
            return None
        opened = prompt.rstrip().endswith(THINK_OPEN)
        thinking = "off" if not request.options.thinking else "opened" if opened else "model-opens"
        if tools:
            return self._constraints().compile_tools(tools, thinking=thinking)
        return self._constraints().compile(request.schema, thinking=thinking)

    def _tensors(self, prompt: str, images: list) -> dict:
        try:
            inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        except ValueError as exc:
            raise InvalidRequestError(
                f"The model's processor refused the input: {exc}", param="messages"
            ) from None
        inputs.pop("token_type_ids", None)
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return dict(inputs)

    def _check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_tokens:
            raise InvalidRequestError(
                f"This model's context is {self.context_tokens} tokens, but the request needs "
                f"{prompt_tokens + max_new_tokens} ({prompt_tokens} in the messages and images, "
                f"{max_new_tokens} for the answer). Send fewer or smaller images, a shorter "
                "conversation, or a lower max_tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        if prompt_tokens + max_new_tokens > self.slot_tokens():
            slots = max(1, self.settings.batching.max_batch_size)
            raise InvalidRequestError(
                f"This server's KV cache keeps at most {self.slot_tokens()} tokens per request "
                f"({slots} at once), but this one needs {prompt_tokens + max_new_tokens} "
                f"({prompt_tokens} in the messages and images, {max_new_tokens} for the answer). "
                "Send fewer or smaller images or a lower max_tokens; an operator can raise "
                "GLMFLASH_KV_CACHE_MB or lower GLMFLASH_MAX_BATCH_SIZE.",
                param="messages",
                code="kv_cache_exceeded",
            )

    # -- the streaming loop -----------------------------------------------------------------

    def _constraints(self):
        from .grammar import Constraints

        with self._setup_lock:
            if self._json is None:  # wrapping the tokenizer takes up to a second: only when first asked
                vocab = self.model.get_output_embeddings().weight.shape[0]
                self._json = Constraints(self.tokenizer, vocab, self.stop_ids)
            return self._json

    def _batcher(self) -> Scheduler:
        """The scheduler, started on first use: it runs every generation on its one thread (compiled
        graphs, too, must all run on one thread); with max_batch_size 1 one at a time."""
        with self._setup_lock:
            if self._batch is not None:
                return self._batch
            pad = self.tokenizer.pad_token_id
            pad = pad if pad is not None else min(self.stop_ids)
            self._batch = Scheduler(
                self.model,
                self.stop_ids,
                pad,
                slots=max(1, self.settings.batching.max_batch_size),
                prefill_chunk=self.settings.batching.prefill_chunk,
                constraints=self._constraints,
                think_ids=self._think_ids(),
                router=self.router,
                slot_tokens=self._slots_now(),
                compiled=self.compiled,
                prefix_cache_mb=self.settings.batching.prefix_cache_mb,
            )
            return self._batch

    def slot_tokens(self) -> int:
        """Tokens (prompt and answer) one request may keep in the KV cache: the budget
        (GLMFLASH_KV_CACHE_MB, or a share of the memory free when first asked) over the slots."""
        with self._setup_lock:
            return self._slots_now()

    def _slots_now(self) -> int:
        if self._slot_tokens is None:
            batching = self.settings.batching
            slots, budget = batching.max_batch_size, batching.kv_cache_mb
            self._slot_tokens = slot_tokens(self.model, self.info.device, slots, budget, self.context_tokens)
        return self._slot_tokens

    def _think_ids(self) -> tuple[int, int] | None:
        """The ids of <think> and </think> when each is one token (thinking budgets need them)."""
        vocab = self.tokenizer.get_vocab()
        if THINK_OPEN in vocab and THINK_CLOSE in vocab:
            return vocab[THINK_OPEN], vocab[THINK_CLOSE]
        return None

    def _chunks(self, request: Request, prompt, template, stop, adapter) -> Iterator[Chunk]:
        options = request.options.resolved(self.defaults)
        opened = prompt.rstrip().endswith(THINK_OPEN)
        stage = TextStage(start_in_reasoning=opened, control_tokens=self.control_tokens, stops=options.stop)
        stage = request.text_stage(stage, start_in_reasoning=opened)
        halt = threading.Event()  # set when the answer reached a stop string: the row ends there
        if stop.is_set():  # cancelled before it was read: no prefill for nobody
            yield Chunk(finish_reason="cancelled", usage=Usage(0, 0, 0, 0), timings=Timings(0.0, 0.0, 0.0))
            return
        detokenizer = Detokenizer(self.tokenizer, self.stop_ids)
        clock, reasoning_tokens, last_token, row = Clock(), 0, None, None
        made = {}

        def inputs():
            made.update(self._tensors(prompt, request.images))
            made["image_hashes"] = [image_hash(image) for image in request.images]  # for reuse
            self._check_context(made["input_ids"].shape[1], options.max_new_tokens)
            return made

        try:
            batcher = self._batcher()
            # A lone request has its inputs made on the scheduler's thread, where the model runs
            # (torch's CPU pool belongs to a thread: one thread is faster); with company, each
            # makes its own here, while the scheduler decodes the others.
            alone = not batcher.busy
            row = RowRequest(
                inputs if alone else inputs(), options, (stop, halt), template,
                thinking_open=opened, adapter=adapter,
            )  # fmt: skip
            for token, at in batcher.tokens(row):
                if stage.stopped:  # tokens made before the row ended: not part of the answer
                    continue
                clock.tick(at)
                last_token = token
                was_reasoning = stage.in_reasoning
                yield from stage.feed(detokenizer.add(token))
                if was_reasoning or stage.in_reasoning or stage.saw_marker:
                    reasoning_tokens += 1
                if stage.stopped:
                    halt.set()  # the model stops within a token or two
        except GlmflashError:
            raise
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the memory back so the next request can run
            raise InsufficientMemoryError(
                "The GPU ran out of memory for this request: send smaller or fewer images "
                "(GLMFLASH_MAX_IMAGE_PIXELS) or ask for fewer tokens."
            ) from None
        except Exception as exc:
            log.exception("generation failed")
            raise GenerationError(f"Generation failed: {type(exc).__name__}: {exc}") from None
        yield from stage.feed(detokenizer.flush())
        yield from stage.flush()
        if last_token in self.stop_ids or stage.stopped:
            finish = "stop"
        elif stop.is_set() and clock.count < options.max_new_tokens:  # the caller's cancel
            finish = "cancelled"
        else:
            finish = "length"
        prompt_ids = made.get("input_ids")  # none when cancelled before its batch began
        prompt_tokens = 0 if prompt_ids is None else int(prompt_ids.shape[1])
        image_tokens = 0 if prompt_ids is None else int((prompt_ids == self.image_token_id).sum())
        cached = row.reused.get("cached_tokens", 0) if row is not None else 0
        usage = Usage(prompt_tokens, image_tokens, clock.count, reasoning_tokens, cached)
        yield closing(request, stage, clock, finish=finish, usage=usage)
