"""Turn chat messages (Qwen-native or OpenAI-style) into what the Qwen3-VL processor needs.

Accepted content, per message:

- a plain string;
- a list of parts: ``{"type": "text", "text": ...}``,
  OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` and ``{"type": "video_url", ...}``,
  Qwen-native ``{"type": "image", "image": ...}`` and
  ``{"type": "video", "video": ..., "fps": 2, "min_pixels": ..., "max_pixels": ...}``.

Media parts may carry the keys of Qwen's README: ``min_pixels``, ``max_pixels``,
``resized_width`` / ``resized_height`` (images and videos) and ``fps``,
``nframes``, ``min_frames``, ``max_frames``, ``video_start``, ``video_end``,
``total_pixels`` (videos). All are honoured within the server's budgets; any
other key is refused with a 400 naming it.

:func:`normalize_messages` loads every picture and video (under the media
rules of :mod:`helpers.media`), scales each one to the exact size the model
sees (:mod:`helpers.costs`), and returns Qwen-native messages whose media parts
hold those pixels. :func:`vision_inputs` hands them to the processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image

from helpers.costs import FACTOR, PATCH_SIZE
from helpers.errors import RequestError, check_int, check_number, check_text
from helpers.media import MIN_PICTURE_PIXELS, VideoOptions, fit_size, load_image, load_video
from helpers.tools import check_tool_calls

if TYPE_CHECKING:
    from helpers.config import Settings

ROLES = {"system", "user", "assistant", "tool"}  # "tool": a function's result (helpers.tools)
ROLE_ALIASES = {"developer": "system"}  # newer OpenAI clients send "developer" for system prompts


def normalize_messages(messages: Any, settings: Settings) -> list[dict[str, Any]]:
    """Validate ``messages``, load their media and return Qwen-native messages.

    Raises :class:`RequestError` (a 4xx) naming the offending field.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    counts = {"image": 0, "video": 0}
    normalized = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = _as_dict(message, where)
        role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
        if role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of system, user, assistant, tool; got {message.get('role')!r}",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        extra = _tool_fields(message, role, where)
        if isinstance(content, str):
            normalized.append({"role": role, "content": check_text(content, f"{where}.content"), **extra})
            continue
        if not isinstance(content, (list, tuple)):
            raise RequestError(
                f"{where}.content must be a string or a list of parts", param=f"{where}.content"
            )
        parts = [_part(p, f"{where}.content[{j}]", role, settings, counts) for j, p in enumerate(content)]
        normalized.append({"role": role, "content": parts, **extra})
    if not any(m["role"] == "user" for m in normalized):
        raise RequestError("messages need at least one user message", param="messages")
    return normalized


def _tool_fields(message: Mapping[str, Any], role: str, where: str) -> dict[str, Any]:
    """An assistant's earlier ``tool_calls``, a tool result's ``tool_call_id``: checked, kept."""
    if role == "assistant" and message.get("tool_calls"):
        return {"tool_calls": check_tool_calls(message["tool_calls"], f"{where}.tool_calls")}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError(
                f"{where}.tool_call_id must name the call this message answers", param=f"{where}.tool_call_id"
            )
        return {"tool_call_id": call_id}
    return {}


def _as_dict(value: Any, where: str) -> Mapping[str, Any]:
    if hasattr(value, "model_dump"):  # pydantic models from the server
        value = value.model_dump(exclude_none=True)
    if not isinstance(value, Mapping):
        raise RequestError(f"{where} must be an object", param=where)
    return value


def _part_type(part: Mapping[str, Any]) -> str | None:
    kind = part.get("type")
    if kind:
        return kind
    for key in ("image", "image_url", "video", "video_url", "text"):
        if key in part:  # Qwen examples sometimes leave "type" out
            return key
    return None


def _url_of(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{where} needs a non-empty url", param=where)
    return value


def _part(part: Any, where: str, role: str, settings: Settings, counts: dict[str, int]) -> dict[str, Any]:
    part = _as_dict(part, where)
    kind = _part_type(part)
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"{where}.text must be a string", param=f"{where}.text")
        return {"type": "text", "text": check_text(text, f"{where}.text")}
    if kind not in ("image", "image_url", "video", "video_url"):
        raise RequestError(
            f"{where} has unsupported type {kind!r}: use text, image, image_url, video or video_url",
            param=f"{where}.type",
        )
    if role != "user":
        raise RequestError(f"{where}: images and videos are only accepted in user messages", param=where)
    try:
        if kind in ("image", "image_url"):
            source = (
                part.get("image") if kind == "image" else _url_of(part.get("image_url"), f"{where}.image_url")
            )
            _count(counts, "image", settings.max_images_per_request)
            return image_part(source, settings, part, where)
        source = (
            part.get("video") if kind == "video" else _url_of(part.get("video_url"), f"{where}.video_url")
        )
        _count(counts, "video", settings.max_videos_per_request)
        return video_part(source, settings, part, where)
    except RequestError as exc:
        raise exc.with_param(where) from None


