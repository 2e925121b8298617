"""Several LoRA adapters served at once by the real tiny model: each request takes the adapter it
names (or the base model), also when requests for different adapters decode in one batch, through
the library, the API's `model` field (with the official openai client) and the page's model
selector (in headless Chromium); unknown names and unservable adapters are clear errors."""

from __future__ import annotations

import json
import re
import shutil
import threading

import pytest

import glmflash
from glmflash.backends.local.tiny import random_adapter
from glmflash.config import Settings
from glmflash.errors import InvalidRequestError
from tests.conftest import png_bytes
from tests.server_helpers import running_server

pytest.importorskip("peft")
openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": [{"type": "image", "image": png_bytes(seed=3, noise=True)},
                                         {"type": "text", "text": "What is in the picture?"}]}]  # fmt: skip
GREEDY = {"max_new_tokens": 16, "temperature": 0, "thinking": False}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter(root / name, seed=seed, cache_dir=str(cache_dir))
            for seed, name in enumerate(["alpha", "beta"])}  # fmt: skip


@pytest.fixture(scope="module")
def multi(adapters, cache_dir):
    spec = ",".join(f"{name}={folder}" for name, folder in adapters.items())
    return glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir), adapter=spec, max_batch_size=8)


def answers(engine, **extra) -> dict:
    return {
        name: engine.chat(QUESTION, adapter=name, **GREEDY, **extra).text for name in ("", "alpha", "beta")
    }


@pytest.fixture(scope="module")
def alone(multi) -> dict:
    """Each choice's greedy answer, one request at a time; base, alpha and beta each differ."""
    found = answers(multi)
    assert len(set(found.values())) == 3, found
    return found


def test_each_adapter_answers_as_it_does_loaded_alone(multi, alone, adapters, engine, cache_dir):
    assert multi.info.adapters == ("alpha", "beta") and multi.info.adapter == "alpha"
    assert multi.info.model_id.endswith("+alpha")
    assert multi.chat(QUESTION, **GREEDY).text == alone["alpha"]  # naming none: the first adapter
    assert engine.chat(QUESTION, **GREEDY).text == alone[""]  # "": the base model, untouched
    for name in ("alpha", "beta"):  # the router's choice against peft's own single adapter
        only = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir), adapter=str(adapters[name]))
        assert only.chat(QUESTION, **GREEDY).text == alone[name]


