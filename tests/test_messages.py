"""Message normalisation: every part type, budgets, and bad shapes."""

from __future__ import annotations

import pytest
from conftest import write_clip, write_image
from PIL import Image

from helpers.config import Settings
from helpers.errors import RequestError
from helpers.messages import normalize_messages, pixel_budget


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Settings that may read one photo and one clip (encoded once for the module: no test writes there)."""
    root = tmp_path_factory.mktemp("messages")
    write_image(root / "photo.png", size=(640, 480))
    write_clip(root / "clip.mp4", seconds=2.0, fps=8)
    return Settings.from_env({}, model="demo", allowed_local_media_path=[root])


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_plain_string_content_and_history_pass_through(settings):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "developer", "content": "Answer in Chinese."},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    out = normalize_messages(messages, settings)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "system", "user"]
    assert out[2]["content"] == "" and out[4]["content"] == [{"type": "text", "text": "Again"}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image", "image": "photo.png"},
        {"image": "photo.png"},
        {"type": "image_url", "image_url": {"url": "photo.png"}},
        {"type": "image_url", "image_url": "photo.png"},
    ],
)
def test_every_image_part_shape_becomes_a_qwen_image_part(settings, part):
    (out,) = normalize_messages(user(part, {"type": "text", "text": "?"}), settings)
    image_part = out["content"][0]
    assert image_part["type"] == "image" and isinstance(image_part["image"], Image.Image)
    assert (image_part["resized_width"], image_part["resized_height"]) == (640, 480)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "video", "video": "clip.mp4", "fps": 2},
        {"video": "clip.mp4", "fps": 2},
        {"type": "video_url", "video_url": {"url": "clip.mp4"}},
    ],
)
def test_every_video_part_shape_becomes_sampled_frames(settings, part):
    (out,) = normalize_messages(user(part), settings)
    video = out["content"][0]
    assert video["type"] == "video" and len(video["video"]) == 4  # 2 s at 2 fps (the default)
    assert video["sample_fps"] == video["raw_fps"] == 2.0
    # 128x96 frames are scaled up to the video minimum of 128 tokens
    assert video["resized_width"] * video["resized_height"] >= settings.video_min_pixels


def test_request_budgets_can_lower_but_never_raise_the_server_budget(settings):
    small = {"type": "image", "image": "photo.png", "max_pixels": 64 * 32 * 32}
    (out,) = normalize_messages(user(small), settings)
    assert out["content"][0]["resized_width"] * out["content"][0]["resized_height"] <= 64 * 32 * 32
    huge = {"type": "image", "image": "photo.png", "min_pixels": 10**9, "max_pixels": 10**9}
    (out,) = normalize_messages(user(huge), settings)
    assert (
        out["content"][0]["resized_width"] * out["content"][0]["resized_height"] <= settings.image_max_pixels
    )


def test_pixel_budget_arithmetic():
    assert pixel_budget(None, None, 100_000, 1_000_000, "image") == (100_000, 1_000_000)
    assert pixel_budget(None, 50_000, 100_000, 1_000_000, "image") == (50_000, 50_000)
    assert pixel_budget(5_000, 5_000_000, 100_000, 1_000_000, "image") == (5_000, 1_000_000)


@pytest.mark.parametrize(
    ("messages", "param", "match"),
    [
        ([], "messages", "non-empty list"),
        ("hello", "messages", "non-empty list"),
        (["hello"], "messages[0]", "must be an object"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role", "must be one of"),
        ([{"role": "user", "content": 42}], "messages[0].content", "string or a list"),
        ([{"role": "system", "content": "only a system prompt"}], "messages", "at least one user message"),
        (user({"type": "audio", "audio": "a.wav"}), "messages[0].content[0].type", "unsupported type"),
        (user({"type": "text", "text": 5}), "messages[0].content[0].text", "must be a string"),
        (user({"type": "image_url", "image_url": {}}), "messages[0].content[0].image_url", "non-empty url"),
        (user({"type": "image", "image": ""}), "messages[0].content[0]", "non-empty string"),
        (
            user({"type": "image", "image": "photo.png", "max_pixels": 10}),
            "messages[0].content[0].max_pixels",
            "between 4096",
        ),
        (user({"type": "video", "video": "clip.mp4", "fps": 0}), "messages[0].content[0].fps", "fps must be"),
        (
            user({"type": "video", "video": "clip.mp4", "fps": "fast"}),
            "messages[0].content[0].fps",
            "fps must be",
        ),
        (user(*[{"type": "image", "image": "photo.png"}] * 5), "messages[0].content[4]", "at most 4"),
        (user(*[{"type": "video", "video": "clip.mp4"}] * 2), "messages[0].content[1]", "at most 1"),
        (
            [
                {"role": "assistant", "content": [{"type": "image", "image": "photo.png"}]},
                {"role": "user", "content": "?"},
            ],
            "messages[0].content[0]",
            "only accepted in user messages",
        ),
    ],
)
def test_bad_messages_name_the_offending_field(settings, messages, param, match):
    with pytest.raises(RequestError, match=match) as info:
        normalize_messages(messages, settings)
    assert info.value.param == param
    assert 400 <= info.value.status_code < 500


def test_extreme_aspect_ratio_is_refused(settings):
    write_image(settings.allowed_local_media_path[0] / "strip.png", size=(5000, 10))
    with pytest.raises(RequestError, match="aspect ratio"):
        normalize_messages(user({"type": "image", "image": "strip.png"}), settings)


# ------------------------------------------- numbers and keys of media parts
BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), 1e400, 1e-300]
VIDEO_NUMBER_KEYS = [
    "min_pixels",
    "max_pixels",
    "total_pixels",
    "fps",
    "nframes",
    "min_frames",
    "max_frames",
    "video_end",
    "resized_width",
    "resized_height",
]
IMAGE_NUMBER_KEYS = ["min_pixels", "max_pixels", "resized_width", "resized_height"]


MEDIA_NUMBER_FIELDS = (
    [({"type": "video", "video": "clip.mp4"}, key) for key in [*VIDEO_NUMBER_KEYS, "video_start"]]
    + [({"type": "video_url", "video_url": {"url": "clip.mp4"}}, "fps")]
    + [({"type": "image", "image": "photo.png"}, key) for key in IMAGE_NUMBER_KEYS]
)


@pytest.mark.parametrize(
    ("part", "key", "value"),
    [
        pytest.param(part, key, value, id=f"{part['type']}-{key}-{value!r}")
        for part, key in MEDIA_NUMBER_FIELDS
        for value in BAD_NUMBERS
        if not (key == "video_start" and value == 1e-300)  # a valid start: 0 s, see below
    ],
)
def test_non_finite_and_absurd_numbers_in_media_parts_are_400_naming_the_field(settings, part, key, value):
    other = {"resized_width": 320, "resized_height": 240} if key.startswith("resized_") else {}
    bad = {**part, **other, key: value}
    with pytest.raises(RequestError) as info:
        normalize_messages(user({"type": "text", "text": "?"}, bad), settings)
    assert info.value.status_code == 400
    assert info.value.param == f"messages[0].content[1].{key}"
    assert key in info.value.message


def test_a_start_time_of_1e_minus_300_seconds_is_the_start(settings):
    (out,) = normalize_messages(user({"type": "video", "video": "clip.mp4", "video_start": 1e-300}), settings)
    assert len(out["content"][0]["video"]) == 4


@pytest.mark.parametrize(
    ("extra", "key", "match"),
    [
        ({"fps": 40}, "fps", "between 0.01 and 30"),
        ({"nframes": 65}, "nframes", "between 2 and 64"),
        ({"nframes": 4, "fps": 2}, "fps", "either nframes or fps"),
        ({"min_frames": 8, "max_frames": 4}, "min_frames", "larger than max_frames"),
        ({"video_start": 2, "video_end": 1}, "video_end", "must come after"),
        ({"video_start": 5}, "video_start", "past the end"),
        ({"min_pixels": 1000}, "min_pixels", "between 4096"),
        ({"total_pixels": 100}, "total_pixels", "between 4096"),
        ({"resized_width": 320}, "resized_height", "together"),
        ({"max_pixels": "many"}, "max_pixels", "must be a number"),
        ({"nframes": True}, "nframes", "must be an integer"),
        ({"detail": "high"}, "detail", "not a key of a"),
        ({"sample_fps": 2}, "sample_fps", "not a key of a"),
    ],
)
def test_video_keys_outside_their_rules_are_400_naming_the_key(settings, extra, key, match):
    part = {"type": "video", "video": "clip.mp4", **extra}
    with pytest.raises(RequestError, match=match) as info:
        normalize_messages(user(part), settings)
    assert info.value.param == f"messages[0].content[0].{key}" and info.value.status_code == 400


def test_unknown_keys_of_an_image_part_are_refused(settings):
    with pytest.raises(RequestError, match="not a key of an image part") as info:
        normalize_messages(user({"type": "image", "image": "photo.png", "fps": 2}), settings)
    assert info.value.param == "messages[0].content[0].fps"


def test_qwen_native_video_keys_are_honoured(settings):
    part = {
        "type": "video",
        "video": "clip.mp4",
        "nframes": 2,
        "video_start": 0.5,
        "total_pixels": 64 * 1024,
        "min_pixels": 8 * 1024,
    }
    (out,) = normalize_messages(user(part), settings)
    video = out["content"][0]
    assert len(video["video"]) == 2
    assert video["resized_width"] * video["resized_height"] <= 64 * 1024
    times = [i / video["video_metadata"]["fps"] for i in video["video_metadata"]["frames_indices"]]
    assert times == pytest.approx([0.5, 1.25], abs=0.13)


def test_resized_width_and_height_set_the_size_within_the_budget(settings):
    (out,) = normalize_messages(
        user(
            {"type": "image", "image": "photo.png", "resized_width": 300, "resized_height": 200},
            {"type": "video", "video": "clip.mp4", "resized_width": 4000, "resized_height": 3000},
        ),
        settings,
    )
    image, video = out["content"]
    assert (image["resized_width"], image["resized_height"]) == (288, 192)
    assert video["resized_width"] * video["resized_height"] <= settings.video_max_pixels
    assert video["video"][0].size == (video["resized_width"], video["resized_height"])


@pytest.mark.parametrize(
    ("size", "extra", "match"),
    [
        ((2000, 9), {}, "aspect ratio"),
        ((6000, 40), {"max_pixels": 4096}, "at least 32 px"),
    ],
)
def test_picture_shapes_the_processor_cannot_take_are_400(settings, size, extra, match):
    name = f"odd-{size[0]}x{size[1]}.png"
    write_image(settings.allowed_local_media_path[0] / name, size=size)
    with pytest.raises(RequestError, match=match) as info:
        normalize_messages(user({"type": "image", "image": name, **extra}), settings)
    assert info.value.status_code == 400
