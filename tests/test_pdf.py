"""PDFs in: pages rendered (pypdfium2) wherever an image is accepted, the cost shown before, the
OpenAI `file` part through the API, batch jobs over a folder of PDFs and images, and every bad
PDF (encrypted, truncated, malformed, empty, 10,000 pages, too many pages for a request) refused
with a clear message within a second or two. The PDFs are made here."""

from __future__ import annotations

import base64
import io
import json
import time

import openai
import pytest
from PIL import Image, ImageDraw

from glmflash.errors import ImageError
from glmflash.inputs.images import ImagePolicy, load_image, load_images, original_size
from glmflash.inputs.pdf import PdfLimits, page_count, plan
from glmflash.jobs.runner import run_job
from tests.conftest import png_bytes
from tests.server_helpers import engine_with, running_server


def pillow_pdf(sizes=((612, 792), (792, 612), (595, 842))) -> bytes:
    """Pages of the given sizes in points, with text (some of it small) on each."""
    pages = []
    for i, size in enumerate(sizes):
        page = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(page)
        draw.text((40, 40), f"Page {i + 1}: TOTAL 1,280.00 CNY", fill="black")
        draw.text((40, 80), "small print: net 30 days", fill="black", font_size=6)
        pages.append(page)
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return out.getvalue()


