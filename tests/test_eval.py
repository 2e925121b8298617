"""Evaluation: labelled data read and checked, answers scored (classification and extraction),
runs through the real tiny model (library and CLI, killed and resumed), the local engine against
the same model behind the API (RemoteEngine) side by side, and the HTML report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from glmflash.errors import InvalidRequestError
from glmflash.evaluate.compare import compare_runs, format_table, load_run
from glmflash.evaluate.data import load_labelled
from glmflash.evaluate.report import write_report
from glmflash.evaluate.run import cost_of, run_eval, score_run
from glmflash.evaluate.score import NO_ANSWER, label_fields, same, score_classification, score_extraction
from glmflash.jobs.tasks import load_task
from tests.conftest import ROOT, png_bytes, run_cli
from tests.server_helpers import running_server, wait_until


def labelled_folder(folder, labels, kind="csv"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, expected in enumerate(labels):
        name = f"img{i:02d}.png"
        (folder / name).write_bytes(png_bytes(size=(40 + i % 5 * 8, 32), color=(i * 9 % 256, 90, 150)))
        rows.append({"image": name, "expected": expected})
    if kind == "csv":
        path = folder / "labels.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "expected"])
            writer.writeheader()
            for r in rows:
                value = r["expected"]
                writer.writerow({**r, "expected": json.dumps(value) if isinstance(value, dict) else value})
    else:
        path = folder / "labels.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- scoring ------------------------------------------------------------------------------------


def test_classification_metrics_confusion_and_threshold_sweep():
    pairs = [
        ("allow", {"verdict": "allow", "confidence": 0.95}),
        ("allow", {"verdict": "block", "confidence": 0.55}),
        ("block", {"verdict": "block", "confidence": 0.9}),
        ("review", {"verdict": "allow", "confidence": 0.7}),
        ("block", None),  # refused or failed: wrong, and no confidence
    ]
    result = score_classification(pairs, "verdict", "confidence")
    s = result["scores"]
    assert s["accuracy"] == pytest.approx(2 / 5) and s["answered"] == 4
    assert s["classes"] == ["allow", "block", "review", NO_ANSWER]
    assert s["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert s["per_class"]["block"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    sweep = {row["threshold"]: row for row in s["thresholds"]}
    assert (sweep[0.0]["automatic"], sweep[0.0]["to_review"]) == (4, 1)
    assert sweep[0.8] == {"threshold": 0.8, "automatic": 2, "to_review": 3, "automatic_accuracy": 1.0}
    assert sweep[0.99]["automatic"] == 0 and sweep[0.99]["automatic_accuracy"] is None
    assert [item["correct"] for item in result["items"]] == [True, False, True, False, False]


def test_the_label_and_confidence_fields_come_from_the_tasks_schema():
    assert label_fields(load_task("moderation").schema) == ("verdict", "confidence")
    assert label_fields({"properties": {"n": {"type": "integer"}}}) == (None, None)


@pytest.mark.parametrize(
    ("want", "have", "equal"),
    [
        (1280.0, "1,280.00", True),
        ("¥1,280.00", 1280, True),
        (12.5, 12.51, False),
        ("2024-03-05", "05.03.2024", True),
        ("2024-03-05", "2024年3月5日", True),
        ("2024-03-05", "2024-05-03", False),
        ("ACME  Trading Ltd", "acme trading ltd", True),
        ("ACME", "ACME Corp", False),
        (None, "", True),
        (None, "INV-1", False),
        ([{"d": "a", "n": 1}, {"d": "b", "n": 2}], [{"d": "b", "n": 2.0}, {"d": "A", "n": "1"}], True),
        ([{"d": "a", "n": 1}, {"d": "b", "n": 2}], [{"d": "a", "n": 1}, {"d": "a", "n": 1}], False),
        ([{"d": "a"}], [{"d": "a"}, {"d": "b"}], False),
    ],
)
def test_values_are_compared_after_normalising(want, have, equal):
    assert same(want, have) is equal


def test_extraction_per_field_accuracy_and_invented_values():
    pairs = [
        (
            {"total": 10.0, "date": "2024-01-02", "po": None},
            {"total": "10.00", "date": "02/01/2024", "po": None},
        ),
        (
            {"total": 20.0, "date": "2024-01-03", "po": None},
            {"total": 21.0, "date": "2024-01-03", "po": "PO-7"},
        ),
        ({"total": 30.0, "date": None, "po": "PO-9"}, None),
    ]
    result = score_extraction(pairs)
    s = result["scores"]
    assert s["accuracy"] == pytest.approx(1 / 3) and s["answered"] == 2
    assert s["per_field"] == pytest.approx({"total": 1 / 3, "date": 2 / 3, "po": 1 / 3})
    assert s["invented"] == {"total": 0, "date": 0, "po": 1} and s["invented_total"] == 1
    assert [item["wrong_fields"] for item in result["items"]] == [
        [],
        ["total", "po"],
        ["total", "date", "po"],
    ]


# -- data ---------------------------------------------------------------------------------------


def test_labelled_data_from_csv_and_jsonl_with_one_hash(tmp_path):
    labels = ["allow", "block", "review"]
    a = load_labelled(labelled_folder(tmp_path / "a", labels, "csv"))
    b = load_labelled(labelled_folder(tmp_path / "b", labels, "jsonl"))
    assert a.kind == "classification" and [i.expected for i in a.items] == labels
    assert a.items[0].image == (tmp_path / "a" / "img00.png").resolve()
    assert a.digest == b.digest  # the same rows and image bytes
    (tmp_path / "b" / "img01.png").write_bytes(png_bytes(size=(9, 9)))
    assert load_labelled(tmp_path / "b" / "labels.jsonl").digest != a.digest
    objects = load_labelled(labelled_folder(tmp_path / "c", [{"total": 1.5}], "csv"))
    assert objects.kind == "extraction" and objects.items[0].expected == {"total": 1.5}


def test_bad_rows_are_each_named_and_left_out_while_the_rest_is_scored(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(png_bytes(size=(20 + len(name), 20)))
    path = tmp_path / "labels.csv"
    path.write_text(
        "image,expected\n"
        "a.png,allow\n"  # row 1: good
        "missing.png,allow\n"  # row 2
        "b.png,\n"  # row 3
        'b.png,"{""total"": }"\n'  # row 4
        "a.png,block\n"  # row 5: the same image again
        "b.png,maybe\n"  # row 6: not a label the task gives
        'c.png,"{""a"": 1}"\n'  # row 7: an object among labels
        "c.png,block\n"  # row 8: good
    )
    data = load_labelled(path, labels=["allow", "review", "block"])
    assert [(i.row, i.expected) for i in data.items] == [(1, "allow"), (8, "block")]
    assert [p.split(":")[0].split(" (")[0].split(" has")[0] for p in data.problems] == [
        "row 2", "row 3", "row 4", "row 5", "row 6", "row 7"
    ]  # fmt: skip
    joined = " | ".join(data.problems)
    expected = ("no such image 'missing.png'", "no expected answer", "not valid JSON", "same image as row 1",
                "unknown label 'maybe'", "mixes labels and objects")  # fmt: skip
    assert all(words in joined for words in expected), joined


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("picture,label\na.png,allow\n", "needs the columns image and expected"),
        ("image,expected\n", "has no rows"),
        ("", "needs the columns image and expected"),
        ("image,expected\nmissing.png,allow\n", "no usable row: row 1: no such image"),
    ],
)
def test_a_file_with_nothing_to_score_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(InvalidRequestError, match=message):
        load_labelled(path)


def test_jsonl_rows_that_are_not_json_are_named_too(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    path = tmp_path / "labels.jsonl"
    path.write_text('{"image": "a.png", "expected": "allow"}\n{"image": \n[1, 2]\n')
    data = load_labelled(path)
    assert len(data.items) == 1 and data.problems[0].startswith("row 2 (line 2) is not JSON")
    assert data.problems[1] == "row 3 (line 3) must be an object."


# -- runs ---------------------------------------------------------------------------------------


def test_a_run_scores_the_real_models_answers_and_resumes_without_generating_again(engine, tmp_path):
    data = load_labelled(labelled_folder(tmp_path / "data", ["allow", "block", "review", "allow", "block"]))
    task = load_task("moderation")
    first = run_eval(engine, task, data, tmp_path / "run", concurrency=4)
    records = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(records) == 5 and first["complete"] and first["scores"]["answered"] == 5
    items = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    answers = {json.loads(r)["source"]: json.loads(r)["result"]["verdict"] for r in records}
    assert [i["predicted"] for i in items] == [answers[i["image"]] for i in items]  # the model's own
    right = sum(i["predicted"] == i["expected"] for i in items)
    assert first["scores"]["accuracy"] == pytest.approx(right / 5)
    assert first["throughput"]["images"] == 5 and first["throughput"]["images_per_s"] > 0
    assert first["cost"]["pricing"] == "self-hosted" and first["cost"]["per_1000_images"] > 0
    again = run_eval(engine, task, data, tmp_path / "run")
    assert (tmp_path / "run" / "results.jsonl").read_text().splitlines() == records  # nothing generated
    assert again["scores"] == first["scores"] and again["throughput"]["images"] == 5
    other = load_labelled(labelled_folder(tmp_path / "other", ["allow"]))
    with pytest.raises(InvalidRequestError, match="another data"):
        run_eval(engine, task, other, tmp_path / "run")


def test_an_extraction_run_on_a_task_file(engine, tmp_path):
    schema = {
        "type": "object",
        "properties": {
            "total": {"type": ["number", "null"], "minimum": -1e6, "maximum": 1e6},
            "code": {"type": ["string", "null"], "maxLength": 8},
        },
        "required": ["total", "code"],
        "additionalProperties": False,
    }
    task_file = tmp_path / "receipt.json"
    task_file.write_text(
        json.dumps({"name": "receipt", "prompt": "Read the total and code.", "schema": schema})
    )
    expected = [{"total": 12.5, "code": None}, {"total": 3.0, "code": "A1"}]
    data = load_labelled(labelled_folder(tmp_path / "data", expected, "jsonl"))
    result = run_eval(engine, load_task(str(task_file)), data, tmp_path / "run")
    s = result["scores"]
    assert s["kind"] == "extraction" and s["answered"] == 2 and set(s["per_field"]) == {"total", "code"}
    items = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    for item in items:  # each verdict is what `same` says of the model's real answer
        wrong = [k for k in ("total", "code") if not same(item["expected"][k], item["predicted"][k])]
        assert item["wrong_fields"] == wrong
    invented = sum(
        item["predicted"]["code"] not in (None, "") for item in items if item["expected"]["code"] is None
    )
    assert s["invented"]["code"] == invented


def test_local_and_remote_side_by_side_with_cost_per_correct_answer(engine, tmp_path):
    data = load_labelled(labelled_folder(tmp_path / "data", ["allow", "block", "review", "allow"]))
    task = load_task("moderation")
    run_eval(engine, task, data, tmp_path / "local")
    import glmflash

    with running_server(engine) as (url, _):
        remote = glmflash.load(f"{url}/v1")
        run_eval(remote, task, data, tmp_path / "cloud", cost_inputs={"api_price_per_call": 0.02})
        remote.close()
    runs = [load_run(tmp_path / "local"), load_run(tmp_path / "cloud")]
    result = compare_runs(runs)
    local, cloud = result["table"]
    assert (local["pricing"], cloud["pricing"]) == ("self-hosted", "api")
    assert cloud["cost_per_1000_images"] == pytest.approx(20.0)
    if cloud["accuracy"]:
        assert cloud["cost_per_1000_correct"] == pytest.approx(20.0 / cloud["accuracy"])
    differing = [
        a["row"] for a, b in zip(*(r["items"] for r in runs), strict=True) if a["predicted"] != b["predicted"]
    ]
    assert [d["row"] for d in result["disagreements"]] == differing
    assert "local" in format_table(result["table"]) and "api" in format_table(result["table"])
    report = write_report(runs, tmp_path / "compare.html").read_text()
    assert data.digest in report and "Disagreements" in report and "data:image/png;base64," in report
    assert "<script" not in report  # self-contained: nothing runs, nothing is fetched


def test_disagreements_list_each_image_answered_differently(engine, tmp_path):
    """Two runs over the same data whose answers differ on one image (the second run's results
    file says so, as another model's would): the comparison lists that image with both answers."""
    data = load_labelled(labelled_folder(tmp_path / "data", ["allow", "block", "review"]))
    task = load_task("moderation")
    run_eval(engine, task, data, tmp_path / "a")
    other = tmp_path / "b"
    other.mkdir()
    (other / "run.json").write_text((tmp_path / "a" / "run.json").read_text().replace('"a"', '"b"'))
    records = [json.loads(line) for line in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    changed = next(r for r in records if r["source"] == str(data.items[1].image))
    flipped = "review" if changed["result"]["verdict"] != "review" else "allow"
    changed["result"] = {**changed["result"], "verdict": flipped}
    (other / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    score_run(other, data, task)
    result = compare_runs([load_run(tmp_path / "a"), load_run(other)])
    assert [d["row"] for d in result["disagreements"]] == [2]
    assert result["disagreements"][0]["answers"]["b"] == flipped
    assert result["disagreements"][0]["answers"]["a"] != flipped


def test_runs_over_different_data_are_not_compared(tmp_path, engine):
    task = load_task("moderation")
    run_eval(engine, task, load_labelled(labelled_folder(tmp_path / "d1", ["allow"])), tmp_path / "r1")
    run_eval(engine, task, load_labelled(labelled_folder(tmp_path / "d2", ["block"])), tmp_path / "r2")
    with pytest.raises(InvalidRequestError, match="different data"):
        compare_runs([load_run(tmp_path / "r1"), load_run(tmp_path / "r2")])
    with pytest.raises(InvalidRequestError, match="not a scored run"):
        load_run(tmp_path / "d1")


def test_cost_per_correct_answer_comes_from_the_cost_calculator():
    from glmflash.cost import compare

    api = cost_of("api", None, 0.8, {"api_price_per_call": 0.01})
    assert api["per_1000_images"] == pytest.approx(10.0) and api["per_1000_correct"] == pytest.approx(12.5)
    hosted = cost_of("self-hosted", 3.0, 0.5, {})
    expected = compare(images_per_second_per_gpu=3.0).self_hosted["per_1000_images"]
    assert hosted["per_1000_images"] == pytest.approx(expected)
    assert hosted["per_1000_correct"] == pytest.approx(2 * expected)
    assert cost_of("api", None, 0.0, {})["per_1000_correct"] is None


# -- the command ----------------------------------------------------------------------------------


def test_the_eval_command_killed_and_resumed_then_compared(tmp_path, cache_dir):
    data = labelled_folder(tmp_path / "data", ["allow", "block", "review"] * 8)
    out = tmp_path / "run"
    env = {"GLMFLASH_CACHE_DIR": str(cache_dir)}
    args = ["eval", str(data), "--task", "moderation", "--out", str(out), "--model", "tiny", "--no-progress"]
    quiet = {"stderr": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    first = subprocess.Popen(
        [sys.executable, "-m", "glmflash", *args], cwd=ROOT, env={**os.environ, **env}, **quiet
    )
    results = out / "results.jsonl"
    try:
        wait_until(lambda: (results.exists() and len(results.read_text().splitlines()) >= 4)
                   or first.poll() is not None, 240)  # fmt: skip
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = run_cli(*args, env_extra=env)
    assert second.returncode == 0, second.stderr
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert len(ids) == 24 == len(set(ids))
    scores = json.loads((out / "scores.json").read_text())
    assert scores["complete"] and scores["scores"]["n"] == 24 and scores["scores"]["answered"] == 24
    assert "complete; report:" in second.stderr and (out / "report.html").exists()
    assert "accuracy" in second.stdout and "self-hosted" in second.stdout
    bad = run_cli("eval", str(data), "--task", "moderation", "--out", str(out), "--model", "tiny",
                  "--cost", "colour=3", env_extra=env)  # fmt: skip
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli(
        "eval", str(tmp_path / "nope.csv"), "--task", "moderation", "--out", str(out), env_extra=env
    )
    assert missing.returncode == 2 and "No such data file" in missing.stderr
    one = run_cli("eval", "--compare", str(out), env_extra=env)
    assert one.returncode == 2 and "two or more" in one.stderr


# -- detection ------------------------------------------------------------------------------------


def test_iou_and_detection_scores_match_boxes_one_to_one():
    from glmflash.evaluate.score import iou, score_detection

    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    expected = {
        "objects": [
            {"label": "Cat", "bbox_2d": [0, 0, 100, 100]},
            {"label": "dog", "bbox_2d": [500, 500, 700, 700]},
        ]
    }
    answer = {"objects": [
        {"label": "cat ", "bbox_2d": [100, 100, 10, 0]},  # corners swapped, IoU 0.9 with the cat
        {"label": "bird", "bbox_2d": [500, 500, 700, 700]},  # the dog's box, the wrong label
        {"label": "cat", "bbox_2d": [0, 0, 100, 100]},  # a second cat for one expected: extra
    ]}  # fmt: skip
    result = score_detection([(expected, answer), (expected, None)])
    s = result["scores"]
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (1, 2, 3)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 4)
    assert s["mean_iou"] == pytest.approx(1.0)  # the exact cat wins the assignment over the 0.9 one
    assert result["items"][0]["wrong_fields"] == ["missed: dog", "extra: cat", "extra: bird"]
    assert [i["correct"] for i in result["items"]] == [False, False]
    perfect = score_detection([(expected, expected)])["scores"]
    assert perfect["accuracy"] == 1.0 and perfect["f1"] == 1.0


def test_the_detect_preset_looks_for_what_it_is_told():
    assert "Find every price tag in the image" in load_task("detect", find="  price   tag ").prompt
    assert "Find every distinct object" in load_task("detect").prompt
    with pytest.raises(InvalidRequestError, match="What to find"):
        load_task("detect", find=" ")


def test_a_detection_run_scores_the_models_boxes(engine, tmp_path):
    from dataclasses import replace

    task = load_task("detect")
    objects = json.loads(json.dumps(task.schema["properties"]["objects"]))
    objects["maxItems"], objects["items"]["properties"]["label"]["maxLength"] = 2, 8  # seconds on a CPU
    task = replace(task, schema={**task.schema, "properties": {"objects": objects}})
    expected = [{"objects": [{"label": "shape", "bbox_2d": [100, 100, 600, 600]}]}, {"objects": []}]
    data = load_labelled(labelled_folder(tmp_path / "data", expected, "jsonl"))
    result = run_eval(engine, task, data, tmp_path / "run")
    s = result["scores"]
    assert s["kind"] == "detection" and s["answered"] == 2
    items = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    predicted = sum(len(i["predicted"]["objects"]) for i in items)
    assert s["true_positives"] + s["false_negatives"] == 1
    assert s["true_positives"] + s["false_positives"] == predicted
    assert (
        "Boxes matched by IoU" in write_report([load_run(tmp_path / "run")], tmp_path / "r.html").read_text()
    )
