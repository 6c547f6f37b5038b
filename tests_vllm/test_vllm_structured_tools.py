"""Long answers, ``response_format`` and tools through vLLM's CPU build and our server (``make test-vllm``).

Notebook 04 says its structured-output and tool-calling code runs unchanged
on vLLM: these tests send the same requests to both servers (the ``server``
fixture) and check the same things. vLLM needs ``--enable-auto-tool-choice
--tool-call-parser hermes`` for ``tool_choice: "auto"``, and must give a
request that leaves ``max_tokens`` out our default without capping one that
asks for more (helpers/vllm_server.py, ``write_generation_defaults``).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

ASK = [{"role": "user", "content": "Read the receipt and answer in JSON."}]
# Short, closed values: random weights cannot wander inside them for long.
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"enum": ["cat", "dog", "bird"]},
        "indoors": {"type": "boolean"},
        "colour": {"type": "string", "maxLength": 8},
    },
    "required": ["animal", "indoors"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
PRODUCT = {
    "type": "object",
    "properties": {"sku": {"type": "integer", "minimum": 1, "maximum": 99999}},
    "required": ["sku"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather", "parameters": WEATHER},
    },
    # vLLM renders a tool without a description with "description": null (5 more prompt tokens
    # than ours): every tool here has one, so both prompts are the same.
    {
        "type": "function",
        "function": {"name": "lookup_product", "description": "Product by SKU", "parameters": PRODUCT},
    },
]
PARAMETERS = {"get_weather": WEATHER, "lookup_product": PRODUCT}
# OpenAI answers a forced (named) call with finish_reason "stop", our server and vLLM's
# "required" path with "tool_calls": both mean "the call is complete".
CALL_FINISHED = ("tool_calls", "stop")


@pytest.fixture(scope="session")
def compact(demo_settings) -> dict[str, dict]:
    """Extra request fields that keep random weights from filling a forced tool call with blanks.

    vLLM 0.32 constrains a forced call's arguments with an xgrammar structural tag
    (tool_parsers/structural_tag_registry.py, ``_hermes_tool_tags``) that allows any
    whitespace between JSON tokens, and no option limits it (``disable_any_whitespace``
    applies to response_format only). Random weights then pick blanks until
    max_tokens. Our server caps a whitespace run at 20 (helpers/structured.py). So
    vLLM's requests ban whitespace-only tokens with ``logit_bias`` (our server refuses
    logit_bias); a real model writes compact JSON anyway.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_settings.resolve_model_path())
    blanks = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) and not tokenizer.decode([i]).strip()]
    return {"ours": {}, "vllm": {"logit_bias": dict.fromkeys(map(str, blanks), -100)}}


def check_calls(calls) -> None:
    """Every call names a defined tool and its arguments validate against that tool's schema."""
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_an_omitted_max_tokens_gets_our_default_and_a_longer_request_gets_more(vllm, demo_settings):
    """vLLM's --override-generation-config max_new_tokens would cap both at the default."""
    default = demo_settings.default_max_new_tokens
    # ignore_eos (a vLLM extension): the random weights must not end the answer early.
    params = {"model": "demo", "messages": ASK, "temperature": 0, "extra_body": {"ignore_eos": True}}
    omitted = vllm.chat.completions.create(**params)
    longer = vllm.chat.completions.create(**params, max_tokens=default + 40)
    assert omitted.usage.completion_tokens == default and omitted.choices[0].finish_reason == "length"
    assert longer.usage.completion_tokens == default + 40


def test_json_schema_answers_validate(server):
    _, _, client = server
    reply = client.chat.completions.create(
        model="demo",
        messages=ASK,
        temperature=0,
        max_tokens=200,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER_SCHEMA)


def test_json_object_mode_gives_an_object(server):
    _, _, client = server
    reply = client.chat.completions.create(
        model="demo", messages=ASK, response_format={"type": "json_object"}, temperature=0, max_tokens=48
    )
    content = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # random weights may wander inside a string until max_tokens: still an object's start
        assert content.lstrip().startswith("{")


def test_auto_tool_choice_is_accepted_and_any_call_is_valid(server):
    _, _, client = server
    auto = client.chat.completions.create(
        model="demo", messages=ASK, tools=TOOLS, temperature=0, max_tokens=24
    )
    check_calls(auto.choices[0].message.tool_calls or [])
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
    explicit = client.chat.completions.create(
        model="demo", messages=ASK, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=24
    )
    assert explicit.choices[0].message.content == auto.choices[0].message.content


def test_required_tool_choice_calls_a_tool_with_valid_arguments(server, compact):
    name, _, client = server
    reply = client.chat.completions.create(
        model="demo",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # random weights may go on calling tools until max_tokens
        temperature=0,
        max_tokens=400,
        **compact[name],
    )
    choice = reply.choices[0]
    assert choice.finish_reason in CALL_FINISHED and len(choice.message.tool_calls) == 1
    check_calls(choice.message.tool_calls)


def test_a_named_function_is_the_one_called(server, compact):
    name, _, client = server
    reply = client.chat.completions.create(
        model="demo",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup_product"}},
        temperature=0,
        max_tokens=400,
        **compact[name],
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason in CALL_FINISHED
    assert [c.function.name for c in calls] == ["lookup_product"]
    check_calls(calls)


def test_a_tool_call_round_trip(server, compact):
    name, _, client = server
    first = client.chat.completions.create(
        model="demo",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=400,
        **compact[name],
    )
    call = first.choices[0].message.tool_calls[0]
    result = {"city": json.loads(call.function.arguments)["city"], "weather": "sunny", "celsius": 21}
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    second = client.chat.completions.create(
        model="demo", messages=messages, tools=TOOLS, temperature=0, max_tokens=16
    )
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The prompt now holds the call (rendered by the chat template) and its result.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_both_servers_render_tools_calls_and_results_into_the_same_prompt(ours, vllm):
    """Same chat template: the tool block, an earlier call and its result cost the same tokens."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"weather": "sunny", "celsius": 21}'},
    ]
    params = {"model": "demo", "messages": messages, "tools": TOOLS, "temperature": 0, "max_tokens": 4}
    mine = ours.chat.completions.create(**params)
    theirs = vllm.chat.completions.create(**params)
    assert mine.usage.prompt_tokens == theirs.usage.prompt_tokens