def raw_pdf(pages: int, *, encrypted: bool = False) -> bytes:
    """A minimal PDF written by hand: `pages` empty Letter pages; `encrypted` adds a standard
    security handler whose user password is not empty (so it cannot be opened without it)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>")
    objects += ["<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"] * pages
    if encrypted:
        objects.append(f"<< /Filter /Standard /V 1 /R 2 /O <{'11' * 32}> /U <{'22' * 32}> /P -44 >>")
    body, offsets = b"%PDF-1.4\n", []
    for number, text in enumerate(objects, 1):
        offsets.append(len(body))
        body += f"{number} 0 obj\n{text}\nendobj\n".encode()
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    extra = f" /Encrypt {len(objects)} 0 R /ID [<{'ab' * 16}> <{'ab' * 16}>]" if encrypted else ""
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{extra} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return body


def heavy_pdf(shapes: int) -> bytes:
    """One Letter page drawn from `shapes` filled triangles: slow to render (20,000 take seconds)."""
    ops = "".join(
        f"{i % 600} {i % 790} m {i * 7 % 600} {i * 13 % 790} l {i * 3 % 600} {i * 5 % 790} l f\n"
        for i in range(shapes)
    ).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               b"<< /Length %d >>\nstream\n" % len(ops) + ops + b"endstream"]  # fmt: skip
    body, offsets = b"%PDF-1.4\n", []
    for number, text in enumerate(objects, 1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % number + text + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return body + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def question(source, text="What is the total?"):
    return [{"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": text}]}]


def test_a_pdf_becomes_its_pages_wherever_an_image_is_accepted(engine, tmp_path):
    pdf = pillow_pdf()
    pages = load_images(pdf, ImagePolicy())
    assert len(pages) == 3 and pages[1].width > pages[1].height  # the landscape page stays landscape
    assert all(p.width * p.height <= ImagePolicy().max_image_pixels for p in pages)
    assert (
        original_size(pages[0]) == (round(612 * 900 / 612), round(792 * 900 / 612)) or pages[0].width >= 890
    )
    path = tmp_path / "invoice.pdf"
    path.write_bytes(pdf)
    data_url = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    counts = []
    for source in (pdf, str(path), data_url):
        reply = engine.chat(question(source), max_new_tokens=2)
        counts.append(reply.usage.image_tokens)
    assert counts[0] == counts[1] == counts[2] > 3 * 1000  # three pages of ~1,340 visual tokens
    with pytest.raises(ImageError, match="This is a PDF, and one image is expected"):
        load_image(pdf, ImagePolicy())


def test_the_cost_of_a_document_is_known_before_rendering():
    costs = plan(pillow_pdf(), PdfLimits())
    assert [c["page"] for c in costs] == [1, 2, 3]
    assert all(1200 < c["visual_tokens"] < 1400 for c in costs)  # each page at the pixel budget
    small = plan(pillow_pdf(((100, 100),)), PdfLimits())[0]  # a small page is not blown up past 200 dpi
    assert (small["width"], small["height"]) == (278, 278)


def test_pages_can_be_chosen_and_the_page_limit_is_per_document(engine):
    from glmflash.inputs.pdf import render_pdf

    assert len(render_pdf(pillow_pdf(), PdfLimits(), pages=[3])) == 1
    with pytest.raises(ImageError, match="there is no page 4"):
        render_pdf(pillow_pdf(), PdfLimits(), pages=[4])
    strict = engine_with(engine, max_pdf_pages=2)
    with pytest.raises(ImageError, match="3 pages; at most 2 are read per document"):
        strict.chat(question(pillow_pdf()), max_new_tokens=2)
    few = engine_with(engine, max_images=2)
    with pytest.raises(ImageError, match=r"3 pages; .* over 2 images"):
        few.chat(question(pillow_pdf()), max_new_tokens=2)


def test_the_time_limit_holds_while_one_page_is_being_drawn():
    from glmflash.inputs.pdf import render_pdf

    heavy = heavy_pdf(20_000)  # one page that takes seconds to draw at the pixel budget
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"took over 0.3 s \(page 1 of 1\)") as caught:
        render_pdf(heavy, PdfLimits(timeout_s=0.3))
    elapsed = time.monotonic() - started
    assert caught.value.code == "pdf_timeout" and elapsed < 1.5, elapsed
    light = heavy_pdf(200)  # drawn whole in time, the same pixels as PDFium's own one-call render
    (image,) = render_pdf(light, PdfLimits())
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(light)
    page = document[0]
    scale = (PdfLimits().max_image_pixels / (612 * 792)) ** 0.5
    reference = page.render(scale=scale).to_pil().convert("RGB")
    page.close()
    document.close()
    assert image.size == reference.size and image.tobytes() == reference.tobytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: raw_pdf(1, encrypted=True), "password-protected"),
        (lambda: pillow_pdf()[:300], "cannot be read"),
        (lambda: b"%PDF-1.7\nthis is not a PDF at all\n%%EOF", "cannot be read"),
        (lambda: raw_pdf(0), "no pages|cannot be read"),  # PDFium refuses an empty page tree itself
        (lambda: raw_pdf(10_000), "10,000 pages; at most 16"),
    ],
    ids=["encrypted", "truncated", "malformed", "zero-pages", "10000-pages"],
)
def test_bad_pdfs_get_a_clear_error_at_once(engine, make, message):
    data = make()
    started = time.monotonic()
    with pytest.raises(ImageError, match=message):
        engine.chat(question(data), max_new_tokens=2)
    assert time.monotonic() - started < 2.0
    assert page_count(raw_pdf(10_000)) == 10_000  # counting alone is cheap too


def test_the_openai_file_part_through_the_api_and_bad_pdfs_are_400(engine):
    pdf = pillow_pdf()
    data_url = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    with running_server(engine) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        content = [{"type": "file", "file": {"file_data": data_url, "filename": "invoice.pdf"}},
                   {"type": "text", "text": "What is the total?"}]  # fmt: skip
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                               max_tokens=2)  # fmt: skip
        assert reply.usage.prompt_tokens > 3 * 1000
        as_image = [{"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "Total?"}]
        again = client.chat.completions.create(model="m", messages=[{"role": "user", "content": as_image}],
                                               max_tokens=2)  # fmt: skip
        images = reply.usage.prompt_tokens_details.image_tokens
        assert again.usage.prompt_tokens_details.image_tokens == images > 3 * 1000
        locked = "data:application/pdf;base64," + base64.b64encode(raw_pdf(1, encrypted=True)).decode()
        bad = [{"type": "file", "file": {"file_data": locked, "filename": "locked.pdf"}}]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": bad}], max_tokens=2
            )
        assert "password-protected" in info.value.body["message"]
        no_data = [{"type": "file", "file": {"file_id": "file-123"}}]
        with pytest.raises(openai.BadRequestError, match="file_id is not supported"):
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": no_data}], max_tokens=2
            )
        ok = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], max_tokens=2
        )
        assert ok.usage.prompt_tokens == reply.usage.prompt_tokens  # still serving


def yes_no_task(tmp_path):
    from glmflash.jobs.tasks import custom_task

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(schema))
    return custom_task("Is it readable?", str(schema_file))


def test_a_batch_job_over_a_folder_of_pdfs_and_images(engine, tmp_path):
    from glmflash.jobs.runner import expand_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "one.pdf").write_bytes(pillow_pdf(((612, 792),)))
    (folder / "two.pdf").write_bytes(pillow_pdf(((612, 792), (792, 612))))
    (folder / "photo.png").write_bytes(png_bytes())
    (folder / "locked.pdf").write_bytes(raw_pdf(1, encrypted=True))
    task = yes_no_task(tmp_path)
    out = tmp_path / "out.jsonl"
    summary = run_job(engine, task, expand_inputs([str(folder)]), out)
    assert (summary.done, summary.failed) == (3, 1)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"].rsplit("/", 1)[1] for r in records) == ["one.pdf", "photo.png", "two.pdf"]
    two = next(r for r in records if r["source"].endswith("two.pdf"))
    one = next(r for r in records if r["source"].endswith("one.pdf"))
    assert two["usage"]["image_tokens"] > 1.9 * one["usage"]["image_tokens"]  # both pages were read
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert errors[0]["source"].endswith("locked.pdf") and "password-protected" in errors[0]["error"]
    again = run_job(engine, task, expand_inputs([str(folder)]), out)
    assert (again.done, again.skipped) == (0, 4) and len(out.read_text().splitlines()) == 3


def test_per_page_batch_records_carry_their_page_number(engine, tmp_path):
    from glmflash.jobs.runner import expand_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "one.pdf").write_bytes(pillow_pdf(((612, 792),)))
    (folder / "two.pdf").write_bytes(pillow_pdf(((612, 792), (792, 612))))
    (folder / "huge.pdf").write_bytes(raw_pdf(10_000))
    task = yes_no_task(tmp_path)  # a one-word answer: the random model cannot fail it
    out = tmp_path / "pages.jsonl"
    summary = run_job(engine, task, expand_inputs([str(folder)]), out, per_page=True, concurrency=2)
    assert (summary.total, summary.done, summary.failed) == (4, 3, 1)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    pages = sorted((r["source"].rsplit("/", 1)[1], r["page"]) for r in records)
    assert pages == [("one.pdf", 1), ("two.pdf", 1), ("two.pdf", 2)] and len({r["id"] for r in records}) == 3
    assert all(r["usage"]["image_tokens"] < 1500 for r in records)  # one page each
    errors = (tmp_path / "pages.errors.jsonl").read_text()
    assert "huge.pdf" in errors and "10,000 pages" in errors
    again = run_job(engine, task, expand_inputs([str(folder)]), out, per_page=True)
    assert again.done == 0 and len(out.read_text().splitlines()) == 3


def test_a_killed_per_page_job_over_pdfs_and_images_resumes_with_nothing_lost(tmp_path, cache_dir):
    """SIGKILL mid-run over a folder of multi-page PDFs and images, then the same command again:
    each page and each image exactly once."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.server_helpers import wait_until

    folder, out = tmp_path / "in", tmp_path / "pages.jsonl"
    folder.mkdir()
    for i in range(10):
        (folder / f"doc{i:02d}.pdf").write_bytes(pillow_pdf(((300 + i, 400), (400, 300))))  # distinct files
        (folder / f"img{i:02d}.png").write_bytes(png_bytes(size=(40 + i, 40)))
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                  "required": ["ok"], "additionalProperties": False}))  # fmt: skip
    args = [sys.executable, "-m", "glmflash", "batch", "--model", "tiny", "--no-progress", str(folder),
            "--prompt", "Is it readable?", "--schema", str(schema), "--per-page",
            "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMFLASH_")}
    env.update(GLMFLASH_CACHE_DIR=cache_dir, GLMFLASH_MAX_IMAGE_PIXELS="200000")

    def records() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    first = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(records()) >= 8 or first.poll() is not None, 240)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = len(records())
    assert 8 <= before < 30
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    got = sorted((r["source"].rsplit("/", 1)[1], r.get("page")) for r in records())
    want = sorted(
        [(f"doc{i:02d}.pdf", p) for i in range(10) for p in (1, 2)]
        + [(f"img{i:02d}.png", None) for i in range(10)]
    )
    errors = out.with_name("pages.errors.jsonl")
    assert got == want, errors.read_text() if errors.exists() else second.stderr
    assert len({r["id"] for r in records()}) == 30
