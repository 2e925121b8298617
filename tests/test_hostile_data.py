"""Hostile data files, each replayed from the security review (issue 26): labels and list files
that name files outside their folder, a 1M-row CSV, rows that are too long, hold NUL bytes, are
not UTF-8 or nest too deeply, images over the byte limit, a decompression bomb in a report's
thumbnail, run folders whose numbers are HTML, spreadsheet formulas in answers, and zips with
degenerate entries. Each is refused per row (or entry) with a clear message, and the rest goes on.
"""

from __future__ import annotations

import csv
import json
import re
import stat
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from glmflash.errors import ImageError, InvalidRequestError
from glmflash.evaluate.compare import compare_runs, format_table, load_run
from glmflash.evaluate.data import load_labelled
from glmflash.evaluate.report import thumbnail, write_report
from glmflash.evaluate.run import run_eval
from glmflash.inputs.images import ImagePolicy
from glmflash.jobs.export import export_csv
from glmflash.jobs.inputs import expand_inputs
from glmflash.jobs.runner import JsonlFile
from glmflash.jobs.tasks import load_task
from tests.conftest import ROOT, png_bytes, run_cli

OUTSIDE = re.compile(r"^row \d+: the image '.*' is not inside the labels file's folder; (.*)$")


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "expected"])
        writer.writerows(rows)
    return path


@pytest.fixture
def places(tmp_path):
    """A data folder with one image, and outside it a real secret image and a folder of them."""
    data, secrets = tmp_path / "data", tmp_path / "secrets"
    data.mkdir()
    secrets.mkdir()
    (data / "a.png").write_bytes(png_bytes(size=(20, 20)))
    (secrets / "secret.png").write_bytes(png_bytes(size=(30, 30), color=(1, 2, 3)))
    (data / "link.png").symlink_to(secrets / "secret.png")
    (data / "linked").symlink_to(secrets)
    return data, secrets


# -- where images may be ----------------------------------------------------------------------


def test_labels_naming_files_outside_their_folder_get_one_message_whether_or_not_they_exist(places):
    data, secrets = places
    rows = [
        ["a.png", "allow"],  # row 1: good
        [str(secrets / "secret.png"), "allow"],  # 2: absolute, exists
        [str(secrets / "nothing.png"), "allow"],  # 3: absolute, missing
        ["../secrets/secret.png", "allow"],  # 4: .., exists
        ["../secrets/nothing.png", "allow"],  # 5: .., missing
        ["link.png", "allow"],  # 6: a link out of the folder, to a file that exists
        ["linked/secret.png", "allow"],  # 7: through a linked folder, exists
        ["linked/nothing.png", "allow"],  # 8: through a linked folder, missing
        ["/etc/hostname", "allow"],  # 9
        ["missing.png", "allow"],  # 10: inside, missing: may say so
        [str(data / "a.png").replace("a.png", "./sub/../a.png"), "block"],  # 11: absolute, inside: the same
    ]
    labelled = load_labelled(write_csv(data / "labels.csv", rows), labels=["allow", "block"])
    assert [item.row for item in labelled.items] == [1]
    outside = labelled.problems[:8]
    assert [p.split(":")[0] for p in outside] == [f"row {n}" for n in range(2, 10)]
    reasons = {OUTSIDE.match(p).group(1) for p in outside}  # type: ignore[union-attr]
    assert len(reasons) == 1, outside  # one text: nothing tells an existing file from a missing one
    assert not any("no such" in p or "exist" in p or str(secrets) in p.split("'")[-1] for p in outside)
    assert "no such image 'missing.png'" in labelled.problems[8]
    assert "same image as row 1" in labelled.problems[9]  # row 11 named a.png by its absolute path


