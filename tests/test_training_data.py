"""training-data on hostile and large input, without a model: a line that cannot be read (not
UTF-8, nested too deep, a source no file can have) is left out and counted while the rest is
written, and the train/validation split takes linear time."""

from __future__ import annotations

import json
import time

from glmflash.adapt.examples import _split, export_training, read_split
from glmflash.jobs.tasks import Task
from tests.conftest import png_bytes

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
TASK = Task(name="ok", prompt="Is it fine?", schema=SCHEMA)


def line(source, result) -> bytes:
    return json.dumps({"id": "x", "source": source, "result": result}).encode() + b"\n"


def test_lines_that_cannot_be_read_are_left_out_one_by_one(tmp_path):
    images = []
    for i in range(4):
        images.append(tmp_path / f"i{i}.png")
        images[-1].write_bytes(png_bytes())
    results = tmp_path / "results.jsonl"
    results.write_bytes(
        line(str(images[0]), {"ok": True})
        + b'{"id": "a", "source": "caf\xe9.png", "result": {"ok": true}}\n'  # Latin-1, not UTF-8
        + line(str(images[1]), {"ok": False})
        + b'{"id": "b", "source": "'
        + b"[" * 100_000
        + b'"}\n'  # deeper than the parser goes
        + line("nul\0byte.png", {"ok": True})
        + line("x" * 5000 + ".png", {"ok": True})  # longer than any file name
        + line(12, {"ok": True})
        + line(str(images[2]), {"ok": "yes"})  # not the task's shape
        + line(str(images[3]), {"ok": True})
        + b"\xff\xfe\n"
    )
    manifest = export_training(results, TASK, tmp_path / "data")
    assert manifest["train"] + manifest["val"] == 3
    assert manifest["left_out"]["unreadable"] == 4 and manifest["left_out"]["not the task's shape"] == 1
    assert manifest["left_out"]["missing image"] == 1  # the long name is a path no file has
    rows = read_split(tmp_path / "data" / "train.jsonl") + read_split(tmp_path / "data" / "val.jsonl")
    assert sorted(row["image"] for row in rows) == sorted(str(images[i].resolve()) for i in (0, 1, 3))


def test_a_hundred_thousand_rows_split_in_well_under_a_second_and_stay_put(tmp_path):
    rows = [{"id": f"{i:016x}"} for i in range(100_000)]
    began = time.perf_counter()
    train, val = _split(rows, 0.2)
    assert time.perf_counter() - began < 5  # was about 3 minutes: each row looked up in a list
    assert len(train) + len(val) == len(rows) and 18_000 < len(val) < 22_000
    assert not {row["id"] for row in train} & {row["id"] for row in val}
    more_train, more_val = _split([*rows, {"id": "new"}], 0.2)  # adding a row moves no other
    assert {row["id"] for row in val} <= {row["id"] for row in more_val}
    assert {row["id"] for row in train} <= {row["id"] for row in more_train}
    assert _split(rows[:2], 0.01)[1]  # two rows and a fraction asked for: one in validation
    assert _split(rows[:2], 0)[1] == []
