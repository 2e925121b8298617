"""The page reads and serves only files uploaded to it: forged Gradio FileData paths on every page
endpoint that takes a file, with and without API keys, through a real server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from glmflash.config import Settings
from glmflash.errors import InvalidRequestError
from glmflash.server.run import build_app
from tests.server_helpers import running_server

SECRET = "glmflash-secret-7f3a9c"
KEY = "page-files-key"
FILE_COMPONENTS = {"File", "Image", "Multimodaltextbox", "Chatbot", "Gallery"}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> list[str]:
    """Files a visitor must never read: one in the temp folder (where Gradio's own output check
    lets files through), one beside it with a PNG name, and a system file."""
    from PIL import PngImagePlugin

    folder = tmp_path_factory.mktemp("secrets")
    (folder / "token.txt").write_text(SECRET)
    text = PngImagePlugin.PngInfo()
    text.add_text("secret", SECRET)  # a real picture: read, it would get an answer
    Image.new("RGB", (64, 48), (9, 9, 9)).save(folder / "photo.png", pnginfo=text)
    return [str(folder / "token.txt"), str(folder / "photo.png"), "/etc/hostname"]


def forged(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def forge(value, path: str):
    """An endpoint's example input with every file in it replaced by `path`."""
    if isinstance(value, dict) and ("path" in value or "url" in value):
        return forged(path)
    if isinstance(value, dict):
        return {k: forge(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [forge(v, path) for v in value]
    return value


def file_endpoints(url: str, session) -> dict[str, list]:
    """Every named endpoint of the page with a file-taking parameter, with its example inputs."""
    info = session.get(f"{url}/gradio_api/info", timeout=30).json()
    found = {}
    for name, endpoint in info["named_endpoints"].items():
        params = endpoint["parameters"]
        if any(p["component"] in FILE_COMPONENTS for p in params):
            found[name] = [p.get("example_input") for p in params]
    return found


def call(url: str, session, name: str, data: list, timeout: float = 60) -> str:
    """POST /gradio_api/call/NAME and read its event stream to the end."""
    response = session.post(f"{url}/gradio_api/call{name}", json={"data": data}, timeout=30)
    assert response.status_code == 200, (name, response.status_code, response.text[:200])
    event = response.json()["event_id"]
    stream = session.get(f"{url}/gradio_api/call{name}/{event}", timeout=timeout, stream=True)
    text = ""
    for line in stream.iter_lines(decode_unicode=True):
        text += (line or "") + "\n"
        if line and line.startswith("event: ") and line[7:] in {"complete", "error"}:
            text += next(stream.iter_lines(decode_unicode=True), "") or ""
            break
    return text


def assert_nothing_leaks(url: str, session, text: str) -> None:
    assert SECRET not in text
    for link in re.findall(r"/gradio_api/file=[^\"'\s]+", text):
        served = session.get(url + link, timeout=10)
        assert SECRET not in served.text, link


def replay(url: str, session, secrets: list[str]) -> int:
    endpoints = file_endpoints(url, session)
    # What the review reproduced these on; the transcript is now the server's (no Chatbot input).
    assert {"/ask", "/run_batch", "/evaluate", "/respond"} <= set(endpoints), sorted(endpoints)
    calls = 0
    for name, examples in endpoints.items():
        for secret in secrets:
            text = call(url, session, name, forge(examples, secret))
            assert "event: error" in text, (name, secret, text[-300:])  # refused, not read
            assert_nothing_leaks(url, session, text)
            calls += 1
    # The review's own request: a forged Chatbot value sent back to the retry button.
    chat = [{"role": "user", "content": [{"type": "file", "file": forged(secrets[0])}]},
            {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]  # fmt: skip
    response = session.post(f"{url}/gradio_api/call/_drop_last_turn", json={"data": [chat]}, timeout=30)
    if response.status_code == 200:
        assert_nothing_leaks(url, session, call(url, session, "/_drop_last_turn", [chat]))
    for secret in secrets:  # and the file route itself
        assert SECRET not in session.get(f"{url}/gradio_api/file={secret}", timeout=10).text
    return calls


def still_answers(url: str, session) -> None:
    """A real upload and a real question after all that: the page keeps serving."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, "PNG")
    files = {"files": ("red.png", buffer.getvalue(), "image/png")}
    uploaded = session.post(f"{url}/gradio_api/upload", files=files, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    text = call(url, session, "/ask", [forged(path), "What colour?"])
    assert "event: complete" in text, text[-300:]


def test_forged_paths_on_every_file_endpoint_read_nothing(engine, secrets):
    settings = Settings.build(max_new_tokens=4)
    with running_server(engine, app=build_app(engine, settings)) as (url, _app):
        session = requests.Session()
        assert replay(url, session, secrets) >= 5 * len(secrets)
        still_answers(url, session)


def test_forged_paths_with_api_keys_read_nothing_after_signing_in(engine, secrets):
    settings = Settings.build(max_new_tokens=4, api_keys=KEY)
    with running_server(engine, app=build_app(engine, settings)) as (url, _app):
        session = requests.Session()
        signed = session.post(f"{url}/login", data={"username": "me", "password": KEY}, timeout=10)
        assert signed.status_code == 200, signed.text
        replay(url, session, secrets)
        still_answers(url, session)


def test_upload_path_refuses_anything_outside_the_upload_folder(engine, tmp_path):
    """The page's own check, under Gradio's: the same message for a file that exists and one that
    does not, and a link that leads out of the folder is refused too."""
    from glmflash.ui import uploads
    from glmflash.ui.documents import upload_path

    folder = uploads.folder(Settings.build())
    inside = Path(folder) / "ok" / "picture.png"
    inside.parent.mkdir(exist_ok=True)
    inside.write_bytes(b"png")
    assert upload_path({"path": str(inside)}) == str(inside)
    (tmp_path / "real.txt").write_text(SECRET)
    link = Path(folder) / "ok" / "link.png"
    link.unlink(missing_ok=True)
    os.symlink(tmp_path / "real.txt", link)
    messages = set()
    for bad in [str(tmp_path / "real.txt"), str(tmp_path / "missing.txt"), str(link),
                f"{folder}/../{tmp_path.name}/real.txt", "/etc/hostname", "", "x\x00y", 7, None]:  # fmt: skip
        with pytest.raises(InvalidRequestError) as caught:
            upload_path({"path": bad})
        messages.add(caught.value.message)
    assert messages == {uploads.NOT_UPLOADED}


def test_the_janitor_keeps_the_folder_within_its_age_and_size(tmp_path):
    from glmflash.ui.uploads import Janitor

    (tmp_path / "example.png").write_bytes(b"e" * 10)  # there when the page was built: kept
    janitor = Janitor(tmp_path, max_bytes=1000, max_age_s=3600)
    old = tmp_path / "a" / "old.png"
    old.parent.mkdir()
    old.write_bytes(b"o" * 100)
    assert janitor.sweep() == 110 and old.exists()
    assert janitor.sweep(now=time.time() + 7200) == 10  # two hours later: gone, and its folder
    assert not (tmp_path / "a").exists() and (tmp_path / "example.png").exists()
    sizes = []
    for n in range(8):  # 8 x 300 bytes into a 1000-byte budget: the newest fit, the oldest go
        new = tmp_path / f"b{n}" / "new.png"
        new.parent.mkdir()
        new.write_bytes(b"n" * 300)
        sizes.append(janitor.sweep())
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["b5/new.png", "b6/new.png", "b7/new.png", "example.png"]
    assert max(sizes) <= 1000 and janitor.used == 910


def test_an_upload_past_the_disk_budget_is_refused_before_it_is_read(engine):
    settings = Settings.build(max_new_tokens=4)
    app = build_app(engine, settings)
    from glmflash.ui import uploads

    janitor = uploads.janitor(settings)
    with running_server(engine, app=app) as (url, _app):
        saved = janitor.max_bytes
        janitor.max_bytes = janitor.used + 1000
        try:
            big = {"files": ("big.png", b"x" * 5000, "image/png")}
            refused = requests.post(f"{url}/gradio_api/upload", files=big, timeout=30)
            assert refused.status_code == 413 and "upload space" in refused.text
        finally:
            janitor.max_bytes = saved
        small = {"files": ("small.png", b"x" * 100, "image/png")}
        assert requests.post(f"{url}/gradio_api/upload", files=small, timeout=30).status_code == 200


def test_blocked_paths_cover_home_and_the_model_cache(engine):
    from glmflash.ui import uploads

    settings = Settings.build(cache_dir=engine.settings.model.cache_dir)
    blocked = uploads.blocked(settings)
    tmp = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    assert "/etc" in blocked and not any(tmp.startswith(b) for b in blocked)
    home = str(Path.home().resolve())
    if not tmp.startswith(home):
        assert home in blocked
    assert json.dumps(blocked)  # plain strings, as Gradio compares them
