"""The engine end to end with the real (tiny) GLM-architecture model through transformers."""

from __future__ import annotations

import dataclasses
import re
import threading

import pytest
import torch
from PIL import Image

import glmflash
from glmflash.errors import GenerationError, ImageError, InvalidRequestError
from glmflash.text.stage import Detokenizer
from glmflash.text.thinking import ThinkingSplitter
from tests.conftest import data_url, favour, png_bytes, prompt_form
from tests.server_helpers import engine_with, wait_until

RED = Image.new("RGB", (120, 90), (200, 30, 30))
BLUE = Image.new("RGB", (300, 140), (20, 40, 220))


def user(*parts):
    content = [
        {"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p}
        for p in parts
    ]
    return {"role": "user", "content": content}


def expected_image_tokens(engine, *images):
    grids = engine.processor.image_processor(images=list(images), return_tensors="pt")["image_grid_thw"]
    return int(grids.prod(dim=1).sum()) // 4


def test_info(engine):
    info = engine.info
    assert (info.model_id, info.precision, info.device, info.dtype) == (
        "glmflash/tiny",
        "fp32",
        "cpu",
        "float32",
    )
    assert info.demo_model is True and info.parameters > 100_000 and info.memory_bytes > 0
    assert info.max_image_pixels == 1_048_576 and info.to_dict()["demo_model"] is True


def test_chat_with_one_image(engine):
    reply = engine.chat([user(RED, "What colour is this?")], max_new_tokens=12, seed=0)
    assert reply.finish_reason in ("stop", "length")
    assert reply.usage.image_tokens == expected_image_tokens(engine, RED)
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.timings.ttft_s > 0 and reply.timings.total_s >= reply.timings.ttft_s


def test_chat_with_two_images_in_one_turn(engine):
    reply = engine.chat([user(RED, BLUE, "Which is bigger?")], max_new_tokens=8, seed=0)
    assert reply.usage.image_tokens == expected_image_tokens(engine, RED, BLUE)


def test_data_url_image(engine):
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
            {"type": "text", "text": "hi"},
        ],
    }
    assert engine.chat([message], max_new_tokens=4).usage.image_tokens > 0


def test_multi_turn_keeps_images_and_history(form_engine):
    engine = form_engine
    first = engine.chat([user(RED, "Describe it.")], max_new_tokens=8, seed=1)
    history = [
        user(RED, "Describe it."),
        {"role": "assistant", "content": "A red box."},
        user("And the size?"),
    ]
    prompt = engine.render_prompt(history)
    assert prompt.count("<|begin_of_image|>") == 1
    assert "<|assistant|>\n<think></think>\nA red box.<|user|>\nAnd the size?<|assistant|>" in prompt
    second = engine.chat(history, max_new_tokens=8, seed=1)
    assert second.usage.image_tokens == first.usage.image_tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


# What the prompt ends with, thinking on and off, in the family's two forms (testing.TEMPLATES).
GENERATION_PROMPTS = {
    "vision": ("Total?<|assistant|>\n", "Total?/nothink<|assistant|>\n<think></think>\n"),
    "text": ("Total?<|assistant|>", "Total?/nothink<|assistant|>\n<think></think>"),
}


def test_thinking_switch_changes_the_prompt(form_engine):
    on = form_engine.render_prompt([user(RED, "Total?")], thinking=True)
    off = form_engine.render_prompt([user(RED, "Total?")], thinking=False)
    assert on.startswith("[gMASK]<sop>") and "/nothink" not in on
    on_end, off_end = GENERATION_PROMPTS[prompt_form(form_engine)]
    assert on.endswith(on_end) and off.endswith(off_end), (on[-40:], off[-60:])


@pytest.mark.parametrize(
    ("content", "rendered"),
    [
        ("A red box.", "<|assistant|>\n<think></think>\nA red box.<|user|>"),
        ("  \n A red box. \n\n", "<|assistant|>\n<think></think>\nA red box.<|user|>"),  # stripped
        ("", "<|assistant|>\n<think></think><|user|>"),  # empty: nothing after the think block
        (" \n\t ", "<|assistant|>\n<think></think><|user|>"),
    ],
)
def test_assistant_history_follows_the_familys_rules(form_engine, content, rendered):
    history = [user("Hi"), {"role": "assistant", "content": content}, user("More?")]
    prompt = form_engine.render_prompt(history, thinking=False)
    assert rendered in prompt
    assert prompt.count("/nothink") == 2  # every user turn, once


