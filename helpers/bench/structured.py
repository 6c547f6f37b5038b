"""The cost of grammar-constrained decoding (response_format json_schema), in process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from helpers.bench.stats import median

if TYPE_CHECKING:
    from helpers.engine import Engine


# ------------------------------------------------------------------ the run
# A JSON schema whose answers run long (a list of boxes, as in grounding): enough tokens
# to measure decoding speed even with the demo model's random weights.
BENCH_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 16},
            "bbox_2d": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                "minItems": 4,
                "maxItems": 4,
            },
        },
        "required": ["label", "bbox_2d"],
    },
    "minItems": 1,
    "maxItems": 8,
}


def structured_output_speed(
    engine: Engine, messages: list[dict[str, Any]], repeats: int, max_tokens: int
) -> dict[str, Any]:
    """Greedy tokens/s without and with a JSON schema (interleaved pairs), and the schema's compile time."""
    from helpers.structured import parse_response_format

    fmt = {"type": "json_schema", "json_schema": {"name": "boxes", "schema": BENCH_SCHEMA}}
    # A schema this run has never compiled (the cache key is the schema), for an honest first compile.
    fresh = {**BENCH_SCHEMA, "description": f"bench {time.time_ns()}"}
    grammars = engine.grammars  # built outside the timing: the tokenizer's tables, once per model
    start = time.perf_counter()
    grammars.compile(
        parse_response_format({"type": "json_schema", "json_schema": {"name": "f", "schema": fresh}})
    )
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    grammars.compile(
        parse_response_format({"type": "json_schema", "json_schema": {"name": "f", "schema": fresh}})
    )
    cached_s = time.perf_counter() - start
    plain: list[float] = []
    constrained: list[float] = []
    tokens = 0
    for _ in range(repeats):
        for speeds, extra in ((plain, {}), (constrained, {"response_format": fmt})):
            result = engine.chat(messages, max_new_tokens=max_tokens, temperature=0, **extra)
            speeds.append(result.usage.completion_tokens / result.seconds)
            tokens = result.usage.completion_tokens if extra else tokens
    plain_speed, schema_speed = median(plain), median(constrained)
    return {
        "plain_tokens_per_s": plain_speed,
        "schema_tokens_per_s": schema_speed,
        "slowdown": plain_speed / schema_speed - 1,
        "schema_tokens": tokens,
        "compile_ms": compile_s * 1000,
        "cached_compile_ms": cached_s * 1000,
    }
