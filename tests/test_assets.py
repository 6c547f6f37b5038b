"""Tests of the committed assets in images/ against the ground truth in helpers.assets."""

from __future__ import annotations

import io
import itertools
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from helpers import assets
from helpers.assets import (
    CAT_PHOTO,
    CLIP,
    IMAGES_DIR,
    MOVING_CLIP_PATH,
    OCR_LINES,
    OCR_SAMPLE_PATH,
    OCR_SIZE,
    OCR_TEXT_LINES,
    SCENE_SIZE,
    SHAPES,
    SHAPES_SCENE_PATH,
    expected_grounding_answer,
    find_cjk_font,
    generate_all,
    import_cat_photo,
    render_clip_frame,
    render_ocr_sample,
    render_shapes_scene,
)
from helpers.grounding import parse_grounding, to_pixels

KIB = 1024


@pytest.mark.parametrize(
    ("path", "max_bytes"),
    [
        (OCR_SAMPLE_PATH, 200 * KIB),
        (SHAPES_SCENE_PATH, 200 * KIB),
        (MOVING_CLIP_PATH, 200 * KIB),
        (CAT_PHOTO.path, 150 * KIB),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_committed_asset_exists_and_is_small(path: Path, max_bytes: int) -> None:
    assert path.is_file(), f"{path} missing: run `python -m helpers.assets`"
    assert 0 < path.stat().st_size < max_bytes


def test_images_readme_names_every_asset_and_its_licence() -> None:
    readme = (IMAGES_DIR / "README.md").read_text(encoding="utf-8")
    for path in (OCR_SAMPLE_PATH, SHAPES_SCENE_PATH, MOVING_CLIP_PATH, CAT_PHOTO.path):
        assert f"`{path.name}`" in readme
    assert CAT_PHOTO.licence in readme
    assert "SIL Open Font License 1.1" in readme


# --------------------------------------------------------------------------- OCR sample


@pytest.fixture(scope="module")
def ocr_pixels() -> np.ndarray:
    with Image.open(OCR_SAMPLE_PATH) as im:
        assert im.format == "PNG" and im.size == OCR_SIZE
        return np.asarray(im.convert("RGB"))


def test_ocr_text_mixes_chinese_and_english() -> None:
    assert OCR_TEXT_LINES[0] == "Qwen3-VL 部署教程"
    assert any("RTX 4090 · 24 GB" in line for line in OCR_TEXT_LINES)
    text = "".join(OCR_TEXT_LINES)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert any(ch.isascii() and ch.isalpha() for ch in text)


def test_ocr_ink_is_in_every_line_slot_and_nowhere_else(ocr_pixels: np.ndarray) -> None:
    ink = ocr_pixels.max(axis=2) < 128  # dark text on a light page
    outside = ink.copy()
    for line in OCR_LINES:
        x1, y1, x2, y2 = line.box
        # A line of 10+ glyphs leaves far more than 500 dark pixels.
        assert ink[y1:y2, x1:x2].sum() > 500, line.text
        outside[y1:y2, x1:x2] = False
    assert outside.sum() == 0


def test_ocr_line_slots_do_not_overlap() -> None:
    boxes = sorted(line.box for line in OCR_LINES)
    for (_, _, _, bottom), (_, top, _, _) in itertools.pairwise(boxes):
        assert bottom <= top
    assert all(0 <= x1 < x2 <= OCR_SIZE[0] and 0 <= y1 < y2 <= OCR_SIZE[1] for x1, y1, x2, y2 in boxes)


def test_ocr_sample_rebuilds_identically_with_its_font(ocr_pixels: np.ndarray) -> None:
    # The committed PNG was drawn with Noto Sans SC, pinned in requirements-dev.txt (pylopdf-fonts-zh-cn).
    font = find_cjk_font()
    assert font is not None and font.name == "NotoSansSC-Regular.otf", (
        f"found {font}: run `make setup-dev` (pip install -r requirements-dev.txt) for Noto Sans SC"
    )
    assert np.array_equal(np.asarray(render_ocr_sample()), ocr_pixels)


def test_ocr_sample_without_cjk_font_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "find_cjk_font", lambda: None)
    with pytest.raises(FileNotFoundError, match="pylopdf-fonts-zh-cn"):
        render_ocr_sample()


# --------------------------------------------------------------------------- shapes scene


@pytest.fixture(scope="module")
def scene_pixels() -> np.ndarray:
    with Image.open(SHAPES_SCENE_PATH) as im:
        assert im.format == "PNG" and im.size == SCENE_SIZE
        return np.asarray(im.convert("RGB"))


def test_shapes_have_distinct_names_colours_and_boxes() -> None:
    assert 4 <= len(SHAPES) <= 6
    for attr in ("name", "name_zh", "color", "bbox"):
        values = [getattr(s, attr) for s in SHAPES]
        assert len(set(values)) == len(values), attr


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_shape_colour_fills_exactly_its_bbox(scene_pixels: np.ndarray, shape: assets.Shape) -> None:
    cx, cy = shape.center
    assert tuple(scene_pixels[cy, cx]) == shape.color
    mask = (scene_pixels == np.array(shape.color, dtype=np.uint8)).all(axis=2)
    ys, xs = np.nonzero(mask)
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # exclusive ends, like bbox
    assert np.allclose(found, shape.bbox, atol=1), (found, shape.bbox)
    x1, y1, x2, y2 = shape.bbox
    # Even the star covers over a third of its box; nothing else has this colour.
    assert mask[y1:y2, x1:x2].mean() > 0.3
    assert mask.sum() == mask[y1:y2, x1:x2].sum()


def test_shape_bbox_in_qwen_coordinates() -> None:
    red = next(s for s in SHAPES if s.name == "red circle")
    assert red.bbox == (60, 60, 240, 240)
    assert red.bbox_1000() == (75, 100, 300, 400)  # 800x600 image
    assert all(0 <= v <= 1000 for s in SHAPES for v in s.bbox_1000())


def test_expected_grounding_answer_parses_back_to_the_shapes() -> None:
    dets = parse_grounding(expected_grounding_answer())
    assert [d.label for d in dets] == [s.name for s in SHAPES]
    for det, shape in zip(dets, SHAPES, strict=True):
        px = to_pixels(det, *SCENE_SIZE)
        assert np.allclose(px.bbox, shape.bbox, atol=1)


def test_shapes_scene_generator_reproduces_committed_file(scene_pixels: np.ndarray) -> None:
    rebuilt = np.asarray(render_shapes_scene())
    # Pillow is pinned, so this is normally exact; a tiny tolerance absorbs text-rendering changes.
    assert (rebuilt != scene_pixels).any(axis=2).mean() < 0.005


# --------------------------------------------------------------------------- moving clip


@pytest.fixture(scope="module")
def clip_decoded() -> tuple[av.video.stream.VideoStream, list[np.ndarray], float]:
    with av.open(str(MOVING_CLIP_PATH)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        duration = container.duration / av.time_base
        return stream, frames, duration


def test_clip_stream_matches_ground_truth(clip_decoded) -> None:
    stream, frames, duration = clip_decoded
    assert stream.codec_context.name == CLIP.codec
    assert stream.codec_context.pix_fmt == CLIP.pix_fmt
    assert (stream.width, stream.height) == (CLIP.width, CLIP.height)
    assert stream.average_rate == CLIP.fps
    assert len(frames) == CLIP.frame_count == 32
    assert duration == pytest.approx(CLIP.duration, abs=0.05)
    assert all(f.shape == (CLIP.height, CLIP.width, 3) for f in frames)


def _number_region(frame: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = CLIP.number_box
    return frame[y1:y2, x1:x2].astype(np.int16)


def test_clip_number_changes_once_per_second(clip_decoded) -> None:
    _, frames, _ = clip_decoded
    fps = CLIP.fps
    for second in range(CLIP.seconds):
        first, last = frames[second * fps], frames[second * fps + fps - 1]
        # Within one second the number region barely changes (codec noise only)...
        assert np.abs(_number_region(first) - _number_region(last)).mean() < 3
        if second + 1 < CLIP.seconds:
            nxt = frames[(second + 1) * fps]
            # ...and the next second shows a different digit.
            assert np.abs(_number_region(first) - _number_region(nxt)).mean() > 10


@pytest.mark.parametrize("second", range(CLIP.seconds))
def test_clip_shows_the_expected_number_each_second(clip_decoded, second: int) -> None:
    _, frames, _ = clip_decoded
    decoded = _number_region(frames[second * CLIP.fps + CLIP.fps // 2])
    # Compare with a freshly drawn frame of every second: the closest must be this second's number.
    distances = [
        np.abs(decoded - _number_region(np.asarray(render_clip_frame(s * CLIP.fps)))).mean()
        for s in range(CLIP.seconds)
    ]
    assert int(np.argmin(distances)) == second
    assert CLIP.number_at(second + 0.5) == CLIP.numbers[second] == second + 1


def test_clip_ball_moves_left_to_right(clip_decoded) -> None:
    _, frames, _ = clip_decoded
    xs = []
    for i, frame in enumerate(frames):
        r, g, b = (frame[..., c].astype(int) for c in range(3))
        ys_, xs_ = np.nonzero((r > 150) & (g < 120) & (b < 120))  # the red ball, after lossy coding
        assert len(xs_) > 500
        cx, cy = CLIP.ball_center(i)
        assert abs(xs_.mean() - cx) < 2 and abs(ys_.mean() - cy) < 2
        xs.append(xs_.mean())
    assert CLIP.direction == "left_to_right"
    assert all(b > a for a, b in itertools.pairwise(xs))


def test_generate_all_is_deterministic(tmp_path: Path) -> None:
    first = generate_all(tmp_path / "a")
    second = generate_all(tmp_path / "b")
    for name in ("shapes_scene", "moving_clip"):
        assert first[name].read_bytes() == second[name].read_bytes(), name


# --------------------------------------------------------------------------- real photo


def test_cat_photo_matches_its_record() -> None:
    with Image.open(CAT_PHOTO.path) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.size == (CAT_PHOTO.width, CAT_PHOTO.height)
        assert np.asarray(im).std() > 20  # a real photo, not a flat placeholder
    assert "CC0" in CAT_PHOTO.licence and "chelsea.png" in CAT_PHOTO.source


def _png_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


def test_import_cat_photo_reads_a_png_or_a_wheel(tmp_path: Path) -> None:
    png = tmp_path / "chelsea.png"
    png.write_bytes(_png_bytes((45, 30)))
    wheel = tmp_path / "scikit_image-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("skimage/data/chelsea.png", _png_bytes((45, 30)))
    for source in (png, wheel):
        out = import_cat_photo(source, tmp_path / f"from_{source.suffix[1:]}.jpg")
        with Image.open(out) as im:
            assert im.format == "JPEG" and im.size == (45, 30)
