"""GPU-only checks (skipped without CUDA): the same loading path in bf16 and int4 on a real GPU."""

from __future__ import annotations

import pytest
from PIL import Image

import glmflash

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["bf16", "int4"])
def test_tiny_model_on_gpu(cache_dir, precision):
    engine = glmflash.load("tiny", precision, "cuda", cache_dir=str(cache_dir))
    assert engine.info.device == "cuda:0" and engine.info.precision == precision
    reply = engine.ask(Image.new("RGB", (224, 224), "red"), "What colour?", max_new_tokens=8)
    assert reply.usage.image_tokens > 0 and reply.usage.completion_tokens >= 1


def test_auto_precision_on_gpu_is_bf16_or_fp16():
    from glmflash.load import choose_placement

    placement = choose_placement("auto", "auto")
    assert placement.precision in ("bf16", "fp16") and placement.device == "cuda:0"
