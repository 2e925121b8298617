"""The web page in real headless Chromium (Debian's chromium via Playwright) against a real server."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from PIL import Image

from tests.server_helpers import free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")


@contextlib.contextmanager
def serving(engine, **settings):
    """The page and API for `engine` on a free loopback port."""
    import threading
    import time

    import uvicorn

    from glmflash.config import Settings
    from glmflash.server.run import build_app

    app = build_app(engine, Settings.build(**settings))
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def site(engine):
    with serving(engine, max_new_tokens=64) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    page = browser.new_page(viewport={"width": 1200, "height": 1300})
    page.goto(site)
    page.wait_for_selector("#ask textarea", timeout=60_000)  # a Gradio page never reaches networkidle
    yield page
    page.close()


def ask(page, question, files=()):
    if files:
        page.locator("#ask input[type=file]").set_input_files(list(files))
        page.wait_for_timeout(300)
    page.locator("#ask textarea").fill(question)
    page.locator("#ask textarea").press("Enter")


def set_box(page, box: str, value: str) -> None:
    """Type `value` into an option's box and commit it (Tab). A box the Advanced accordion has just
    rendered may still be mounting, which resets what was typed: type again until it holds."""
    field = page.locator(f"{box} :is(input, textarea)")
    for _ in range(20):
        field.fill(value)
        field.press("Tab")
        page.wait_for_timeout(150)
        if field.input_value() == value:
            return
    raise AssertionError(f"{box} would not keep {value!r}")


def wait_for_figures(page, timeout=60_000):
    page.wait_for_function(
        "() => (document.querySelector('#figures')?.innerText || '').includes('tokens/s')", timeout=timeout
    )
    return page.locator("#figures").inner_text()


def api_call_text(page) -> str:
    page.locator("#api-accordion").click()
    page.wait_for_function(
        "() => (document.querySelector('#api-call')?.textContent || '').includes('chat/completions')",
        timeout=10_000,
    )
    return page.locator("#api-call").text_content()


def test_upload_ask_and_watch_the_answer(page, tmp_path):
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (320, 200), (40, 120, 200)).save(image)
    ask(page, "What colour is this?", [image])
    figures = wait_for_figures(page)
    assert "First token" in figures and "images" in figures
    assert page.locator("#chat img").count() >= 1  # the uploaded image is shown in the chat
    assert page.locator("#chat .bot, #chat [data-testid=bot]").count() >= 1
    assert "demo" in page.locator("#demo-banner").inner_text().lower()
    assert "/v1/chat/completions" in api_call_text(page)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


def test_thinking_switch_reaches_the_request(page):
    page.locator("#thinking input").uncheck()
    ask(page, "Answer right away.")
    wait_for_figures(page)
    assert '"enable_thinking": false' in api_call_text(page)


def test_stop_frees_the_engine_within_a_second(page, engine):
    page.locator("#advanced").click()  # closed accordions are not rendered until opened
    set_box(page, "#max-new-tokens", "4096")
    ask(page, "Please write a very long answer.")
    wait_until(lambda: engine.busy, 30)
    page.wait_for_timeout(300)
    page.locator("#ask button[aria-label=Stop]").click()
    assert wait_until(lambda: not engine.busy, 1.0) < 1.0


def test_non_image_upload_shows_a_notice_and_the_page_keeps_working(page, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    ask(page, "What is this?", [bogus])
    page.wait_for_selector("text=/Unsupported or unreadable image/", timeout=30_000)
    assert page.locator("#ask textarea").input_value() == "What is this?"  # nothing typed is lost
    page.locator("#new-chat").click()
    page.wait_for_function("() => document.querySelector('#ask textarea').value === ''", timeout=10_000)
    ask(page, "Still working?")
    wait_for_figures(page)


def test_clicking_an_example_gets_an_answer(page):
    page.locator("#examples button, #examples .gallery-item").first.click()
    page.wait_for_timeout(300)
    assert "invoice" in page.locator("#ask textarea").input_value().lower()
    page.locator("#ask textarea").press("Enter")
    assert "tokens/s" in wait_for_figures(page)


def test_named_api_endpoint_with_gradio_client(site, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (100, 80), "red").save(image)
    client = Client(site, verbose=False)
    answer = client.predict(handle_file(str(image)), "What colour?", api_name="/ask")
    assert isinstance(answer, str)


def test_cost_tab_shows_the_table_and_the_plot(page, tmp_path):
    page.get_by_role("tab", name="Cost").click()
    page.wait_for_function(
        "() => (document.querySelector('#cost-table')?.innerText || '').includes('30,000.00 CNY')",
        timeout=20_000,
    )
    assert "916.67 CNY" in page.locator("#cost-table").inner_text()
    page.wait_for_selector("#cost-plot img, #cost-plot svg, #cost-plot canvas", timeout=20_000)
    field = page.locator("#cost-requests_per_day input")
    field.fill("50000")
    field.press("Enter")
    page.wait_for_function(
        "() => (document.querySelector('#cost-table')?.innerText || '').includes('15,000.00 CNY')",
        timeout=20_000,
    )
    # Priced as GLM-4.6V-FlashX per token: (1,400 x 0.06 + 200 x 0.36) / 1e6 USD x 7.1 x 50,000 a day
    page.locator("#cost-comparator input").click()
    page.get_by_role("option", name="GLM-4.6V-FlashX", exact=False).click()
    page.wait_for_function(
        "() => (document.querySelector('#cost-table')?.innerText || '').includes('55.38 CNY')",
        timeout=20_000,
    )
    page.screenshot(path=str(tmp_path / "cost.png"), full_page=True)


def wait_for_new_figures(page, old: str, timeout=60_000) -> str:
    page.wait_for_function(
        """old => {
            const t = document.querySelector('#figures')?.innerText || '';
            return t !== old && t.includes('tokens/s');
        }""",
        arg=old,
        timeout=timeout,
    )
    return page.locator("#figures").inner_text()


def image_tokens_in(figures: str) -> int:
    import re

    return int(re.search(r"\((?:images|图片) (\d+)\)", figures).group(1))


def test_follow_up_keeps_the_image_in_context_and_retry_answers_again(page, tmp_path):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (320, 200), (200, 120, 40)).save(image)
    ask(page, "What is this?", [image])
    first = wait_for_figures(page)
    assert image_tokens_in(first) > 0
    ask(page, "And what colour is it?")
    second = wait_for_new_figures(page, first)
    assert image_tokens_in(second) == image_tokens_in(first)  # the earlier image is still in the prompt
    page.locator("#retry").click()
    wait_for_new_figures(page, second)
    assert image_tokens_in(page.locator("#figures").inner_text()) == image_tokens_in(first)


def batch_inputs(tmp_path, colors) -> list:
    from PIL import Image

    paths = []
    for i, color in enumerate(colors):
        path = tmp_path / f"shot{i}.png"
        Image.new("RGB", (96, 64), color).save(path)
        paths.append(path)
    return paths


def run_batch(page, files, task="Content moderation"):
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_selector(f"#batch-files td[aria-label='{files[-1].name}']")  # uploaded
    page.locator("#batch-task").get_by_label(task).check()
    page.locator("#batch-run").click()


def wait_for_status(page, word: str, timeout=120_000) -> str:
    page.wait_for_function(
        "word => (document.querySelector('#batch-status')?.innerText || '').includes(word)",
        arg=word,
        timeout=timeout,
    )
    return page.locator("#batch-status").inner_text()


def test_batch_tab_moderates_uploads_and_lists_bad_files(page, tmp_path):
    from playwright.sync_api import expect

    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    run_batch(page, [*batch_inputs(tmp_path, ["red", "blue"]), bogus])
    status = wait_for_status(page, "Finished")
    assert "3 of 3 images" in status and "2 done" in status and "1 failed" in status
    rows = page.locator("#batch-table [role=row][data-index]")  # Gradio's virtual table: no plain <tr>
    expect(rows).to_have_count(2)  # the table may render a moment after the status line
    for i in range(2):
        cells = rows.nth(i).inner_text()
        assert "shot" in cells and any(verdict in cells.split() for verdict in ("allow", "review", "block"))
    expect(page.locator("#batch-errors")).to_contain_text("notes.txt")
    expect(page.locator("#batch-errors")).to_contain_text("Unsupported or unreadable image")
    href = page.locator("#batch-downloads a[download='moderation.jsonl']").get_attribute("href")
    records = [json.loads(line) for line in page.request.get(href).text().splitlines()]
    assert len(records) == 2 and {r["result"]["verdict"] for r in records} <= {"allow", "review", "block"}
    assert page.locator("#batch-downloads a[download='moderation.csv']").count() == 1
    page.screenshot(path=str(tmp_path / "batch.png"), full_page=True)


def test_batch_stop_ends_the_run_and_frees_the_engine(page, engine, tmp_path):
    from playwright.sync_api import expect

    colors = ["red", "green", "blue", "yellow", "purple", "orange", "gray", "white"]
    run_batch(page, batch_inputs(tmp_path, colors), task="Invoice fields")
    wait_until(lambda: engine.busy, 60)
    assert "of 8 images" in wait_for_status(page, "Running", timeout=10_000)  # live progress
    page.locator("#batch-stop").click()
    assert wait_until(lambda: not engine.busy, 2.0) < 2.0
    status = wait_for_status(page, "Stopped", timeout=10_000)
    assert "of 8 images" in status
    expect(page.locator("#batch-run")).to_be_enabled()


def test_every_declared_option_has_a_control_and_reaches_the_request(page):
    """The controls come from options.OPTIONS: each one is on the page, and a value set there is
    in the request "Show API call" gives (seed and top k, which the page never had by hand)."""
    from glmflash.options import OPTIONS

    page.locator("#advanced").click()
    page.wait_for_selector("#max-new-tokens", timeout=10_000)  # rendered once opened
    for name in OPTIONS:
        assert page.locator(f"#{name.replace('_', '-')}").count() == 1, name
    for box, value in (("#seed", "7"), ("#top-k", "5"), ("#max-new-tokens", "8")):
        set_box(page, box, value)
    page.wait_for_timeout(300)
    ask(page, "Which options?")
    wait_for_figures(page)
    call = api_call_text(page)
    assert '"seed": 7' in call and '"top_k": 5' in call and '"max_tokens": 8' in call
    set_box(page, "#seed", "seven")
    ask(page, "And now?")
    page.wait_for_selector("text=is not a number", timeout=10_000)  # a notice naming the box


def test_an_answer_with_no_text_says_so(browser, cache_dir):
    import glmflash
    from tests.conftest import favour

    quiet = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))
    favour(quiet, "<|user|>")  # a stop token first: the turn ends before any answer
    with serving(quiet, max_new_tokens=16) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        page.goto(url)
        page.wait_for_selector("#ask textarea", timeout=60_000)
        page.locator("#thinking input").uncheck()
        ask(page, "Anything?")
        wait_for_figures(page)
        assert "No answer text" in page.locator("#chat").inner_text()
        page.close()


def test_an_answer_cut_off_while_thinking_says_so(browser, cache_dir):
    import glmflash
    from tests.conftest import favour

    thinker = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))
    favour(thinker, "<think>")  # it opens <think> and never closes it
    with serving(thinker, max_new_tokens=16) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        page.goto(url)
        page.wait_for_selector("#ask textarea", timeout=60_000)
        ask(page, "A hard question")
        figures = wait_for_figures(page)
        assert "Cut off while still thinking" in figures and "Max tokens (16)" in figures
        page.close()


def test_with_api_keys_the_page_asks_for_one_and_its_endpoints_refuse_strangers(browser, engine):
    import requests

    with serving(engine, api_keys="page-key-1,page-key-2", max_new_tokens=16) as url:
        closed = [("GET", "/config"), ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/queue/join"),
                  ("POST", "/gradio_api/call/ask"), ("GET", "/gradio_api/file=/etc/passwd")]  # fmt: skip
        for method, path in closed:
            response = requests.request(method, url + path, json={} if method == "POST" else None, timeout=10)
            assert response.status_code == 401, (path, response.status_code)
        session = requests.Session()
        wrong = session.post(f"{url}/login", data={"username": "me", "password": "guess"}, timeout=10)
        assert wrong.status_code == 400 and session.get(f"{url}/config", timeout=10).status_code == 401

        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("input[type=password]", timeout=60_000)
        assert page.locator("#ask textarea").count() == 0  # no page before signing in
        page.locator("input[type=text]").first.fill("me")
        page.locator("input[type=password]").fill("page-key-2")
        page.locator("button", has_text="Login").click()
        page.wait_for_selector("#ask textarea", timeout=60_000)
        ask(page, "Hello?")
        assert "tokens/s" in wait_for_figures(page)
        page.close()


def test_evaluate_tab_scores_a_zip_of_labels_and_images_and_offers_the_report(page, tmp_path):
    import zipfile

    from playwright.sync_api import expect

    shots = batch_inputs(tmp_path, ["red", "green", "blue"])
    labels_csv = "image,expected\n" + "".join(
        f"{p.name},{v}\n" for p, v in zip(shots, ["allow", "block", "allow"], strict=True)
    )
    labels_csv += "missing.png,allow\n"  # a bad row: named, left out, the rest scored
    bundle = tmp_path / "labelled.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("set/labels.csv", labels_csv)
        for path in shots:
            archive.write(path, f"set/{path.name}")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-files input[type=file]").set_input_files([str(bundle)])
    page.wait_for_selector("#eval-files td[aria-label='labelled.zip']")
    page.locator("#eval-run").click()
    page.wait_for_function(
        "() => (document.querySelector('#eval-status')?.innerText || '').includes('accuracy')",
        timeout=120_000,
    )
    status = page.locator("#eval-status").inner_text()
    assert "over 3 images (3 answered)" in status and "row 4: no such image 'missing.png'" in status
    expect(page.locator("#eval-table")).to_contain_text("moderation")
    expect(page.locator("#eval-details")).to_contain_text("allow")
    expect(page.locator("#eval-plot img")).to_be_visible()
    href = page.locator("#eval-report a[download='report.html']").get_attribute("href")
    report_html = page.request.get(href).text()
    report_file = tmp_path / "report.html"
    report_file.write_text(report_html)
    report = page.context.browser.new_page()
    report.goto(report_file.as_uri())
    report.wait_for_selector("h1")
    widths = report.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 2 and all(w > 0 for w in widths)  # confusion matrix, threshold plot, thumbnails
    report.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    report.close()


def test_evaluate_tab_without_a_labels_file_says_what_to_add(page, tmp_path):
    page.get_by_role("tab", name="Evaluate").click()
    shots = batch_inputs(tmp_path, ["red"])
    page.locator("#eval-files input[type=file]").set_input_files([str(p) for p in shots])
    page.wait_for_selector(f"#eval-files td[aria-label='{shots[0].name}']")
    page.locator("#eval-run").click()
    from playwright.sync_api import expect

    page.wait_for_selector("text=Give exactly one labels file", timeout=30_000)
    expect(page.locator("#eval-run")).to_be_enabled()


def test_an_answer_with_boxes_shows_the_picture_with_them_drawn(browser, tmp_path):
    """The page in front of a backend whose model answers the "Locate" example with the scene's
    true boxes (as GLM-4.6V writes them, in box markers): the picture comes back with both drawn
    where the shapes are, and their pixel coordinates listed."""
    import glmflash
    from glmflash.ui.examples import FOLDER, SCENE_OBJECTS, SCENE_SIZE
    from tests.server_helpers import Scripted, scripted_backend

    boxes = ", ".join(f"[{', '.join(map(str, b))}]" for b in SCENE_OBJECTS.values())
    answer = f"<|begin_of_box|>[{boxes}]<|end_of_box|>"
    with scripted_backend() as backend:
        Scripted.pieces = [answer[i : i + 7] for i in range(0, len(answer), 7)]
        with serving(glmflash.load(backend)) as url:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(url)
            page.wait_for_selector("#ask textarea", timeout=60_000)
            page.locator("#examples").get_by_text("Locate the red circle").first.click()
            page.wait_for_timeout(500)
            page.locator("#ask textarea").press("Enter")
            page.wait_for_selector("text=2 box(es)", timeout=60_000)
            drawn = page.locator("#chat img").last
            drawn.wait_for()
            src = drawn.get_attribute("src")
            fetched = page.request.get(src if src.startswith("http") else url + src).body()
            picture = Image.open(io.BytesIO(fetched))
            page.screenshot(path=str(tmp_path / "boxes.png"), full_page=True)
            text = page.locator("#chat").inner_text()
            page.close()
    assert picture.size == SCENE_SIZE
    w, h = SCENE_SIZE
    for x1, y1, x2, y2 in SCENE_OBJECTS.values():
        left, top = round(x1 / 1000 * w), round(y1 / 1000 * h)
        assert ", ".join(map(str, (left, top, round(x2 / 1000 * w), round(y2 / 1000 * h)))) in text
        edge = (left + 1, (top + round(y2 / 1000 * h)) // 2)
        original = Image.open(FOLDER / "scene.png").convert("RGB")
        assert picture.getpixel(edge) != original.getpixel(edge)  # a box edge was drawn there


def test_a_pdf_in_the_chat_shows_its_pages_and_sends_the_chosen_ones(page, tmp_path):
    import re

    from playwright.sync_api import expect

    from tests.test_pdf import pillow_pdf

    pdf = tmp_path / "statement.pdf"
    pdf.write_bytes(pillow_pdf())

    def send(pages: str | None) -> int:
        page.reload()
        page.wait_for_selector("#ask textarea", timeout=60_000)
        page.locator("#ask input[type=file]").set_input_files([str(pdf)])
        page.wait_for_selector("#pdf-preview img", timeout=30_000)
        expect(page.locator("#pdf-preview img")).to_have_count(3)  # one thumbnail per page
        expect(page.locator("#pdf-pages")).to_contain_text("3 pages")
        if pages:
            page.locator("#pdf-pages textarea, #pdf-pages input").first.fill(pages)
        ask(page, "What is on it?")
        return int(re.search(r"images (\d+)", wait_for_figures(page)).group(1))

    every = send(None)
    assert every > 3 * 1000  # every page when no range is given
    one = send("2")
    page.screenshot(path=str(tmp_path / "pdf.png"), full_page=True)
    assert 1000 < one < 1500 and one < every / 2  # the chosen page only
    expect(page.locator("#pdf-preview")).to_be_hidden()  # sent: no document attached now
