"""Generation options: checked here, then turned into transformers GenerationConfig values.

Nothing a caller sends reaches `generate` without passing through `GenerationOptions.build`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .errors import InvalidRequestError

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int
    min_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    thinking: bool = True

    @classmethod
    def build(
        cls,
        *,
        default_max_new_tokens: int,
        max_new_tokens_limit: int,
        max_new_tokens=None,
        min_new_tokens=None,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        seed=None,
        thinking=True,
    ) -> GenerationOptions:
        if max_new_tokens is None:
            max_new_tokens = min(default_max_new_tokens, max_new_tokens_limit)
        max_new_tokens = _integer("max_new_tokens", max_new_tokens, 1, max_new_tokens_limit)
        if min_new_tokens is not None:
            min_new_tokens = _integer("min_new_tokens", min_new_tokens, 0, max_new_tokens)
        return cls(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            temperature=_number("temperature", temperature, 0.0, 2.0),
            top_p=_number("top_p", top_p, 0.0, 1.0, low_open=True),
            top_k=None if top_k is None else _integer("top_k", top_k, 0, 1_000_000),
            repetition_penalty=_number("repetition_penalty", repetition_penalty, 0.1, 10.0),
            seed=None if seed is None else _integer("seed", seed, 0, 2**63 - 1),
            thinking=_boolean("thinking", thinking),
        )

    def generation_config(self, base):
        """A copy of the checkpoint's GenerationConfig with these options applied."""
        config = copy.deepcopy(base)
        temperature = self.temperature if self.temperature is not None else config.temperature
        # Below ~1e-5 sampling divides logits into inf: that is greedy decoding in all but name.
        sample = bool(config.do_sample) if self.temperature is None else self.temperature >= GREEDY_BELOW
        config.do_sample = sample
        config.max_new_tokens = self.max_new_tokens
        config.min_new_tokens = self.min_new_tokens
        if self.repetition_penalty is not None:
            config.repetition_penalty = self.repetition_penalty
        if sample:
            config.temperature = temperature
            if self.top_p is not None:
                config.top_p = self.top_p
            if self.top_k is not None:
                config.top_k = self.top_k
        else:  # greedy: neutral sampling knobs, which generate() neither uses nor warns about
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
        return config


def _integer(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}.", param=name)
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, got {value}.", param=name)
    return value


def _number(name, value, low, high, *, low_open=False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidRequestError(f"{name} must be a number, got {value!r}.", param=name)
    if value > high or value < low or (low_open and value == low):
        bound = f"above {low}" if low_open else f"at least {low}"
        raise InvalidRequestError(f"{name} must be {bound} and at most {high}, got {value}.", param=name)
    return float(value)


def _boolean(name, value):
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false, got {value!r}.", param=name)
    return value
