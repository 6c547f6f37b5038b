"""Qwen3.5 (``demo-qwen3.5``) on vLLM 0.32's CPU build and on our server: the same prompt and the same split.

vLLM's CPU kernel for Qwen3.5's Gated DeltaNet layers takes bf16 only ("CPU GDN
attention requires BF16"), so both servers run this checkpoint in bf16 (vLLM's
CPU bf16 needs AVX-512). Two bf16 implementations of a random model need not pick
the same tokens, so this compares what must agree: prompt tokens and the
reasoning / answer split, with thinking on and off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import launcher
from helpers.client import openai_client
from helpers.config import Settings

GREEDY = {"temperature": 0, "presence_penalty": 0, "max_tokens": 24}
HELLO = [{"role": "user", "content": "你好"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def qwen35_servers() -> Iterator[dict]:
    from helpers.vllm_server import start_vllm, stop_vllm

    settings = Settings.from_env({}, model="demo-qwen3.5", dtype="bfloat16")
    vllm = start_vllm(settings, port=launcher.free_port())
    ours = launcher.start_server(
        model="demo-qwen3.5",
        port=launcher.free_port(),
        extra_args=["--no-ui", "--dtype", "bfloat16", "--log-level", "warning"],
    )
    try:
        yield {"vllm": openai_client(vllm.base_url), "ours": openai_client(ours.base_url)}
    finally:
        launcher.stop_server(ours)
        stop_vllm(vllm)


@pytest.mark.parametrize("extra", [{}, NO_THINKING], ids=["thinking", "enable_thinking_false"])
def test_both_servers_serve_qwen3_5_with_the_same_prompt_and_split(qwen35_servers, extra):
    replies = {
        name: client.chat.completions.create(model="demo-qwen3.5", messages=HELLO, extra_body=extra, **GREEDY)
        for name, client in qwen35_servers.items()
    }
    vllm, ours = (replies[n] for n in ("vllm", "ours"))
    assert ours.usage.prompt_tokens == vllm.usage.prompt_tokens  # the same template, enable_thinking included
    for reply in (vllm, ours):
        reasoning = getattr(reply.choices[0].message, "reasoning", None)
        assert bool(reasoning) == (not extra)  # thinking on: reasoning first; off: none
