"""Generation options, each declared once (OPTIONS): its type and bounds, its names in the OpenAI
API, whether the checkpoint's generation_config.json gives it when a request leaves it unset, and
its help text. Validation (GenerationOptions.build), the checkpoint's defaults (resolved), the
API's request mapping and error names, a backend's request body, CLI flags and the page's "Show
API call" are all derived from it; the local decode loop applies the resolved options as they are
(backends/local/rows.RowSampler).

Nothing a caller sends reaches `generate` without passing through `GenerationOptions.build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .errors import InvalidRequestError

GREEDY_BELOW = 1e-5
MAX_STOPS, MAX_STOP_CHARS = 4, 100  # OpenAI allows up to 4 stop sequences


@dataclass(frozen=True)
class Option:
    """One generation option. `api`: the request fields that set it, the first one canonical (a
    dotted name is a key inside an object, e.g. chat_template_kwargs.enable_thinking).
    `checkpoint`: left unset, it takes the checkpoint's own value (generation_config.json, read
    under the same name)."""

    name: str
    kind: str  # int | float | bool | stops
    low: float | None = None
    high: float | None = None  # None on max/min tokens: the engine's own limit
    low_open: bool = False
    api: tuple[str, ...] = ()
    checkpoint: bool = False
    help: str = ""
    send: str = ""  # the field a request body sets it with, when not the first API name

    @property
    def api_name(self) -> str:
        return self.api[0] if self.api else self.name

    @property
    def wire_name(self) -> str:
        """The name a request body uses for it (a backend's, the page's Show API call)."""
        return self.send or self.api_name


OPTIONS = {
    option.name: option
    for option in (
        Option("max_new_tokens", "int", 1, None, api=("max_tokens", "max_completion_tokens"),
               help="the most tokens to generate, thinking included"),
        Option("min_new_tokens", "int", 0, None, api=("min_tokens",),
               help="generate at least this many tokens before the turn may end"),
        Option("temperature", "float", 0.0, 2.0, api=("temperature",), checkpoint=True,
               help="sampling temperature; 0 is greedy"),
        Option("top_p", "float", 0.0, 1.0, low_open=True, api=("top_p",), checkpoint=True,
               help="nucleus sampling: keep the most likely tokens up to this probability"),
        Option("top_k", "int", 0, 1_000_000, api=("top_k",), checkpoint=True,
               help="sample from the k most likely tokens only (0: all)"),
        Option("repetition_penalty", "float", 0.1, 10.0, api=("repetition_penalty",), checkpoint=True,
               help="above 1 discourages repeating tokens"),
        Option("seed", "int", 0, 2**63 - 1, api=("seed",), help="makes sampled answers repeatable"),
        Option("thinking", "bool", api=("thinking", "chat_template_kwargs.enable_thinking"),
               send="chat_template_kwargs.enable_thinking", help="let the model reason before it answers"),
        Option("stop", "stops", api=("stop",),
               help="up to 4 strings; the answer ends before the first of them"),
        Option("thinking_budget", "int", 1, None, api=("thinking_budget",),
               help="after this many thinking tokens the model is made to close its thinking and answer"),
    )
}  # fmt: skip


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
    stop: tuple[str, ...] = ()
    thinking_budget: int | None = None

    @classmethod
    def build(cls, *, default_max_new_tokens: int, max_new_tokens_limit: int, **given) -> GenerationOptions:
        """Checked options; a TypeError for an unknown keyword, InvalidRequestError (naming the
        option) for a bad value."""
        unknown = set(given) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        values = {name: _check(OPTIONS[name], value, max_new_tokens_limit) for name, value in given.items()}
        values = {k: v for k, v in values.items() if v is not None}
        values.setdefault("max_new_tokens", min(default_max_new_tokens, max_new_tokens_limit))
        if values.get("min_new_tokens", 0) > values["max_new_tokens"]:
            raise InvalidRequestError(
                f"min_new_tokens must be between 0 and {values['max_new_tokens']} (max_new_tokens), "
                f"got {values['min_new_tokens']}.",
                param="min_new_tokens",
            )
        return cls(**values)

    @property
    def sample(self) -> bool | None:
        """True/False when the caller decided greedy or sampled decoding; None: the checkpoint's."""
        return None if self.temperature is None else self.temperature >= GREEDY_BELOW

    def resolved(self, defaults: dict) -> GenerationOptions:
        """These options as a row applies them: those left unset that the checkpoint gives
        (`defaults`: checkpoint_defaults) filled in; a checkpoint that decodes greedily
        (do_sample false) makes an unset temperature 0, one that samples its own or 1."""
        values = {}
        for name, option in OPTIONS.items():
            if option.checkpoint and getattr(self, name) is None and defaults.get(name) is not None:
                values[name] = defaults[name]
        if self.temperature is None and "do_sample" in defaults:  # the checkpoint says greedy or not
            sampled = defaults["do_sample"]
            values["temperature"] = float(defaults.get("temperature") or 1.0) if sampled else 0.0
        return dataclasses.replace(self, **values) if values else self

    def given(self) -> dict:
        """The options that differ from their defaults, with the budget and thinking always."""
        always = ("max_new_tokens", "thinking")
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in always or getattr(self, f.name) != f.default
        }


