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
    assert settings.model == "/models/glm" and settings.precision == "int8"
    assert settings.max_image_pixels == 500_000 and settings.allow_image_urls is True
    assert settings.image_url_allowed_networks == ("10.0.0.0/8", "192.168.1.0/24")


def test_overrides_win_over_environment():
    assert Settings.from_env({"GLMFLASH_MODEL": "x"}, model="tiny").model == "tiny"
    assert Settings.from_env({"GLMFLASH_MODEL": "x"}, model=None).model == "x"


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

    base = GenerationConfig(do_sample=True, temperature=0.8, top_p=0.6, top_k=2)
    greedy = GenerationOptions.build(default_max_new_tokens=5, max_new_tokens_limit=9, temperature=0)
    assert greedy.generation_config(base).do_sample is False
    sampled = GenerationOptions.build(default_max_new_tokens=5, max_new_tokens_limit=9, top_p=0.9)
    config = sampled.generation_config(base)
    assert (
        config.do_sample and config.top_p == 0.9 and config.temperature == 0.8 and config.max_new_tokens == 5
    )


def test_an_engine_never_holds_the_servers_secrets(cache_dir):
    import glmflash

    settings = Settings(cache_dir=str(cache_dir), api_keys="k1,k2", jwt_secret="s3cret", max_images=3)
    engine = glmflash.load("tiny", "fp32", "cpu", settings=settings)
    assert (engine.settings.api_keys, engine.settings.jwt_secret) == ("", "")
    assert engine.settings.max_images == 3  # the rest is the same
