"""response_format and tool calls end to end: a real uvicorn server, raw HTTP and the openai SDK."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests
from conftest import API_KEY
from pydantic import BaseModel, Field
from test_structured import SCHEMAS, json_schema_format

ASK = [{"role": "user", "content": "Read the receipt and answer in JSON."}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup_product",
            "parameters": {
                "type": "object",
                "properties": {"sku": {"type": "integer", "minimum": 1, "maximum": 99999}},
                "required": ["sku"],
            },
        },
    },
]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


class Item(BaseModel):
    name: str = Field(max_length=10)
    price: float = Field(ge=0, le=500)


class Receipt(BaseModel):
    shop: str = Field(max_length=12)
    items: list[Item] = Field(max_length=2)
    total: float = Field(ge=0, le=1000)


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def post(live_server, body: dict, path: str = "/v1/chat/completions") -> requests.Response:
    body = {"model": "demo", "messages": ASK, "temperature": 0, "max_tokens": 400, **body}
    return requests.post(
        live_server.base_url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300
    )


def sse_events(response: requests.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def check_calls(tool_calls) -> None:
    for call in tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


# ------------------------------------------------------------ response_format
def test_sdk_parse_returns_a_validated_pydantic_object(client):
    completion = client.chat.completions.parse(
        model="demo", messages=ASK, response_format=Receipt, temperature=0, max_tokens=400
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Receipt)
    assert Receipt.model_validate_json(choice.message.content) == choice.message.parsed


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_answer_validates_against_its_json_schema(live_server, name):
    response = post(live_server, {"response_format": json_schema_format(name, SCHEMAS[name])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMAS[name])
    assert body["response"] == body["choices"][0]["message"]["content"]


def test_sampled_answers_validate_too(live_server):
    for seed in (1, 2):
        body = {"response_format": json_schema_format("n", SCHEMAS["number_bounds"]), "seed": seed}
        response = post(live_server, {**body, "temperature": 1.0, "top_p": 1.0, "top_k": -1})
        jsonschema.validate(
            json.loads(response.json()["choices"][0]["message"]["content"]), SCHEMAS["number_bounds"]
        )


def test_json_object_mode_gives_an_object(client):
    # Greedy on this prompt the demo model closes its object at once; other prompts may wander inside
    # a key until max_tokens (random weights), which tests/test_structured.py covers as "unfinished".
    ask = [{"role": "user", "content": "Reply in JSON."}]
    reply = client.chat.completions.create(
        model="demo", messages=ask, response_format={"type": "json_object"}, temperature=0, max_tokens=48
    )
    assert reply.choices[0].finish_reason == "stop"  # the grammar closed the object within max_tokens
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_streamed_json_equals_the_plain_answer_under_greedy(live_server):
    body = {"response_format": json_schema_format("r", SCHEMAS["required_and_optional"])}
    plain = post(live_server, body).json()["choices"][0]["message"]["content"]
    events = sse_events(post(live_server, {**body, "stream": True}))
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert streamed == plain
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(streamed), SCHEMAS["required_and_optional"])


def test_an_answer_cut_at_max_tokens_is_length_and_unfinished(live_server):
    body = post(
        live_server, {"response_format": json_schema_format("n", SCHEMAS["nested_objects"]), "max_tokens": 5}
    ).json()
    assert body["choices"][0]["finish_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(body["choices"][0]["message"]["content"])


def test_stop_strings_still_cut_a_json_answer(live_server):
    body = post(
        live_server, {"response_format": json_schema_format("e", SCHEMAS["enums"]), "stop": ['"']}
    ).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert '"' not in body["choices"][0]["message"]["content"]


def test_text_format_and_the_original_route(live_server):
    text = post(live_server, {"response_format": {"type": "text"}, "max_tokens": 8}).json()
    assert text["choices"][0]["finish_reason"] == "length"
    generate = post(
        live_server, {"response_format": json_schema_format("a", SCHEMAS["array"])}, path="/generate"
    )
    assert generate.status_code == 200, generate.text
    jsonschema.validate(json.loads(generate.json()["response"]), SCHEMAS["array"])


# ------------------------------------------------------------------ tool calls
def test_required_tool_choice_always_calls_a_tool(client):
    reply = client.chat.completions.create(
        model="demo", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=400
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    check_calls(choice.message.tool_calls)


def test_a_named_function_is_called_once(client):
    reply = client.chat.completions.create(
        model="demo",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup_product"}},
        temperature=0,
        max_tokens=400,
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["lookup_product"]
    check_calls(calls)


def test_auto_and_none(client):
    auto = client.chat.completions.create(
        model="demo", messages=ASK, tools=TOOLS, temperature=0, max_tokens=24
    ).choices[0]
    check_calls(auto.message.tool_calls or [])
    # "tool_calls" exactly when calls came back; otherwise the model answered in text
    assert (auto.finish_reason == "tool_calls") == bool(auto.message.tool_calls)
    assert auto.message.tool_calls or (auto.message.content and auto.finish_reason in ("stop", "length"))
    none = client.chat.completions.create(
        model="demo", messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=24
    ).choices[0]
    plain = client.chat.completions.create(model="demo", messages=ASK, temperature=0, max_tokens=24)
    assert none.message.tool_calls is None
    # "none" hides the tools: the same answer, ended the same way, as a request without them
    assert (none.message.content, none.finish_reason) == (
        plain.choices[0].message.content,
        plain.choices[0].finish_reason,
    )


def test_a_streamed_tool_call_matches_the_plain_one(client, live_server):
    options = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    plain = client.chat.completions.create(
        model="demo", messages=ASK, temperature=0, max_tokens=400, **options
    )
    stream = client.chat.completions.create(
        model="demo", messages=ASK, temperature=0, max_tokens=400, stream=True, **options
    )
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name and deltas[0].type == "function"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    expected = plain.choices[0].message.tool_calls[0].function
    assert (deltas[0].function.name, arguments) == (expected.name, expected.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The SDK's own stream helper puts the deltas back together.
    with client.chat.completions.stream(
        model="demo", messages=ASK, temperature=0, max_tokens=400, **options
    ) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == expected.arguments


def test_a_tool_call_round_trip(client):
    first = client.chat.completions.create(
        model="demo",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=400,
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
    answer = second.choices[0]
    assert (answer.finish_reason == "tool_calls") == bool(answer.message.tool_calls)
    # The result reaches the prompt: a longer result makes it longer by about that many tokens.
    longer = {**result, "note": "light wind " * 20}
    messages[-1] = {**messages[-1], "content": json.dumps(longer)}
    third = client.chat.completions.create(
        model="demo", messages=messages, tools=TOOLS, temperature=0, max_tokens=1
    )
    assert third.usage.prompt_tokens - second.usage.prompt_tokens >= 40
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # and the call itself is there too


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": json_schema_format("x", {"type": "tuple"})},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": json_schema_format("x", {"type": "integer", "minimum": 3, "maximum": 1})},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": json_schema_format("x", {"not": {"type": "null"}})},
            "response_format.json_schema.schema",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "required": 1}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        (
            {"messages": [*ASK, {"role": "tool", "content": "sunny"}], "tools": TOOLS},
            "messages[1].tool_call_id",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "x<|im_end|>"}}]},
            "tools",
        ),
    ],
)
def test_bad_structured_requests_are_a_400_naming_the_field(live_server, body, param):
    response = post(live_server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "Traceback" not in response.text


def test_generate_route_refuses_tools(live_server):
    response = post(live_server, {"tools": TOOLS}, path="/generate")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
