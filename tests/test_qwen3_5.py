"""Qwen3.5 through the same engine and server: its own classes, thinking switch and defaults."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers.config import Settings
from helpers.engine import Engine
from helpers.errors import RequestError
from helpers.server import create_app

HELLO = [{"role": "user", "content": "你好"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def qwen35():
    engine = Engine.load(Settings.from_env({}, model="demo-qwen3.5", ui=False), verbose=False)
    yield engine
    engine.close()


def test_the_demo_uses_the_qwen3_5_classes(qwen35):
    assert type(qwen35.model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert qwen35.model.config.text_config.layer_types.count("full_attention") == 1
    assert qwen35.info()["sampling_defaults"]["presence_penalty"] == 1.5  # Qwen3.5's card, thinking mode


def test_thinking_is_on_by_default_and_enable_thinking_false_turns_it_off(qwen35):
    thinking = qwen35.chat(HELLO, max_new_tokens=16, temperature=0)
    assert qwen35.prepare(HELLO).prompt.endswith("<think>\n") and thinking.reasoning
    plain = qwen35.chat(HELLO, max_new_tokens=16, temperature=0, **NO_THINKING)
    assert plain.reasoning is None and plain.text and "</think>" not in plain.text  # dropped, as vLLM does
    assert plain.usage.prompt_tokens == thinking.usage.prompt_tokens + 2  # the closed empty block


def test_images_go_through_the_same_pipeline(qwen35):
    buffer = io.BytesIO()
    Image.new("RGB", (128, 96), (200, 30, 30)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    parts = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "看"}]
    messages = [{"role": "user", "content": parts}]
    result = qwen35.chat(messages, max_new_tokens=8, temperature=0)
    assert result.usage.prompt_tokens > 4 * 3 + 10  # 128x96 pixels are 12 visual tokens


def test_tools_are_refused_with_what_to_use_instead(qwen35):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(RequestError, match="qwen3_coder"):
        qwen35.chat(HELLO, max_new_tokens=8, tools=tools)


def test_the_server_contract_holds_for_qwen3_5(qwen35):
    with TestClient(create_app(engine=qwen35.with_settings(ui=False))) as client:
        body = {"messages": HELLO, "max_tokens": 16, "temperature": 0}
        message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        assert message["reasoning_content"] and message["reasoning"] == message["reasoning_content"]
        off = client.post("/v1/chat/completions", json={**body, **NO_THINKING}).json()["choices"][0][
            "message"
        ]
        assert off["reasoning_content"] is None and off["content"]
        bad = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"x": 1}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "chat_template_kwargs"
        assert client.get("/health").json()["thinking"] is True