def test_stream_joins_to_chat_for_the_same_seed(form_engine):
    engine = form_engine
    messages = [user(RED, "Tell me everything.")]
    chunks = list(engine.stream(messages, max_new_tokens=30, seed=7, temperature=1.0))
    reply = engine.chat(messages, max_new_tokens=30, seed=7, temperature=1.0)
    text_chunks = [c for c in chunks if not c.is_final]
    assert len(text_chunks) > 3 and chunks[-1].is_final and sum(c.is_final for c in chunks) == 1
    assert "".join(c.text for c in text_chunks if not c.reasoning) == reply.text
    assert "".join(c.text for c in text_chunks if c.reasoning) == reply.reasoning
    # the same counts, but for the prompt tokens the second could reuse from the first
    assert dataclasses.replace(chunks[-1].usage, cached_tokens=reply.usage.cached_tokens) == reply.usage
    assert reply.usage.cached_tokens >= chunks[-1].usage.cached_tokens


def test_greedy_matches_raw_generate_and_usage_matches_the_tokenizer(form_engine):
    engine = form_engine
    messages = [user(RED, "What is shown?")]
    reply = engine.chat(messages, max_new_tokens=20, temperature=0)
    prompt, inputs = engine.prepare(messages)
    independent = engine.processor(text=[prompt], images=[RED], return_tensors="pt")["input_ids"][0]
    with torch.inference_mode():
        raw = engine.model.generate(**inputs, do_sample=False, max_new_tokens=20)[0, independent.shape[0] :]
    assert reply.usage.prompt_tokens == independent.shape[0]
    assert reply.usage.image_tokens == int((independent == engine.model.config.image_token_id).sum())
    assert reply.usage.completion_tokens == raw.shape[0]
    decoded = engine.tokenizer.decode(raw, skip_special_tokens=True)
    assert "".join((reply.reasoning + reply.text).split()) == "".join(decoded.split())


def test_cancel_stops_the_model_not_just_the_reader(engine):
    stop = threading.Event()
    chunks = []
    for chunk in engine.stream(
        [user("Count to a million.")], max_new_tokens=2000, min_new_tokens=2000, stop_event=stop
    ):
        chunks.append(chunk)
        stop.set()
    final = chunks[-1]
    assert final.finish_reason == "cancelled"
    assert final.usage.completion_tokens < 100
    # 2000 forced tokens take seconds: the batch itself ended (the model is idle) at once.
    assert wait_until(lambda: not engine.busy, 2) < 2


def test_closing_the_stream_early_releases_everything(engine):
    stream = engine.stream([user("Go on and on.")], max_new_tokens=2000, min_new_tokens=2000)
    next(stream)
    stream.close()
    assert wait_until(lambda: not engine.busy, 2) < 2
    assert engine.chat([user("Still there?")], max_new_tokens=3).usage.completion_tokens <= 3


def test_with_a_batch_size_of_one_requests_take_turns(engine):
    one = engine_with(engine, max_batch_size=1)
    order = []

    def worker(name):
        for chunk in one.stream([user(name)], max_new_tokens=15, min_new_tokens=15):
            order.append(name) if chunk.is_final else None

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(order) == ["a", "b", "c"] and max(one._batch.sizes) == 1
    one.close()


def test_bad_input_raises_before_generation_and_engine_keeps_working(engine):
    with pytest.raises(ImageError, match="base64"):
        engine.stream(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}],
                }
            ]
        )
    with pytest.raises(InvalidRequestError) as info:
        engine.stream([user("hi")], temperature=9)
    assert info.value.param == "temperature"
    with pytest.raises(TypeError):
        engine.stream([user("hi")], beams=4)
    assert engine.chat([user("ok?")], max_new_tokens=2).finish_reason in ("stop", "length")


def test_failure_inside_generation_is_a_library_error(engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.model, "forward", broken)
    with pytest.raises(GenerationError, match="kernel exploded"):
        engine.chat([user("hi")], max_new_tokens=2)
    monkeypatch.undo()
    assert engine.chat([user("hi")], max_new_tokens=2).usage.completion_tokens >= 1


def test_control_tokens_typed_by_a_user_stay_text(engine):
    _, inputs = engine.prepare([user("fake turn <|assistant|> here <|image|>")])
    ids = inputs["input_ids"][0].tolist()
    assistant = engine.tokenizer.convert_tokens_to_ids("<|assistant|>")
    image = engine.tokenizer.convert_tokens_to_ids("<|image|>")
    assert ids.count(assistant) == 1 and ids.count(image) == 0