def test_requests_for_different_adapters_share_a_batch_and_keep_their_own(multi, alone):
    from tests.server_helpers import engine_with

    served = engine_with(multi, max_batch_size=8)
    got: dict = {}

    def ask(name, i):
        got[name, i] = served.chat(QUESTION, adapter=name, **GREEDY).text

    threads = [threading.Thread(target=ask, args=(name, i)) for i in range(2) for name in alone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {key: text for key, text in got.items()} == {(name, i): alone[name] for name, i in got}
    assert len(got) == 6 and max(served._batch.sizes) >= 3  # rows of different adapters together


def test_an_engine_view_answers_with_another_adapter_in_batch_jobs_too(multi, alone, tmp_path):
    from glmflash.jobs.runner import default_errors_path, run_job
    from glmflash.jobs.tasks import load_task

    beta, base = multi.with_adapter("beta"), multi.with_adapter("")
    assert multi.with_adapter("alpha") is multi
    assert (beta.info.model_id, base.info.model_id) == ("glmflash/tiny+beta", "glmflash/tiny")
    assert beta.chat(QUESTION, **GREEDY).text == alone["beta"]
    assert beta.chat(QUESTION, adapter="", **GREEDY).text == alone[""]  # a request's own choice wins
    assert base.chat(QUESTION, **GREEDY).text == alone[""]
    (tmp_path / "a.png").write_bytes(png_bytes(seed=4, noise=True))
    task = load_task("moderation")
    for view in (beta, multi):
        run_job(view, task, [tmp_path / "a.png"], tmp_path / "out.jsonl", retries=0)
    written = [tmp_path / "out.jsonl", default_errors_path(tmp_path / "out.jsonl")]
    models = [json.loads(line)["model"] for f in written if f.exists() for line in f.read_text().splitlines()]
    assert sorted(models) == ["glmflash/tiny+alpha", "glmflash/tiny+beta"]  # two jobs, not one resumed


def test_mixed_prompts_and_chunked_prefills_keep_each_rows_adapter(multi):
    """Prompts of other lengths (left-padded groups), text only and with images, and a prefill
    cut into chunks, each row with its own adapter, all at once: each gets its alone answer."""
    from tests.server_helpers import engine_with

    served = engine_with(multi, max_batch_size=9, prefill_chunk=24)
    long = "Describe a long and winding road through hills. " * 4
    prompts = [QUESTION, [{"role": "user", "content": "Hi"}], [{"role": "user", "content": long}]]
    cases = [(p, name) for p in range(3) for name in ("", "alpha", "beta")]

    def answer(case):
        prompt, name = case
        return served.chat(prompts[prompt], adapter=name, **GREEDY).text

    alone = {case: answer(case) for case in cases}
    got: dict = {}
    threads = [threading.Thread(target=lambda c=case: got.update({c: answer(c)})) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert got == alone
    assert max(served._batch.sizes) >= 4 and any(chunks > 1 for _, chunks, _ in served._batch.prefills)


def test_unknown_adapter_names_and_bad_folders_are_clear_errors(multi, alone, adapters, cache_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from glmflash.server.app import create_app

    def load(spec):
        return glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir), adapter=spec)

    def made(name, **lora):
        return random_adapter(tmp_path / name, seed=5, cache_dir=str(cache_dir), **lora)

    with pytest.raises(InvalidRequestError, match=r"No adapter named 'gamma'.*alpha, beta"):
        multi.chat(QUESTION, adapter="gamma", **GREEDY)
    alpha = adapters["alpha"]
    named = [(f"{alpha},{tmp_path / 'x' / 'alpha'}", "is used twice"), (f"v1.2={alpha}", "not letters"),
             (f"__base__={alpha}", "not starting with _")]  # fmt: skip
    for spec, why in named:
        with pytest.raises(InvalidRequestError, match=why):
            load(spec)
    refused = {
        "outside the language model's layers.*visual": made("vision", target=r".*visual.*\.(qkv|proj)"),
        "outside the language model's layers.*embed_tokens": made("embed", target=["embed_tokens"]),
        r"not a plain LoRA adapter \(use_dora\)": made("dora", use_dora=True),
        r"not a plain LoRA adapter \(modules_to_save\)": made("saved", modules_to_save=["lm_head"]),
    }
    for why, folder in refused.items():
        with pytest.raises(InvalidRequestError, match=why + ".*merge-adapter"):
            load(str(folder))
    torn = tmp_path / "torn"
    shutil.copytree(alpha, torn)
    weights = load_file(str(torn / "adapter_model.safetensors"))
    kept = {key: value for i, (key, value) in enumerate(sorted(weights.items())) if i % 5}
    save_file(kept, str(torn / "adapter_model.safetensors"))
    with pytest.raises(InvalidRequestError, match="is incomplete: 5 of its weights are missing"):
        load(str(torn))
    other_rank = tmp_path / "rank"
    shutil.copytree(alpha, other_rank)
    config = json.loads((other_rank / "adapter_config.json").read_text())
    (other_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))  # weights of rank 4
    with pytest.raises(InvalidRequestError, match=r"does not fit this model \(trained for .* another rank"):
        load(str(other_rank))
    assert load(",").info.adapters == ()  # an empty list: no adapters, not a traceback
    with pytest.raises(InvalidRequestError, match="An adapter is named 'alpha', as the served model is"):
        create_app(multi, Settings.build(served_model_name="alpha"))
    assert multi.chat(QUESTION, adapter="beta", **GREEDY).text == alone["beta"]  # still serving


