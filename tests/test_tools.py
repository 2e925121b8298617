"""Tool calls in the model's own format: the request checks (clear 400s), the parser on every
variant of the format, the streamed split, the grammar (accepts what the template writes, refuses
what breaks a schema), and forced / auto calls on the tiny random model through the library."""

from __future__ import annotations

import json

import jsonschema
import llguidance
import llguidance.hf
import pytest

import glmflash
from glmflash.backends.local.tiny import build_tokenizer
from glmflash.errors import InvalidRequestError
from glmflash.replies import Reply
from glmflash.text.stage import TextStage
from glmflash.text.tool_grammar import tool_lark
from glmflash.text.tools import MAX_TOOLS, ToolStage, parse_calls, requested_tools
from tests.conftest import data_url, favour, png_bytes

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
NOARGS = {"type": "function", "function": {"name": "now"}}
SHAPES = {  # several schema shapes a forced call must honour
    "strings": {
        "type": "object",
        "properties": {
            "q": {"type": "string", "minLength": 1, "maxLength": 12},
            "lang": {"enum": ["en", "zh"]},
        },
        "required": ["q", "lang"],
    },
    "numbers": {
        "type": "object",
        "properties": {"x": {"type": "number", "minimum": -5, "maximum": 5}, "n": {"type": "integer"}},
        "required": ["x", "n"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "box": {
                "type": "object",
                "properties": {"x1": {"type": "integer"}, "y1": {"type": "integer"}},
                "required": ["x1", "y1"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
            "flag": {"type": "boolean"},
        },
        "required": ["box", "tags", "flag"],
    },
}
TOKENS = ("<tool_call>", "</tool_call>", "<|begin_of_box|>", "<|end_of_box|>")  # single tokens in tiny


def tool(name, parameters):
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def spec(choice="required", tools=(WEATHER, NOARGS), parallel=None):
    return requested_tools(list(tools), choice, parallel)


# -- checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tools, choice, param",
    [
        ("nope", None, "tools"),
        ([{"type": "retrieval"}], None, "tools[0]"),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
        ([NOARGS, NOARGS], None, "tools[1].function.name"),
        ([tool("f", {"type": "array"})], None, "tools[0].function.parameters"),
        (
            [tool("f", {"type": "object", "properties": {"a": {"type": "nonsense"}}})],
            None,
            "tools[0].function.parameters",
        ),
        (
            [tool("f", {"type": "object", "properties": {"a<b": {"type": "string"}}})],
            None,
            "tools[0].function.parameters",
        ),
        (
            [tool("f", {"type": "object", "properties": {"x": {"description": "x" * 20000}}})],
            None,
            "tools[0].function.parameters",
        ),
        ([NOARGS] * (MAX_TOOLS + 1), None, "tools"),
        ([NOARGS], "sometimes", "tool_choice"),
        ([NOARGS], {"type": "function", "function": {"name": "missing"}}, "tool_choice"),
        ([NOARGS], {"type": "function"}, "tool_choice"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tool_fields_are_400s_naming_the_param(tools, choice, param):
    with pytest.raises(InvalidRequestError) as error:
        requested_tools(tools, choice)
    assert error.value.status == 400 and error.value.param == param, error.value.message


def test_tool_choice_forms():
    assert requested_tools(None) is None and requested_tools([]) is None
    assert spec(None).choice == "auto" and not spec(None).forced
    assert spec("none").choice == "none"
    named = spec({"type": "function", "function": {"name": "now"}})
    assert named.forced and named.allowed == ["now"]
    assert spec({"type": "function", "name": "now"}).allowed == ["now"]  # the Responses API's form
    assert spec("required", parallel=False).parallel is False
    with pytest.raises(InvalidRequestError) as error:
        requested_tools([NOARGS], "auto", "yes")
    assert error.value.param == "parallel_tool_calls"


# -- parsing -----------------------------------------------------------------------------------


def args(call):
    return json.loads(call.arguments)


def test_parse_every_variant():
    text = (
        "Let me look.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value> New York</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n<tool_call>now\n</tool_call>"
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>42</arg_value>"  # GLM-4.7 spacing
        "<arg_key>days</arg_key> <arg_value>[1, 'a']</arg_value></tool_call>"
        "<tool_call>unknown\n<arg_key>v</arg_key>\n<arg_value>not json</arg_value>\n</tool_call>"
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>cut off"
    )
    calls = parse_calls(text, spec())
    assert [c.name for c in calls] == ["get_weather", "now", "get_weather", "unknown"]
    assert args(calls[0]) == {"city": " New York", "days": 3}  # a string stays as written
    assert args(calls[1]) == {}
    assert args(calls[2]) == {"city": "42", "days": [1, "a"]}  # Python literal as vLLM reads it
    assert args(calls[3]) == {"v": "not json"}
    assert len({c.id for c in calls}) == 4 and all(c.id.startswith("call_") for c in calls)
    assert parse_calls("no calls here", spec()) == []


def pieces(text, size):
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_streamed_split_keeps_the_call_out_of_the_answer(size):
    text = (
        "<think>I could <tool_call> here</think>The answer is <|begin_of_box|>4<|end_of_box|>.\n"
        "<tool_call>now\n</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
        "<arg_value>Oslo</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"
    )
    stage = ToolStage(TextStage(control_tokens=["<tool_call>", "</tool_call>"]), spec(None))
    chunks = [c for piece in pieces(text, size) for c in stage.feed(piece)] + stage.flush()
    answer = "".join(c.text for c in chunks if not c.reasoning)
    reasoning = "".join(c.text for c in chunks if c.reasoning)
    assert answer == "The answer is 4." and "could" in reasoning and "tool_call" not in answer
    assert [c.name for c in stage.calls] == ["now", "get_weather"]
    assert args(stage.calls[1]) == {"city": "Oslo", "days": 2}


def test_a_partial_marker_at_the_end_is_text():
    stage = ToolStage(TextStage(), spec(None))
    chunks = stage.feed("see <tool_") + stage.flush()
    assert "".join(c.text for c in chunks) == "see <tool_" and stage.calls == []


# -- the grammar -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    return tok, llguidance.hf.from_tokenizer(tok, n_vocab=len(tok), eos_token=stops)


def accepts(tokenizer, tool_spec, text, thinking="off") -> bool:
    tok, wrapped = tokenizer
    lark = llguidance.LLMatcher.grammar_from_lark(tool_lark(tool_spec, thinking=thinking, tokens=TOKENS))
    matcher = llguidance.LLMatcher(wrapped, lark, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    for token in tok.encode(text, add_special_tokens=False):
        if not matcher.consume_token(token):
            return False
    return matcher.is_accepting()


CALL = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>{}</arg_value>\n<arg_key>days</arg_key>\n<arg_value>{}</arg_value>\n</tool_call>"  # noqa: E501


def test_grammar_takes_the_template_format_and_refuses_what_breaks_the_schema(tokenizer):
    required = spec()
    assert accepts(tokenizer, required, "\n" + CALL.format("Oslo <b>", 3))
    assert accepts(tokenizer, required, "<tool_call>now\n</tool_call>\n" + CALL.format("x", 7))  # parallel
    assert not accepts(
        tokenizer, spec(parallel=False), "<tool_call>now\n</tool_call>\n" + CALL.format("x", 7)
    )
    assert not accepts(tokenizer, required, CALL.format("a" * 21, 3))  # maxLength
    assert not accepts(tokenizer, required, CALL.format("Oslo", 9))  # maximum
    assert not accepts(tokenizer, required, CALL.format("Oslo", '"3"'))  # integer, not a string
    assert not accepts(tokenizer, required, "<tool_call>get_weather\n</tool_call>")  # required args
    assert not accepts(tokenizer, required, "Sure: " + CALL.format("Oslo", 3))  # no text when forced
    named = spec({"type": "function", "function": {"name": "now"}})
    assert not accepts(tokenizer, named, CALL.format("Oslo", 3))
    assert accepts(tokenizer, named, "<tool_call>now\n</tool_call>")
    unit = "<arg_key>unit</arg_key>\n<arg_value>{}</arg_value>\n<arg_key>days"
    with_unit = CALL.format("Oslo", 3).replace("<arg_key>days", unit)  # in the schema's order
    assert accepts(tokenizer, required, with_unit.format("celsius"))
    assert not accepts(tokenizer, required, with_unit.format("kelvin"))  # enum


def test_auto_grammar_lets_text_through_and_holds_an_opened_call(tokenizer):
    auto = spec(None)
    assert accepts(tokenizer, auto, "Just an answer <|begin_of_box|>42<|end_of_box|>\nwith lines")
    assert accepts(tokenizer, auto, "Let me check.\n" + CALL.format("Oslo", 3))
    assert not accepts(tokenizer, auto, "Let me check.\n" + CALL.format("Oslo", 30))
    thinking = "\n<think>step by step</think>\n"
    assert accepts(tokenizer, auto, thinking + CALL.format("Oslo", 3), thinking="model-opens")
    assert accepts(tokenizer, spec(), thinking + CALL.format("Oslo", 3), thinking="model-opens")


# -- through the engine (the tiny random model cannot choose a tool: force it) ----------------

FAST = {"thinking": False, "max_new_tokens": 200, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
ASK = [{"role": "user", "content": "Use the tool."}]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_forced_calls_validate_against_their_schema(engine, shape):
    parameters = SHAPES[shape]
    for seed in range(3):
        for choice in ("required", {"type": "function", "function": {"name": shape}}):
            reply = engine.chat(
                ASK, tools=[tool(shape, parameters), NOARGS], tool_choice=choice, seed=seed, **FAST
            )
            if reply.finish_reason == "length":
                continue  # a random model may fill a string up to its budget
            assert reply.finish_reason == "tool_calls" and reply.text == "", reply
            for call in reply.tool_calls:
                if call.name == shape:
                    jsonschema.validate(json.loads(call.arguments), parameters)
                else:
                    assert call.name == "now" and choice == "required" and call.arguments == "{}"


def test_forced_call_after_thinking_keeps_the_thinking_in_reasoning(engine):
    reply = engine.chat(ASK, tools=[WEATHER], tool_choice="required", seed=0,
                        **{**FAST, "thinking": True, "thinking_budget": 8})  # fmt: skip
    assert reply.finish_reason == "tool_calls" and reply.reasoning and reply.text == ""
    jsonschema.validate(json.loads(reply.tool_calls[0].arguments), WEATHER["function"]["parameters"])


def test_streaming_ends_with_the_calls(engine):
    chunks = list(engine.stream(ASK, tools=[WEATHER], tool_choice="required", seed=1, **FAST))
    assert all(not c.tool_calls for c in chunks[:-1]) and chunks[-1].finish_reason == "tool_calls"
    assert Reply.collect(chunks).tool_calls == chunks[-1].tool_calls


def test_tool_choice_none_and_auto_answer_text_that_parses(engine):
    none = engine.chat(ASK, tools=[WEATHER], tool_choice="none", seed=0, **FAST)
    assert none.tool_calls == () and none.finish_reason in ("stop", "length")
    for seed in range(3):
        reply = engine.chat(ASK, tools=[WEATHER, NOARGS], seed=seed, **FAST)
        assert reply.finish_reason in ("stop", "length", "tool_calls") and "<tool_call>" not in reply.text


def test_auto_call_once_opened_is_held_to_the_schema(cache_dir):
    biased = glmflash.load("tiny", "fp32", "cpu", cache_dir=str(cache_dir))  # its own head: favour changes it
    try:
        favour(biased, "<tool_call>")
        reply = biased.chat(ASK, tools=[WEATHER], seed=0, **FAST)
        assert reply.finish_reason == "tool_calls", reply
        jsonschema.validate(json.loads(reply.tool_calls[0].arguments), WEATHER["function"]["parameters"])
    finally:
        biased.close()


def history(result):
    call = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}]  # fmt: skip


def test_tool_results_go_back_in_with_images(engine):
    image = [{"type": "image_url", "image_url": {"url": data_url(png_bytes((56, 56)))}}]
    text = engine.chat(history("12:00"), tools=[NOARGS], max_new_tokens=4, thinking=False)
    seen = engine.chat(history(image), tools=[NOARGS], max_new_tokens=4, thinking=False)
    assert text.usage.image_tokens == 0 and seen.usage.image_tokens > 0  # the image reached the model
    prompt = engine.render_prompt(history("12:00 <|user|>"), thinking=False)
    assert "<tool_call>now\n</tool_call><|observation|>\n<tool_response>\n12:00" in prompt
    assert "<|user|>" not in prompt.split("<tool_response>")[1]  # control text in a result is text


@pytest.mark.parametrize(
    "messages, param",
    [
        (
            [*history("x")[:1], {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[1].tool_call_id",
        ),
        ([*history("x")[:2], {"role": "tool", "content": "x"}], "messages[2].tool_call_id"),
        ([*history("x"), history("x")[2]], "messages[3].tool_call_id"),  # answered twice
        (
            history([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
            "messages[2].content[0]",
        ),
        (
            [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
        ([*ASK, {"role": "assistant", "tool_calls": "f"}], "messages[1].tool_calls"),
        ([{"role": "user", "content": "x", "tool_calls": [{"id": "a"}]}], "messages[0].tool_calls"),
    ],
)
def test_bad_tool_messages_are_400s(engine, messages, param):
    with pytest.raises(InvalidRequestError) as error:
        engine.chat(messages, max_new_tokens=2)
    assert error.value.status == 400 and error.value.param == param, error.value.message


def test_tools_and_response_format_together_are_refused(engine):
    with pytest.raises(InvalidRequestError) as error:
        engine.chat(ASK, tools=[WEATHER], response_format={"type": "json_object"}, max_new_tokens=2)
    assert error.value.param == "response_format"


# -- the loop helper and the zoom tool ----------------------------------------------------------


def test_describe_a_python_function():
    from glmflash.text.tool_loop import describe

    def area(width: int, height: float, unit: str = "px"):
        """The area of a rectangle.

        More words."""

    assert describe(area)["function"] == {
        "name": "area",
        "description": "The area of a rectangle.",
        "parameters": {
            "type": "object",
            "properties": {
                "width": {"type": "integer"},
                "height": {"type": "number"},
                "unit": {"type": "string"},
            },
            "required": ["width", "height"],
        },
    }


def test_zoom_crops_in_model_coordinates():
    from PIL import Image

    from glmflash.grounding.zoom import crop, zoom_tool

    picture = Image.new("RGB", (400, 200))
    assert crop(picture, [500, 0, 1000, 500]).size == (200, 100)
    assert crop(picture, [1000, 500, 500, 0]).size == (200, 100)  # corners in any order
    assert crop(picture, [10, 10, 10, 10]).size == (28, 28)  # grown to one merged patch
    _tool, functions = zoom_tool([picture])
    assert "image must be" in functions["zoom_in"]([0, 0, 10, 10], image=2)


def test_the_loop_runs_the_zoom_tool_and_ends_with_an_answer(engine):
    from PIL import Image

    from glmflash.grounding.zoom import zoom_tool
    from glmflash.text.tool_loop import run_tools

    picture = Image.new("RGB", (320, 240), (10, 200, 30))
    tool, functions = zoom_tool([picture])
    messages = [
        {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "Zoom."}]}
    ]
    named = {"type": "function", "function": {"name": "zoom_in"}}
    run = run_tools(engine, messages, functions, tools=[tool], tool_choice=named, max_steps=1,
                    parallel_tool_calls=False, **FAST)  # fmt: skip
    assert len(run.steps) == 1 and run.steps[0][0].name == "zoom_in"
    result = run.steps[0][1]
    assert hasattr(result, "size") or str(result).startswith("Error"), result  # a crop (or the error it met)
    assert run.reply.tool_calls == () and run.messages[-1]["role"] == "assistant"
    assert [m["role"] for m in run.messages] == ["user", "assistant", "tool", "assistant"]


def test_the_loop_gives_errors_back_and_keeps_to_its_step_limit(engine):
    from glmflash.text.tool_loop import run_tools

    def now(zone: int):
        """The time in a zone."""
        raise RuntimeError("clock broken")

    run = run_tools(
        engine, ASK, [now], tool_choice="required", max_steps=2, parallel_tool_calls=False, **FAST
    )
    assert 1 <= len(run.steps) <= 2 and all(
        result == "Error: RuntimeError: clock broken" for _, result in run.steps
    )
    assert run.reply.tool_calls == ()
    with pytest.raises(InvalidRequestError):
        run_tools(engine, ASK, [now], max_steps=-1)


def test_parallel_calls_stop_at_the_limit(tokenizer):
    from glmflash.text.tool_grammar import MAX_CALLS

    calls = "\n".join(["<tool_call>now\n</tool_call>"] * MAX_CALLS)
    assert accepts(tokenizer, spec(), calls) and not accepts(
        tokenizer, spec(), calls + "\n<tool_call>now\n</tool_call>"
    )


def test_argument_markers_that_are_tokens_are_written_as_tokens():
    """The real tokenizer very probably has <arg_key> and the others as added tokens: the grammar
    then uses those tokens, and a lexeme (a string value) can never swallow one."""
    from tokenizers import AddedToken

    tok = build_tokenizer()
    markers = ["<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"]
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in markers])
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    wrapped = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok), eos_token=stops)
    lark = tool_lark(spec(), thinking="off", tokens=[*TOKENS, *markers])
    assert "<arg_key>" in lark and '"<arg_key>"' not in lark

    def fits(text):
        matcher = llguidance.LLMatcher(wrapped, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
        ids = tok.encode(text, add_special_tokens=False)
        return all(matcher.consume_token(i) for i in ids) and matcher.is_accepting()

    assert fits(CALL.format("Oslo", 3)) and not fits(CALL.format("Oslo", 30))
