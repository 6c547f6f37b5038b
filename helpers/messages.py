"""Turn chat messages (Qwen-native or OpenAI-style) into what the Qwen3-VL processor needs.

Accepted content, per message:

- a plain string;
- a list of parts: ``{"type": "text", "text": ...}``,
  OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` and ``{"type": "video_url", ...}``,
  Qwen-native ``{"type": "image", "image": ...}`` and
  ``{"type": "video", "video": ..., "fps": 2, "min_pixels": ..., "max_pixels": ...}``.

:func:`normalize_messages` loads every picture and video (under the media
rules of :mod:`helpers.media`), decides the exact size each one is resized to
(:mod:`helpers.costs`), and returns Qwen-native messages whose media parts
hold decoded pixels. ``process_vision_info`` then only resizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from helpers.costs import PIXELS_PER_TOKEN, image_cost
from helpers.errors import RequestError, check_text
from helpers.media import load_image, load_video

if TYPE_CHECKING:
    from helpers.config import Settings

ROLES = {"system", "user", "assistant"}
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
                f"{where}.role must be one of system, user, assistant; got {message.get('role')!r}",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            normalized.append({"role": role, "content": check_text(content, f"{where}.content")})
            continue
        if not isinstance(content, (list, tuple)):
            raise RequestError(
                f"{where}.content must be a string or a list of parts", param=f"{where}.content"
            )
        parts = [_part(p, f"{where}.content[{j}]", role, settings, counts) for j, p in enumerate(content)]
        normalized.append({"role": role, "content": parts})
    if not any(m["role"] == "user" for m in normalized):
        raise RequestError("messages need at least one user message", param="messages")
    return normalized


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
            return image_part(source, settings, part.get("min_pixels"), part.get("max_pixels"))
        source = (
            part.get("video") if kind == "video" else _url_of(part.get("video_url"), f"{where}.video_url")
        )
        _count(counts, "video", settings.max_videos_per_request)
        return video_part(source, settings, part.get("fps"), part.get("min_pixels"), part.get("max_pixels"))
    except RequestError as exc:
        raise exc.with_param(where) from None


def _count(counts: dict[str, int], kind: str, limit: int) -> None:
    counts[kind] += 1
    if counts[kind] > limit:
        raise RequestError(
            f"too many {kind}s: this server accepts at most {limit} per request",
            code=f"too_many_{kind}s",
        )


def pixel_budget(
    requested_min: Any, requested_max: Any, floor: int, ceiling: int, what: str
) -> tuple[int, int]:
    """The (min, max) pixels for one picture: the request may lower the server's budget, never raise it."""
    low, high = floor, ceiling
    for name, value in (("min_pixels", requested_min), ("max_pixels", requested_max)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < PIXELS_PER_TOKEN:
            raise RequestError(f"{what} {name} must be a number >= {PIXELS_PER_TOKEN} (one 32x32 token)")
    if requested_max is not None:
        high = min(int(requested_max), ceiling)
    if requested_min is not None:
        low = int(requested_min)
    return min(low, high), high


def image_part(
    source: Any, settings: Settings, min_pixels: Any = None, max_pixels: Any = None
) -> dict[str, Any]:
    """A Qwen-native image part with decoded pixels and the exact size the model will see."""
    low, high = pixel_budget(
        min_pixels, max_pixels, settings.image_min_pixels, settings.image_max_pixels, "image"
    )
    image = load_image(source, settings)
    cost = _checked(lambda: image_cost(image.width, image.height, low, high))
    return {"type": "image", "image": image, "resized_height": cost.height, "resized_width": cost.width}


def video_part(
    source: Any, settings: Settings, fps: Any = None, min_pixels: Any = None, max_pixels: Any = None
) -> dict[str, Any]:
    """A Qwen-native video part: sampled frames, their fps, and the per-frame size."""
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 30):
        raise RequestError("video fps must be a number in (0, 30]")
    low, high = pixel_budget(
        min_pixels, max_pixels, settings.video_min_pixels, settings.video_max_pixels, "video"
    )
    clip = load_video(source, settings, fps)
    size = _checked(lambda: image_cost(clip.width, clip.height, low, high))  # per frame
    return {
        "type": "video",
        "video": clip.frames,
        # qwen-vl-utils turns these into the metadata the processor uses for timestamps.
        "sample_fps": clip.sample_fps,
        "raw_fps": clip.sample_fps,
        "resized_height": size.height,
        "resized_width": size.width,
    }


def _checked(compute):
    try:
        return compute()
    except ValueError as exc:  # e.g. an aspect ratio above 200:1
        raise RequestError(f"cannot resize this picture: {exc}") from None