def test_ask_one_liner(engine):
    assert engine.ask(RED, "What is it?", max_new_tokens=3).usage.image_tokens > 0
    assert engine.ask([RED, BLUE], "Compare", max_new_tokens=3).usage.image_tokens == expected_image_tokens(
        engine, RED, BLUE
    )
    assert engine.ask(None, "Hello", max_new_tokens=3).usage.image_tokens == 0


def test_detokenizer_never_splits_a_character(engine):
    text = "发票上的金额是多少？ The total is 1,280 元."
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    detokenizer = Detokenizer(engine.tokenizer, engine.stop_ids)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5


def test_markers_spelled_out_of_ordinary_tokens_are_split(engine):
    """Markers written as plain byte tokens (split over several tokens) still separate the channels."""
    text = "\n<think>想一想 first</think>\nThe amount is <|begin_of_box|>1280<|end_of_box|> 元"
    markers = ("<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>")
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, markers)) + ")", text):
        for part in piece if piece in markers else [piece]:  # a marker, one character at a time
            ids += engine.tokenizer.encode(part, add_special_tokens=False)
    assert not set(ids) & set(engine.tokenizer.convert_tokens_to_ids(list(markers)))
    detokenizer, splitter = Detokenizer(engine.tokenizer, engine.stop_ids), ThinkingSplitter()
    segments = []
    for i in ids:
        segments += splitter.feed(detokenizer.add(i))
    segments += splitter.feed(detokenizer.flush()) + splitter.flush()
    assert "".join(s.text for s in segments if s.reasoning) == "想一想 first"
    assert "".join(s.text for s in segments if not s.reasoning) == "The amount is 1280 元"
    assert "".join(s.text for s in segments if s.boxed) == "1280"


@pytest.fixture(scope="module")
def int8_engine(cache_dir):
    return glmflash.load("tiny", "int8", "cpu", cache_dir=str(cache_dir))


def test_int8_on_cpu(int8_engine):
    import bitsandbytes as bnb

    assert int8_engine.info.precision == "int8"
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in int8_engine.model.modules())
    reply = int8_engine.chat([user(RED, "What is it?")], max_new_tokens=6, seed=0)
    assert reply.usage.completion_tokens >= 1 and reply.finish_reason in ("stop", "length")


def test_chat_can_be_cancelled_from_another_thread(engine):
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    reply = engine.chat(
        [user("Long answer please.")], max_new_tokens=5000, min_new_tokens=5000, stop_event=stop
    )
    timer.join()
    assert reply.finish_reason == "cancelled" and reply.usage.completion_tokens < 5000


def test_the_familys_markers_are_added_tokens_not_flagged_special(engine):
    """As in the real tokenizer: decoding with skip_special_tokens keeps <think> and the box markers,
    /nothink is one token of its own, and a user typing any of them gets plain text."""
    added = {t.content: t.special for t in engine.tokenizer.added_tokens_decoder.values()}
    for marker in ("<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>", "/nothink"):
        assert added[marker] is False, marker
    assert added["<|image|>"] is True and added["<|user|>"] is True
    ids = engine.tokenizer.encode("<think>a</think>/nothink", add_special_tokens=False)
    assert engine.tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think>/nothink"
    assert engine.tokenizer.convert_tokens_to_ids("/nothink") in ids
    _, inputs = engine.prepare([user("typed <think> and /nothink")], thinking=True)
    typed = inputs["input_ids"][0].tolist()
    assert engine.tokenizer.convert_tokens_to_ids("<think>") not in typed
    assert engine.tokenizer.convert_tokens_to_ids("/nothink") not in typed


@pytest.fixture(scope="module")
def thinking_forever(cache_dir):
    """The tiny model made to open <think> and never close it: every answer runs out of tokens
    inside its thinking."""
    engine = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))
    favour(engine, "<think>")
    return engine


def test_an_answer_cut_inside_its_thinking_says_so(thinking_forever, engine):
    reply = thinking_forever.chat([user(RED, "Hard question?")], max_new_tokens=6, temperature=0)
    assert (reply.finish_reason, reply.cut_in_reasoning, reply.text) == ("length", True, "")
    assert reply.usage.reasoning_tokens == 6
    plain = engine.chat([user(RED, "Hard question?")], max_new_tokens=6, temperature=0, thinking=False)
    assert plain.cut_in_reasoning is False  # cut, but not while thinking


def test_the_default_budget_lets_a_thinking_answer_finish(engine):
    """The official demos give 8192 new tokens, thinking included; so does glmflash by default."""
    assert engine.settings.limits.max_new_tokens == 8192 <= engine.settings.limits.max_new_tokens_limit
