"""The demo checkpoint: real classes, real vocabulary, offline, non-degenerate."""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import torch
from PIL import Image

from helpers import demo_model


def greedy(model, processor, messages, max_new_tokens=32):
    from qwen_vl_utils import process_vision_info

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos, video_kwargs = process_vision_info(
        messages, image_patch_size=16, return_video_kwargs=True, return_video_metadata=True
    )
    metadata = None
    if videos:
        videos, metadata = map(list, zip(*videos, strict=True))
    inputs = processor(
        text=[text],
        images=images,
        videos=videos,
        video_metadata=metadata,
        do_resize=False,
        return_tensors="pt",
        **video_kwargs,
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return inputs, out[0, inputs["input_ids"].shape[1] :].tolist()


def user(content):
    return [{"role": "user", "content": content}]


def test_checkpoint_mirrors_the_4b_layout(demo_checkpoint):
    config = json.loads((demo_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["vision_config"]["patch_size"] == 16
    assert config["vision_config"]["spatial_merge_size"] == 2
    assert config["vision_config"]["temporal_patch_size"] == 2
    assert (config["image_token_id"], config["video_token_id"]) == (151655, 151656)
    generation = json.loads((demo_checkpoint / "generation_config.json").read_text())
    assert generation["top_k"] == 20 and generation["top_p"] == 0.8 and generation["temperature"] == 0.7
    assert generation["eos_token_id"] == [151645, 151643]


def test_loads_offline_with_the_real_classes(demo_model_and_processor):
    model, processor = demo_model_and_processor
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert len(processor.tokenizer) == 151669  # the real Qwen vocabulary
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert sum(p.numel() for p in model.parameters()) < 20_000_000


def test_chat_template_renders_the_qwen_format(demo_model_and_processor):
    _, processor = demo_model_and_processor
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "And?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>And?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_ids = processor.apply_chat_template(messages[1:2], tokenize=False, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in with_ids


def test_text_answers_are_varied_and_prompt_dependent(demo_model_and_processor):
    model, processor = demo_model_and_processor
    _, first = greedy(model, processor, user("Hello, who are you?"))
    _, second = greedy(model, processor, user("What is 2 + 2?"))
    assert len(first) == 32 and len(set(first)) >= 8
    assert len(set(second)) >= 8
    assert first != second


def test_greedy_generation_is_reproducible(demo_model_and_processor):
    model, processor = demo_model_and_processor
    assert (
        greedy(model, processor, user("Describe a cat."))[1]
        == greedy(model, processor, user("Describe a cat."))[1]
    )


def test_image_prompt_generates(demo_model_and_processor, tmp_path):
    model, processor = demo_model_and_processor
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path)
    inputs, answer = greedy(
        model, processor, user([{"type": "image", "image": str(path)}, {"type": "text", "text": "?"}])
    )
    grid = inputs["image_grid_thw"][0].tolist()
    n_image_tokens = int((inputs["input_ids"] == 151655).sum())
    assert n_image_tokens == grid[0] * grid[1] * grid[2] // 4  # merge 2x2 patches into one token
    assert len(answer) == 32 and len(set(answer)) >= 8


def test_video_prompt_generates(demo_model_and_processor):
    model, processor = demo_model_and_processor
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for _ in range(6)]
    video = {"type": "video", "video": frames, "sample_fps": 2.0, "raw_fps": 2.0}
    inputs, answer = greedy(model, processor, user([video, {"type": "text", "text": "What happens?"}]))
    assert inputs["video_grid_thw"][0, 0].item() == 3  # 6 frames / temporal patch 2
    assert len(answer) == 32 and len(set(answer)) >= 8


def _build_into(cache: str) -> str:
    os.environ["QWEN3VL_DEMO_CACHE"] = cache
    return str(demo_model.ensure_demo_checkpoint())


def test_two_processes_building_at_once_get_one_complete_checkpoint(tmp_path):
    cache = str(tmp_path / "cache")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        paths = pool.map(_build_into, [cache, cache])
    assert paths[0] == paths[1]
    built = [p for p in (tmp_path / "cache").iterdir()]
    assert len(built) == 1, f"temporary folders left behind: {built}"
    assert (built[0] / "model.safetensors").stat().st_size > 1_000_000


def test_same_recipe_builds_the_same_weights(tmp_path, demo_checkpoint):
    from safetensors.torch import load_file

    rebuilt = demo_model.build_demo_checkpoint(tmp_path / "again")
    first = load_file(demo_checkpoint / "model.safetensors")
    second = load_file(rebuilt / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cache_key_includes_the_transformers_version():
    import transformers

    assert transformers.__version__ in demo_model.demo_checkpoint_dir().name
