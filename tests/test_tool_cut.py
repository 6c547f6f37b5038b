"""A forced tool call (required or a named function) cut by max_tokens: "length", no raw markup."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient

from helpers.server import create_app
from helpers.tools import ToolCallStream, parse_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CUT_ANSWERS = {
    "cut inside the first call": ('<tool_call>\n{"name": "get_wea', []),
    "cut after the marker": ("<tool_call>", []),
    "cut inside the marker": ("<tool_c", []),
    "one call finished, the second cut": (CALL + '\n<tool_call>\n{"name": "get_weather", "argu', ["Paris"]),
}


@pytest.mark.parametrize("name", list(CUT_ANSWERS))
def test_a_cut_forced_call_is_dropped_and_finished_calls_are_kept(name):
    text, cities = CUT_ANSWERS[name]
    content, calls = parse_tool_calls(text, forced=True)
    assert [json.loads(c.arguments)["city"] for c in calls] == cities
    assert content is None if calls else content == ""
    assert parse_tool_calls(text)[
        0
    ]  # under "auto" an unclosed block stays text (the model chose to write it)
    rng = random.Random(name)
    for _ in range(10):  # streamed in random pieces: the same split
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 4)))
        stream = ToolCallStream(forced=True)
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        events = [e for piece in pieces for e in stream.feed(piece)] + list(stream.finish())
        assert [kind for kind, _ in events] == ["tool_call"] * len(cities)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine=engine)) as c:
        yield c


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_a_forced_call_cut_by_max_tokens_is_length_without_markup(client, tool_choice):
    body = {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": tool_choice,
        "max_tokens": 12,
        "temperature": 0,
    }
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "length" and reply.json()["usage"]["completion_tokens"] == 12
    assert choice["message"]["content"] == "" and choice["message"]["tool_calls"] is None
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == ""
    assert not any("tool_calls" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
