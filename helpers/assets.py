"""The tutorial's pictures and clip: their ground truth as data, and the script that makes them.

The files in ``images/`` are committed, so notebooks and CI never need to
rebuild them. This module is how they were made, kept for transparency and
for anyone who wants to change them::

    python -m helpers.assets                         # rebuild the synthetic assets in images/
    python -m helpers.assets --font NotoSansSC.otf   # choose the CJK font for ocr_sample.png
    python -m helpers.assets --photo-from scikit_image-0.26.0-...whl   # re-extract cat.jpg

Everything is deterministic (no randomness), so a rebuild with the same Pillow,
PyAV and font gives the same files.

Ground truth the notebooks and tests check answers against:

- ``OCR_TEXT_LINES`` / ``OCR_LINES``: the text printed in ``ocr_sample.png``;
- ``SHAPES``: name, colour and pixel box of each shape in ``shapes_scene.png``;
- ``CLIP``: size, fps, frame count, the number shown each second and the
  ball's direction in ``moving_clip.mp4``;
- ``CAT_PHOTO``: the real photograph and its licence.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from helpers.fonts import CJK_FONT_HINT, find_cjk_font
from helpers.grounding import pixels_to_relative

__all__ = [
    "CAT_PHOTO",
    "CAT_PHOTO_PATH",
    "CLIP",
    "IMAGES_DIR",
    "MOVING_CLIP_PATH",
    "OCR_LINES",
    "OCR_SAMPLE_PATH",
    "OCR_SIZE",
    "OCR_TEXT_LINES",
    "SCENE_SIZE",
    "SHAPES",
    "SHAPES_SCENE_PATH",
    "MovingClip",
    "Photo",
    "Shape",
    "TextLine",
    "expected_grounding_answer",
    "find_cjk_font",
    "generate_all",
    "import_cat_photo",
    "render_clip_frame",
    "render_ocr_sample",
    "render_shapes_scene",
    "write_moving_clip",
]

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
OCR_SAMPLE_PATH = IMAGES_DIR / "ocr_sample.png"
SHAPES_SCENE_PATH = IMAGES_DIR / "shapes_scene.png"
MOVING_CLIP_PATH = IMAGES_DIR / "moving_clip.mp4"
CAT_PHOTO_PATH = IMAGES_DIR / "cat.jpg"

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

# Box convention everywhere: (x1, y1, x2, y2) in pixels, x2/y2 exclusive, so
# width = x2 - x1. Qwen's bbox_2d uses the same corner order.


# --------------------------------------------------------------------------- OCR sample


@dataclass(frozen=True)
class TextLine:
    """One printed line: its text, the slot it is drawn in, and the font size used."""

    text: str
    box: Box
    font_size: int


OCR_SIZE = (800, 480)
OCR_BACKGROUND: RGB = (250, 248, 240)
OCR_INK: RGB = (25, 25, 35)
OCR_LINES: tuple[TextLine, ...] = (
    TextLine("Qwen3-VL 部署教程", (60, 40, 740, 120), 60),
    TextLine("RTX 4090 · 24 GB 显存", (60, 140, 740, 200), 40),
    TextLine("价格：¥1.98 / 小时", (60, 220, 740, 280), 40),
    TextLine("日期：2025-11-03", (60, 300, 740, 360), 40),
    TextLine("Hello, 世界! OCR 123", (60, 380, 740, 440), 40),
)
OCR_TEXT_LINES: tuple[str, ...] = tuple(line.text for line in OCR_LINES)


def render_ocr_sample(font_path: str | Path | None = None) -> Image.Image:
    """Draw ``ocr_sample.png``: each line of ``OCR_LINES`` left-aligned and centred in its slot.

    Raises ``FileNotFoundError`` when no CJK font is available.
    """
    path = Path(font_path) if font_path else find_cjk_font()
    if path is None or not path.is_file():
        raise FileNotFoundError(CJK_FONT_HINT)
    image = Image.new("RGB", OCR_SIZE, OCR_BACKGROUND)
    draw = ImageDraw.Draw(image)
    for line in OCR_LINES:
        x1, y1, x2, y2 = line.box
        size = line.font_size
        font = ImageFont.truetype(str(path), size)
        # Shrink until the text fits its slot, so any font keeps the layout (and the ground truth).
        while size > 10:
            left, top, right, bottom = draw.textbbox((0, 0), line.text, font=font, anchor="lm")
            if right - left <= x2 - x1 and bottom - top <= y2 - y1:
                break
            size -= 2
            font = ImageFont.truetype(str(path), size)
        draw.text((x1, (y1 + y2) // 2), line.text, font=font, fill=OCR_INK, anchor="lm")
    return image


# --------------------------------------------------------------------------- shapes scene


@dataclass(frozen=True)
class Shape:
    """One filled shape in ``shapes_scene.png``: what it is, its exact colour and its pixel box."""

    name: str
    name_zh: str
    kind: str
    color_name: str
    color: RGB
    bbox: Box

    @property
    def center(self) -> tuple[int, int]:
        """Pixel at the middle of the box (inside every shape drawn here)."""
        x1, y1, x2, y2 = self.bbox
        return ((x1 + x2) // 2, (y1 + y2) // 2)

    def bbox_1000(self, width: int | None = None, height: int | None = None) -> Box:
        """The box in Qwen3-VL's 0-1000 relative coordinates (what a correct answer contains)."""
        w, h = width or SCENE_SIZE[0], height or SCENE_SIZE[1]
        return pixels_to_relative(self.bbox, w, h)  # type: ignore[return-value]


