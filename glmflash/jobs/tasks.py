"""Tasks with structured answers: the shipped presets (moderation, invoice) and users' own.

A task is the prompt sent with each image, the JSON Schema its answer must match, and generation
defaults (thinking off: it costs tokens). Its answer budget covers the longest answer the schema
allows (budget.worst_case_tokens), so a valid answer is never cut off. Presets are JSON files in
`glmflash/data/tasks/`; copy one, edit it, and pass its path wherever a preset name is accepted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InvalidRequestError
from ..text.budget import worst_case_tokens

_FOLDER = resources.files("glmflash").joinpath("data/tasks")
# Every JSON file in glmflash/data/tasks is a preset: adding one is adding a file.
PRESETS = tuple(
    sorted(item.name[: -len(".json")] for item in _FOLDER.iterdir() if item.name.endswith(".json"))
)
DEFAULT_FIND = "distinct object"  # what the detect preset looks for
DEFAULT_LANGUAGE = "English"
UNBOUNDED_TOKENS = 2048  # the budget for a schema without length bounds (a cut answer is retried)
THINKING_TOKENS = 8192  # added when a task thinks first: what the official demos give the model


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str
    schema: dict | None = None  # None: any JSON object
    thinking: bool = False
    max_new_tokens: int | None = None  # None: computed from the schema (budget)
    description: str = ""
    thinking_budget: int | None = None  # with thinking on: at most this many thinking tokens

    @property
    def budget(self) -> int:
        """Tokens an answer may take: max_new_tokens when set, else the longest answer the schema
        allows (plus THINKING_TOKENS when the task thinks first)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        answer = worst_case_tokens(self.schema) or UNBOUNDED_TOKENS
        if not self.thinking:
            return answer
        return answer + (self.thinking_budget + 2 if self.thinking_budget else THINKING_TOKENS)

    def response_format(self) -> dict:
        """The OpenAI `response_format` for this task's answers."""
        if self.schema is None:
            return {"type": "json_object"}
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
        }

    def messages(self, image) -> list[dict]:
        """One user turn: the image, then the prompt."""
        content = [{"type": "image", "image": image}, {"type": "text", "text": self.prompt}]
        return [{"role": "user", "content": content}]

    def generation(self, limit: int | None = None) -> dict:
        """Keyword arguments for Engine.chat / Engine.stream; `limit`: the engine's
        max_new_tokens_limit, which the budget must not pass."""
        options = {
            "response_format": self.response_format(),
            "thinking": self.thinking,
            "max_new_tokens": min(self.budget, limit) if limit else self.budget,
        }
        if self.thinking and self.thinking_budget:
            options["thinking_budget"] = self.thinking_budget
        return options

    def key(self) -> str:
        """Fingerprint of what decides the answer (prompt, schema, thinking and its budget): part
        of job ids."""
        decides: list = [self.prompt, self.schema, self.thinking]
        if self.thinking and self.thinking_budget:
            decides.append(self.thinking_budget)
        blob = json.dumps(decides, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def load_task(name_or_path: str, *, language: str = DEFAULT_LANGUAGE, find: str = DEFAULT_FIND) -> Task:
    """A preset by name ("moderation", "invoice", "detect") or a task file of the same shape.
    `{language}` in its prompt becomes `language`, `{find}` (what detect looks for) `find`."""
    if name_or_path in PRESETS:
        text = _FOLDER.joinpath(f"{name_or_path}.json").read_text("utf-8")
        origin = f"preset {name_or_path}"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InvalidRequestError(
                f"Unknown task {name_or_path!r}: use one of {', '.join(PRESETS)} or a task JSON file."
            )
        text, origin = path.read_text("utf-8"), str(path)
    data = _json(text, origin)
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise InvalidRequestError(f"{origin}: a task file is a JSON object with at least a 'prompt' string.")
    return Task(
        name=str(data.get("name") or Path(name_or_path).stem),
        prompt=data["prompt"].replace("{language}", language).replace("{find}", _find(find)),
        schema=_schema(data.get("schema"), origin),
        thinking=bool(data.get("thinking", False)),
        max_new_tokens=_tokens(data.get("max_new_tokens"), origin),
        thinking_budget=_tokens(data.get("thinking_budget"), origin, "thinking_budget"),
        description=str(data.get("description", "")),
    )


def _find(text: str) -> str:
    text = " ".join(str(text).split())
    if not text or len(text) > 200:
        raise InvalidRequestError("What to find must be 1 to 200 characters, e.g. 'person' or 'price tag'.")
    return text


def preset_titles(lang: str) -> list[tuple[str, str]]:
    """(title in `lang`, name) for every preset, from each file's "title" ({"en": ..., "zh": ...});
    a file without one, or one that does not read, shows its name (the page still starts)."""
    titles = []
    for name in PRESETS:
        try:
            title = json.loads(_FOLDER.joinpath(f"{name}.json").read_text("utf-8")).get("title") or {}
        except (OSError, ValueError, AttributeError):
            title = {}
        shown = title.get(lang) or title.get("en") if isinstance(title, dict) else None
        titles.append((str(shown or name), name))
    return titles


def custom_task(prompt: str, schema_file: str | None = None, *, max_new_tokens: int | None = None) -> Task:
    """A task from a prompt and (optionally) a JSON Schema file; without one, any JSON object."""
    if not prompt.strip():
        raise InvalidRequestError("The prompt is empty.")
    schema = None
    if schema_file:
        path = Path(schema_file).expanduser()
        if not path.is_file():
            raise InvalidRequestError(f"Schema file {schema_file} does not exist.")
        schema = _schema(_json(path.read_text("utf-8"), str(path)), str(path))
    return Task(name="custom", prompt=prompt, schema=schema, max_new_tokens=max_new_tokens)


def _tokens(value, origin: str, name: str = "max_new_tokens") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{origin}: {name} must be a positive integer, not {value!r}.")
    return value


def _json(text: str, origin: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{origin} is not valid JSON: {exc}") from None


def _schema(schema, origin: str) -> dict | None:
    if schema is None:
        return None
    from ..text.structured import check_schema

    check_schema(schema, param=origin)
    return schema
