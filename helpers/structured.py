"""Structured output: answers that always parse as JSON and match a schema, by grammar-constrained decoding.

``response_format`` (OpenAI Chat Completions) becomes a grammar, compiled once per
schema with xgrammar (the library vLLM and SGLang use). At every generation step
:class:`GrammarLogitsProcessor` sets the score of every token the grammar does
not allow next to ``-inf``, so even a model with random weights can only write
valid JSON; once the JSON is complete, only the end-of-answer tokens remain::

    grammars = Grammars.for_model(model, processor.tokenizer)
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "box", "schema": {...}}})
    processor = grammars.logits_processor(grammars.compile(fmt))
    model.generate(**inputs, logits_processor=[processor])

An answer cut short by ``max_tokens`` (finish reason ``length``) is unfinished
JSON: check the finish reason before parsing, as with OpenAI.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from helpers.errors import RequestError

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for json_schema.name
# Keywords xgrammar 0.2 accepts but does not enforce: refused, so that every
# answer really validates against the schema it was asked for.
UNENFORCED_KEYWORDS = ("not", "if", "then", "else", "uniqueItems")
# Inside tool calls, whitespace between JSON tokens is free (models like to pretty-print)
# but a run of it is capped so that a model cannot fill max_tokens with blanks.
MAX_WHITESPACE_RUN = 20
CACHE_SIZE = 64  # compiled grammars kept per model


@dataclass(frozen=True)
class ResponseFormat:
    """A checked ``response_format``: ``text``, ``json_object`` or ``json_schema`` (with its schema)."""

    type: str
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None

    @property
    def constrained(self) -> bool:
        return self.type != "text"

    def key(self) -> str:
        """The cache key: the canonical JSON of what is compiled."""
        return json.dumps([self.type, self.schema], sort_keys=True, ensure_ascii=False)


def parse_response_format(value: Any) -> ResponseFormat | None:
    """Check an OpenAI ``response_format`` value; ``None`` when absent. Raises a 400 naming the field."""
    if value is None:
        return None
    if hasattr(value, "model_dump"):  # pydantic models from the server or the openai SDK
        value = value.model_dump(exclude_none=True, by_alias=True)
    if not isinstance(value, dict):
        raise RequestError("response_format must be an object", param="response_format")
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise RequestError(
            f"response_format.type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}; got {kind!r}",
            param="response_format.type",
        )
    if kind != "json_schema":
        return ResponseFormat(kind)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(
            'response_format.json_schema must be an object {"name", "schema", "strict"}',
            param="response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise RequestError(
            "response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'",
            param="response_format.json_schema.name",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise RequestError(
            "response_format.json_schema.strict must be true or false",
            param="response_format.json_schema.strict",
        )
    schema = spec.get("schema")
    if schema is None:  # OpenAI allows leaving it out: any JSON object
        return ResponseFormat("json_object", name=name, strict=strict)
    check_schema(schema, "response_format.json_schema.schema")
    return ResponseFormat("json_schema", schema=schema, name=name, strict=strict)


def check_schema(schema: Any, param: str) -> None:
    """Refuse a non-schema, or a keyword the grammar cannot enforce (a 400 naming ``param``)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise RequestError(f"{param} must be a JSON Schema object", param=param)
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise RequestError(
            f"{param} is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}", param=param
        ) from None
    for path, node in _subschemas(schema, ""):
        for keyword in UNENFORCED_KEYWORDS:
            if keyword in node:
                raise RequestError(
                    f"{param}: the keyword {keyword!r} (at {path or '/'}) is not supported by constrained"
                    f" decoding; supported: type, properties, required, items, enum, const, anyOf, $ref,"
                    f" minimum/maximum, minLength/maxLength, pattern, format, minItems/maxItems",
                    param=param,
                )
        if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
            raise RequestError(
                f"{param}: allOf with more than one schema (at {path or '/'}) is not supported by"
                " constrained decoding; merge them into one schema",
                param=param,
            )


def _subschemas(node: Any, path: str):
    """Every dict inside a schema, with a JSON-pointer-like path (keywords' values included)."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples"):  # values, not schemas
                continue
            yield from _subschemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _subschemas(value, f"{path}/{i}")


def _library_message(exc: Exception) -> str:
    """xgrammar's error text without its C++ source location: ``[12:00:00] file.cc:12: msg`` -> ``msg``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", text)