def _count(counts: dict[str, int], kind: str, limit: int) -> None:
    counts[kind] += 1
    if counts[kind] > limit:
        raise RequestError(
            f"too many {kind}s: this server accepts at most {limit} per request",
            code=f"too_many_{kind}s",
        )


PART_SOURCE_KEYS = frozenset({"type", "image", "image_url", "video", "video_url"})
IMAGE_OPTIONS = frozenset({"min_pixels", "max_pixels", "resized_width", "resized_height"})
# The keys of a video part in Qwen's README, all honoured (see helpers.media.VideoOptions).
VIDEO_OPTIONS = IMAGE_OPTIONS | {
    "fps",
    "nframes",
    "min_frames",
    "max_frames",
    "video_start",
    "video_end",
    "total_pixels",
}
MIN_FPS, MAX_FPS = 0.01, 30.0
MAX_PIXEL_REQUEST = 10**12  # larger budgets are only clamped to the server's; this just bounds the number
MAX_SIDE = 100_000
MIN_SECONDS, MAX_SECONDS = 0.01, 10**7  # video_end / video_start range


def pixel_budget(
    requested_min: Any, requested_max: Any, floor: int, ceiling: int, what: str, where: str = ""
) -> tuple[int, int]:
    """The (min, max) pixels for one picture: the request may lower the server's budget, never raise it.

    Each requested value must be a finite number of at least 4 visual tokens
    (4 x 32 x 32 pixels); anything else is a 400 naming the field (``where.min_pixels``
    when ``where`` is given, else ``"<what> min_pixels"``).
    """
    low, high = floor, ceiling
    for name, value in (("min_pixels", requested_min), ("max_pixels", requested_max)):
        if value is not None:
            field = _name(where, name) if where else f"{what} {name}"
            check_number(field, value, MIN_PICTURE_PIXELS, MAX_PIXEL_REQUEST)
    if requested_max is not None:
        high = min(int(requested_max), ceiling)
    if requested_min is not None:
        low = int(requested_min)
    return min(low, high), high


def _name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _refuse_unknown(options: Mapping[str, Any], allowed: frozenset[str], where: str, what: str) -> None:
    """Unknown keys are refused (400 naming the key), never silently dropped."""
    for key in options:
        if key not in allowed and key not in PART_SOURCE_KEYS:
            raise RequestError(
                f"{_name(where, key)}: {key!r} is not a key of {what} part; accepted: "
                + ", ".join(sorted(allowed)),
                param=_name(where, key),
            )


def _requested_size(options: Mapping[str, Any], where: str) -> tuple[int, int] | None:
    """``(resized_width, resized_height)`` when the part asks for an exact size (both keys or none)."""
    width, height = options.get("resized_width"), options.get("resized_height")
    if width is None and height is None:
        return None
    for key, value in (("resized_width", width), ("resized_height", height)):
        if value is None:
            missing = _name(where, key)
            raise RequestError(
                f"{missing} is missing: give resized_width and resized_height together", param=missing
            )
        check_number(_name(where, key), value, FACTOR, MAX_SIDE)
    return round(width), round(height)


def image_part(
    source: Any, settings: Settings, options: Mapping[str, Any] | None = None, where: str = ""
) -> dict[str, Any]:
    """A Qwen-native image part with decoded pixels and the exact size the model will see.

    ``options`` are the part's own keys: ``min_pixels`` / ``max_pixels`` (may
    lower the server's budget) and ``resized_width`` / ``resized_height``.
    ``where`` (e.g. ``messages[0].content[1]``) prefixes the names in errors.
    """
    options = options or {}
    _refuse_unknown(options, IMAGE_OPTIONS, where, "an image")
    low, high = _budget(options, settings.image_min_pixels, settings.image_max_pixels, "image", where)
    size = _requested_size(options, where)
    image = load_image(source, settings)
    if size is not None:
        width, height = fit_size(*size, MIN_PICTURE_PIXELS, high)
    else:
        width, height = fit_size(image.width, image.height, low, high)
    if image.size != (width, height):  # scaled now, so the full-size picture is freed at once
        image = image.resize((width, height), Image.Resampling.BICUBIC)  # what fetch_image would do
    return {"type": "image", "image": image, "resized_height": height, "resized_width": width}


def _budget(options: Mapping[str, Any], floor: int, ceiling: int, what: str, where: str) -> tuple[int, int]:
    min_pixels, max_pixels = options.get("min_pixels"), options.get("max_pixels")
    return pixel_budget(min_pixels, max_pixels, floor, ceiling, what, where)


