"""The engine on the demo model: streaming, stop strings, usage, sampling, cancellation."""

from __future__ import annotations

import threading

import pytest
from conftest import write_clip, write_image

from helpers.engine import SamplingParams, choose_attention, choose_dtype
from helpers.errors import RequestError

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def test_loading_reports_what_it_chose(engine):
    import torch

    info = engine.info()
    # auto: the GPU when there is one (bf16/fp16 there), else the CPU in float32
    assert info["device"].split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info["dtype"] == str(choose_dtype("auto", info["device"])).removeprefix("torch.")
    assert info["attention"] == "sdpa"
    assert info["demo"] is True and 0 < info["weights_gib"] < 0.1
    assert "演示模型" in engine.describe()


def test_auto_dtype_and_attention_on_cpu():
    import torch

    assert choose_dtype("auto", "cpu") == torch.float32
    assert choose_dtype("bfloat16", "cpu") == torch.bfloat16
    assert choose_attention("auto", "cpu") == "sdpa" and choose_attention("eager", "cpu") == "eager"


def test_greedy_answers_are_reproducible_and_streams_join_to_them(engine):
    first = engine.chat(HELLO, max_new_tokens=32, temperature=0)
    second = engine.chat(HELLO, max_new_tokens=32, temperature=0)
    stream = engine.stream_chat(HELLO, max_new_tokens=32, temperature=0)
    pieces = list(stream)
    assert first.text == second.text and len(first.text) > 10
    assert len(pieces) > 5  # really streamed, not one lump at the end
    assert "".join(pieces) == first.text
    assert stream.result.usage == first.usage


def test_usage_counts_prompt_and_generated_tokens(engine):
    result = engine.chat(HELLO, max_new_tokens=20, temperature=0)
    prompt = engine.prepare(HELLO).prompt_tokens
    assert result.usage.prompt_tokens == prompt
    assert result.usage.completion_tokens == 20 and result.finish_reason == "length"
    assert result.usage.total_tokens == prompt + 20
    assert result.usage.as_dict() == {
        "prompt_tokens": prompt,
        "completion_tokens": 20,
        "total_tokens": prompt + 20,
    }


def test_stop_strings_end_the_answer_and_are_not_returned(engine):
    full = engine.chat(HELLO, max_new_tokens=32, temperature=0).text
    stop = full[12:16]
    result = engine.chat(HELLO, max_new_tokens=32, temperature=0, stop=[stop, "never-appears"])
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason == "stop"
    assert result.usage.completion_tokens < 32
    streamed = "".join(engine.stream_chat(HELLO, max_new_tokens=32, temperature=0, stop=stop))
    assert streamed == result.text


def test_same_seed_same_sample_different_seed_different_sample(engine):
    a = engine.chat(HELLO, max_new_tokens=24, temperature=1.0, seed=7).text
    b = engine.chat(HELLO, max_new_tokens=24, temperature=1.0, seed=7).text
    c = engine.chat(HELLO, max_new_tokens=24, temperature=1.0, seed=8).text
    assert a == b and a != c


def test_model_defaults_apply_when_sampling_parameters_are_left_out(engine):
    # Qwen's published Instruct settings (helpers.models; tests/test_reasoning.py has the Thinking ones)
    chosen = {"max_new_tokens": 512, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert SamplingParams.build(engine.settings).generate_kwargs() == chosen
    greedy = SamplingParams.build(engine.settings, temperature=0).generate_kwargs()
    assert greedy["do_sample"] is False
    sampled = SamplingParams.build(engine.settings, temperature=0.5).generate_kwargs()
    assert sampled == {**chosen, "temperature": 0.5}
    assert SamplingParams.build(engine.settings, top_k=-1).top_k == 0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"max_new_tokens": 0}, "max_tokens must be between 1"),
        ({"max_new_tokens": 10**6}, "max_tokens must be between 1 and 2048"),
        ({"max_new_tokens": 2.5}, "max_tokens must be an integer"),
        ({"temperature": -0.1}, "temperature must be between 0 and 2"),
        ({"temperature": 3}, "temperature must be between 0 and 2"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_p": 0}, "top_p must be greater than 0"),
        ({"top_p": 1.5}, "top_p must be between"),
        ({"top_k": -5}, "top_k must be between"),
        ({"seed": -1}, "seed must be between"),
        ({"stop": ""}, "stop must be"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"stop": [1]}, "stop must be"),
    ],
)
def test_bad_sampling_parameters_are_refused_before_generating(engine, params, match):
    with pytest.raises(RequestError, match=match) as info:
        engine.stream_chat(HELLO, **params)
    assert info.value.status_code == 400 and info.value.param


def test_image_and_video_conversations(engine, media_dir):
    write_image(media_dir / "red.png", size=(300, 200))
    write_clip(media_dir / "clip.mp4", seconds=2.0)
    messages = [
        {"role": "system", "content": "You describe media."},
        {
            "role": "user",
            "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Colour?"}],
        },
        {"role": "assistant", "content": "Red."},
        {
            "role": "user",
            "content": [{"type": "video", "video": "clip.mp4", "fps": 2}, {"type": "text", "text": "Now?"}],
        },
    ]
    prepared = engine.prepare(messages)
    assert prepared.inputs["image_grid_thw"].shape[0] == 1 and prepared.inputs["video_grid_thw"].shape[0] == 1
    assert "seconds>" in engine.processor.decode(prepared.inputs["input_ids"][0])  # timestamps from metadata
    result = engine.chat(messages, max_new_tokens=8, temperature=0)
    assert result.usage.prompt_tokens == prepared.prompt_tokens and result.usage.completion_tokens == 8


def test_leaving_a_stream_early_stops_generation_and_frees_the_model(engine):
    stream = engine.stream_chat(HELLO, max_new_tokens=2000, temperature=0)
    for _ in zip(range(3), stream, strict=False):
        pass
    stream.cancel()
    assert stream.wait(timeout=30), "generation kept running after cancel"
    acquired = engine._lock.acquire(timeout=5)
    assert acquired
    engine._lock.release()
    assert engine.chat(HELLO, max_new_tokens=4, temperature=0).usage.completion_tokens == 4


def test_concurrent_calls_are_serialised_and_all_answered(engine):
    expected = engine.chat(HELLO, max_new_tokens=12, temperature=0).text
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(engine.chat(HELLO, max_new_tokens=12, temperature=0).text)
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_incremental_decoding_equals_decoding_everything_at_once(engine):
    import random

    from helpers.engine import IncrementalDecoder

    tokenizer = engine.processor.tokenizer
    rng = random.Random(0)
    chinese = tokenizer.encode("视觉语言模型部署教程：图片、视频与流式输出 🚀")
    for trial in range(20):
        ids = [rng.randrange(0, 151643) for _ in range(60)] if trial % 2 else chinese * 3
        decoder = IncrementalDecoder(tokenizer)
        position = 0
        while position < len(ids):
            step = rng.randint(1, 3)
            text = decoder.add(ids[position : position + step])
            position += step
            assert text == tokenizer.decode(ids[:position], skip_special_tokens=True)
