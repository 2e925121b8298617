"""Prefix and image reuse with the real tiny model: a chat about one image and several questions
about it give the greedy tokens they give with reuse off, with the reused prompt tokens counted
(usage.cached_tokens) and the images' features taken from the cache, also when the prompt
around an image differs; entries are kept per adapter, never cut an image whose content differs,
and stay within their byte budget."""

from __future__ import annotations

import itertools

import pytest
import torch

from glmflash.backends.local.reuse import ByteLRU, Reuse

from .test_batching import engine_batching, picture, user

GREEDY = {"max_new_tokens": 24, "temperature": 0, "thinking": False}
QUESTIONS = ["What is this?", "And the colours?", "Anything else in it?", "Thanks, a last one?"]


def chat(engine, image, questions) -> list:
    """One conversation, a turn per question, the image in the first."""
    messages: list[dict] = []
    replies = []
    for i, question in enumerate(questions):
        content = [{"type": "image", "image": image}] if i == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        reply = engine.chat(messages, **GREEDY)
        messages.append({"role": "assistant", "content": reply.text})
        replies.append(reply)
    return replies


def test_a_chat_about_one_image_reuses_the_turns_before_with_the_same_tokens(engine):
    on = engine_batching(engine, max_batch_size=4)
    off = engine_batching(engine, max_batch_size=4, prefix_cache_mb=0)
    image = picture(160, 120, 3)
    with_reuse, without = chat(on, image, QUESTIONS), chat(off, image, QUESTIONS)
    assert [r.text for r in with_reuse] == [r.text for r in without]
    assert [r.usage.prompt_tokens for r in with_reuse] == [r.usage.prompt_tokens for r in without]
    assert all(r.usage.cached_tokens == 0 for r in without) and with_reuse[0].usage.cached_tokens == 0
    for before, reply in itertools.pairwise(with_reuse):  # the turns before (the template renders an
        # earlier answer a little unlike the tokens generated: the prefix ends there)
        assert before.usage.prompt_tokens - 4 <= reply.usage.cached_tokens < reply.usage.prompt_tokens


@pytest.mark.parametrize("compiled", [False, True])
def test_questions_about_one_image_reuse_it_and_answer_as_without(engine, compiled):
    on = engine_batching(engine, max_batch_size=4, compile=compiled)
    off = engine_batching(engine, max_batch_size=4, prefix_cache_mb=0, compile=compiled)
    image = picture(200, 150, 4)
    asked = [(on.chat(user(image, q), **GREEDY), off.chat(user(image, q), **GREEDY)) for q in QUESTIONS[:3]]
    assert [a.text for a, _ in asked] == [b.text for _, b in asked]
    for reply, _ in asked[1:]:
        assert reply.usage.cached_tokens > reply.usage.image_tokens > 0  # the image and what came before it
    tally = on._batch.reuse.tally
    assert tally.prefix_hits >= 2 and tally.cached_tokens >= 2 * asked[0][0].usage.image_tokens


def test_an_image_in_another_prompt_reuses_its_features(engine):
    on = engine_batching(engine, max_batch_size=4)
    off = engine_batching(engine, max_batch_size=4, prefix_cache_mb=0)
    image = picture(120, 120, 5)
    prompts = [user("First some words, then", image), user("Other words entirely, and", image, "so?")]
    texts = [on.chat(p, **GREEDY).text for p in prompts]
    assert texts == [off.chat(p, **GREEDY).text for p in prompts]
    tally = on._batch.reuse.tally
    assert (tally.images, tally.image_hits) == (2, 1)  # the prompts part before the image: encoded once
    other = on.chat(user("First some words, then", picture(120, 120, 6)), **GREEDY)  # another image
    assert (
        tally.image_hits == 1
        and other.usage.cached_tokens < other.usage.prompt_tokens - other.usage.image_tokens
    )


