"""Grounding: boxes found in answers of the family's real formats (through the real text stage),
converted to pixels of the original image (aspect ratios, EXIF orientation, the engine's
downscale), drawn with Chinese labels, and the detect preset through the engine, the API and a
batch job with the tiny model."""

from __future__ import annotations

import io
import json

import openai
import pytest
from PIL import Image

from glmflash.grounding import find_boxes
from glmflash.grounding.draw import cjk_font_path, draw_boxes
from glmflash.inputs.images import ImagePolicy, load_image, original_size
from glmflash.jobs.runner import run_job
from glmflash.jobs.tasks import load_task
from glmflash.text.stage import TextStage
from tests.server_helpers import running_server

BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"


def answer_of(raw: str) -> str:
    """What the engine keeps of a raw model text: the answer, markers and thinking removed."""
    stage = TextStage(control_tokens=[BOX_OPEN, BOX_CLOSE, "<think>", "</think>"])
    chunks = stage.feed(raw) + stage.flush()
    return "".join(c.text for c in chunks if not c.reasoning)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"{BOX_OPEN}[[112, 305, 478, 920]]{BOX_CLOSE}", [("", (112, 305, 478, 920), False)]),
        (f"{BOX_OPEN}[[10,20,30,40],[50,60,70,80]]{BOX_CLOSE}",
         [("", (10, 20, 30, 40), False), ("", (50, 60, 70, 80), False)]),
        (f"{BOX_OPEN}(100,200,300,400){BOX_CLOSE}", [("", (100, 200, 300, 400), False)]),
        ("[ [ 100 , 200 , 300 , 400 ] ]", [("", (100, 200, 300, 400), False)]),
        ("<think>The cup is on the left, maybe [0, 0, 5, 5].</think>The cup: [120.5, 40, 380, 610].",
         [("", (120.5, 40, 380, 610), False)]),
        ("The cat is at [100,200,300,400] and the dog at [500,200,900,800].",
         [("", (100, 200, 300, 400), False), ("", (500, 200, 900, 800), False)]),
        ('[{"label": "猫", "bbox_2d": [10, 20, 500, 600]}, {"label": "dog", "bbox_2d": [600, 20, 900, 700]}]',
         [("猫", (10, 20, 500, 600), False), ("dog", (600, 20, 900, 700), False)]),
        ('```json\n{"objects": [{"label": "cup", "bbox_2d": [1, 2, 30, 40]}]}\n```',
         [("cup", (1, 2, 30, 40), False)]),
        ('[{"label": "button", "point_2d": [250, 750]}]', [("button", (250, 750, 250, 750), True)]),
        (f"{BOX_OPEN}[[500, 500]]{BOX_CLOSE}", [("", (500, 500, 500, 500), True)]),
        ("[300, 400, 100, 200]", [("", (100, 200, 300, 400), False)]),  # corners ordered
        # not boxes
        (f"The total is {BOX_OPEN}1,280.00{BOX_CLOSE}", []),
        (f"{BOX_OPEN}[100, 200, 1300, 400]{BOX_CLOSE}", []),  # above 1000
        ("[1, 2, 3]", []),
        ("[1, 2, 3, 4, 5]", []),
        ("[100, 200, 100, 400]", []),  # no area
        ("Pages [3, 4] of the report", []),  # a pair inside prose is not a point
        ('{"label": "x", "bbox_2d": [10, 20, 30]}', []),
        ("Nothing to see here.", []),
    ],
)  # fmt: skip
def test_boxes_are_found_by_content_in_the_familys_answer_formats(raw, expected):
    boxes = find_boxes(answer_of(raw))
    assert [(b.label, b.box, b.point) for b in boxes] == expected


@pytest.mark.parametrize("size", [(1600, 400), (300, 1200), (1000, 1000)])
def test_pixels_follow_the_official_helper_on_any_aspect_ratio(size):
    (box,) = find_boxes("[0, 250, 1000, 1000]", [size])
    w, h = size
    assert box.pixels == (0, round(0.25 * h), round(0.999 * w), round(0.999 * h))  # clamped to 0-999


def test_pixels_land_on_the_exif_oriented_original_after_the_downscale():
    stored = Image.new("RGB", (400, 200), "white")  # stored landscape, shown portrait (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)
    image = load_image(buffer.getvalue(), ImagePolicy(max_image_pixels=20_000))
    assert image.size[0] * image.size[1] <= 20_000 and original_size(image) == (200, 400)
    (box,) = find_boxes("[[100, 500, 600, 900]]", [original_size(image)])
    assert box.pixels == (20, 200, 120, 360)


def test_several_images_put_the_boxes_on_the_last():
    (box,) = find_boxes("[[0, 0, 500, 500]]", [(100, 100), (400, 200)])
    assert box.image == 1 and box.pixels == (0, 0, 200, 100)