def checkpoint_defaults(config) -> dict:
    """The checkpoint's values (a transformers GenerationConfig, read once at load) for the
    options it may give, and whether it samples at all."""
    values = {name: getattr(config, name, None) for name, o in OPTIONS.items() if o.checkpoint}
    return {**values, "do_sample": bool(getattr(config, "do_sample", False))}


def to_openai(options: dict) -> dict:
    """Library options -> the fields of an OpenAI chat request (a backend's body, the page's
    "Show API call"), each under its canonical API name."""
    body: dict = {}
    for name, value in options.items():
        target, key = body, OPTIONS[name].wire_name
        *outer, leaf = key.split(".")
        for part in outer:
            target = target.setdefault(part, {})
        target[leaf] = list(value) if isinstance(value, tuple) else value
    return body


def from_openai(fields_: dict, *, objects: dict[str, dict]) -> dict:
    """The fields of an OpenAI chat request (plain ones in `fields_`, dotted ones looked up in
    `objects`, e.g. {"chat_template_kwargs": {...}}) -> library options; a later API name of
    the same option wins over an earlier one (max_completion_tokens over max_tokens)."""
    options = {}
    for name, option in OPTIONS.items():
        for key in option.api:
            outer, _, leaf = key.rpartition(".")
            source = (objects.get(outer) or {}) if outer else fields_
            if source.get(leaf) is not None:
                options[name] = source[leaf]
    return options


def api_names() -> dict[str, str]:
    """Library name -> its canonical API name, where they differ (for error messages)."""
    return {name: o.api_name for name, o in OPTIONS.items() if o.api_name != name}


def _check(option: Option, value, limit: int):
    if value is None:
        return None
    name = option.name
    if option.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidRequestError(f"{name} must be true or false, got {value!r}.", param=name)
        return value
    if option.kind == "stops":
        return _stops(value)
    high = limit if option.high is None else option.high
    low = option.low if option.low is not None else float("-inf")
    if option.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(f"{name} must be an integer, got {value!r}.", param=name)
        if not low <= value <= high:
            raise InvalidRequestError(
                f"{name} must be between {option.low} and {high}, got {value}.", param=name
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidRequestError(f"{name} must be a number, got {value!r}.", param=name)
    if value > high or value < low or (option.low_open and value == low):
        bound = f"above {low}" if option.low_open else f"at least {low}"
        raise InvalidRequestError(f"{name} must be {bound} and at most {high}, got {value}.", param=name)
    return float(value)


def _stops(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError("stop must be a string or a list of strings.", param="stop")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidRequestError(
            f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters.", param="stop"
        )
    return tuple(stops)
