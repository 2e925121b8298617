"""The reasoning/answer split, fed in every possible way a text can be cut."""

from __future__ import annotations

import pytest

from glmflash.text.thinking import ThinkingSplitter

DROP = ["<|user|>", "<|endoftext|>", "[gMASK]", "<|image|>"]


def split(pieces, **kwargs):
    splitter = ThinkingSplitter(drop=DROP, **kwargs)
    segments = []
    for piece in pieces:
        segments += splitter.feed(piece)
    segments += splitter.flush()
    reasoning = "".join(s.text for s in segments if s.reasoning)
    answer = "".join(s.text for s in segments if not s.reasoning)
    boxed = "".join(s.text for s in segments if s.boxed)
    return reasoning, answer, boxed


TEXT = "\n<think>The invoice shows 1,280.\n</think>\nTotal: <|begin_of_box|>1,280 CNY<|end_of_box|>.<|user|>"
EXPECTED = ("The invoice shows 1,280.", "Total: 1,280 CNY.", "1,280 CNY")


def test_whole_text():
    assert split([TEXT]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_cut_at_every_position(cut):
    assert split([TEXT[:cut], TEXT[cut:]]) == EXPECTED


def test_cut_at_every_pair_of_positions():
    for a in range(1, len(TEXT), 3):
        for b in range(a + 1, len(TEXT)):
            assert split([TEXT[:a], TEXT[a:b], TEXT[b:]]) == EXPECTED, (a, b)


def test_one_character_at_a_time():
    assert split(list(TEXT)) == EXPECTED


def test_no_marker_text_leaks():
    reasoning, answer, _ = split(list("<think>a[gMASK]b</think>c<|image|>d<|endoftext|>"))
    assert (reasoning, answer) == ("ab", "cd")


def test_prompt_that_opens_the_think_block():
    assert split(["reasoning here</think>", "answer"], start_in_reasoning=True)[:2] == (
        "reasoning here",
        "answer",
    )


def test_thinking_off_is_all_answer():
    assert split(["Just ", "the answer."]) == ("", "Just the answer.", "")


def test_unclosed_think_is_all_reasoning():
    assert split(["<think>still", " thinking"]) == ("still thinking", "", "")


def test_lookalike_text_is_kept():
    # "<th" that never becomes a marker, and a "<" at the very end, are ordinary text
    assert split(["a <th", "at> b <"]) == ("", "a <that> b <", "")


def test_chinese_text_and_spaces_inside_answer():
    assert split(["<think>想一想</think>", "金额是 ", " 1280 元"])[:2] == ("想一想", "金额是  1280 元")


@pytest.mark.parametrize(
    "written",
    [
        TEXT,  # the text-family form: the prompt ends in "<|assistant|>", the model writes "\n<think>"
        TEXT[1:],  # the vision form: the prompt ends in "<|assistant|>\n", the model writes "<think>"
    ],
)
def test_both_prompt_forms_split_alike(written):
    assert split([written]) == EXPECTED
    assert split(list(written)) == EXPECTED  # one character at a time


@pytest.mark.parametrize("answer", ["\n1,280 CNY", "1,280 CNY"])  # thinking off, in either form
def test_an_answer_without_thinking_in_either_form(answer):
    assert split([answer]) == ("", "1,280 CNY", "")