def test_the_eval_command_reads_images_only_inside_the_labels_folder(places, cache_dir):
    data, _ = places
    labels = write_csv(data / "labels.csv", [["a.png", "allow"], ["../secrets/secret.png", "block"]])
    out = data.parent / "run"
    result = run_cli("eval", str(labels), "--task", "moderation", "--out", str(out), "--model", "tiny",
                     "--no-progress", env_extra={"GLMFLASH_CACHE_DIR": str(cache_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "left out: row 2: the image '../secrets/secret.png' is not inside" in result.stderr
    sources = [json.loads(line)["source"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sources == [str((data / "a.png").resolve())]  # the secret was never sent to the model
    assert "Traceback" not in result.stderr


def test_a_list_file_names_files_inside_its_own_folder_only(places):
    data, secrets = places
    (data / "sub").mkdir()
    (data / "sub" / "b.png").write_bytes(png_bytes())
    listing = data / "list.txt"
    listing.write_bytes(
        b"# chosen\na.png\n"
        + str(data / "sub" / "b.png").encode()
        + b"\n../secrets/secret.png\n../secrets/nothing.png\nlink.png\nlinked/nothing.png\n"
        + str(secrets / "secret.png").encode()
        + b"\n\xff\xfe.png\nmissing.png\n"
        + b"x" * 5000
        + b"\n"
    )
    left_out: list[str] = []
    paths = expand_inputs([], str(listing), left_out)
    assert paths == sorted([(data / "a.png").resolve(), (data / "sub" / "b.png").resolve(),
                            (data / "missing.png").resolve()])  # fmt: skip
    lines = [m.split(":")[0].split(" is ")[0] for m in left_out]
    assert lines == [f"list.txt line {n}" for n in (4, 5, 6, 7, 8, 9, 11)]
    reasons = {m.split("' ", 1)[1] for m in left_out[:5]}
    assert len(reasons) == 1 and "is not inside the list file's folder" in reasons.pop()
    assert "not UTF-8" in left_out[5] and "longer than 4,096 bytes" in left_out[6]


# -- limits while reading -------------------------------------------------------------------------


def test_a_million_row_csv_is_refused_at_the_row_cap_in_bounded_memory(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("image,expected\n" + "a,b\n" * 1_000_000)  # 4 MB, as in the review
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequestError, match="more than 100,000 rows"):
            load_labelled(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64e6, f"peak {peak / 1e6:.0f} MB while refusing"  # +273 MB when it read everything


def test_each_hostile_csv_row_is_refused_on_its_own_and_the_rest_is_read(tmp_path):
    for name in ("a.png", "z.png"):
        (tmp_path / name).write_bytes(png_bytes(size=(10 + len(name), 10)))
    deep = '{"a": ' * 40 + "1" + "}" * 40
    lines = [
        b"image,expected",
        b"a.png,allow",  # row 1: good
        b"b.png," + b"x" * (140 * 1024),  # 2: a field over 128 KiB
        b"c.png," + b"y" * (300 * 1024),  # 3: a line over 256 KiB
        b"d\x00.png,allow",  # 4: a NUL byte
        b"caf\xe9.png,allow",  # 5: Latin-1, not UTF-8
        b"e" * 5000 + b".png,allow",  # 6: a very long name
        b"f" * 300 + b".png,allow",  # 7: a name no file system takes
        b'g.png,"' + deep.replace('"', '""').encode() + b'"',  # 8: an object nested 40 deep
        b"z.png,block",  # 9: good
    ]
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = load_labelled(path)
    assert [(item.row, item.expected) for item in data.items] == [(1, "allow"), (9, "block")]
    expected = [
        "row 2 (line 3) has a field over 128 KiB.",
        "row 3 (line 4) is longer than 256 KiB; it was not read.",
        "row 4 (line 5) holds a NUL byte.",
        "row 5 (line 6) is not UTF-8 text: save the file as UTF-8.",
        "row 6: the image's path is 5,004 characters long; at most 1,024.",
        "row 7: cannot read the image",
        "row 8: expected is nested too deeply (at most 32 levels).",
    ]
    assert len(data.problems) == len(expected)
    for problem, start in zip(data.problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)


def test_each_hostile_jsonl_row_is_refused_on_its_own_and_the_rest_is_read(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes(size=(9, 9)))
    good = json.dumps({"image": "a.png", "expected": "allow"}).encode()
    lines = [
        good,  # row 1
        b"[" * 100_000 + b"]" * 100_000,  # 2: nested past the parser's own recursion limit
        json.dumps({"image": "b.png", "expected": json.loads('{"a": ' * 40 + "1" + "}" * 40)}).encode(),
        json.dumps({"image": "b\u0000.png", "expected": "allow"}).encode(),  # 4: NUL (escaped)
        b'{"image": "b.png", "expected": "caf\xe9"}',  # 5: not UTF-8
        json.dumps({"image": "b.png", "expected": "x" * 300_000}).encode(),  # 6: a line over 256 KiB
        json.dumps({"image": "b.png", "expected": "block"}).encode(),  # 7: good
    ]
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = load_labelled(path)
    assert [item.row for item in data.items] == [1, 7]
    assert data.problems == [
        "row 2 (line 2) is nested too deeply (at most 32 levels).",
        "row 3 (line 3) is nested too deeply (at most 32 levels).",
        "row 4 (line 4) holds a NUL byte.",
        "row 5 (line 5) is not UTF-8 text: save the file as UTF-8.",
        "row 6 (line 6) is longer than 256 KiB; it was not read.",
    ]


def test_image_hashing_stops_at_the_byte_limit(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    with (tmp_path / "huge.png").open("wb") as f:
        f.truncate(300_000_000)  # sparse: 300 MB to read, nothing on disk
    (tmp_path / "mid.png").write_bytes(png_bytes(size=(200, 200), noise=True, seed=1))
    path = write_csv(
        tmp_path / "labels.csv", [["a.png", "allow"], ["huge.png", "allow"], ["mid.png", "block"]]
    )
    tracemalloc.start()
    try:
        data = load_labelled(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [item.row for item in data.items] == [1, 3]
    assert data.problems == [
        "row 2: the image 'huge.png' is over the 20,000,000-byte limit (GLMFLASH_MAX_IMAGE_BYTES)."
    ]
    assert peak < 8e6, f"peak {peak / 1e6:.0f} MB"  # +286 MB when the whole file was read to hash it
    strict = load_labelled(path, max_image_bytes=1_000)  # the engine's own limit, when it is lower
    assert [item.row for item in strict.items] == [
        1
    ] and "row 3: the image 'mid.png' is over" in strict.problems[1]


# -- the report -------------------------------------------------------------------------------------


def bomb_png(width: int = 9000, height: int = 9000) -> bytes:
    """A real grayscale PNG of width x height black pixels: 81 MB of pixels in ~80 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_a_thumbnail_is_decoded_only_through_the_image_guard(tmp_path):
    png = tmp_path / "bomb.png"
    png.write_bytes(bomb_png())
    assert png.stat().st_size < 120_000
    script = f"""
import resource, time
from pathlib import Path
from glmflash.errors import ImageError
from glmflash.evaluate.report import thumbnail
from glmflash.inputs.images import ImagePolicy
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    thumbnail({str(png)!r}, Path({str(tmp_path)!r}), ImagePolicy())
    print("decoded")
except ImageError as exc:
    print("refused:", exc)
print(time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    verdict, figures = result.stdout.strip().splitlines()
    seconds, grown_kb = figures.split()
    assert verdict.startswith("refused: The image declares 9000x9000 pixels"), result.stdout + result.stderr
    assert float(seconds) < 0.5 and int(grown_kb) < 20_000, figures  # decoding took 3.8 s and +386 MB
    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bytes(size=(400, 200)))
    assert thumbnail(str(ok), tmp_path, ImagePolicy()).startswith(b"\xff\xd8")  # a JPEG
    with pytest.raises(ImageError, match="not inside the folder"):
        thumbnail(str(ok), tmp_path / "elsewhere", ImagePolicy())


@pytest.fixture
def two_runs(engine, tmp_path):
    """A real run over two images, and a copy of it whose numbers and names are HTML."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(png_bytes(size=(30, 20)))
    (data / "b.png").write_bytes(png_bytes(size=(20, 30), color=(9, 9, 200)))
    labelled = load_labelled(write_csv(data / "labels.csv", [["a.png", "allow"], ["b.png", "block"]]))
    run_eval(engine, load_task("moderation"), labelled, tmp_path / "good")
    script = "<script>alert(1)</script>"
    scores = json.loads((tmp_path / "good" / "scores.json").read_text())
    scores["name"] = script
    s = scores["scores"]
    s.update(accuracy=script, n=script, answered=script, thresholds=[{"threshold": script}])
    s["per_class"] = {script: {"precision": script}}
    s["confusion"] = [[script]]
    scores["throughput"]["images_per_s"] = script
    scores["cost"].update(per_1000_images=script, per_1000_correct=script, currency=script)
    scores["problems"] = [script]
    bad = tmp_path / "crafted"
    bad.mkdir()
    (bad / "scores.json").write_text(json.dumps(scores))
    items = [json.loads(line) for line in (tmp_path / "good" / "items.jsonl").read_text().splitlines()]
    for item in items:
        item.update(row=script, correct=False, predicted=script, expected=script, confidence=script,
                    wrong_fields=[script])  # fmt: skip
    (bad / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return tmp_path / "good", bad


def test_a_crafted_run_folder_puts_no_raw_tag_into_the_report(two_runs, tmp_path, cache_dir):
    good, bad = two_runs
    runs = [load_run(bad), load_run(good)]
    assert "<script>" in format_table(compare_runs(runs)["table"])  # a terminal shows text as it is
    report = write_report(runs, tmp_path / "compare.html").read_text()
    assert "<script" not in report.lower()
    assert report.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 10  # shown, escaped
    assert "(no plot: the run's figures are not numbers)" in report
    env = {"GLMFLASH_CACHE_DIR": str(cache_dir)}
    cli = run_cli(
        "eval", "--compare", str(bad), str(good), "--report", str(tmp_path / "cli.html"), env_extra=env
    )
    assert cli.returncode == 0, cli.stderr
    assert "<script" not in (tmp_path / "cli.html").read_text().lower()
    (bad / "scores.json").write_text(json.dumps({**json.loads((bad / "scores.json").read_text()), "cost": 3}))
    broken = run_cli("eval", "--compare", str(bad), str(good), env_extra=env)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "is not a scored run this version can read: scores.json: cost is not an object" in broken.stderr


# -- exports and uploads ------------------------------------------------------------------------------


def test_csv_cells_that_would_start_a_formula_get_a_leading_quote(tmp_path):
    results = tmp_path / "r.jsonl"
    store = JsonlFile(results)
    answer = {"verdict": '=HYPERLINK("http://x","y")', "plus": "+1", "minus": "-2+3", "at": "@SUM(A1)",
              "tab": "\tx", "cr": "\rx", "plain": "ok", "total": -12.5, "count": 3,
              "=key": "safe"}  # fmt: skip
    store.append({"id": "1", "source": "-a.png", "result": answer})
    store.close()
    assert export_csv(results, tmp_path / "r.csv") == 1
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as f:
        header, row = list(csv.reader(f))
    cells = dict(zip(header, row, strict=True))
    assert cells["verdict"] == '\'=HYPERLINK("http://x","y")' and cells["plus"] == "'+1"
    assert (cells["minus"], cells["at"], cells["tab"], cells["cr"]) == ("'-2+3", "'@SUM(A1)", "'\tx", "'\rx")
    assert (cells["plain"], cells["total"], cells["count"]) == ("ok", "-12.5", "3")  # numbers stay numbers
    assert cells["source"] == "'-a.png" and cells["'=key"] == "safe"  # names and paths are text too


def zip_of(path: Path, entries: list[tuple[str, bytes] | zipfile.ZipInfo]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                archive.writestr(entry, "/etc/passwd")
            else:
                archive.writestr(*entry)
    return path


def test_zip_entries_that_cannot_be_unpacked_are_each_left_out_with_a_message(tmp_path):
    from glmflash.ui.eval_tab import _gather

    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    labels = b"image,expected\na.png,allow\nsub/b.png,block\nlink.png,allow\n"
    archive = zip_of(tmp_path / "up.zip", [
        ("labels.csv", labels), ("a.png", png_bytes()), (".", b"dot"), ("./", b""), ("../evil.png", b"x"),
        ("/abs.png", b"x"), link, ("a.png", b"again"), ("dir/../..", b"x"), ("n" * 300, b"x"),
        ("sub/b.png", png_bytes(size=(9, 9))),
    ])  # fmt: skip
    folder = tmp_path / "work" / "data"
    with pytest.warns(UserWarning) as warned:
        found = _gather([str(archive)], folder)
    assert found == folder / "labels.csv"
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert written == ["a.png", "labels.csv", "sub/b.png"]
    assert (folder / "a.png").read_bytes() == png_bytes()  # the first a.png is kept
    assert not (tmp_path / "work" / "evil.png").exists() and not any(
        p.is_symlink() for p in folder.rglob("*")
    )
    notice = str(warned[0].message)
    for words in ("'.' is not a file name inside", "'../evil.png' is not a file name inside",
                  "'/abs.png' is not a file name inside", "'link.png' is a symbolic link",
                  "'a.png' appears twice", "'dir/../..' is not a file name inside",
                  "cannot be written"):  # fmt: skip
        assert words in notice, (words, notice)
    data = load_labelled(found)  # what was left out is a row problem there, named
    assert [item.row for item in data.items] == [1, 2] and "no such image 'link.png'" in data.problems[0]


def test_one_upload_budget_covers_all_its_zips(tmp_path, monkeypatch):
    from glmflash.ui import eval_tab

    monkeypatch.setattr(eval_tab, "MAX_ZIP_ENTRIES", 5)
    zips = [str(zip_of(tmp_path / f"z{i}.zip", [(f"{i}-{j}.png", b"x") for j in range(2)])) for i in range(3)]
    with pytest.raises(InvalidRequestError, match=r"The upload is too big at z2\.zip: at most 5 files"):
        eval_tab._gather(zips, tmp_path / "work")  # each zip is under the cap; together they are not
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidRequestError, match=r"bad\.zip is not a readable zip file"):
        eval_tab._gather([*zips[:1], str(tmp_path / "bad.zip")], tmp_path / "w2")