def video_options(options: Mapping[str, Any], settings: Settings, where: str = "") -> VideoOptions:
    """Check the numeric keys of a video part and turn them into :class:`VideoOptions`.

    Every value must be a finite number in its range (NaN, infinities, ``1e400``
    and ``1e-300`` are 400s naming the key); frame counts stay within the
    server's ``video_max_frames``.
    """
    _refuse_unknown(options, VIDEO_OPTIONS, where, "a video")
    cap = settings.video_max_frames

    def number(key: str, low: float, high: float) -> float | None:
        value = options.get(key)
        return None if value is None else check_number(_name(where, key), value, low, high)

    def count(key: str, low: int, high: int) -> int | None:
        value = options.get(key)
        return None if value is None else check_int(_name(where, key), value, low, high)

    fps = number("fps", MIN_FPS, MAX_FPS)
    nframes = count("nframes", 2, cap)
    min_frames = count("min_frames", 1, cap)
    max_frames = count("max_frames", 2, 10**9)
    start = number("video_start", 0.0, MAX_SECONDS)
    end = number("video_end", MIN_SECONDS, MAX_SECONDS)
    total = number("total_pixels", MIN_PICTURE_PIXELS, MAX_PIXEL_REQUEST)
    if nframes is not None:
        for other in ("fps", "min_frames", "max_frames"):
            if options.get(other) is not None:
                raise RequestError(
                    f"{_name(where, other)}: give either nframes or fps (with min_frames / max_frames)",
                    param=_name(where, other),
                )
    if min_frames is not None and max_frames is not None and min_frames > max_frames:
        raise RequestError(
            f"{_name(where, 'min_frames')} ({min_frames}) is larger than max_frames ({max_frames})",
            param=_name(where, "min_frames"),
        )
    if start is not None and end is not None and end <= start:
        raise RequestError(
            f"{_name(where, 'video_end')} ({end:g} s) must come after video_start ({start:g} s)",
            param=_name(where, "video_end"),
        )
    low, high = _budget(options, settings.video_min_pixels, settings.video_max_pixels, "video", where)
    return VideoOptions(
        fps=fps,
        nframes=nframes,
        min_frames=min_frames,
        max_frames=max_frames,
        start=start,
        end=end,
        min_pixels=low,
        max_pixels=high,
        total_pixels=None if total is None else int(total),
        size=_requested_size(options, where),
    )


def video_part(
    source: Any, settings: Settings, options: Mapping[str, Any] | None = None, where: str = ""
) -> dict[str, Any]:
    """A Qwen-native video part: upright frames already at the model's size, and their timing.

    ``options`` are the part's own keys (``fps``, ``nframes``, ``min_frames``,
    ``max_frames``, ``video_start``, ``video_end``, ``min_pixels``,
    ``max_pixels``, ``total_pixels``, ``resized_width``, ``resized_height``);
    see :func:`video_options`.
    """
    checked = video_options(options or {}, settings, where)
    try:
        clip = load_video(source, settings, options=checked)
    except RequestError as exc:
        if exc.param in VIDEO_OPTIONS:  # a key that does not fit this clip (e.g. video_start too late)
            exc.param = _name(where, exc.param)
            exc.message = f"{exc.param}: {exc.message}"
            exc.args = (exc.message,)
        raise
    width, height = clip.frame_size
    return {
        "type": "video",
        "video": clip.frames,
        # qwen-vl-utils reads these two when a frame list goes through process_vision_info.
        "sample_fps": clip.sample_fps,
        "raw_fps": clip.sample_fps,
        "resized_height": height,
        "resized_width": width,
        # What the processor needs for timestamps; vision_inputs() hands it over.
        "video_metadata": clip.metadata(),
    }


def vision_inputs(messages: list[dict[str, Any]]) -> tuple[list | None, list | None, dict[str, Any]]:
    """Images, ``(frames, metadata)`` videos and video kwargs of normalised messages, for the processor.

    The same results as ``process_vision_info(messages, image_patch_size=16,
    return_video_kwargs=True, return_video_metadata=True)``, except that each
    video goes to the processor as a uint8 ``(frames, 3, height, width)``
    tensor at exactly the size it was decoded to. (qwen-vl-utils 0.0.14 would
    resize a frame list twice: once to multiples of 64, then back.)
    """
    import numpy as np
    import torch
    from qwen_vl_utils import fetch_image

    images, videos = [], []
    for message in messages:
        if isinstance(message["content"], str):
            continue
        for part in message["content"]:
            if part.get("type") == "image":
                images.append(fetch_image(part, image_patch_size=PATCH_SIZE))
            elif part.get("type") == "video":
                frames = torch.from_numpy(np.stack([np.asarray(frame) for frame in part["video"]]))
                videos.append((frames.permute(0, 3, 1, 2).contiguous(), part["video_metadata"]))
    return images or None, videos or None, {"do_sample_frames": False}
