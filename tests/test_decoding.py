"""Faster decoding with the real tiny model: compiled decoding (the decode loop's step under
torch.compile, over its cache of fixed slots) gives the same greedy tokens as eager, alone and
batched; torchao int8 loads and generates; bad choices
are clear errors; `bench` knows its --arch-only variants."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import glmflash
from glmflash.backends.local.load import quantization_config
from glmflash.backends.local.slots import MIN_WINDOW, bucket
from glmflash.commands.arch import parse_variant
from glmflash.errors import GenerationError, InvalidRequestError, MissingDependencyError, PrecisionError

from .test_batching import MIXED, concurrently, engine_batching


@pytest.fixture(scope="module")
def compiled(engine):
    return engine_batching(engine, compile=True, max_batch_size=8)


def test_windows_and_cache_sizes_come_in_few_buckets():
    assert bucket(1, 10_000) == MIN_WINDOW
    assert bucket(MIN_WINDOW + 1, 10_000) == 2 * MIN_WINDOW
    assert bucket(3000, 10_000) == 4096
    assert bucket(9000, 10_000) == 10_000  # never past a slot's tokens
    assert bucket(12_000, 10_000) == 12_000  # (the engine refuses such requests before)
    assert [bucket(rows, 8, start=1) for rows in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def uncached(usage):
    """The counts that do not depend on what a recent request left in the prefix cache."""
    return dataclasses.replace(usage, cached_tokens=0)


def test_compiled_decoding_gives_the_eager_tokens_alone_and_batched(engine, compiled):
    eager = [engine.chat(m, max_new_tokens=n, temperature=0, thinking=False) for m, n in MIXED]
    alone = compiled.chat(MIXED[0][0], max_new_tokens=MIXED[0][1], temperature=0, thinking=False)
    # cached_tokens depends on what the shared engine's prefix cache holds from earlier tests
    assert alone.text == eager[0].text and uncached(alone.usage) == uncached(eager[0].usage)
    for _ in range(2):  # the second round runs the graphs compiled in the first
        batched = concurrently(compiled, MIXED)
        assert [r.text for r in batched] == [r.text for r in eager]
        assert [r.usage.completion_tokens for r in batched] == [r.usage.completion_tokens for r in eager]
    assert max(compiled._batch.sizes) > 1  # they did share batches
    decoder = compiled._batch.decoder
    assert decoder.compiled and not decoder.buckets  # on the CPU: symbolic shapes, exact sizes
    # min_new_tokens and a stop mid-answer still hold per row with the larger, bucketed cache
    reply = compiled.chat(MIXED[3][0], max_new_tokens=9, min_new_tokens=9, temperature=0, thinking=False)
    assert reply.usage.completion_tokens == 9 and reply.finish_reason == "length"


def test_the_slot_cache_keeps_its_tensors_until_it_must_grow(compiled):
    def ask(tokens):
        reply = compiled.chat(MIXED[1][0], max_new_tokens=tokens, temperature=0, thinking=False)
        return reply.text, uncached(reply.usage)

    first_reply = ask(20)
    cache = compiled._batch.cache
    address, columns = cache.keys[0].data_ptr(), cache.columns
    assert ask(20) == first_reply  # written over in place: nothing of the last answer leaks in
    assert cache.keys[0].data_ptr() == address and cache.columns == columns
    ask(columns + 50)  # a longer answer than the slots hold now: they grow, by doubling
    assert cache.columns >= 2 * columns and cache.keys[0].shape[0] == 8


def test_compiled_decoding_runs_on_the_loop_thread_even_one_at_a_time(engine):
    single = engine_batching(engine, compile=True, max_batch_size=1)
    reply = single.chat(MIXED[1][0], max_new_tokens=6, temperature=0, thinking=False)
    assert reply.usage.completion_tokens == 6
    assert single._batch is not None and single._batch.sizes == [1]


def test_warm_up_compiles_what_later_requests_need(engine):
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    warm = engine_batching(engine, compile=True, max_batch_size=4, max_new_tokens=300)
    assert warm.warm_up() > 0
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    # other batch sizes, answer budgets (cache lengths) and prompts: nothing compiles any more
    for (messages, _), budget in zip(MIXED, (300, 40, 700, 100, 300, 9), strict=True):
        warm.chat(messages, max_new_tokens=budget, temperature=0, thinking=False)
    concurrently(warm, MIXED[:3])
    assert counters["stats"]["unique_graphs"] == graphs
    warm.close()
    with pytest.raises(GenerationError, match="closed"):
        warm.chat(MIXED[1][0], max_new_tokens=3)


def test_a_failing_compilation_is_a_clear_error_at_warm_up(engine, monkeypatch):
    import torch

    original = torch.compile

    def broken(function, **options):
        return original(function, **options, backend="no-such-backend")

    monkeypatch.setattr(torch, "compile", broken)
    torch._dynamo.reset()
    failing = engine_batching(engine, compile=True, max_batch_size=2)
    with pytest.raises(GenerationError, match="Unset GLMFLASH_COMPILE"):
        failing.warm_up()
    failing.close()
    torch._dynamo.reset()


def test_compile_is_ignored_for_weights_that_cannot_compile(cache_dir, caplog):
    bnb = glmflash.load("tiny", "int8", "cpu", cache_dir=str(cache_dir), compile=True)
    assert not bnb.compiled and "GLMFLASH_COMPILE is ignored" in caplog.text
    assert bnb.warm_up() == 0.0
    reply = bnb.chat(MIXED[1][0], max_new_tokens=4, temperature=0)
    assert reply.usage.completion_tokens >= 1


def test_torchao_int8_quantizes_the_language_model_only(cache_dir):
    pytest.importorskip("torchao")
    engine = glmflash.load("tiny", "int8", "cpu", cache_dir=str(cache_dir), quantizer="torchao")
    kinds = {name: type(module.weight).__name__ for name, module in engine.model.named_modules()
             if type(module).__name__ == "Linear"}  # fmt: skip
    language = [kind for name, kind in kinds.items() if ".language_model." in name]
    assert language and all(kind == "Int8Tensor" for kind in language)
    assert all(kind == "Parameter" for name, kind in kinds.items() if ".visual." in name or "lm_head" in name)
    assert "torchao" in engine.info.placement_reason
    # int8 parts counted as int8 (transformers' own footprint counts them at full width)
    assert engine.info.memory_bytes < 0.8 * engine.model.get_memory_footprint()
    reply = engine.ask(MIXED[0][0][0]["content"][0]["image"], "What is it?", max_new_tokens=6, seed=0)
    assert reply.usage.completion_tokens >= 1 and reply.usage.image_tokens > 0


def test_quantizer_choices_are_clear_errors(cache_dir, monkeypatch):
    with pytest.raises(PrecisionError, match="Unknown quantizer 'gptq'"):
        glmflash.load("tiny", "int8", "cpu", cache_dir=str(cache_dir), quantizer="gptq")
    with pytest.raises(PrecisionError, match="int8 only; int4 needs GLMFLASH_QUANTIZER=bitsandbytes"):
        quantization_config("int4", None, "torchao")
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(MissingDependencyError, match="pip install 'torchao"):
        quantization_config("int8", None, "torchao")


def test_bench_variants():
    plain = {"precision": "bf16", "compile": False, "quantizer": "bitsandbytes"}
    assert parse_variant("bf16") == plain
    fast_int8 = {"precision": "int8", "compile": True, "quantizer": "torchao"}
    assert parse_variant("int8+torchao+compile") == fast_int8
    with pytest.raises(InvalidRequestError, match="Unknown variant"):
        parse_variant("bf16+static")  # the static batcher is gone
    with pytest.raises(InvalidRequestError, match="Unknown variant 'bf16\\+fast'"):
        parse_variant("bf16+fast")


def shrunken_full_size_config():
    """The full-size architecture cut down in every width and depth, with its vocabulary and all
    its token ids kept: what the GPU run loads, small enough for this CPU."""
    from glmflash.backends.local.load import full_size_config

    config = full_size_config()
    text, vision = config.text_config, config.vision_config
    for name, value in dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2).items():  # fmt: skip
        setattr(text, name, value)
    text.rope_parameters["mrope_section"] = [2, 3, 3]  # head_dim 32 * partial 0.5 / 2 = 8 frequencies
    for name, value in dict(depth=2, hidden_size=64, num_heads=4, intermediate_size=128,
                            out_hidden_size=128).items():  # fmt: skip
        setattr(vision, name, value)
    return config


def test_arch_only_runs_every_variant_end_to_end_on_the_cpu():
    """The GPU measurement's whole flow (random checkpoint, loading each variant through
    glmflash.load(), the figures, a save after each) on a shrunken copy of the full-size config that
    keeps the real token ids (<|image|> 151363), so the one GPU run a session may get is not spent
    on a bug. Its tokenizer must number its tokens as the config does, or every image fails."""
    from glmflash.commands.arch import arch_only

    saved = []
    variants = ["fp32", "int8+torchao", "fp32+compile", "int4"]
    small = {"tokens": 4, "requests": 2, "concurrency": 2, "size": 64, "bandwidth_gib": 0.05}
    config = shrunken_full_size_config()
    result = arch_only(variants=variants, save=saved.append, device="cpu", config=config, **small)
    assert result["bandwidth_bytes_per_s"] > 0 and result["device_name"].startswith("CPU")
    for variant in variants[:3]:
        entry = result[variant]
        assert "error" not in entry, entry
        assert entry["decode_fraction_of_limit"] > 0 and entry["engine_decode_fraction_of_limit"] > 0
        assert entry["peak_memory_one_image_bytes"] > 0
        assert [level["concurrency"] for level in entry["levels"]] == [1, 2]
    assert result["fp32+compile"]["compiled"] and result["int8+torchao"]["quantizer"] == "torchao"
    assert "int4 needs a CUDA GPU" in result["int4"]["error"]  # one variant failing does not stop the rest
    assert len(saved) == 1 + len(variants)  # after the bandwidth, then after each variant


def test_the_random_checkpoint_carries_the_real_token_ids_in_config_and_tokenizer(tmp_path):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from glmflash.backends.local.load import TOKEN_FIELDS
    from glmflash.commands.arch import random_checkpoint

    folder = random_checkpoint(tmp_path, shrunken_full_size_config(), "cpu")
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for field, token in TOKEN_FIELDS.items():
        assert getattr(config, field) == tokenizer.convert_tokens_to_ids(token), field
    assert config.image_token_id == 151363 and config.video_token_id == 151364
    stops = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    assert stops == [151329, 151336, 151338]
    assert config.text_config.eos_token_id == stops == GenerationConfig.from_pretrained(folder).eos_token_id
    assert config.text_config.pad_token_id == tokenizer.pad_token_id == 151329


def test_check_says_whether_torchao_and_compiling_can_work_here(monkeypatch):
    from glmflash.commands import check
    from glmflash.config import Settings

    def findings(**settings):
        chosen = Settings.build(model="tiny", device="cpu", **settings)
        return {f.topic: (f.level, f.detail) for f in check.run_checks(chosen, jupyter_port=None)}

    ready = findings(precision="int8", quantizer="torchao", compile=True)
    assert ready["quantizer"][0] == "ok" and ready["compile"][0] == "ok"
    assert findings(precision="int8", compile=True)["compile"] == (
        "warn", "ignored: bitsandbytes weights cannot be compiled")  # fmt: skip
    assert findings(precision="fp32", quantizer="torchao")["quantizer"][0] == "warn"
    assert "compile" not in findings(precision="fp32")
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    real = check.importlib.util.find_spec
    monkeypatch.setattr(check.importlib.util, "find_spec", lambda n: None if n == "torchao" else real(n))
    missing = findings(precision="int8", quantizer="torchao", compile=True)
    assert missing["compile"] == ("fail", "torch.compile on the CPU needs a C++ compiler (apt install g++)")
    assert missing["quantizer"][0] == "fail" and "torchao is not installed" in missing["quantizer"][1]
