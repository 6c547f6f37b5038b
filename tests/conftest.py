"""Shared fixtures: offline mode, the demo checkpoint (built once per run)."""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub: never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["QWEN3VL_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    from helpers.demo_model import ensure_demo_checkpoint

    return ensure_demo_checkpoint()


@pytest.fixture(scope="session")
def demo_model_and_processor(demo_checkpoint):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(demo_checkpoint)
    model = Qwen3VLForConditionalGeneration.from_pretrained(demo_checkpoint).eval()
    return model, processor