SCENE_SIZE = (800, 600)
SCENE_BACKGROUND: RGB = (244, 244, 238)
SCENE_LABEL_INK: RGB = (60, 60, 60)
SHAPES: tuple[Shape, ...] = (
    Shape("red circle", "红色圆形", "circle", "red", (220, 50, 47), (60, 60, 240, 240)),
    Shape("blue square", "蓝色正方形", "square", "blue", (38, 110, 210), (310, 60, 490, 240)),
    Shape("green triangle", "绿色三角形", "triangle", "green", (46, 160, 67), (560, 60, 760, 240)),
    Shape("yellow star", "黄色五角星", "star", "yellow", (240, 190, 0), (150, 330, 340, 510)),
    Shape("purple diamond", "紫色菱形", "diamond", "purple", (140, 70, 170), (460, 330, 640, 510)),
)


def _star_points(box: Box) -> list[tuple[float, float]]:
    """A five-pointed star (point up) stretched to fill ``box`` exactly."""
    raw = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.382  # inner/outer radius ratio of a regular star
        a = math.radians(-90 + 36 * i)
        raw.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    x1, y1, x2, y2 = box
    sx = (x2 - 1 - x1) / (max(xs) - min(xs))
    sy = (y2 - 1 - y1) / (max(ys) - min(ys))
    return [(x1 + (x - min(xs)) * sx, y1 + (y - min(ys)) * sy) for x, y in raw]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x1, y1, x2, y2 = shape.bbox
    # Pillow's end coordinates are inclusive; ours are exclusive.
    r, b = x2 - 1, y2 - 1
    cx, cy = (x1 + r) / 2, (y1 + b) / 2
    if shape.kind == "circle":
        draw.ellipse((x1, y1, r, b), fill=shape.color)
    elif shape.kind == "square":
        draw.rectangle((x1, y1, r, b), fill=shape.color)
    elif shape.kind == "triangle":
        draw.polygon([(cx, y1), (r, b), (x1, b)], fill=shape.color)
    elif shape.kind == "star":
        draw.polygon(_star_points(shape.bbox), fill=shape.color)
    elif shape.kind == "diamond":
        draw.polygon([(cx, y1), (r, cy), (cx, b), (x1, cy)], fill=shape.color)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")


