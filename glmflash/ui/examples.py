"""The example images the page offers: drawn by the project itself (no downloads), shipped in
glmflash/ui/examples/. Regenerate with `python -m glmflash.ui.examples`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FOLDER = Path(__file__).with_name("examples")

# (file, English question, Chinese question)
EXAMPLES = [
    ("invoice.png", "What is the total amount on this invoice?", "发票上的金额是多少？"),
    ("product.png", "Does this product listing make a false claim?", "这张商品图片是否包含违规宣传？"),
    ("chart.png", "Which quarter had the highest revenue?", "哪个季度的收入最高？"),
    (
        "scene.png",
        "Locate the red circle and the blue square: give each one's box.",
        "找出红色圆形和蓝色正方形，给出它们各自的框。",
    ),
]
# Where draw_scene puts each object, as [x1, y1, x2, y2] in 0-1000 of the image (the model's scale):
# what a correct "Locate" answer gives, and what the tests check the drawing against.
SCENE_OBJECTS = {"red circle": (100, 200, 350, 533), "blue square": (600, 400, 850, 733)}
SCENE_SIZE = (800, 600)


def _font(size: int):
    return ImageFont.load_default(size=size)


def draw_invoice() -> Image.Image:
    image = Image.new("RGB", (800, 560), "white")
    d = ImageDraw.Draw(image)
    d.rectangle([20, 20, 780, 540], outline="black", width=3)
    d.text((40, 40), "INVOICE  No. 2026-0314", font=_font(34), fill="black")
    d.text((40, 95), "Seller: Acme Trading Co., Ltd.", font=_font(22), fill="black")
    d.text((40, 125), "Buyer: Example Retail Ltd.      Date: 2026-03-14", font=_font(22), fill="black")
    rows = [("Item", "Qty", "Price"), ("Paper A4, box", "10", "600.00"), ("Toner cartridge", "2", "560.00")]
    for i, (item, qty, price) in enumerate(rows):
        y = 190 + i * 45
        d.text((60, y), item, font=_font(24), fill="black")
        d.text((480, y), qty, font=_font(24), fill="black")
        d.text((600, y), price, font=_font(24), fill="black")
        d.line([50, y + 38, 750, y + 38], fill="gray")
    d.text((420, 360), "Tax (13%): 120.00", font=_font(24), fill="black")
    d.text((420, 410), "TOTAL: 1,280.00 CNY", font=_font(32), fill="darkred")
    return image


def draw_product() -> Image.Image:
    image = Image.new("RGB", (640, 640), (236, 244, 250))
    d = ImageDraw.Draw(image)
    d.rounded_rectangle([230, 170, 410, 560], radius=40, fill=(60, 140, 90), outline="black", width=3)
    d.rectangle([285, 110, 355, 175], fill=(30, 30, 30))
    d.rectangle([245, 300, 395, 420], fill="white")
    d.text((262, 330), "VITA-MAX", font=_font(30), fill="black")
    d.text((30, 30), "Cures ALL diseases in 3 days!", font=_font(34), fill="red")
    d.text((30, 590), "100% guaranteed  -  doctors hate it", font=_font(26), fill="black")
    return image


def draw_chart() -> Image.Image:
    image = Image.new("RGB", (720, 480), "white")
    d = ImageDraw.Draw(image)
    d.text((40, 20), "Quarterly revenue 2026 (thousand CNY)", font=_font(26), fill="black")
    d.line([80, 420, 680, 420], fill="black", width=2)
    d.line([80, 420, 80, 80], fill="black", width=2)
    for i, (label, value) in enumerate([("Q1", 120), ("Q2", 135), ("Q3", 150), ("Q4", 170)]):
        x = 130 + i * 140
        top = 420 - value * 1.8
        d.rectangle([x, top, x + 80, 420], fill=(70, 110, 200))
        d.text((x + 20, 430), label, font=_font(24), fill="black")
        d.text((x + 15, top - 32), str(value), font=_font(24), fill="black")
    return image


def draw_scene() -> Image.Image:
    image = Image.new("RGB", SCENE_SIZE, (250, 248, 240))
    d = ImageDraw.Draw(image)
    w, h = SCENE_SIZE
    for name, (x1, y1, x2, y2) in SCENE_OBJECTS.items():
        box = [x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000]
        if name == "red circle":
            d.ellipse(box, fill=(220, 40, 40))
        else:
            d.rectangle(box, fill=(40, 70, 200))
    d.text((30, 20), "Find the shapes", font=_font(28), fill="black")
    return image


def write_examples(folder: Path = FOLDER) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (name, *_), draw in zip(EXAMPLES, (draw_invoice, draw_product, draw_chart, draw_scene), strict=True):
        path = folder / name
        draw().save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_examples():
        print(written)
