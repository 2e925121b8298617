"""Where the model comes from, device/precision choice, and the errors a user meets first."""

from __future__ import annotations

import json
import sys

import pytest

import glmflash
from glmflash.backends.local.load import (
    GiB,
    check_gpu_memory,
    choose_placement,
    estimate_memory,
    full_size_config,
    quantization_config,
)
from glmflash.config import Settings
from glmflash.errors import (
    InsufficientMemoryError,
    MissingDependencyError,
    ModelNotFoundError,
    PrecisionError,
)
from tests.conftest import favour, run_cli
from tests.server_helpers import engine_with


def test_cpu_auto_is_fp32_with_a_reason():
    placement = choose_placement("auto", "auto")
    assert (placement.device, placement.precision, placement.dtype_name) == ("cpu", "fp32", "float32")
    assert placement.reason == "fp32 on cpu (no CUDA device)"


def test_int8_on_cpu_is_allowed():
    assert choose_placement("int8", "cpu").precision == "int8"


@pytest.mark.parametrize(
    ("precision", "device", "match"),
    [
        ("int9", "auto", "Unknown precision 'int9': choose one of auto, bf16"),
        ("int4", "cpu", "int4 needs a CUDA GPU"),
        ("auto", "cuda", "no CUDA GPU is visible"),
        ("auto", "tpu", "Unknown device"),
    ],
)
def test_impossible_choices_are_clear_errors(precision, device, match):
    with pytest.raises(PrecisionError, match=match):
        choose_placement(precision, device)


def test_memory_estimate_of_the_real_architecture():
    needs = estimate_memory(full_size_config(), "bf16")
    # 20.6 GB of bf16 weights in the checkpoint, plus headroom; int8/int4 keep the vision tower in 16-bit
    assert 20 * GiB < needs["bf16"] < 23 * GiB
    assert needs["int4"] < needs["int8"] < needs["bf16"] < needs["fp32"]


def test_not_enough_gpu_memory_says_how_much_and_suggests_smaller():
    needs = estimate_memory(full_size_config(), "bf16")
    with pytest.raises(InsufficientMemoryError) as info:
        check_gpu_memory(needs, "bf16", 16 * GiB, "cuda:0")
    message = info.value.message
    assert "16.0 GiB free" in message and "bf16 needs about 21" in message
    assert "int8 ~13" in message and "Try --precision int8" in message
    check_gpu_memory(needs, "int8", 16 * GiB, "cuda:0")  # fits: no error


def test_bitsandbytes_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(MissingDependencyError, match="pip install 'bitsandbytes"):
        quantization_config("int8", None)


def test_named_checkpoint_offline_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    module = sys.modules[
        "glmflash.backends.local.load"
    ]  # the module, not the load() function of the same name
    monkeypatch.setattr(module, "cached_snapshot", lambda repo: None)
    monkeypatch.setattr(module, "hub_status", lambda repo: (False, False))
    with pytest.raises(ModelNotFoundError, match=r"hf download zai-org/GLM-4.6V-Flash.*GLMFLASH_MODEL"):
        glmflash.load("zai-org/GLM-4.6V-Flash", settings=Settings.build(cache_dir=str(tmp_path)))


def test_missing_folder_and_folder_without_config(tmp_path):
    settings = Settings.build(cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        glmflash.load(str(tmp_path / "nope"), settings=settings)
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        glmflash.load(str(tmp_path), settings=settings)


def test_unknown_load_option():
    with pytest.raises(TypeError, match="max_imag_pixels"):
        glmflash.load("tiny", max_imag_pixels=5)


@pytest.mark.parametrize(
    "hub_env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline-flag", "hub-unreachable"],
)
def test_auto_falls_back_to_the_tiny_model_loudly(cache_dir, tmp_path, hub_env):
    env = {"HF_HOME": str(tmp_path / "hf"), "GLMFLASH_CACHE_DIR": str(cache_dir), "GLMFLASH_MODEL": "auto"}
    env.pop("HF_HUB_OFFLINE", None)
    result = run_cli("info", env_extra={**env, **hub_env})
    assert result.returncode == 0, result.stderr
    assert "MEANINGLESS" in result.stderr and "GLMFLASH_MODEL" in result.stderr
    info = json.loads(result.stdout)
    assert info["demo_model"] is True and info["model_id"] == "glmflash/tiny"