def render_shapes_scene() -> Image.Image:
    """Draw ``shapes_scene.png``: every shape in ``SHAPES``, its English name printed below it."""
    image = Image.new("RGB", SCENE_SIZE, SCENE_BACKGROUND)
    draw = ImageDraw.Draw(image)
    # Pillow's bundled font: the same on every machine, so no font has to be installed.
    font = ImageFont.load_default(22)
    for shape in SHAPES:
        _draw_shape(draw, shape)
        x1, _, x2, y2 = shape.bbox
        draw.text(((x1 + x2) // 2, y2 + 14), shape.name, font=font, fill=SCENE_LABEL_INK, anchor="mt")
    return image


def expected_grounding_answer() -> str:
    """The answer a perfect model would give for ``shapes_scene.png``, in Qwen3-VL's JSON format.

    The demo model answers noise, so the notebook parses and draws this reference
    answer to show what grounding output looks like.
    """
    items = [{"bbox_2d": list(s.bbox_1000()), "label": s.name} for s in SHAPES]
    body = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in items)
    return f"```json\n[\n{body}\n]\n```"


# --------------------------------------------------------------------------- moving clip


@dataclass(frozen=True)
class MovingClip:
    """Ground truth of ``moving_clip.mp4``: a ball rolling left to right under a counting number."""

    width: int = 320
    height: int = 240
    fps: int = 8
    seconds: int = 4
    numbers: tuple[int, ...] = (1, 2, 3, 4)  # the number shown during second 0, 1, 2, 3
    direction: str = "left_to_right"
    background: RGB = (235, 240, 245)
    ink: RGB = (20, 20, 30)
    ball_color: RGB = (220, 50, 47)
    ball_radius: int = 18
    ball_y: int = 180
    ball_x_start: int = 30
    ball_x_end: int = 290
    number_box: Box = (100, 10, 220, 130)  # the digit is drawn centred in here; the ball never enters it
    codec: str = "h264"
    pix_fmt: str = "yuv420p"

    @property
    def frame_count(self) -> int:
        return self.fps * self.seconds

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frame_count / self.fps

    def number_at(self, t: float) -> int:
        """The number on screen at time ``t`` seconds."""
        return self.numbers[min(max(int(t), 0), len(self.numbers) - 1)]

    def ball_center(self, frame_index: int) -> tuple[int, int]:
        """Pixel centre of the ball in frame ``frame_index`` (it moves at constant speed)."""
        step = (self.ball_x_end - self.ball_x_start) / (self.frame_count - 1)
        return (round(self.ball_x_start + step * frame_index), self.ball_y)


CLIP = MovingClip()


def render_clip_frame(index: int, clip: MovingClip = CLIP) -> Image.Image:
    """Frame ``index`` of the clip as an RGB image."""
    if not 0 <= index < clip.frame_count:
        raise IndexError(f"frame {index} outside 0..{clip.frame_count - 1}")
    image = Image.new("RGB", (clip.width, clip.height), clip.background)
    draw = ImageDraw.Draw(image)
    x1, y1, x2, y2 = clip.number_box
    font = ImageFont.load_default(96)
    number = str(clip.number_at(index / clip.fps))
    draw.text(((x1 + x2) // 2, (y1 + y2) // 2), number, font=font, fill=clip.ink, anchor="mm")
    cx, cy = clip.ball_center(index)
    r = clip.ball_radius
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=clip.ball_color)
    return image


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB to BT.601 limited-range YUV 4:2:0 in PyAV's ``(h * 3 / 2, w)`` layout.

    Done in numpy rather than by FFmpeg's converter so the encoder's input is
    exact and spelled out; BT.601 limited range is what decoders assume for an
    untagged H.264 stream, so decoding gives back the drawn colours.
    """
    h, w, _ = rgb.shape
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def half(plane: np.ndarray) -> np.ndarray:  # 2x2 average: chroma at quarter resolution
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y, half(u), half(v)]
    packed = np.concatenate([np.clip(np.rint(p), 0, 255).astype(np.uint8).ravel() for p in planes])
    return packed.reshape(h * 3 // 2, w)


def write_moving_clip(path: str | Path = MOVING_CLIP_PATH, clip: MovingClip = CLIP) -> Path:
    """Encode the clip as H.264 / yuv420p MP4 with PyAV (its wheels bundle FFmpeg and libx264).

    Width and height must be even (4:2:0 chroma covers 2x2 pixels).
    """
    import av  # local: only this function needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # faststart puts the index first so browsers and the notebook's <video> can start playing at once.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, clip.pix_fmt
        # One thread and fixed settings give the same bytes on every rebuild. mbtree is off because
        # with it libx264 produced slightly different bytes from run to run for identical frames.
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "23", "preset": "medium", "x264-params": "mbtree=0"}
        for i in range(clip.frame_count):
            yuv = _rgb_to_yuv420p(np.asarray(render_clip_frame(i, clip)))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
        container.mux(stream.encode(None))  # flush the encoder
    return path


# --------------------------------------------------------------------------- real photo


@dataclass(frozen=True)
class Photo:
    """A real photograph with where it came from and under what terms."""

    path: Path
    width: int
    height: int
    subject: str
    subject_zh: str
    source: str
    licence: str


CAT_PHOTO = Photo(
    path=CAT_PHOTO_PATH,
    width=451,
    height=300,
    subject="close-up of a tabby cat's face with green eyes (Chelsea the cat)",
    subject_zh="一只虎斑猫的面部特写，绿色眼睛",
    source="scikit-image 0.26.0 wheel, skimage/data/chelsea.png (skimage.data.chelsea)",
    licence="No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
)
_SKIMAGE_MEMBER = "skimage/data/chelsea.png"


def import_cat_photo(source: str | Path, dest: str | Path = CAT_PHOTO_PATH) -> Path:
    """Save scikit-image's ``chelsea.png`` as a small JPEG at ``dest``.

    ``source`` is a scikit-image wheel (``pip download scikit-image --no-deps``) or
    the PNG itself; scikit-image is not a dependency of the tutorial.
    """
    source, dest = Path(source), Path(dest)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(_SKIMAGE_MEMBER)
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Quality 90 keeps the fur detail at ~35 KB; no EXIF or ICC, so the bytes are reproducible.
    image.convert("RGB").save(dest, "JPEG", quality=90, optimize=True)
    return dest


# --------------------------------------------------------------------------- script


def generate_all(
    out_dir: str | Path = IMAGES_DIR,
    *,
    font_path: str | Path | None = None,
    skip_ocr_without_font: bool = True,
) -> dict[str, Path]:
    """(Re)build the synthetic assets in ``out_dir``; returns ``{name: path}`` of what was written.

    Without a CJK font, ``ocr_sample.png`` is skipped (the committed one stays)
    unless ``skip_ocr_without_font`` is False, which raises instead.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    scene = out / SHAPES_SCENE_PATH.name
    render_shapes_scene().save(scene, optimize=True)
    written["shapes_scene"] = scene

    written["moving_clip"] = write_moving_clip(out / MOVING_CLIP_PATH.name)

    try:
        ocr = render_ocr_sample(font_path)
    except FileNotFoundError:
        if font_path is not None or not skip_ocr_without_font:
            raise
        print(f"跳过 {OCR_SAMPLE_PATH.name}: {CJK_FONT_HINT}", file=sys.stderr)
    else:
        ocr_path = out / OCR_SAMPLE_PATH.name
        ocr.save(ocr_path, optimize=True)
        written["ocr_sample"] = ocr_path
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES_DIR, help="output folder (default: images/)")
    parser.add_argument("--font", type=Path, default=None, help="CJK font file for ocr_sample.png")
    parser.add_argument(
        "--photo-from", type=Path, default=None, help="scikit-image wheel or chelsea.png to rebuild cat.jpg"
    )
    args = parser.parse_args(argv)
    written = generate_all(args.out, font_path=args.font)
    if args.photo_from is not None:
        written["cat_photo"] = import_cat_photo(args.photo_from, args.out / CAT_PHOTO_PATH.name)
    for name, path in written.items():
        print(f"{name:13s} {path}  ({path.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
