"""A structured answer's longest possible length, from its schema: what a task's budget covers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from glmflash.config import Settings
from glmflash.jobs.tasks import THINKING_TOKENS, UNBOUNDED_TOKENS, custom_task, load_task
from glmflash.text.budget import SLACK, worst_case_tokens
from glmflash.text.structured import MAX_DIGIT_RUN


def obj(**properties):
    return {"type": "object", "properties": properties, "additionalProperties": False}


@pytest.mark.parametrize(
    ("schema", "answer_bytes"),
    [
        ({"type": "string", "maxLength": 3}, 2 + 3 * 4),  # 4 bytes a character at most
        ({"type": ["string", "null"], "maxLength": 1}, 2 + 4),
        ({"type": "string", "pattern": "^[A-Z]{3}$"}, 2 + 3 * 4),
        ({"type": "string", "format": "date"}, 2 + 10 * 4),
        ({"enum": ["allow", "review", "block"]}, len('"review"')),
        ({"type": "boolean"}, 5),
        ({"type": "integer", "minimum": -5, "maximum": 120}, 1 + 3),
        ({"type": "number", "minimum": 0, "maximum": 1}, 1 + 1 + MAX_DIGIT_RUN),
        ({"type": "array", "items": {"type": "boolean"}, "maxItems": 3}, 2 + 3 * 5 + 2 * 2),
        (obj(a={"type": "boolean"}, bc={"type": "null"}), 2 + (3 + 2 + 5) + 2 + (4 + 2 + 4)),
        ({"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 2}]}, 2 + 8),
    ],
)
def test_bounds_of_small_schemas(schema, answer_bytes):
    assert worst_case_tokens(schema) == SLACK + answer_bytes


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},  # no maxLength
        {"type": "string", "pattern": "[A-Z]{3}"},  # not anchored: matches inside longer strings
        {"type": "array", "items": {"type": "boolean"}},  # no maxItems
        {"type": "object", "properties": {"a": {"type": "boolean"}}},  # more properties allowed
        {"type": "object"},
        {"$ref": "#/$defs/x"},
    ],
)
def test_open_ended_schemas_have_no_bound(schema):
    assert worst_case_tokens(schema) is None


def test_the_presets_budgets_cover_their_schemas_and_fit_the_limit():
    for name in ("moderation", "invoice"):
        task = load_task(name)
        worst = worst_case_tokens(task.schema)
        assert worst is not None and task.generation()["max_new_tokens"] == task.budget == worst
        assert worst <= Settings().limits.max_new_tokens_limit
    assert worst_case_tokens(load_task("moderation").schema) < 2000
    thinking = replace(load_task("moderation"), thinking=True)
    assert thinking.budget == worst_case_tokens(thinking.schema) + THINKING_TOKENS
    assert replace(thinking, max_new_tokens=64).budget == 64  # a task file's own budget wins
    assert custom_task("Anything as JSON").budget == UNBOUNDED_TOKENS
    assert load_task("invoice").generation(limit=1000)["max_new_tokens"] == 1000


def test_a_task_that_thinks_within_a_budget_asks_for_it(tmp_path):
    path = tmp_path / "think.json"
    path.write_text(
        '{"prompt": "Judge", "thinking": true, "thinking_budget": 256, "schema": {"enum": ["a", "b"]}}'
    )
    task = load_task(str(path))
    assert task.generation()["thinking_budget"] == 256
    assert task.budget == worst_case_tokens({"enum": ["a", "b"]}) + 256 + 2  # <think> and </think>
    assert "thinking_budget" not in replace(task, thinking=False).generation()


def test_presets_are_the_task_files_each_with_its_own_titles(tmp_path, monkeypatch):
    from importlib import resources

    from glmflash.jobs import tasks

    folder = resources.files("glmflash").joinpath("data/tasks")
    assert set(tasks.PRESETS) == {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")}
    assert dict((n, t) for t, n in tasks.preset_titles("zh"))["moderation"] == "内容审核"
    (tmp_path / "meter.json").write_text('{"prompt": "Read the meter", "title": {"en": "Meter reading"}}')
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.setattr(tasks, "_FOLDER", tmp_path)
    monkeypatch.setattr(tasks, "PRESETS", ("broken", "meter"))
    assert tasks.preset_titles("zh") == [("broken", "broken"), ("Meter reading", "meter")]
    assert tasks.load_task("meter").prompt == "Read the meter"