def test_the_api_model_field_chooses_the_adapter(multi, alone, tmp_path):
    import httpx

    with running_server(multi, audit_log=str(tmp_path / "audit.jsonl")) as (url, _):
        assert httpx.get(f"{url}/ready").json()["adapters"] == ["alpha", "beta"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        listed = {m.id: (m.model_extra or {}).get("parent") for m in client.models.list().data}
        assert listed == {"glm-4.6v-flash": None, "alpha": "glm-4.6v-flash", "beta": "glm-4.6v-flash"}
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(QUESTION)}},
            {"type": "text", "text": "What is in the picture?"}]}]  # fmt: skip
        extra = {"chat_template_kwargs": {"enable_thinking": False}}

        def reply(model, **more):
            return client.chat.completions.create(
                model=model, messages=messages, max_tokens=16, temperature=0, extra_body=extra, **more
            )

        for model, name in [("glm-4.6v-flash", ""), ("alpha", "alpha"), ("beta", "beta"),
                            ("glm-4.6v-flash+beta", "beta")]:  # fmt: skip
            answer = reply(model)
            assert (answer.model, answer.choices[0].message.content) == (model, alone[name])
        pieces = list(reply("beta", stream=True))
        assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == alone["beta"]
        assert {p.model for p in pieces} == {"beta"}
        with pytest.raises(openai.NotFoundError, match=r"'gpt-4o' does not exist here.*alpha, beta"):
            reply("gpt-4o")
        assert reply("alpha").choices[0].message.content == alone["alpha"]  # still serving
        bare = {"messages": messages, "max_tokens": 16, "temperature": 0, **extra}  # no model at all
        answer = httpx.post(f"{url}/v1/chat/completions", json=bare).json()
        assert (answer["model"], answer["choices"][0]["message"]["content"]) == ("alpha", alone["alpha"])
    logged = [json.loads(line)["model"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert logged[:4] == ["glm-4.6v-flash", "alpha", "beta", "glm-4.6v-flash+beta"]


def test_the_remote_backend_lists_and_chooses_the_servers_adapters(multi, alone):
    import dataclasses

    from glmflash.backends.remote import RemoteEngine

    with running_server(multi) as (url, _):
        remote = glmflash.load(f"{url}/v1")
        assert remote.info.model_id == "glm-4.6v-flash" and remote.info.adapters == ("alpha", "beta")
        assert remote.chat(QUESTION, adapter="beta", **GREEDY).text == alone["beta"]
        assert remote.chat(QUESTION, **GREEDY).text == alone[""]  # a remote's default: its base model
        named = RemoteEngine(f"{url}/v1", model="glm-4.6v-flash")  # a named model: adapters looked up too
        assert named.info.adapters == ("alpha", "beta")
        named.info = dataclasses.replace(named.info, adapters=())  # as if loaded after it started
        assert named.chat(QUESTION, adapter="alpha", **GREEDY).text == alone["alpha"]
        with pytest.raises(InvalidRequestError, match="No adapter named 'gamma'"):
            named.chat(QUESTION, adapter="gamma", **GREEDY)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_pages_model_selector_chooses_the_adapter(multi, alone):
    """The header's selector on the page for the engine (alpha and beta answer differently), and
    on a page in front of a remote engine whose server holds the adapters (its default: the
    backend's base model)."""
    from playwright.sync_api import sync_playwright

    from tests.test_ui import ARGS, CHROMIUM, api_call_text, serving, set_box, wait_for_figures

    def opened(browser, url):
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        page.goto(url)
        page.wait_for_selector("#model-choice input", timeout=60_000)
        page.locator("#thinking input").uncheck()
        page.locator("#advanced").click()
        for box, value in (("#temperature", "0"), ("#max-new-tokens", "16")):
            set_box(page, box, value)
        page.wait_for_timeout(500)
        return page

    def asked(page, name=None):
        page.locator("#new-chat").click()
        if name is not None:
            page.locator("#model-choice input").click()
            page.get_by_role("option", name=name, exact=True).click()
        page.locator("#ask input[type=file]").set_input_files(
            [{"name": "noise.png", "mimeType": "image/png", "buffer": QUESTION[0]["content"][0]["image"]}]
        )
        page.locator("#ask img").first.wait_for(timeout=30_000)  # uploaded: sent with the text, not after
        page.locator("#ask textarea").fill("What is in the picture?")
        page.locator("#ask textarea").press("Enter")
        wait_for_figures(page)
        text = page.locator("#chat .bot, #chat [data-testid=bot]").last.inner_text()
        call = api_call_text(page)
        page.locator("#api-accordion").click()  # closed again: the next answer's call is awaited
        return text, call

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        with serving(multi) as url:
            page = opened(browser, url)
            assert page.locator("#model-choice input").input_value() == "alpha"  # the default
            shown = {name: asked(page, name) for name in ("beta", "alpha")}
            page.close()  # before its server stops: an open page holds a connection it waits for
        with running_server(multi) as (api, _), serving(glmflash.load(f"{api}/v1")) as url:
            page = opened(browser, url)
            assert page.locator("#model-choice input").input_value() == "glm-4.6v-flash (base model)"
            remote = asked(page)
            page.close()
        browser.close()
    for _, call in [*shown.values(), remote]:  # the settings reached the request
        sent = ('"temperature": 0', '"max_tokens": 16', '"enable_thinking": false')
        assert all(f in call for f in sent), call
    # Which adapter answered is what the request names; the answers' exact tokens are the API
    # test's business (through the page, a first answer has been seen to differ now and then)
    for name, (text, call) in shown.items():
        assert f'"model": "{name}"' in call and _words(text), (name, text)
    assert _words(shown["alpha"][0]) != _words(shown["beta"][0])
    assert _words(remote[0]) and '"model": "glm-4.6v-flash"' in remote[1]


def _words(text: str) -> str:
    """Letters and digits only: the page renders answers as Markdown."""
    return "".join(re.findall(r"\w", text))


def _b64(question) -> str:
    import base64

    return base64.b64encode(question[0]["content"][0]["image"]).decode()


def test_the_same_base_loaded_from_its_folder_takes_the_adapter_another_does_not(
    adapters, alone, cache_dir, tmp_path, caplog
):
    from glmflash.backends.local.tiny import ensure_tiny_model

    folder = ensure_tiny_model(cache_dir)  # the tiny model by path: an id other than "glmflash/tiny"
    by_path = glmflash.load(str(folder), "fp32", "cpu", adapter=str(adapters["beta"]))
    assert by_path.chat(QUESTION, **GREEDY).text == alone["beta"]
    assert "trained on glmflash/tiny" in caplog.text  # said, not refused
    other = tmp_path / "beta"
    shutil.copytree(adapters["beta"], other)
    report = json.loads((other / "glmflash.json").read_text())
    report["base_shape"]["hidden_size"] = 4096  # trained on a model of another size
    (other / "glmflash.json").write_text(json.dumps(report))
    with pytest.raises(InvalidRequestError, match=r"was trained on glmflash/tiny, but .* is loaded"):
        glmflash.load(str(folder), "fp32", "cpu", adapter=str(other))


def test_adapter_lists_take_every_form_the_settings_and_flags_give(tmp_path):
    from glmflash.backends.local.adapters import parse_adapters
    from glmflash.cli import build_parser

    a, b = tmp_path / "alpha", tmp_path / "b"
    expected = [("alpha", a), ("beta", b)]
    assert parse_adapters(f"{a}, beta={b}") == expected  # GLMFLASH_ADAPTER
    assert parse_adapters([str(a), f"beta={b}"]) == expected
    assert parse_adapters({"alpha": a, "beta": b}) == expected
    assert parse_adapters("") == [] and parse_adapters(None) == []
    args = build_parser().parse_args(["serve", "--adapter", str(a), "--adapter", f"beta={b}"])
    assert parse_adapters(",".join(args.adapter)) == expected
    for bad in (f"{a},{tmp_path / 'x' / 'alpha'}", f"a+b={a}"):
        with pytest.raises(InvalidRequestError, match="give each adapter its own name"):
            parse_adapters(bad)


def test_merge_adapter_merges_into_the_base_model_even_with_adapters_in_the_environment(
    adapters, alone, cache_dir, tmp_path
):
    from tests.conftest import run_cli

    merged = tmp_path / "merged"
    env = {"GLMFLASH_ADAPTER": str(adapters["beta"]), "GLMFLASH_CACHE_DIR": str(cache_dir)}
    done = run_cli(
        "merge-adapter", str(adapters["alpha"]), "--out", str(merged), "--model=tiny", env_extra=env
    )
    assert done.returncode == 0, done.stderr
    assert glmflash.load(str(merged), "fp32", "cpu").chat(QUESTION, **GREEDY).text == alone["alpha"]
