"""Boxes that are not a real model's detections are labelled as such on the picture itself."""

from __future__ import annotations

from PIL import Image

from helpers.grounding import DEMO_CAPTION, Detection, draw_grounding


def test_a_caption_adds_a_bar_with_text_above_the_unchanged_picture() -> None:
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    plain = draw_grounding(image, [Detection("a", bbox=(100, 100, 500, 500))])
    captioned = draw_grounding(image, [Detection("a", bbox=(100, 100, 500, 500))], caption=DEMO_CAPTION)
    bar = captioned.height - plain.height
    assert captioned.width == plain.width and bar > 0
    assert list(captioned.crop((0, bar, 400, bar + 300)).getdata()) == list(plain.getdata())
    text_colours = {px for px in captioned.crop((0, 0, 400, bar)).getdata() if px != (40, 40, 40)}
    assert text_colours, "the caption bar is empty"


def test_no_caption_keeps_the_picture_size() -> None:
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    assert draw_grounding(image, []).size == (400, 300)
