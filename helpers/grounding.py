"""Parse Qwen3-VL grounding answers (boxes and points in 0-1000 coordinates) and draw them.

Qwen3-VL answers a grounding prompt with JSON such as::

    ```json
    [{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}, {"point_2d": [x, y], "label": "cat"}]
    ```

The coordinates are *relative*: 0..1000 across the image's width and height,
whatever its size in pixels (Qwen2.5-VL used absolute pixels; Qwen3-VL does
not). Real answers are messier than that: prose around the JSON, a single
object instead of a list, trailing commas, single quotes, or a list cut off by
``max_new_tokens``. :func:`parse_grounding` keeps every complete object it can
find and never raises.

Typical use::

    dets = parse_grounding(answer)
    shown = draw_grounding(Image.open("images/shapes_scene.png"), dets)
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont

from helpers import fonts

__all__ = [
    "COORD_RANGE",
    "DEMO_CAPTION",
    "REFERENCE_CAPTION",
    "Detection",
    "draw_grounding",
    "grounding_prompt",
    "parse_grounding",
    "pixels_to_relative",
    "relative_to_pixels",
    "to_pixels",
]

# Qwen3-VL's coordinate scale: 0 is the left/top edge, 1000 the right/bottom edge.
COORD_RANGE = 1000

BBOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
POINT_KEYS = ("point_2d", "point")
LABEL_KEYS = ("label", "name", "text", "category")

# Distinct colours that stay readable on photos and on light backgrounds.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (0, 130, 200),
    (60, 180, 75),
    (245, 130, 48),
    (145, 30, 180),
    (0, 128, 128),
    (240, 50, 230),
    (128, 0, 0),
    (0, 0, 128),
    (170, 110, 40),
)


@dataclass(frozen=True)
class Detection:
    """One grounded object: a label with a box, a point, or both.

    ``bbox`` is ``(x1, y1, x2, y2)`` and ``point`` is ``(x, y)``. Coming out of
    :func:`parse_grounding` they are in Qwen's 0-1000 relative coordinates;
    :func:`to_pixels` returns a copy in integer pixels.
    """

    label: str
    bbox: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


# --------------------------------------------------------------------------- prompts


def grounding_prompt(
    target: str = "every shape",
    *,
    kind: Literal["bbox", "point"] = "bbox",
    language: Literal["en", "zh"] = "en",
) -> str:
    """Build the grounding prompt the notebooks send, asking for Qwen3-VL's JSON format.

    ``target`` names what to find ("every shape", "the red circle", "所有形状").
    Spelling out the JSON schema keeps answers parseable, even from small models.
    """
    if kind not in ("bbox", "point"):
        raise ValueError(f"kind must be 'bbox' or 'point', not {kind!r}")
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', not {language!r}")
    if kind == "bbox":
        schema = '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]'
        if language == "zh":
            return f"请定位图中的{target}，以 JSON 格式输出它们的 bbox 坐标，格式为 {schema}。"
        return f"Locate {target} in the image and output their bbox coordinates in JSON format, as {schema}."
    schema = '[{"point_2d": [x, y], "label": "..."}]'
    if language == "zh":
        return f"请以点的形式定位图中的{target}，以 JSON 格式输出它们的 point 坐标，格式为 {schema}。"
    return f"Point to {target} in the image and output their point coordinates in JSON format, as {schema}."


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|python)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def parse_grounding(text: Any) -> list[Detection]:
    """Every detection in a Qwen3-VL grounding answer, in 0-1000 coordinates.

    Accepts code fences (closed or not), leading/trailing prose, a single
    object or a list, trailing commas, single quotes and truncated lists (the
    complete objects are kept). Objects without a valid ``bbox_2d`` or
    ``point_2d`` are skipped. Never raises: anything unparseable gives ``[]``.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        fenced = [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
        chunks = fenced or [text]
        detections: list[Detection] = []
        for chunk in chunks:
            value = _loads(chunk.strip())
            if value is not None:
                detections.extend(_walk(value))
            else:
                # Not valid as a whole (prose, truncation): fall back to the
                # complete {...} objects inside it.
                for obj_text in _balanced_objects(chunk):
                    obj = _loads(obj_text)
                    if obj is not None:
                        detections.extend(_walk(obj))
        return detections
    except Exception:  # the contract is "never raises"; bad input simply gives nothing
        return []


def _loads(text: str) -> Any | None:
    """JSON, then JSON without trailing commas, then a Python literal (single quotes); else None."""
    candidates = [text]
    cleaned = _TRAILING_COMMA.sub(r"\1", text)
    if cleaned != text:
        candidates.append(cleaned)
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            pass
    for candidate in candidates:
        try:
            # literal_eval only builds literals (no code runs); it reads 'single quotes'.
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def _balanced_objects(text: str) -> Iterator[str]:
    """Yield each top-level ``{...}`` substring whose braces close, skipping braces inside strings."""
    depth = 0
    start = -1
    quote = ""
    escaped = False
    for i, ch in enumerate(text):
        if depth > 0 and quote:
            # Strings are only tracked inside an object, so apostrophes in prose ("Here's") are harmless.
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if depth > 0 and ch in "\"'":
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _walk(value: Any) -> list[Detection]:
    """Detections found in a parsed JSON value (an object, a list of them, or a wrapper dict)."""
    if isinstance(value, dict):
        det = _detection_from_dict(value)
        if det is not None:
            return [det]
        # A wrapper such as {"objects": [...]}: look inside.
        return [d for v in value.values() if isinstance(v, (dict, list)) for d in _walk(v)]
    if isinstance(value, list):
        bare = _numbers(value, 4)
        if bare is not None:  # a bare [x1, y1, x2, y2] answer for a single object
            return [Detection(label="", bbox=_ordered(bare))]
        return [d for item in value if isinstance(item, (dict, list)) for d in _walk(item)]
    return []


def _detection_from_dict(obj: dict[str, Any]) -> Detection | None:
    bbox = next((_numbers(obj[k], 4) for k in BBOX_KEYS if k in obj), None)
    point = next((_numbers(obj[k], 2) for k in POINT_KEYS if k in obj), None)
    if bbox is None and point is None:
        return None
    label = next((obj[k] for k in LABEL_KEYS if k in obj and obj[k] is not None), "")
    return Detection(
        label=str(label).strip(),
        bbox=_ordered(bbox) if bbox is not None else None,
        point=(point[0], point[1]) if point is not None else None,
    )


def _numbers(value: Any, count: int) -> list[float] | None:
    """``value`` as ``count`` finite numbers (bools and strings rejected), else None."""
    if not isinstance(value, (list, tuple)) or len(value) != count:
        return None
    out: list[float] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        out.append(float(v) if isinstance(v, float) and not v.is_integer() else int(v))
    return out


def _ordered(b: Sequence[float]) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2: models sometimes swap corners."""
    x1, y1, x2, y2 = b
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


# --------------------------------------------------------------------------- coordinates


def relative_to_pixels(coords: Sequence[float], width: int, height: int) -> tuple[int, ...]:
    """0-1000 coordinates ``(x, y, ...)`` to integer pixels, clamped to ``[0, width] x [0, height]``."""
    out = []
    for i, v in enumerate(coords):
        size = width if i % 2 == 0 else height
        out.append(min(max(round(v / COORD_RANGE * size), 0), size))
    return tuple(out)


def pixels_to_relative(coords: Sequence[float], width: int, height: int) -> tuple[int, ...]:
    """Pixel coordinates ``(x, y, ...)`` to Qwen's 0-1000 scale (what the model is trained to answer)."""
    return tuple(round(v / (width if i % 2 == 0 else height) * COORD_RANGE) for i, v in enumerate(coords))


def to_pixels(det: Detection, width: int, height: int) -> Detection:
    """A copy of ``det`` with its box and point in integer pixels of a ``width`` x ``height`` image.

    Box corners are clamped to ``[0, width] x [0, height]``; a point is clamped to a
    pixel that exists (``<= width - 1``).
    """
    bbox = relative_to_pixels(det.bbox, width, height) if det.bbox is not None else None
    point = None
    if det.point is not None:
        px, py = relative_to_pixels(det.point, width, height)
        point = (min(px, width - 1), min(py, height - 1))
    return Detection(label=det.label, bbox=bbox, point=point)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- drawing


def draw_grounding(
    image: Image.Image,
    detections: Iterable[Detection],
    *,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None,
    caption: str | None = None,
) -> Image.Image:
    """A copy of ``image`` with every box, point and label drawn on it (input left untouched).

    ``detections`` are in 0-1000 coordinates, as :func:`parse_grounding` returns them.
    ``caption`` (e.g. :data:`DEMO_CAPTION`) is written on a bar above the picture,
    so a saved or shared copy still says what the boxes are; the picture grows by that bar.
    Chinese labels need a CJK font: pass ``font``, or one is looked up on this machine
    (see ``helpers.fonts.find_cjk_font``); without one they are drawn as ``#1``, ``#2``, ...
    in list order, with a warning.
    """
    dets = list(detections)
    canvas = image.convert("RGB")  # convert() always returns a new image
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(width, height) / 200))
    font_size = max(12, round(min(width, height) / 30))
    can_draw_cjk = True
    if font is None:
        font, can_draw_cjk = _label_font(font_size, any(_has_cjk(d.label) for d in dets))
        if not can_draw_cjk:
            warnings.warn(
                "No CJK font found, so Chinese labels are drawn as #1, #2, ...: install one "
                "(`apt-get install fonts-noto-cjk`) or pass font=. 未找到中文字体，标签以编号代替。",
                stacklevel=2,
            )

    for i, det in enumerate(dets):
        colour = PALETTE[i % len(PALETTE)]
        px = to_pixels(det, width, height)
        anchor: tuple[int, int] | None = None
        if px.bbox is not None:
            x1, y1, x2, y2 = (int(v) for v in px.bbox)
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=line)
            anchor = (x1, y1)
        if px.point is not None:
            x, y = (int(v) for v in px.point)
            r = line * 3
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255), width=max(1, line // 2)
            )
            if anchor is None:
                anchor = (x + r, y - r)
        if det.label and anchor is not None:
            # Without a CJK font Pillow draws empty boxes; a number still pairs the box with the answer.
            text = det.label if can_draw_cjk or not _has_cjk(det.label) else f"#{i + 1}"
            _draw_label(draw, text, anchor, colour, font, (width, height))
    return _with_caption(canvas, caption, font_size) if caption else canvas