def test_explicit_hub_id_unreachable_exits_with_one_line(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_cli("info", "--model", "zai-org/GLM-4.6V-Flash", env_extra=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: zai-org/GLM-4.6V-Flash is not in the local cache")
    assert "Traceback" not in result.stderr


def test_cached_checkpoint_is_found_without_the_hub(tmp_path, cache_dir, monkeypatch):
    """A model in the Hugging Face cache layout loads offline through the real resolution code."""
    import shutil

    from glmflash.backends.local.load import cached_snapshot
    from glmflash.backends.local.tiny import ensure_tiny_model

    snapshot = tmp_path / "hub" / "models--org--fake" / "snapshots" / "abc123"
    shutil.copytree(ensure_tiny_model(cache_dir), snapshot)
    (tmp_path / "hub" / "models--org--fake" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--fake" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub._snapshot_download as sd

    monkeypatch.setattr(sd.constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    found = cached_snapshot("org/fake")
    assert found == str(snapshot)


def test_the_full_size_architecture_is_the_published_checkpoint():
    """The safetensors total of GLM-4.6V-Flash, exactly (2 KV heads; 8 would give 10,544,497,152),
    and the GLM-4.6V family's image/video ids (151343/151344 are GLM-4.1V's, audio markers here)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = full_size_config()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 10_292_777_472
    assert (config.image_token_id, config.video_token_id) == (151363, 151364)
    assert (config.image_start_token_id, config.image_end_token_id) == (151339, 151340)
    assert config.text_config.eos_token_id == [151329, 151336, 151338]


def copy_of_tiny(cache_dir, tmp_path, name: str):
    import shutil

    from glmflash.backends.local.tiny import ensure_tiny_model

    target = tmp_path / name
    shutil.copytree(ensure_tiny_model(cache_dir), target)
    return target


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_config_whose_image_id_is_not_the_tokenizers_is_refused_at_load(cache_dir, tmp_path):
    from glmflash.errors import CheckpointError

    folder = copy_of_tiny(cache_dir, tmp_path, "wrong-ids")
    edit_json(folder / "config.json", lambda c: c.update(image_token_id=c["image_token_id"] - 1))
    with pytest.raises(CheckpointError, match=r"image_token_id=\d+ but the tokenizer's <\|image\|> is \d+"):
        glmflash.load(str(folder), "fp32", "cpu")


def test_a_generation_config_with_one_eos_id_still_ends_the_turn(cache_dir, tmp_path):
    """A fine-tune whose generation_config.json lists only <|endoftext|>: the engine still stops on
    <|user|> and <|observation|> (a GLM turn ends by starting the next role)."""
    folder = copy_of_tiny(cache_dir, tmp_path, "one-eos")
    endoftext = json.loads((folder / "generation_config.json").read_text())["eos_token_id"][0]
    edit_json(folder / "generation_config.json", lambda c: c.update(eos_token_id=endoftext))
    edit_json(folder / "config.json", lambda c: c["text_config"].update(eos_token_id=endoftext))
    engine = glmflash.load(str(folder), "fp32", "cpu", max_batch_size=1)
    assert engine.model.generation_config.eos_token_id == endoftext  # what the files say
    tokens = engine.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    assert engine.stop_ids == set(tokens)
    # Make <|user|> the only likely token: the answer ends there, as a stop, not at max_tokens.
    favour(engine, "<|user|>")
    for batch in (1, 4):  # the one-at-a-time path and the batcher
        reply = engine_with(engine, max_batch_size=batch).chat(
            [{"role": "user", "content": "Hello"}], max_new_tokens=50, temperature=0
        )
        assert (reply.finish_reason, reply.usage.completion_tokens, reply.text) == ("stop", 1, "")


def test_load_asks_the_backend_registry(monkeypatch):
    """A backend is a module that registers itself: load() hands it the model arguments it
    claims and its settings, and keeps URLs for the remote backend and the rest for the local."""
    from glmflash.backends import registry

    assert registry.backend_for("http://127.0.0.1:1/v1").name == "remote"
    assert registry.backend_for("tiny").name == "local"
    assert registry.backend_for("/models/glm46v-flash").name == "local"
    opened = []

    def open_fake(target, precision, device, base, options):
        opened.append((target, precision, device, registry.engine_settings(base, options)))
        return "fake engine"

    monkeypatch.setitem(
        registry.BACKENDS, "fake", registry.Backend("fake", lambda t: t.startswith("fake:"), open_fake)
    )
    settings = Settings.build(cache_dir="/nowhere")
    assert glmflash.load("fake:x", "fp32", settings=settings, max_images=3) == "fake engine"
    target, precision, _device, engine_settings = opened[0]
    assert (target, precision, engine_settings.limits.max_images) == ("fake:x", "fp32", 3)
    assert not hasattr(engine_settings, "server")  # never the server's part
    env_settings = Settings.build(backend_url="fake:from-env")
    assert glmflash.load(settings=env_settings) == "fake engine" and opened[1][0] == "fake:from-env"
