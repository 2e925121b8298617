"""Settings read GLMFLASH_* variables, and bad values say which variable is wrong."""

from __future__ import annotations

import pytest

from glmflash.config import Settings
from glmflash.errors import InvalidRequestError
from glmflash.options import GenerationOptions


def test_environment_values_are_typed():
    settings = Settings.from_env(
        {
            "GLMFLASH_MODEL": "/models/glm",
            "GLMFLASH_PRECISION": "int8",
            "GLMFLASH_MAX_IMAGE_PIXELS": "500_000",
            "GLMFLASH_ALLOW_IMAGE_URLS": "yes",
            "GLMFLASH_IMAGE_URL_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.1.0/24",
            "OTHER": "ignored",
        }
    )
    assert settings.model.name == "/models/glm" and settings.model.precision == "int8"
    assert settings.limits.max_image_pixels == 500_000 and settings.limits.allow_image_urls is True
    assert settings.limits.image_url_allowed_networks == ("10.0.0.0/8", "192.168.1.0/24")


def test_overrides_win_over_environment():
    assert Settings.from_env({"GLMFLASH_MODEL": "x"}, model="tiny").model.name == "tiny"
    assert Settings.from_env({"GLMFLASH_MODEL": "x"}, model=None).model.name == "x"


@pytest.mark.parametrize(("name", "value"), [("MAX_NEW_TOKENS", "lots"), ("ALLOW_IMAGE_URLS", "maybe")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(InvalidRequestError, match=f"GLMFLASH_{name}"):
        Settings.from_env({f"GLMFLASH_{name}": value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", 10**9),
        ("max_new_tokens", "12"),
        ("temperature", -1),
        ("temperature", float("nan")),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", -3),
        ("repetition_penalty", 0),
        ("seed", -1),
        ("thinking", "no"),
    ],
)
def test_generation_options_are_checked(field, value):
    with pytest.raises(InvalidRequestError) as info:
        GenerationOptions.build(default_max_new_tokens=100, max_new_tokens_limit=1000, **{field: value})
    assert info.value.param == field


def test_temperature_zero_means_greedy():
    from transformers import GenerationConfig

    from glmflash.options import checkpoint_defaults

    base = checkpoint_defaults(GenerationConfig(do_sample=True, temperature=0.8, top_p=0.6, top_k=2))
    greedy = GenerationOptions.build(default_max_new_tokens=5, max_new_tokens_limit=9, temperature=0)
    assert greedy.resolved(base).sample is False
    sampled = GenerationOptions.build(default_max_new_tokens=5, max_new_tokens_limit=9, top_p=0.9)
    options = sampled.resolved(base)
    assert options.sample and (options.top_p, options.temperature, options.top_k, options.max_new_tokens) == (
        0.9, 0.8, 2, 5,
    )  # fmt: skip
    plain = checkpoint_defaults(GenerationConfig(do_sample=False, temperature=0.8))
    assert sampled.resolved(plain).sample is False  # the checkpoint decodes greedily


def test_an_engine_never_holds_the_servers_secrets(cache_dir):
    import glmflash

    settings = Settings.build(cache_dir=str(cache_dir), api_keys="k1,k2", jwt_secret="s3cret", max_images=3)
    engine = glmflash.load("tiny", "fp32", "cpu", settings=settings)
    assert not hasattr(engine.settings, "server") and "s3cret" not in repr(engine.settings)
    assert engine.settings.limits.max_images == 3  # the rest is the same


def test_settings_are_split_by_owner_with_the_same_variable_names():
    settings = Settings.from_env(
        {"GLMFLASH_MODEL": "tiny", "GLMFLASH_MAX_IMAGES": "3", "GLMFLASH_MAX_BATCH_SIZE": "2",
         "GLMFLASH_PORT": "9000", "GLMFLASH_DEBUG": "1"}
    )  # fmt: skip
    assert settings.model.name == "tiny" and settings.limits.max_images == 3
    assert settings.batching.max_batch_size == 2 and settings.server.port == 9000 and settings.debug
    changed = settings.replace(port=9001, max_images=None)
    assert changed.server.port == 9001 and changed.limits.max_images == 3 and settings.server.port == 9000
    with pytest.raises(InvalidRequestError, match="colour"):
        settings.replace(colour="red")
    with pytest.raises(InvalidRequestError, match="port"):
        settings.for_engine().replace(port=1)  # an engine's settings have no server part
