"""A model load first says what is loading and how big it is (before transformers' shard bar)."""

from __future__ import annotations

import torch

from helpers.config import Settings
from helpers.engine import Engine, loading_message


def test_the_message_names_the_model_its_folder_and_the_size_of_its_weights(demo_checkpoint):
    weights = sum(p.stat().st_size for p in demo_checkpoint.glob("*.safetensors"))
    text = loading_message("demo", demo_checkpoint, "cpu", torch.float32)
    assert f"{weights / 1024**2:.2f} MiB" in text
    assert "demo" in text and str(demo_checkpoint) in text and "cpu" in text and "float32" in text


def test_engine_load_prints_the_message_before_the_description(demo_checkpoint, capsys):
    engine = Engine.load(Settings.from_env(model="demo", device="cpu"))
    try:
        out = capsys.readouterr().out
        described = engine.describe().splitlines()[0]
    finally:
        engine.close()
    assert out.index("正在加载 demo") < out.index(described)
