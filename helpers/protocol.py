"""Request and response models of the server's API (OpenAI Chat Completions, plus the original routes).

Kept apart from the serving logic, as vLLM does, so the wire format can be
read in one place and appears correctly in ``/docs``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from helpers.errors import RequestError

# ---------------------------------------------------------------------- requests


class ChatMessage(BaseModel):
    """One turn. ``content`` is a string or a list of parts (text, image, image_url, video, video_url)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(examples=["user"])
    content: str | list[dict[str, Any]] | None = Field(
        default=None,
        examples=[
            [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "这张图里有什么？"},
            ]
        ],
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields of OpenAI's request this server does not implement: refused with a 400 that
# says what to do instead, never silently ignored.
NOT_IMPLEMENTED = {
    # Accepted by /v1/chat/completions (helpers.tools); only /generate, which returns text, refuses them.
    "tools": "tools are accepted on /v1/chat/completions only (this route returns text)",
    "tool_choice": "tools are accepted on /v1/chat/completions only (this route returns text)",
    "parallel_tool_calls": "tools are accepted on /v1/chat/completions only (this route returns text)",
    "functions": "function calling is not implemented by this server",
    "function_call": "function calling is not implemented by this server",
    "logprobs": "log probabilities are not returned by this server; vLLM (notebook 07) returns them",
    "top_logprobs": "log probabilities are not returned by this server; vLLM (notebook 07) returns them",
    "logit_bias": "logit_bias is not supported; use stop or presence_penalty instead",
    "audio": "audio output is not supported: Qwen3-VL reads text, images and videos and writes text",
    "modalities": "only text output is supported: leave modalities out",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "Qwen models have no reasoning effort levels; pick a Thinking model (or, for Qwen3.5,"
    " chat_template_kwargs.enable_thinking) instead",
    "web_search_options": "web search is not supported",
    "service_tier": 'this server has one tier: send "auto" or "default", or leave it out',
    "min_p": "min_p is not supported; use top_p / top_k",
    "ignore_eos": "ignore_eos is not supported",
}
# Values of those fields that ask for what the server does anyway (besides null and false): accepted.
ALREADY_SO = {"logit_bias": [{}], "service_tier": ["auto", "default"]}  # "auto": OpenAI's default tier
# Accepted and ignored: they change nothing about the answer.
HARMLESS = {"model", "user", "metadata", "store", "stream_options", "n"}


class SamplingFields(BaseModel):
    """The generation knobs both chat routes accept. Unknown fields are refused (400 naming them)."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, description="Most tokens to generate")
    temperature: float | None = Field(
        default=None, description="0 (or below 1e-5) = greedy; omitted = the model's default"
    )
    top_p: float | None = None
    top_k: int | None = Field(default=None, description="Qwen sampling parameter; -1 or 0 turns it off")
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(
        default=None,
        description="-2..2, OpenAI semantics; omitted = the server's default (1.5, Qwen's model card)",
    )
    frequency_penalty: float | None = Field(default=None, description="-2..2, OpenAI semantics")
    repetition_penalty: float | None = Field(
        default=None, description="> 0 (1 = off), transformers/vLLM semantics; prompt tokens count too"
    )
    response_format: dict[str, Any] | None = Field(
        default=None,
        description='{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}:'
        " JSON answers enforced by grammar-constrained decoding (helpers.structured)",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None,
        description='vLLM\'s extension; only {"enable_thinking": false} is read (Qwen3.5: answer without'
        " reasoning). Thinking models return their reasoning in reasoning_content",
    )

    @model_validator(mode="after")
    def _refuse_unknown_fields(self):
        for name, value in (self.model_extra or {}).items():
            if name in NOT_IMPLEMENTED:
                if value in (None, False) or value in ALREADY_SO.get(name, ()):
                    continue  # "off" or "default" is what we do anyway
                raise RequestError(f"{name} is not supported: {NOT_IMPLEMENTED[name]}", param=name)
            if name not in HARMLESS:
                raise RequestError(
                    f"unknown field {name!r}: this server does not implement it (see the README's list of "
                    "accepted fields)",
                    param=name,
                )
        return self

    def generation_params(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`helpers.engine.Engine.stream_chat`."""
        return {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "response_format": self.response_format,
            "chat_template_kwargs": self.chat_template_kwargs,
        }


class ChatCompletionRequest(SamplingFields):
    """The OpenAI Chat Completions request, with Qwen's ``top_k`` and transformers' ``repetition_penalty``."""

    model: str | None = Field(
        default=None, description="Ignored: the server answers with the model it serves"
    )
    max_completion_tokens: int | None = Field(
        default=None, description="Newer name of max_tokens; wins over it"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, description="Only 1 is supported")
    tools: list[dict[str, Any]] | None = Field(
        default=None, description='OpenAI function tools: [{"type": "function", "function": {"name", ...}}]'
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description='"none", "auto" (default with tools), "required" or a named function'
    )
    parallel_tool_calls: bool | None = Field(default=None, description="false: at most one call")

    def generation_params(self) -> dict[str, Any]:
        params = super().generation_params()
        if self.max_completion_tokens is not None:
            params["max_new_tokens"] = self.max_completion_tokens
        params["tools"] = self.tools
        params["tool_choice"] = self.tool_choice
        params["parallel_tool_calls"] = self.parallel_tool_calls
        return params


class GenerateRequest(SamplingFields):
    """The original tutorial's request: messages plus a few sampling knobs."""


# --------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON object in a string (OpenAI)")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(
        description="The answer text; null when the answer is only tool calls, or a Thinking model's"
        " answer was cut before </think>"
    )
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = Field(
        default=None, description="Thinking models: the reasoning before </think> (helpers.reasoning)"
    )
    reasoning: str | None = Field(default=None, description="The same text under vLLM 0.32's name for it")


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    """The OpenAI response object, plus ``response`` (the answer text) for the original tutorial's clients."""

    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    response: str = Field(description="The answer text (compatibility with the original tutorial)")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # Thinking models: reasoning deltas come before content deltas
    reasoning: str | None = None  # the same text under vLLM 0.32's name
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None,
        description='[{"index", "id", "type", "function": {"name", "arguments"}}], OpenAI deltas',
    )


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class GenerateResponse(BaseModel):
    response: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen3vl-tutorial"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    detail = ErrorDetail(
        message=message, type=ERROR_TYPES.get(status, "invalid_request_error"), param=param, code=code
    )
    return ErrorResponse(error=detail).model_dump()
