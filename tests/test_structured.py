"""Structured output: response_format checks, the grammar cache, random weights writing valid JSON."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import torch
from conftest import generate_ids

from helpers.errors import RequestError
from helpers.structured import ResponseFormat, parse_response_format

EOS = (151645, 151643)

# Five families the issue names, plus the grounding boxes of notebook 04. Strings,
# arrays and numbers are bounded so that a model with random weights, which never
# "wants" to close a string, still reaches the end of the JSON within max_tokens.
SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "receipt": {
                "type": "object",
                "properties": {
                    "shop": {"type": "string", "maxLength": 12},
                    "total": {"type": "number", "minimum": 0, "maximum": 1000},
                },
                "required": ["shop", "total"],
            }
        },
        "required": ["receipt"],
    },
    "array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 1,
        "maxItems": 4,
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "L"]},
        },
        "required": ["color", "size"],
    },
    "number_bounds": {
        "type": "object",
        "properties": {
            "x": {"type": "integer", "minimum": -5, "maximum": 5},
            "p": {"type": "number", "minimum": 0, "maximum": 1},
            "n": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        },
        "required": ["x", "p", "n"],
    },
    "required_and_optional": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "email": {"type": "string", "maxLength": 20},
            "vip": {"type": "boolean"},
        },
        "required": ["name", "age"],
    },
    "boxes": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "maxLength": 10},
                "bbox_2d": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "minItems": 4,
                    "maxItems": 4,
                },
            },
            "required": ["label", "bbox_2d"],
        },
        "maxItems": 2,
    },
}


def json_schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def generate(
    demo_model_and_processor, logits_processor, seed=None, max_new_tokens=320, prompt="Reply in JSON."
):
    """New token ids from the demo model: greedy when ``seed`` is None, else plain sampling (T=1)."""
    messages = [{"role": "user", "content": prompt}]
    return generate_ids(demo_model_and_processor, messages, logits_processor, seed, max_new_tokens)


def answer(demo_model_and_processor, ids) -> str:
    return demo_model_and_processor[1].tokenizer.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------ checking
def test_response_format_types_are_parsed():
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) == ResponseFormat("text")
    assert not parse_response_format({"type": "text"}).constrained
    assert parse_response_format({"type": "json_object"}).constrained
    fmt = parse_response_format(json_schema_format("person", SCHEMAS["enums"]))
    assert (fmt.type, fmt.name, fmt.strict, fmt.schema) == ("json_schema", "person", True, SCHEMAS["enums"])
    # OpenAI lets json_schema leave out the schema: then any JSON object will do
    assert parse_response_format({"type": "json_schema", "json_schema": {"name": "x"}}).type == "json_object"


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "response_format.json_schema.name",
        ),
        (json_schema_format("has space", {"type": "object"}), "response_format.json_schema.name"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        (json_schema_format("x", ["not", "a", "schema"]), "response_format.json_schema.schema"),
        (json_schema_format("x", {"type": "tuple"}), "response_format.json_schema.schema"),
        (
            json_schema_format("x", {"type": "object", "required": "name"}),
            "response_format.json_schema.schema",
        ),
        (json_schema_format("x", {"not": {"type": "string"}}), "response_format.json_schema.schema"),
        (
            json_schema_format("x", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
            "response_format.json_schema.schema",
        ),
        (
            json_schema_format("x", {"allOf": [{"type": "object"}, {"required": ["a"]}]}),
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_response_format_is_a_400_naming_the_field(value, param):
    with pytest.raises(RequestError) as caught:
        parse_response_format(value)
    assert caught.value.status_code == 400
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum greater than maximum"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "$defs"),
        ({"type": "string", "enum": []}, "enum"),
    ],
)
def test_schema_the_library_cannot_compile_is_a_400_with_its_reason(grammars, schema, words):
    fmt = parse_response_format(json_schema_format("x", schema))  # valid JSON Schema: the checker passes it
    with pytest.raises(RequestError) as caught:
        grammars.compile(fmt)
    assert caught.value.status_code == 400
    assert caught.value.param == "response_format.json_schema.schema"
    assert words in caught.value.message
    assert ".cc:" not in caught.value.message  # the library's C++ location is not shown


def test_each_schema_is_compiled_once(grammars):
    schema = {"type": "object", "properties": {"only_here": {"type": "integer"}}, "required": ["only_here"]}
    before = grammars.compilations
    first = grammars.compile(parse_response_format(json_schema_format("a", schema)))
    # Same schema, keys in another order and another name: the same grammar.
    again = grammars.compile(parse_response_format(json_schema_format("b", copy.deepcopy(schema))))
    reordered = {
        "required": ["only_here"],
        "properties": {"only_here": {"type": "integer"}},
        "type": "object",
    }
    third = grammars.compile(parse_response_format(json_schema_format("c", reordered)))
    assert first is again is third
    assert grammars.compilations == before + 1


def test_grammar_masks_the_model_vocabulary_not_the_tokenizers(grammars, demo_model_and_processor):
    model, processor = demo_model_and_processor
    rows = model.get_output_embeddings().weight.shape[0]
    assert rows == 151936 > len(processor.tokenizer) == 151669
    assert grammars.vocab_size == rows and tuple(grammars.stop_token_ids) == EOS
    scores = torch.zeros(1, rows)
    grammars.logits_processor(grammars.compile(ResponseFormat("json_object")))(torch.tensor([[1, 2]]), scores)
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert allowed and max(allowed) < len(processor.tokenizer)  # padding rows never come out
    assert not set(EOS) & set(allowed)  # nothing is finished before the JSON is
    assert all(processor.tokenizer.decode([i]).lstrip().startswith("{") for i in allowed)


# --------------------------------------------------------- random weights
@pytest.mark.parametrize("seed", [None, 0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_random_weights_with_the_grammar_write_json_that_validates(
    demo_model_and_processor, grammars, name, seed
):
    schema = SCHEMAS[name]
    compiled = grammars.compile(parse_response_format(json_schema_format(name, schema)))
    ids = generate(demo_model_and_processor, grammars.logits_processor(compiled), seed)
    assert ids[-1] in EOS  # the grammar finished: not cut by max_new_tokens
    jsonschema.validate(json.loads(answer(demo_model_and_processor, ids)), schema)


@pytest.mark.parametrize("seed", [None, 0, 1], ids=["greedy", "seed0", "seed1"])
def test_json_object_mode_always_gives_an_object(demo_model_and_processor, grammars, seed):
    compiled = grammars.compile(parse_response_format({"type": "json_object"}))
    ids = generate(demo_model_and_processor, grammars.logits_processor(compiled), seed, max_new_tokens=64)
    assert ids[-1] in EOS  # finished by the grammar, not cut by max_new_tokens
    assert isinstance(json.loads(answer(demo_model_and_processor, ids)), dict)


def test_without_the_grammar_random_weights_do_not_write_json(demo_model_and_processor):
    """The control experiment: the prompt alone guarantees nothing."""

    def nothing(input_ids, scores):
        return scores

    text = answer(demo_model_and_processor, generate(demo_model_and_processor, nothing, max_new_tokens=32))
    with pytest.raises(ValueError):
        json.loads(text)


def test_greedy_decoding_with_a_grammar_is_deterministic(demo_model_and_processor, grammars):
    compiled = grammars.compile(
        parse_response_format(json_schema_format("p", SCHEMAS["required_and_optional"]))
    )
    first = generate(demo_model_and_processor, grammars.logits_processor(compiled), prompt="Who?")
    second = generate(demo_model_and_processor, grammars.logits_processor(compiled), prompt="Who?")
    assert first == second


def test_an_answer_cut_by_max_tokens_is_unfinished_json(demo_model_and_processor, grammars):
    compiled = grammars.compile(parse_response_format(json_schema_format("n", SCHEMAS["nested_objects"])))
    processor = grammars.logits_processor(compiled)
    ids = generate(demo_model_and_processor, processor, max_new_tokens=6)
    assert len(ids) == 6 and ids[-1] not in EOS and not processor.complete
    with pytest.raises(ValueError):
        json.loads(answer(demo_model_and_processor, ids))


def test_once_the_json_is_complete_only_the_end_tokens_remain(grammars, demo_model_and_processor):
    tokenizer = demo_model_and_processor[1].tokenizer
    processor = grammars.logits_processor(grammars.compile(ResponseFormat("json_object")))
    prompt = [1, 2, 3]
    ids = list(prompt)
    for token in [*tokenizer.encode('{"a": 1}'), EOS[0]]:
        scores = processor(torch.tensor([ids]), torch.zeros(1, grammars.vocab_size))
        assert torch.isfinite(scores[0, token])  # the text we feed is allowed at every step
        ids.append(token)
    scores = processor(torch.tensor([ids]), torch.zeros(1, grammars.vocab_size))
    assert processor.complete
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == sorted(EOS)
