"""The chat's generation controls, one per option declared in options.OPTIONS (a new option shows
up on the page by itself): a checkbox for a switch, a one-line box for a number (a text box:
Gradio's number box cannot stay empty, it sends 0), a box of lines for stop strings; labelled from
ui/labels.py (the option's own help where the page has no label for it). Left empty, an option
takes the model's own default, as in the API; the engine checks every value, as any caller's.
"""

from __future__ import annotations

import dataclasses

import gradio as gr

from ..errors import InvalidRequestError
from ..options import OPTIONS, GenerationOptions

MAIN_ROW = ("thinking",)  # beside Retry and New chat; every other option sits under Advanced
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationOptions)}


def control(name: str, t: dict, limits):
    """The widget for option `name` under the server's request `limits` (its max_new_tokens is
    the page's too: the page sends it, as the API takes it when a request gives none)."""
    limit = limits.max_new_tokens_limit
    option = OPTIONS[name]
    label = t.get(f"option_{name}") or option.help.capitalize()
    elem_id = name.replace("_", "-")
    if option.kind == "bool":
        return gr.Checkbox(value=bool(_DEFAULTS.get(name)), label=label, elem_id=elem_id)
    if option.kind == "stops":
        return gr.Textbox(label=label, lines=2, max_lines=4, elem_id=elem_id, info=t["option_stop_info"])
    high = option.high if option.high is not None else limit  # None: the engine's own limit
    value = str(min(limits.max_new_tokens, limit)) if name == "max_new_tokens" else ""
    bounds = f"{_number(option.low)} to {_number(high)}" if option.low is not None else ""
    return gr.Textbox(
        value, label=label, max_lines=1, placeholder=bounds, info=t["option_default_info"], elem_id=elem_id
    )


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value:,}"


def generation(values: dict, t: dict) -> dict:
    """The controls' values -> Engine.stream keyword arguments (checked there, like any
    caller's); a box that holds no number is an InvalidRequestError naming it."""
    gen: dict = {}
    for name, value in values.items():
        kind = OPTIONS[name].kind
        if isinstance(value, str) and kind in ("int", "float"):
            value = value.strip().replace(",", "")
            if not value:
                continue  # the model's own default
            try:
                number = float(value)
            except ValueError:
                label = t.get(f"option_{name}") or name
                raise InvalidRequestError(t["option_not_a_number"].format(label=label, value=value)) from None
            gen[name] = int(number) if kind == "int" and number.is_integer() else number
        elif kind == "stops":
            stops = [line for line in (value or "").split("\n") if line]  # spaces are part of a stop string
            if stops:
                gen[name] = stops
        elif value is not None:
            gen[name] = value
    return gen
