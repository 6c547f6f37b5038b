"""Tests of helpers.grounding: parsing Qwen3-VL grounding answers, coordinates, drawing, prompts."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import fonts
from helpers.grounding import (
    PALETTE,
    Detection,
    draw_grounding,
    grounding_prompt,
    parse_grounding,
    pixels_to_relative,
    relative_to_pixels,
    to_pixels,
)

RED = Detection("red circle", bbox=(75, 100, 300, 400))
BLUE = Detection("blue square", bbox=(388, 100, 612, 400))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"},\n'
            ' {"bbox_2d": [388, 100, 612, 400], "label": "blue square"}]\n```',
            [RED, BLUE],
            id="fenced",
        ),
        pytest.param(
            "Sure! Here's what I found:\n"
            '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]\n```\n'
            "Let me know if you need more.",
            [RED],
            id="prose-and-fence",
        ),
        pytest.param('[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]', [RED], id="bare-list"),
        pytest.param('{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}', [RED], id="single-object"),
        pytest.param(
            'The object is at {"bbox_2d": [75, 100, 300, 400], "label": "red circle"}.',
            [RED],
            id="object-in-prose",
        ),
        pytest.param(
            '```json\n[\n  {"bbox_2d": [75, 100, 300, 400], "label": "red circle",},\n'
            '  {"bbox_2d": [388, 100, 612, 400], "label": "blue square"},\n]\n```',
            [RED, BLUE],
            id="trailing-commas",
        ),
        pytest.param(
            '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}, {"bbox_2d": [388, 10',
            [RED],
            id="truncated-mid-list",
        ),
        pytest.param(
            "[{'bbox_2d': [75, 100, 300, 400], 'label': 'red circle'}, {'bbox_2d': [388, 100, 612, 400], "
            "'label': 'blue square'}]",
            [RED, BLUE],
            id="single-quotes",
        ),
        pytest.param(
            '```json\n[{"point_2d": [150, 250], "label": "red circle"}]\n```',
            [Detection("red circle", point=(150, 250))],
            id="point-2d",
        ),
        pytest.param(
            '[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}, '
            '{"point_2d": [500, 500], "label": "dot"}]',
            [RED, Detection("dot", point=(500, 500))],
            id="boxes-and-points",
        ),
        pytest.param(
            '{"objects": [{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]}',
            [RED],
            id="wrapper-object",
        ),
        pytest.param('{"bbox_2d": [300, 400, 75, 100], "label": "red circle"}', [RED], id="swapped-corners"),
        pytest.param(
            '{"bbox_2d": [75.5, 100, 300, 400.25], "label": "c"}',
            [Detection("c", bbox=(75.5, 100, 300, 400.25))],
            id="floats",
        ),
        pytest.param("[75, 100, 300, 400]", [Detection("", bbox=(75, 100, 300, 400))], id="bare-coordinates"),
        pytest.param(
            '{"bbox_2d": [75, 100, 300, 400]}', [Detection("", bbox=(75, 100, 300, 400))], id="no-label"
        ),
        pytest.param(
            '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "红色圆形"}]\n```',
            [Detection("红色圆形", bbox=(75, 100, 300, 400))],
            id="chinese-label",
        ),
        pytest.param(
            '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]\n```\n'
            '```json\n[{"bbox_2d": [388, 100, 612, 400], "label": "blue square"}]\n```',
            [RED, BLUE],
            id="two-fences",
        ),
        pytest.param(
            '[{"bbox_2d": [75, 100, 300], "label": "bad"}, '
            '{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]',
            [RED],
            id="skips-invalid-keeps-valid",
        ),
    ],
)
def test_parse_grounding_reads_qwen_answer_variants(text: str, expected: list[Detection]) -> None:
    assert parse_grounding(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n", id="blank"),
        pytest.param(None, id="none"),
        pytest.param(42, id="not-a-string"),
        pytest.param("I cannot see any shapes in this image.", id="prose-only"),
        pytest.param("```json\n```", id="empty-fence"),
        pytest.param("[1, 2, 3]", id="three-numbers"),
        pytest.param('{"label": "red circle"}', id="no-coordinates"),
        pytest.param('{"bbox_2d": [1, 2, 3], "label": "x"}', id="bbox-too-short"),
        pytest.param('{"bbox_2d": ["a", "b", "c", "d"], "label": "x"}', id="bbox-strings"),
        pytest.param('{"bbox_2d": [true, 1, 2, 3], "label": "x"}', id="bbox-bools"),
        pytest.param('{"point_2d": [1], "label": "x"}', id="point-too-short"),
        pytest.param("{{{{ }}", id="braces"),
        pytest.param('```json\n[{"bbox_2d": [75, 100', id="truncated-first-object"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting"),
        pytest.param("__import__('os').system('echo hacked')", id="code-is-not-run"),
    ],
)
def test_parse_grounding_returns_empty_list_for_garbage(text: object) -> None:
    assert parse_grounding(text) == []


def test_parse_grounding_never_raises_on_fuzzed_input() -> None:
    rng = random.Random(0)  # fixed seed: the same strings every run
    alphabet = "{}[]\",:'` \n0123456789.-abcjsonbox_2dpointlabel"
    seed = '```json\n[{"bbox_2d": [75, 100, 300, 400], "label": "red circle"}]\n```'
    for _ in range(300):
        chars = list(seed)
        for _ in range(rng.randint(1, 10)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        result = parse_grounding("".join(chars))
        assert isinstance(result, list)
        assert all(isinstance(d, Detection) for d in result)


def test_to_pixels_scales_0_1000_to_image_size() -> None:
    det = Detection("x", bbox=(100, 250, 500, 1000), point=(500, 500))
    px = to_pixels(det, 800, 600)
    assert px == Detection("x", bbox=(80, 150, 400, 600), point=(400, 300))
    assert det.bbox == (100, 250, 500, 1000)  # the input is not changed


def test_to_pixels_clamps_outside_coordinates() -> None:
    px = to_pixels(Detection("x", bbox=(-10, 0, 1200, 500), point=(1000, 1000)), 800, 600)
    assert px.bbox == (0, 0, 800, 300)
    assert px.point == (799, 599)  # a point must name a pixel that exists


def test_to_pixels_keeps_missing_parts_missing() -> None:
    assert to_pixels(Detection("p", point=(0, 0)), 10, 10) == Detection("p", point=(0, 0))
    assert to_pixels(Detection("b", bbox=(0, 0, 1000, 1000)), 10, 20).point is None


def test_pixels_and_relative_coordinates_round_trip() -> None:
    box = (60, 60, 240, 240)
    rel = pixels_to_relative(box, 800, 600)
    assert rel == (75, 100, 300, 400)
    assert relative_to_pixels(rel, 800, 600) == box


def _white(width: int = 400, height: int = 300) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 255, 255))


def test_draw_grounding_draws_box_edges_and_leaves_the_interior() -> None:
    image = _white()
    out = draw_grounding(image, [Detection("thing", bbox=(250, 250, 750, 750))])
    arr = np.asarray(out)
    # 0-1000 → pixels: (100, 75, 300, 225) on 400x300.
    assert tuple(arr[150, 100]) == PALETTE[0]  # left edge
    assert tuple(arr[150, 299]) == PALETTE[0]  # right edge (exclusive end - 1)
    assert tuple(arr[150, 200]) == (255, 255, 255)  # interior untouched
    assert tuple(arr[10, 10]) == (255, 255, 255)  # far outside untouched
    # The label tag sits just above the box's top-left corner.
    assert (arr[55:75, 100:140] != 255).any()


def test_draw_grounding_returns_a_copy_and_keeps_the_input() -> None:
    image = _white()
    before = image.tobytes()
    out = draw_grounding(image, [Detection("a", bbox=(0, 0, 500, 500)), Detection("b", point=(800, 800))])
    assert out is not image
    assert image.tobytes() == before
    assert out.size == image.size and out.mode == "RGB"
    assert out.tobytes() != before


def test_draw_grounding_marks_points() -> None:
    out = np.asarray(draw_grounding(_white(), [Detection("", point=(500, 500))]))
    assert tuple(out[150, 200]) == PALETTE[0]
    assert tuple(out[10, 10]) == (255, 255, 255)


def test_draw_grounding_uses_a_new_colour_per_detection() -> None:
    dets = [Detection("", bbox=(0, 0, 400, 400)), Detection("", bbox=(600, 600, 1000, 1000))]
    arr = np.asarray(draw_grounding(_white(), dets))
    assert tuple(arr[60, 0]) == PALETTE[0]
    assert tuple(arr[250, 399]) == PALETTE[1]


def test_draw_grounding_accepts_other_image_modes() -> None:
    for mode in ("RGBA", "L", "P"):
        out = draw_grounding(Image.new(mode, (200, 100)), [Detection("x", bbox=(100, 200, 900, 900))])
        assert out.mode == "RGB" and out.size == (200, 100)


def test_chinese_labels_without_cjk_font_become_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    dets = [Detection("红色圆形", bbox=(250, 250, 750, 750))]
    with pytest.warns(UserWarning, match="CJK"):
        out = draw_grounding(_white(), dets)
    numbered = draw_grounding(_white(), [Detection("#1", bbox=(250, 250, 750, 750))])
    assert out.tobytes() == numbered.tobytes()


@pytest.mark.skipif(fonts.find_cjk_font() is None, reason="no CJK font on this machine")
def test_chinese_labels_with_cjk_font_are_drawn_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = draw_grounding(_white(), [Detection("红色圆形", bbox=(250, 250, 750, 750))])
    assert out.tobytes() != draw_grounding(_white(), [Detection("#1", bbox=(250, 250, 750, 750))]).tobytes()


def test_draw_grounding_with_nothing_to_draw_is_an_equal_copy() -> None:
    image = _white()
    out = draw_grounding(image, [])
    assert out is not image and out.tobytes() == image.tobytes()


def test_grounding_prompt_asks_for_qwen_json() -> None:
    prompt = grounding_prompt()
    assert "every shape" in prompt and "JSON" in prompt and "bbox_2d" in prompt
    assert "point_2d" in grounding_prompt("the cat's nose", kind="point")
    zh = grounding_prompt("所有形状", language="zh")
    assert "所有形状" in zh and "bbox_2d" in zh


@pytest.mark.parametrize("kwargs", [{"kind": "mask"}, {"language": "fr"}])
def test_grounding_prompt_rejects_unknown_options(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        grounding_prompt(**kwargs)  # type: ignore[arg-type]