def test_drawn_boxes_are_coloured_and_labelled_in_chinese_too():
    picture = Image.new("RGB", (400, 300), "white")
    boxes = find_boxes('[{"label": "猫 cat", "bbox_2d": [100, 200, 600, 900]}]', [picture.size])
    drawn = draw_boxes(picture, boxes)
    assert drawn.size == picture.size and picture.getpixel((40, 150)) == (255, 255, 255)  # a copy
    x1, y1, x2, y2 = boxes[0].pixels
    assert drawn.getpixel((x1, (y1 + y2) // 2)) != (255, 255, 255)  # the outline
    assert drawn.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == (255, 255, 255)  # inside untouched
    if cjk_font_path() is None:
        pytest.skip("no CJK font on this machine (./test.sh installs fonts-wqy-microhei)")
    from matplotlib.ft2font import FT2Font

    charmap = FT2Font(cjk_font_path()).get_charmap()
    assert all(ord(c) in charmap for c in "猫cat")  # the label's glyphs exist: no empty squares


def test_the_detect_preset_gives_schema_valid_boxes_in_pixels_through_the_engine(engine):
    task = load_task("detect")
    big = io.BytesIO()
    Image.new("RGB", (2000, 1000), (90, 140, 200)).save(big, "PNG")  # downscaled by the engine
    found = None
    for seed in range(16):  # the random model mostly answers with no objects: try seeds
        options = {"max_new_tokens": task.budget, "seed": seed, "temperature": 1.0, "thinking": False}
        reply = engine.chat(task.messages(big.getvalue()), response_format=task.response_format(), **options)
        objects = reply.parsed["objects"]
        assert all(len(o["bbox_2d"]) == 4 and all(0 <= v <= 1000 for v in o["bbox_2d"]) for o in objects)
        assert len(reply.boxes) <= len(objects)  # a box without area is not drawn
        if reply.boxes:
            found = reply
            break
    assert found is not None, "no seed gave a box"
    with_area = [
        o for o in found.parsed["objects"] if len(set(o["bbox_2d"][::2])) == 2 == len(set(o["bbox_2d"][1::2]))
    ]
    assert [b.label for b in found.boxes] == [o["label"].strip() for o in with_area]
    box = found.boxes[0]
    x1, y1, x2, y2 = box.box
    scale = (2000, 1000, 2000, 1000)  # the original, not the downscaled image the model saw
    assert box.pixels == tuple(round(min(v, 999) / 1000 * s) for v, s in zip(box.box, scale, strict=True))
    assert x1 < x2 and y1 < y2


def small_detect():
    """The detect preset with at most two short-labelled boxes: the same prompt and shape, and a
    few hundred tokens at worst, so the random tiny model answers in seconds on a CPU."""
    from dataclasses import replace

    task = load_task("detect")
    objects = json.loads(json.dumps(task.schema["properties"]["objects"]))
    objects["maxItems"] = 2
    objects["items"]["properties"]["label"]["maxLength"] = 8
    return replace(task, schema={**task.schema, "properties": {"objects": objects}})


def test_boxes_reach_programs_through_the_api_and_batch_records(engine, tmp_path):
    task = small_detect()
    image = tmp_path / "scene.png"
    Image.new("RGB", (640, 480), (200, 120, 40)).save(image)
    import base64

    def local(seed):
        options = {"max_new_tokens": task.budget, "seed": seed, "temperature": 1.0, "thinking": False}
        return engine.chat(
            task.messages(image.read_bytes()), response_format=task.response_format(), **options
        )

    seed, expected = next((seed, r) for seed in range(12) if (r := local(seed)).boxes)  # one with boxes
    body = {"response_format": task.response_format(), "seed": seed, "temperature": 1.0,
            "max_tokens": task.budget, "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip

    url_image = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url_image}},
                                             {"type": "text", "text": task.prompt}]}]  # fmt: skip
    with running_server(engine) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=messages, extra_body=body)
        message = reply.choices[0].message
        assert json.loads(message.content) == expected.parsed  # content: what the model wrote
        boxes = (message.model_extra or {}).get("boxes", [])
        assert boxes == [b.to_dict() | {"box": list(b.box), "pixels": list(b.pixels)} for b in expected.boxes]
        stream = client.chat.completions.create(model="m", messages=messages, extra_body=body, stream=True)
        finals = [c for c in stream if c.choices and c.choices[0].finish_reason]
        streamed = (finals[-1].choices[0].delta.model_extra or {}).get("boxes", [])
        assert streamed == boxes
    summary = run_job(engine, task, [image], tmp_path / "detect.jsonl")
    assert summary.done == 1
    (record,) = [json.loads(line) for line in (tmp_path / "detect.jsonl").read_text().splitlines()]
    assert "objects" in record["result"]
    for box in record.get("boxes", []):
        assert len(box["pixels"]) == 4 and all(0 <= v <= 640 for v in box["pixels"][::2])