class Grammars:
    """Compiles grammars for one model's vocabulary and caches them (one per schema).

    The vocabulary is the model's: its output layer has more rows (151,936 for
    Qwen3-VL) than the tokenizer has tokens (151,669); the extra rows are never
    allowed. ``stop_token_ids`` end the answer once the grammar is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compilations = 0  # how many grammars were actually compiled (tests, bench)

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any) -> Grammars:
        """Grammars for ``model``'s output vocabulary and its generation_config end tokens."""
        vocab_size = model.get_output_embeddings().weight.shape[0]
        eos = model.generation_config.eos_token_id
        return cls(tokenizer, vocab_size, list(eos) if isinstance(eos, (list, tuple)) else [eos])

    def compile(self, response_format: ResponseFormat) -> Any:
        """The compiled grammar for a JSON ``response_format`` (cached). Raises a 400 if it cannot compile."""
        if response_format.type not in ("json_object", "json_schema"):
            raise ValueError(f"{response_format.type!r} needs no grammar")
        # json_object: any object (not an array), with any keys; json_schema: exactly the
        # schema, where an object without "additionalProperties" gets no extra keys.
        # One JSON layout (", " and ": " between tokens, no other whitespace): free
        # whitespace lets a model (the demo's random weights at once, real models when
        # unsure) spend max_tokens on blanks and never close the object.
        schema = json.dumps(response_format.schema or {"type": "object"}, ensure_ascii=False)
        strict = response_format.type == "json_schema"
        try:
            return self._cached(
                response_format.key(),
                lambda: self.compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=strict),
            )
        except RequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError for what it cannot compile
            raise RequestError(
                f"response_format.json_schema.schema cannot be used: {_library_message(exc)}",
                param="response_format.json_schema.schema",
            ) from None

    def compile_structural_tag(self, tag: dict[str, Any], param: str = "tools") -> Any:
        """A compiled xgrammar structural tag (``{"type": "structural_tag", "format": ...}``), cached."""
        key = json.dumps(["structural_tag", tag], sort_keys=True, ensure_ascii=False)
        try:
            return self._cached(key, lambda: self.compiler.compile_structural_tag(json.dumps(tag)))
        except Exception as exc:
            raise RequestError(f"{param} cannot be used: {_library_message(exc)}", param=param) from None

    def _cached(self, key: str, build) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        compiled = build()  # outside the lock: compiling a big schema may take a while
        with self._lock:
            self.compilations += 1
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def logits_processor(self, compiled: Any) -> GrammarLogitsProcessor:
        """A fresh processor for one ``generate`` call (it keeps the grammar state of that answer)."""
        return GrammarLogitsProcessor(compiled, self.vocab_size, self.stop_token_ids)


class GrammarLogitsProcessor:
    """A transformers logits processor (batch size 1) that lets through only what the grammar allows.

    Each call first feeds the matcher the token chosen at the previous step,
    then masks the scores for the next one. Pass it in ``logits_processor=``:
    ``generate`` runs those before temperature / top-k / top-p, so sampling
    only ever chooses among allowed tokens. Use one instance per ``generate``.
    """

    def __init__(self, compiled: Any, vocab_size: int, stop_token_ids: list[int] | None = None) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.stop_token_ids = list(stop_token_ids or ())
        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._seen: int | None = None  # length of input_ids at the previous call

    @property
    def complete(self) -> bool:
        """True once the grammar has accepted an end token (the answer is finished and valid)."""
        return self.matcher.is_terminated()

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[0] != 1:
            raise ValueError("GrammarLogitsProcessor handles one sequence at a time (batch size 1)")
        if self._seen is not None:
            for token in input_ids[0, self._seen :].tolist():
                if not self.matcher.is_terminated() and not self.matcher.accept_token(token):
                    raise RuntimeError(f"token {token} was generated although the grammar forbids it")
        self._seen = input_ids.shape[1]
        if self.matcher.is_terminated():  # generate() stops at the end token; if not, only it again
            allowed = scores[:, self.stop_token_ids].clone()
            scores[:] = -torch.inf
            scores[:, self.stop_token_ids] = allowed
            return scores
        self.matcher.fill_next_token_bitmask(self.bitmask)
        if scores.device.type == "cpu":
            self._xgr.apply_token_bitmask_inplace(scores, self.bitmask, vocab_size=scores.shape[-1])
        else:  # pure torch ops: no Triton / CUDA compiler needed on the learner's machine
            self._xgr.apply_token_bitmask_inplace(
                scores, self.bitmask.to(scores.device, non_blocking=True), backend="torch_native"
            )
        return scores