# Captions for pictures whose boxes are not a real model's detections (English: no CJK font needed).
DEMO_CAPTION = "DEMO MODEL OUTPUT: random weights, these boxes are noise"
REFERENCE_CAPTION = "REFERENCE ANSWER (not model output)"


def _with_caption(canvas: Image.Image, caption: str, font_size: int) -> Image.Image:
    """``canvas`` below a dark bar that carries ``caption``."""
    font, can_draw = _label_font(font_size, _has_cjk(caption))
    if not can_draw:
        caption = caption.encode("ascii", "ignore").decode() or "?"
    probe = ImageDraw.Draw(canvas)
    left, top, _, bottom = probe.textbbox((0, 0), caption, font=font)
    pad = max(4, font_size // 3)
    bar = bottom - top + 2 * pad
    framed = Image.new("RGB", (canvas.width, canvas.height + bar), (40, 40, 40))
    framed.paste(canvas, (0, bar))
    ImageDraw.Draw(framed).text((pad - left, pad - top), caption, font=font, fill=(255, 220, 0))
    return framed


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[int, int],
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    size: tuple[int, int],
) -> None:
    """Label on a filled tag above the box (inside it when the box touches the top edge)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = 3
    x, y = anchor
    y = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
    x = max(0, min(x, size[0] - tw - 2 * pad))
    draw.rectangle((x, y, x + tw + 2 * pad, y + th + 2 * pad), fill=colour)
    # Black text on light tags, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text(
        (x + pad - left, y + pad - top), text, font=font, fill=(0, 0, 0) if luma > 150 else (255, 255, 255)
    )


def _has_cjk(text: str) -> bool:
    """True when ``text`` has CJK characters or punctuation (U+2E80 and up), which Pillow's font lacks."""
    return any(ord(ch) >= 0x2E80 for ch in text)


def _label_font(size: int, needs_cjk: bool) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """A label font and whether it can draw CJK: a CJK font from this machine when needed, else Pillow's."""
    if needs_cjk:
        path = fonts.find_cjk_font()
        if path is not None:
            try:
                return ImageFont.truetype(str(path), size), True
            except OSError:
                pass
        return ImageFont.load_default(size), False
    return ImageFont.load_default(size), True
