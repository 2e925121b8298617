"""Engine: images + messages in, a stream of reasoning/answer chunks out.

Concurrent requests share batched generations (batching.py) when settings.max_batch_size > 1;
otherwise they take turns.

`stream()` is the primitive (usage, timings and finish_reason arrive on its last chunk);
`chat()` collects it and `ask()` is the notebook one-liner.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence

import torch

from .batching import Batcher
from .chunks import Chunk, EngineInfo, Reply, Timings, Usage
from .config import Settings
from .decoding import compiled_config
from .errors import GenerationError, GlmflashError, InsufficientMemoryError, InvalidRequestError
from .generate import Detokenizer, run_tokens, stream_tokens
from .images import ImagePolicy, load_image
from .load import stop_token_ids
from .messages import ask_messages, to_conversation
from .options import GenerationOptions
from .structured import Constraints, JsonLogitsProcessor, requested_schema, validate_answer
from .thinking import THINK_OPEN, ThinkingSplitter

log = logging.getLogger("glmflash")


class Engine:
    """A loaded model with its processor. Build one with `glmflash.load()`."""

    def __init__(self, model, processor, info: EngineInfo, settings: Settings):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.info = info
        self.settings = settings
        self.image_policy = ImagePolicy.from_settings(settings)
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()  # lazy grammar/batcher set-up and the request count
        self._json: Constraints | None = None  # grammar support, made when JSON output is first asked for
        self._batch: Batcher | None = None
        self._active = 0  # requests called but not yet queued for a batch (see _Ticket)
        self.stop_ids = stop_token_ids(model, self.tokenizer)
        self.image_token_id = model.config.image_token_id
        specials = set(self.tokenizer.all_special_tokens)
        specials.update(t.content for t in self.tokenizer.added_tokens_decoder.values())
        self.control_tokens = tuple(sorted(specials))
        text_config = getattr(model.config, "text_config", model.config)
        self.context_tokens = settings.max_context_tokens or text_config.max_position_embeddings
        quantizer = getattr(model, "hf_quantizer", None)
        self.compiled = settings.compile and (quantizer is None or quantizer.is_compileable)
        if settings.compile and not self.compiled:
            log.warning(
                "GLMFLASH_COMPILE is ignored: these %s weights cannot be compiled (for compiled int8 "
                "use GLMFLASH_QUANTIZER=torchao).",
                type(quantizer).__name__,
            )

    # -- public API -------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[dict],
        *,
        stop_event: threading.Event | None = None,
        image_policy: ImagePolicy | None = None,
        **gen,
    ) -> Iterator[Chunk]:
        """Validate and prepare now (errors raise here), then stream chunks as they are generated.

        `gen`: max_new_tokens, min_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
        thinking. Set `stop_event` (or close the iterator) to cancel.
        """
        return self._start(messages, stop_event, image_policy, gen, stream_tokens)

    def chat(
        self,
        messages: Sequence[dict],
        *,
        stop_event: threading.Event | None = None,
        image_policy: ImagePolicy | None = None,
        **gen,
    ) -> Reply:
        """The whole reply at once: the same chunks as `stream`, collected.

        The model runs on the calling thread here (nobody reads tokens while they are made), which
        saves a thread hop that costs a small model on a small CPU up to a fifth of its speed.
        """
        return Reply.collect(self._start(messages, stop_event, image_policy, gen, run_tokens))

    def ask(self, image, question: str, **gen) -> Reply:
        """One question about one image (or a list of images, or None)."""
        return self.chat(ask_messages(image, question), **gen)

    def warm_up(self) -> float:
        """With compiled decoding: compile the decode step for what a server meets before a caller
        waits for it (one request, two, a full batch; a short and a default answer budget, whose
        static caches differ in length). Returns the seconds it took; raises if compiling fails."""
        if not self.compiled:
            return 0.0
        from PIL import Image

        started = time.perf_counter()
        messages = ask_messages(Image.new("RGB", (224, 224), (128, 128, 128)), "Warm-up")
        failures: list[BaseException] = []

        def ask(budget: int) -> None:
            stop = threading.Event()
            options = {"max_new_tokens": budget, "min_new_tokens": min(8, budget), "temperature": 0}
            try:
                for count, _ in enumerate(self.stream(messages, stop_event=stop, thinking=False, **options)):
                    if count == 8:
                        stop.set()  # compiled by now: the rest of the budget is not needed
            except BaseException as exc:  # handed to the caller of warm_up
                failures.append(exc)

        budget = min(self.settings.max_new_tokens, self.settings.max_new_tokens_limit)
        for size, tokens in (
            (1, 16),
            (1, budget),
            (2, budget),
            (max(1, self.settings.max_batch_size), budget),
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

    def close(self) -> None:
        """End the batcher's thread, which holds the model: the engine serves nothing after this."""
        if self._batch is not None:
            self._batch.close()

    def render_prompt(self, messages: Sequence[dict], *, thinking: bool = True) -> str:
        """The exact prompt text the model will see (images as placeholders)."""
        return self.prepare(messages, thinking=thinking)[0]

    def prepare(self, messages, *, thinking: bool = True, image_policy: ImagePolicy | None = None):
        """Messages -> (prompt text, model inputs on the device). Decodes and guards the images."""
        prompt, images = self._render(messages, thinking, image_policy)
        return prompt, self._tensors(prompt, images)

    def _render(self, messages, thinking: bool, image_policy: ImagePolicy | None):
        """Check messages and decode images (no torch); render the prompt text."""
        policy = image_policy or self.image_policy
        conversation, images = to_conversation(
            messages,
            load_image=lambda source: load_image(source, policy),
            max_images=self.settings.max_images,
            control_tokens=self.control_tokens,
        )
        prompt = self.processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        return prompt, images

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

    # -- the streaming loop -----------------------------------------------------------------

    def _start(self, messages, stop_event, image_policy, gen, tokens_fn) -> Iterator[Chunk]:
        """Validate and render now, so bad input raises at the call; generate when iterated."""
        started = time.perf_counter()
        ticket = _Ticket(self)  # on its way: the batcher waits for it
        try:
            prepared = self._prepare_request(messages, image_policy, gen)
        except BaseException:
            ticket.release()
            raise
        chunks = self._run(ticket, *prepared, stop_event or threading.Event(), started, tokens_fn)
        weakref.finalize(chunks, ticket.release)  # a stream never read still leaves
        return chunks

    def _prepare_request(self, messages, image_policy, gen):
        schema = requested_schema(gen.pop("response_format", None))
        options = GenerationOptions.build(
            default_max_new_tokens=self.settings.max_new_tokens,
            max_new_tokens_limit=self.settings.max_new_tokens_limit,
            **gen,
        )
        prompt, images = self._render(messages, options.thinking, image_policy)
        template = None
        if schema is not None:
            opened = prompt.rstrip().endswith(THINK_OPEN)
            thinking = "off" if not options.thinking else "opened" if opened else "model-opens"
            template = self._constraints().compile(schema, thinking=thinking)
        return prompt, images, options, (schema, template)

    def _constraints(self) -> Constraints:
        with self._setup_lock:
            if self._json is None:  # wrapping the tokenizer takes up to a second: only when first asked
                vocab = self.model.get_output_embeddings().weight.shape[0]
                self._json = Constraints(self.tokenizer, vocab, self.stop_ids)
            return self._json

    @property
    def busy(self) -> bool:
        """The model is generating (or requests are waiting for it)."""
        return self._lock.locked() or (self._batch is not None and self._batch.busy)

    def _batcher(self) -> Batcher | None:
        """The dynamic batcher, started on first use: with settings.max_batch_size > 1, or with
        compiled decoding (its compiled graphs must all run on one thread)."""
        if self.settings.max_batch_size <= 1 and not self.compiled:
            return None
        with self._setup_lock:
            if self._batch is None:
                self._batch = Batcher(
                    self.model,
                    self.stop_ids,
                    self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else min(self.stop_ids),
                    max_batch_size=self.settings.max_batch_size,
                    max_wait_s=self.settings.batch_wait_ms / 1000,
                    constraints=lambda: self._json,
                    callers=lambda: self._active,
                    cache_limit=self.context_tokens,
                )
            return self._batch

    def _run(self, ticket, *args) -> Iterator[Chunk]:
        try:
            yield from self._chunks(ticket, *args)
        finally:
            ticket.release()

    def _chunks(
        self, ticket, prompt, images, options, structured, stop, started, tokens_fn
    ) -> Iterator[Chunk]:
        schema, template = structured
        processors = [JsonLogitsProcessor([template], self._json)] if template is not None else []
        answer: list[str] = []
        prompt_ids = []

        def make_inputs():  # runs on the generating thread
            inputs = self._tensors(prompt, images)
            self._check_context(inputs["input_ids"].shape[1], options.max_new_tokens)
            prompt_ids.append(inputs["input_ids"])
            return inputs

        config = options.generation_config(self.model.generation_config)
        config.eos_token_id = sorted(self.stop_ids)  # the checkpoint's list may lack the turn ends
        if self.compiled:
            config = compiled_config(config, self.info.device)
        else:  # a checkpoint's own compile_config must not turn compiled batches on
            config.compile_config = None
        splitter = ThinkingSplitter(
            start_in_reasoning=prompt.rstrip().endswith(THINK_OPEN),
            drop=[t for t in self.control_tokens if t not in _MARKERS],
        )
        detokenizer = Detokenizer(self.tokenizer, self.stop_ids)
        batcher = self._batcher()
        with contextlib.nullcontext() if batcher else self._lock:
            if stop.is_set():  # cancelled while waiting for the engine: no prefill for nobody
                yield Chunk(
                    finish_reason="cancelled", usage=Usage(0, 0, 0, 0), timings=Timings(0.0, 0.0, 0.0)
                )
                return
            if options.seed is not None and not batcher:
                torch.manual_seed(options.seed)
            count = reasoning_tokens = 0
            first = last = None
            last_token = None
            try:
                if batcher:  # shares a batched generation with concurrent requests
                    inputs = make_inputs()
                    ticket.release()  # ready: the batcher no longer waits for this one
                    tokens = batcher.tokens(inputs, config, options.seed, stop, template)
                else:
                    tokens = tokens_fn(self.model, make_inputs, config, stop, processors)
                for token, last in tokens:
                    first = first or last
                    count += 1
                    last_token = token
                    was_reasoning = splitter.reasoning
                    for segment in splitter.feed(detokenizer.add(token)):
                        if not segment.reasoning:
                            answer.append(segment.text)
                        yield Chunk(segment.text, segment.reasoning, segment.boxed)
                    if was_reasoning or splitter.reasoning or splitter.saw_think_marker:
                        reasoning_tokens += 1
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
        for segment in splitter.feed(detokenizer.flush()) + splitter.flush():
            if not segment.reasoning:
                answer.append(segment.text)
            yield Chunk(segment.text, segment.reasoning, segment.boxed)
        if last_token in self.stop_ids:
            finish = "stop"
        elif stop.is_set() and count < options.max_new_tokens:  # the caller's cancel
            finish = "cancelled"
        else:
            finish = "length"
        parsed = None
        if schema is not None and finish != "cancelled":
            parsed = validate_answer("".join(answer).strip(), schema, finish, options.max_new_tokens)
        end = time.perf_counter()
        prompt_tokens = int(prompt_ids[0].shape[1])
        image_tokens = int((prompt_ids[0] == self.image_token_id).sum())
        rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
        yield Chunk(
            finish_reason=finish,
            usage=Usage(prompt_tokens, image_tokens, count, reasoning_tokens),
            timings=Timings((first or end) - started, rate, end - started),
            parsed=parsed,
            cut_in_reasoning=finish == "length" and splitter.reasoning,
        )


class _Ticket:
    """Counts one request as on its way to the batcher (called, not yet queued), once."""

    def __init__(self, engine: Engine):
        self.engine, self.held = engine, True
        with engine._setup_lock:
            engine._active += 1

    def release(self) -> None:
        with self.engine._setup_lock:
            if self.held:
                self.held = False
                self.engine._active -= 1


_MARKERS = {"<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>"}
