"""Token and memory arithmetic, checked against the real processor."""

from __future__ import annotations

import pytest

from helpers import costs
from helpers.config import Settings


def test_one_token_per_32x32_pixels():
    cost = costs.image_cost(640, 480, 64 * 1024, 1280 * 1024)
    assert (cost.width, cost.height, cost.tokens) == (640, 480, 300)


def test_large_pictures_are_scaled_into_the_budget():
    cost = costs.image_cost(4000, 3000, 64 * 1024, 1280 * 1024)
    assert cost.tokens <= 1280 and cost.width % 32 == 0 and cost.height % 32 == 0
    assert abs(cost.width / cost.height - 4 / 3) < 0.05


def test_small_pictures_are_scaled_up_to_the_minimum():
    assert costs.image_cost(50, 50, 64 * 1024, 1280 * 1024).tokens >= 64


@pytest.mark.parametrize(
    ("duration", "fps", "cap", "frames", "sample_fps"),
    [
        (4.0, 2.0, 64, 8, 2.0),
        (3.7, 2.0, 64, 8, 2.0),
        (0.3, 2.0, 64, 2, 2.0),
        (600, 2.0, 64, 64, 64 / 600),
        (10, 1, 7, 6, 0.6),
    ],
)
def test_plan_frames(duration, fps, cap, frames, sample_fps):
    got_frames, got_fps = costs.plan_frames(duration, fps, cap)
    assert got_frames == frames and got_frames % 2 == 0
    assert got_fps == pytest.approx(sample_fps)


def test_video_tokens_merge_frame_pairs():
    cost = costs.video_cost(4.0, 640, 480, 2.0, 128 * 1024, 256 * 1024, 64)
    per_frame = cost.width * cost.height // 1024
    assert cost.frames == 8 and cost.tokens == 4 * per_frame and per_frame <= 256


def test_kv_cache_of_the_4b_model_is_144_kib_per_token():
    assert costs.QWEN3_VL_4B.kv_bytes_per_token == 144 * 1024
    assert 8.0e9 < costs.QWEN3_VL_4B.weight_bytes < 9.5e9


def test_default_budgets_keep_the_largest_request_inside_24_gb():
    settings = Settings.from_env({})
    tokens = costs.max_request_tokens(settings)
    estimate = costs.memory_estimate(costs.QWEN3_VL_4B, tokens)
    assert estimate.fits(24 * 10**9), estimate.describe()


def test_shape_is_read_from_a_checkpoint(demo_checkpoint):
    shape = costs.ModelShape.from_pretrained(demo_checkpoint)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (2, 2, 32)
    assert 9_000_000 < shape.num_parameters < 11_000_000


def test_image_tokens_match_what_the_processor_produces(engine, media_dir):
    from conftest import write_image

    write_image(media_dir / "odd.png", size=(333, 517))
    prepared = engine.prepare([{"role": "user", "content": [{"type": "image", "image": "odd.png"}]}])
    expected = costs.image_cost(333, 517, engine.settings.image_min_pixels, engine.settings.image_max_pixels)
    assert int((prepared.inputs["input_ids"] == 151655).sum()) == expected.tokens


def test_video_tokens_match_what_the_processor_produces(engine, media_dir):
    from conftest import write_clip

    write_clip(media_dir / "c.mp4", seconds=3.0, fps=8, size=(320, 240))
    s = engine.settings
    prepared = engine.prepare([{"role": "user", "content": [{"type": "video", "video": "c.mp4", "fps": 2}]}])
    expected = costs.video_cost(
        3.0, 320, 240, 2.0, s.video_min_pixels, s.video_max_pixels, s.video_max_frames
    )
    assert int((prepared.inputs["input_ids"] == 151656).sum()) == expected.tokens
    assert prepared.inputs["video_grid_thw"][0, 0].item() == expected.frames // 2


@pytest.mark.parametrize(
    ("model_id", "size", "fits_24_gib"),
    [
        ("Qwen/Qwen3-VL-2B-Instruct", "2B", True),
        ("Qwen/Qwen3-VL-4B-Instruct", "4B", True),
        ("Qwen/Qwen3-VL-8B-Instruct", "8B", True),
        ("Qwen/Qwen3-VL-30B-A3B-Instruct", "30B-A3B", False),
        ("Qwen/Qwen3-VL-32B-Thinking", "32B", False),
    ],
)
def test_model_id_picks_its_shape_and_only_small_ones_fit_a_4090(model_id, size, fits_24_gib):
    shape = costs.shape_for_model(model_id)
    assert shape is costs.MODEL_SHAPES[size]
    settings = Settings(model="demo")
    estimate = costs.memory_estimate(shape, costs.max_request_tokens(settings))
    assert estimate.fits(24 * costs.GIB) == fits_24_gib


@pytest.mark.parametrize(
    "model_id", ["/data/my-model", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct-AWQ"]
)
def test_unknown_or_quantised_ids_have_no_shape(model_id):  # FP8 ids: tests/test_models.py
    assert costs.shape_for_model(model_id) is None


def test_one_estimate_serves_the_start_check_and_the_environment_table(tmp_path):
    """One shape rule for both requests; only the tokens differ (longest request vs largest media)."""
    settings = costs_settings(tmp_path, model="Qwen/Qwen3-VL-8B-Instruct")
    start = costs.vram_estimate(settings, "max_model_len")
    table = costs.vram_estimate(settings, "largest_media")
    assert start.shape == table.shape and start.source == table.source == "published"
    assert (start.tokens, table.tokens) == (settings.max_model_len, costs.max_request_tokens(settings))
    probe_says = costs.gpu_memory_status(settings, probe=lambda: (80 * costs.GIB, 80 * costs.GIB))
    assert probe_says.needed == start.memory.total
    assert (
        costs.vram_estimate(costs_settings(tmp_path, model="someone/else"), "largest_media").source
        == "assumed"
    )
    with pytest.raises(ValueError, match="max_model_len"):
        costs.vram_estimate(settings, "the biggest one")


def test_a_downloaded_model_is_measured_from_its_own_files(demo_checkpoint):
    estimate = costs.vram_estimate(Settings.from_env({}, model=str(demo_checkpoint)), "max_model_len")
    assert estimate.source == "downloaded" and estimate.shape.num_parameters < 20_000_000


def costs_settings(tmp_path, model: str) -> Settings:
    return Settings.from_env({}, model=model, model_root=tmp_path)
