"""GPU-only checks (skipped without CUDA): the same loading path in bf16 and int4 on a real GPU,
compiled decoding with its CUDA graphs, torchao int8, and the token scheduler on CUDA. One check
runs everywhere: the helpers they import load (tests/test_gpu_dry_run.py runs this file with
only the GPU machine's packages)."""

from __future__ import annotations

import pytest
from PIL import Image

import glmflash


def test_the_helpers_of_the_gpu_tests_import():
    from .test_batching import MIXED
    from .test_scheduler import arriving, generate_tokens

    assert MIXED and callable(arriving) and callable(generate_tokens)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "int4"])
def test_tiny_model_on_gpu(cache_dir, precision):
    engine = glmflash.load("tiny", precision, "cuda", cache_dir=str(cache_dir))
    assert engine.info.device == "cuda:0" and engine.info.precision == precision
    reply = engine.ask(Image.new("RGB", (224, 224), "red"), "What colour?", max_new_tokens=8)
    assert reply.usage.image_tokens > 0 and reply.usage.completion_tokens >= 1


@pytest.mark.gpu
def test_auto_precision_on_gpu_is_bf16_or_fp16():
    from glmflash.backends.local.load import choose_placement

    placement = choose_placement("auto", "auto")
    assert placement.precision in ("bf16", "fp16") and placement.device == "cuda:0"


@pytest.mark.gpu
def test_compiled_decoding_on_gpu_replays_its_cuda_graphs(cache_dir):
    """The same request over and over after warm-up: CUDA graphs are replayed, never skipped, and
    the slot cache stays where the graphs were recorded."""
    from torch._dynamo.utils import counters

    engine = glmflash.load("tiny", "bf16", "cuda", cache_dir=str(cache_dir), compile=True, max_new_tokens=64)
    assert engine.compiled and engine.warm_up() > 0
    image = Image.new("RGB", (224, 224), "red")
    replies = [engine.ask(image, "What colour?", max_new_tokens=32, temperature=0, thinking=False)
               for _ in range(30)]  # fmt: skip
    assert len({(r.text, r.usage.completion_tokens) for r in replies}) == 1
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])


@pytest.mark.gpu
def test_torchao_int8_compiled_on_gpu(cache_dir):
    options = {"cache_dir": str(cache_dir), "quantizer": "torchao", "compile": True}
    engine = glmflash.load("tiny", "int8", "cuda", **options)
    assert engine.compiled and engine.warm_up() > 0
    reply = engine.ask(Image.new("RGB", (224, 224), "red"), "What colour?", max_new_tokens=8, temperature=0)
    assert reply.usage.image_tokens > 0 and reply.usage.completion_tokens >= 1


@pytest.mark.gpu
def test_token_scheduler_on_gpu_gives_generates_tokens(cache_dir):
    """Rows joining a running batch on CUDA (fp32: no rounding between batch shapes) get the
    tokens of `model.generate` alone; the KV budget comes from the free GPU memory."""
    from .test_batching import MIXED
    from .test_scheduler import arriving, generate_tokens

    engine = glmflash.load("tiny", "fp32", "cuda", cache_dir=str(cache_dir))
    assert engine.slot_tokens() > 10_000
    expected = [generate_tokens(engine, messages, tokens) for messages, tokens in MIXED]
    assert arriving(engine, MIXED, [0, 0.02, 0.01, 0.05, 0.0, 0.1]) == expected
    assert max(engine._batch.sizes) > 1
