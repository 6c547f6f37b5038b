"""README promise: under json_schema, an object without ``additionalProperties`` gets no extra keys."""

from __future__ import annotations

import json

import pytest
from conftest import generate_ids

from helpers.structured import parse_response_format

# Both keys optional: the grammar decides alone which keys appear.
OPEN_OBJECT = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
}


@pytest.mark.parametrize("seed", [None, 0, 1, 2], ids=["greedy", "seed0", "seed1", "seed2"])
def test_an_object_without_additional_properties_gets_only_its_own_keys(
    demo_model_and_processor, grammars, seed
):
    fmt = parse_response_format(
        {"type": "json_schema", "json_schema": {"name": "trip", "schema": OPEN_OBJECT, "strict": True}}
    )
    messages = [{"role": "user", "content": "Plan a trip. Reply in JSON."}]
    ids = generate_ids(
        demo_model_and_processor, messages, grammars.logits_processor(grammars.compile(fmt)), seed
    )
    answer = json.loads(demo_model_and_processor[1].tokenizer.decode(ids, skip_special_tokens=True))
    assert isinstance(answer, dict) and set(answer) <= {"city", "days"}, answer
