"""Thinking models: reasoning_content apart from content, in the engine, the server and the openai SDK."""

from __future__ import annotations

import json

import openai
import pytest

from helpers import launcher
from helpers.config import Settings
from helpers.engine import Engine, SamplingParams
from helpers.reasoning import ReasoningStream, opens_reasoning, split_reasoning

# What vLLM 0.32's qwen3 parser (vllm/parser/qwen3.py, Qwen3Parser.extract_reasoning) returned for
# these outputs, run in .venv-vllm with the Qwen tokenizer on 2026-12-05.
VLLM_QWEN3_PARSER = [
    ("reason one\n</think>\n\nthe answer", ("reason one\n", "\n\nthe answer")),
    ("only reasoning, cut", ("only reasoning, cut", None)),
    ("<think>\nr</think>a", ("\nr", "a")),
    ("r</think>a</think>b", ("r", "ab")),
    ("", (None, None)),
    ("\n</think>\n\n", ("\n", "\n\n")),
]
HELLO = [{"role": "user", "content": "你好"}]
NEVER_CLOSES = [{"role": "user", "content": "What is 2+2?"}]  # the demo's greedy answer never writes </think>


@pytest.mark.parametrize(("text", "expected"), VLLM_QWEN3_PARSER)
def test_split_matches_vllms_qwen3_parser(text, expected):
    assert split_reasoning(text) == expected


@pytest.mark.parametrize(("text", "expected"), VLLM_QWEN3_PARSER)
def test_streamed_split_equals_the_whole_split_wherever_the_pieces_break(text, expected):
    for size in (1, 2, 3, 5):
        stream = ReasoningStream()
        events = [e for i in range(0, len(text), size) for e in stream.feed(text[i : i + size])]
        events += list(stream.finish())
        kinds = [kind for kind, _ in events]
        assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # reasoning first
        joined = tuple(
            "".join(t for k, t in events if k == kind) or None for kind in ("reasoning", "content")
        )
        assert joined == expected


def test_only_a_prompt_that_leaves_think_open_starts_in_reasoning():
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # Qwen3.5, thinking off


# ------------------------------------------------------------------ the engine
@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    engine = Engine.load(Settings.from_env({}, model="demo-thinking", ui=False), verbose=False)
    yield engine
    engine.close()


def test_the_thinking_demo_opens_think_and_says_so(thinking):
    assert thinking.prepare(HELLO).prompt.endswith("<|im_start|>assistant\n<think>\n")
    info = thinking.info()
    assert info["thinking"] is True
    assert (
        info["sampling_defaults"]["temperature"] == 1.0 and info["sampling_defaults"]["presence_penalty"] == 0
    )
    assert "Thinking" in thinking.describe()


def test_the_engine_splits_the_answer_and_counts_every_token(thinking):
    stream = thinking.stream_chat(HELLO, max_new_tokens=32, temperature=0)
    raw = "".join(stream)
    result = stream.result
    assert result.reasoning and result.text  # the demo writes </think> early for this prompt
    assert raw.startswith(result.reasoning + "</think>")
    assert (result.reasoning, result.text) == split_reasoning(raw)  # later </think> are dropped, as vLLM does
    assert result.usage.completion_tokens == 32  # usage counts reasoning and answer alike


def test_an_answer_cut_while_thinking_is_all_reasoning(thinking):
    result = thinking.chat(NEVER_CLOSES, max_new_tokens=32, temperature=0)
    assert result.reasoning and result.text == "" and result.finish_reason == "length"


def test_defaults_follow_the_variant_when_the_request_leaves_them_out(thinking, engine):
    chosen = SamplingParams.build(thinking.settings)
    assert (chosen.temperature, chosen.top_p, chosen.top_k, chosen.presence_penalty) == (1.0, 0.95, 20, 0.0)
    assert chosen.max_new_tokens == thinking.settings.max_new_tokens_limit  # reasoning needs room
    instruct = SamplingParams.build(engine.settings)
    assert (instruct.temperature, instruct.top_p, instruct.presence_penalty) == (0.7, 0.8, 1.5)
    assert instruct.max_new_tokens == engine.settings.default_max_new_tokens
    assert SamplingParams.build(thinking.settings, temperature=0.2).temperature == 0.2


def test_the_instruct_demo_has_no_reasoning(engine):
    result = engine.chat(HELLO, max_new_tokens=8, temperature=0)
    assert result.reasoning is None and engine.info()["thinking"] is False


def test_json_is_enforced_on_the_answer_after_the_reasoning(thinking):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}}
    result = thinking.chat(HELLO, max_new_tokens=96, temperature=0, response_format=fmt)
    assert result.reasoning and "{" not in result.reasoning  # free text before </think>
    assert isinstance(json.loads(result.text)["ok"], bool)


# ------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real uvicorn server with the Thinking demo checkpoint."""
    server = launcher.start_server(
        model="demo-thinking",
        port=launcher.free_port(),
        extra_args=["--no-ui"],
        run_dir=tmp_path_factory.mktemp("run"),
        timeout=120,
    )
    yield server
    launcher.stop_server(server)


@pytest.fixture
def sdk(live):
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="none")


def test_the_openai_sdk_reads_reasoning_and_answer(sdk, thinking):
    reply = sdk.chat.completions.create(model="demo-thinking", messages=HELLO, max_tokens=32, temperature=0)
    message = reply.choices[0].message
    expected = thinking.chat(HELLO, max_new_tokens=32, temperature=0)
    assert message.reasoning_content == message.reasoning == expected.reasoning
    assert message.content == expected.text
    assert reply.usage.completion_tokens == 32


def test_streamed_reasoning_comes_before_the_answer_with_the_same_usage(sdk):
    args = dict(model="demo-thinking", messages=HELLO, max_tokens=32, temperature=0)
    whole = sdk.chat.completions.create(**args).choices[0].message
    chunks = list(sdk.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    kinds = [
        "reasoning" if getattr(d, "reasoning_content", None) else "content"
        for d in deltas
        if d.content or getattr(d, "reasoning_content", None)
    ]
    assert (
        kinds == sorted(kinds, key=lambda k: k != "reasoning") and "reasoning" in kinds and "content" in kinds
    )
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == whole.reasoning_content
    assert "".join(d.content or "" for d in deltas) == whole.content
    assert chunks[-1].usage.completion_tokens == 32


def test_an_answer_cut_while_thinking_has_null_content(sdk):
    reply = sdk.chat.completions.create(
        model="demo-thinking", messages=NEVER_CLOSES, max_tokens=32, temperature=0
    )
    assert reply.choices[0].message.content is None and reply.choices[0].message.reasoning_content


def test_health_shows_the_variant_and_its_defaults(live):
    import requests

    health = requests.get(f"{live.base_url}/health", timeout=10).json()
    assert health["thinking"] is True
    assert health["sampling_defaults"]["top_p"] == 0.95


def test_a_required_tool_call_comes_after_the_reasoning(thinking):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "area",
                "parameters": {
                    "type": "object",
                    "properties": {"w": {"type": "integer"}},
                    "required": ["w"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    result = thinking.chat(HELLO, max_new_tokens=96, temperature=0, tools=tools, tool_choice="required")
    assert result.reasoning and "<tool_call>" not in result.reasoning
    assert [call.name for call in result.tool_calls] == ["area"] and result.finish_reason == "tool_calls"