def unit(tokens: int, value: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values for 2 layers of 2 heads x `tokens` x 4."""
    tensor = torch.full((2, tokens, 4), value)
    return [tensor, tensor], [tensor, tensor]


IMAGE = 99  # the image token id in the unit tests below


def test_a_prefix_is_kept_per_adapter():
    reuse = Reuse(1, IMAGE)
    ids = torch.arange(10)
    reuse.keep(None, ids, (), *unit(10))
    assert reuse.find(ids, (), "alpha") == (0, None)  # an adapter's KV is not the base's
    length, entry = reuse.find(torch.cat([ids, torch.tensor([50, 51])]), (), None)
    assert length == 10 and entry is not None
    reuse.keep("alpha", ids, (), *unit(10, 2.0))
    assert float(reuse.find(ids, (), "alpha")[1].keys[0][0, 0, 0]) == 2.0
    assert reuse.find(ids, (), None)[0] == 9  # the last prompt token is always prefilled


def test_a_prefix_never_cuts_an_image_or_passes_one_that_differs():
    reuse = Reuse(1, IMAGE)
    kept = torch.tensor([1, 2, 3, IMAGE, IMAGE, IMAGE, 4, 5, 6])
    reuse.keep(None, kept, ("red",), *unit(9))
    asked = torch.tensor([1, 2, 3, IMAGE, IMAGE, IMAGE, 4, 5, 7, 8])
    assert reuse.find(asked, ("red",), None)[0] == 8
    assert reuse.find(asked, ("blue",), None)[0] == 3  # another picture: up to where it starts
    assert reuse.find(asked, (), None)[0] == 3  # an image without a hash is never taken as known
    shorter = torch.tensor([1, 2, 3, IMAGE, IMAGE, 7, 8])  # another size: its tokens end sooner
    assert reuse.find(shorter, ("red",), None)[0] == 3


def test_reuse_stays_within_its_budget_least_recently_used_first():
    reuse = Reuse(1, IMAGE)  # 1 MiB
    size = unit(4096)[0][0].numel() * 4 * 4  # bytes of one entry of 4096 tokens: 512 KiB
    for start in range(3):
        reuse.keep(None, torch.arange(start * 10_000, start * 10_000 + 4096), (), *unit(4096))
    assert reuse.prefixes.used <= 2**20 and reuse.prefixes.used == 2 * size  # the first went
    assert reuse.find(torch.arange(0, 4096), (), None)[0] == 0
    assert reuse.find(torch.arange(10_000, 14_096), (), None)[0] == 4095
    lru = ByteLRU(100)
    lru.put("a", 1, 60)
    lru.put("b", 2, 30)
    lru.get("a")  # used: b is now the oldest
    lru.put("c", 3, 30)
    assert set(lru.items) == {"a", "c"} and lru.used == 90
    lru.put("big", 4, 101)  # larger than the budget: not kept, nothing evicted for it
    assert set(lru.items) == {"a", "c"}
    assert not Reuse(0, IMAGE).on  # GLMFLASH_PREFIX_CACHE_MB=0 turns it off


def test_the_api_says_how_many_prompt_tokens_were_cached_and_metrics_the_hit_rate(engine):
    import openai
    import requests

    from .server_helpers import running_server
    from .test_server_api import image_message, jpeg_data_url

    served = engine_batching(engine, max_batch_size=2)
    with running_server(served) as (url, _app):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        picture_url = jpeg_data_url(color=(10, 200, 90))
        usages = [
            client.chat.completions.create(
                model="m", messages=image_message(question, picture_url), max_tokens=4, temperature=0
            ).usage
            for question in ("What is in this image?", "What is in this image? Say more.")
        ]
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    first, second = (usage.prompt_tokens_details.cached_tokens for usage in usages)
    assert first == 0 and 0 < second < usages[1].prompt_tokens
    rate = next(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("glmflash_prefix_cache_hit_rate"))  # fmt: skip
    assert rate == pytest.approx(second / (usages[0].prompt_tokens + usages[1].prompt_tokens))
