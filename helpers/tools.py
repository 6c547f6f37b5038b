"""Function calling: check OpenAI ``tools`` / ``tool_choice``, constrain calls, parse ``<tool_call>`` blocks.

Qwen3-VL's own chat template shows the tools to the model (one JSON line each in
a ``<tools>`` block of the system turn) and the model answers a call as::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

This module turns the request's ``tools`` / ``tool_choice`` into a
:class:`ToolRequest` (400 for what is wrong), builds the xgrammar structural
tag that forces the call's shape and the function's parameters schema for
``required`` and a named function (``auto`` lets the model choose, but a call it
starts must still be valid), and parses the answer into OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from helpers.errors import RequestError
from helpers.structured import MAX_WHITESPACE_RUN, check_schema

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 64
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CALL_BEGIN = CALL_OPEN + '\n{"name": "'  # how the chat template writes a call, and the grammar forces it
ARGUMENTS_PREFIX = '", "arguments": '
CALL_END = "}\n" + CALL_CLOSE
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        """The tool as the chat template receives it (the OpenAI shape)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolRequest:
    """Checked ``tools`` + ``tool_choice``: ``choice`` is none, auto, required or function (``forced``)."""

    tools: tuple[Tool, ...]
    choice: str
    forced: str | None = None
    parallel: bool = True

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The ``tools`` argument for ``apply_chat_template``; ``none`` hides them, as if none were given."""
        if self.choice == "none":
            return None
        return [tool.as_openai() for tool in self.tools]

    def structural_tag(self) -> dict[str, Any] | None:
        """The xgrammar structural tag that constrains the answer; ``None`` for ``none``."""
        if self.choice == "none":
            return None
        if self.choice == "function":
            tool = next(t for t in self.tools if t.name == self.forced)
            return {"type": "structural_tag", "format": _call_tag(tool)}
        tags = [_call_tag(tool) for tool in self.tools]
        if self.choice == "required":  # calls only, one per line, at least one
            fmt = {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": "\n",
                "at_least_one": True,
                "stop_after_first": not self.parallel,
            }
        else:  # auto: free text, and any call it starts is a valid one
            fmt = {
                "type": "triggered_tags",
                "triggers": [CALL_OPEN],
                "tags": tags,
                "stop_after_first": not self.parallel,
            }
        return {"type": "structural_tag", "format": fmt}

    @property
    def forces_calls(self) -> bool:
        """``required`` or a named function: the grammar allows calls only, so text is never part of it."""
        return self.choice in ("required", "function")

    def names(self) -> set[str]:
        return {tool.name for tool in self.tools}


def _call_tag(tool: Tool) -> dict[str, Any]:
    return {
        "type": "tag",
        "begin": CALL_BEGIN + tool.name + ARGUMENTS_PREFIX,
        "content": {
            "type": "json_schema",
            "json_schema": tool.parameters,
            "max_whitespace_cnt": MAX_WHITESPACE_RUN,
        },
        "end": CALL_END,
    }


def _plain(value: Any) -> Any:
    """pydantic models (server, openai SDK) as plain dicts."""
    return value.model_dump(exclude_none=True, by_alias=True) if hasattr(value, "model_dump") else value


def parse_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolRequest | None:
    """Check OpenAI ``tools`` / ``tool_choice`` / ``parallel_tool_calls``; ``None`` when no tools are given.

    Raises :class:`RequestError` (400) naming the field: a malformed tool, a
    duplicate or invalid name, a parameters schema that is not a JSON Schema
    object, an unknown ``tool_choice`` or one naming a function not in ``tools``.
    """
    tool_choice = _plain(tool_choice)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise RequestError("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    if tools is None or (isinstance(tools, (list, tuple)) and not tools):
        if tool_choice not in (None, "none"):
            raise RequestError("tool_choice needs tools: send the functions in tools", param="tool_choice")
        return None
    if not isinstance(tools, (list, tuple)):
        raise RequestError("tools must be a list of function tools", param="tools")
    if len(tools) > MAX_TOOLS:
        raise RequestError(f"at most {MAX_TOOLS} tools are accepted", param="tools")
    checked: list[Tool] = []
    for i, tool in enumerate(tools):
        checked.append(_tool(_plain(tool), f"tools[{i}]"))
        if checked[-1].name in {t.name for t in checked[:-1]}:
            raise RequestError(
                f"tools[{i}]: duplicate function name {checked[-1].name!r}", param=f"tools[{i}]"
            )
    names = {t.name for t in checked}
    forced = None
    if tool_choice is None:
        choice = "auto"
    elif tool_choice in ("none", "auto", "required"):
        choice = tool_choice
    elif isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        forced = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(forced, str):
            raise RequestError(
                'tool_choice must be {"type": "function", "function": {"name": ...}}', param="tool_choice"
            )
        if forced not in names:
            raise RequestError(
                f"tool_choice names {forced!r}, which is not in tools ({', '.join(sorted(names))})",
                param="tool_choice.function.name",
            )
        choice = "function"
    else:
        raise RequestError(
            'tool_choice must be "none", "auto", "required" or'
            ' {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return ToolRequest(tuple(checked), choice, forced, parallel_tool_calls is not False)


def _tool(tool: Any, where: str) -> Tool:
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        raise RequestError(
            f'{where} must be {{"type": "function", "function": {{...}}}}', param=f"{where}.type"
        )
    function = _plain(tool.get("function"))
    if not isinstance(function, Mapping):
        raise RequestError(f"{where}.function must be an object", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise RequestError(
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-'; got {name!r}",
            param=f"{where}.function.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise RequestError(
            f"{where}.function.description must be a string", param=f"{where}.function.description"
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = NO_PARAMETERS
    else:
        check_schema(parameters, f"{where}.function.parameters")
        if parameters.get("type", "object") != "object":
            raise RequestError(
                f'{where}.function.parameters must describe an object ("type": "object")',
                param=f"{where}.function.parameters",
            )
    return Tool(name, description, parameters)


# ------------------------------------------------------------------ messages
def check_tool_calls(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (earlier turns), checked, in the shape the template renders."""
    if not isinstance(tool_calls, (list, tuple)):
        raise RequestError(f"{where} must be a list", param=where)
    calls = []
    for i, call in enumerate(tool_calls):
        here = f"{where}[{i}]"
        call = _plain(call)
        function = _plain(call.get("function")) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RequestError(
                f'{here} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                param=here,
            )
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments)
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                raise RequestError(
                    f"{here}.function.arguments must be a JSON object (as a string)",
                    param=f"{here}.function.arguments",
                )
        elif not isinstance(arguments, Mapping):
            raise RequestError(
                f"{here}.function.arguments must be a JSON string", param=f"{here}.function.arguments"
            )
        calls.append(
            {
                "id": call.get("id") or new_call_id(),
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls


def refuse_markup(*values: Any, specials: list[str] | None = None) -> None:
    """Refuse chat control tokens (``<|im_end|>`` ...) inside tool definitions or earlier calls (400).

    Message text is protected from such markup (helpers.markup); the tools' JSON
    goes through the template's ``tojson`` and cannot be, so it is refused instead.
    """
    text = json.dumps(values, ensure_ascii=False)
    for token in specials or ():
        if token in text:
            raise RequestError(
                f"tools and tool_calls must not contain the chat control token {token!r}", param="tools"
            )


# ------------------------------------------------------------------- answers
@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string (OpenAI)

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def deltas(self, index: int) -> list[dict[str, Any]]:
        """The call as OpenAI streams it: id, type and name first, then the arguments."""
        return [
            {
                "index": index,
                "id": self.id,
                "type": "function",
                "function": {"name": self.name, "arguments": ""},
            },
            {"index": index, "function": {"arguments": self.arguments}},
        ]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call_from(body: str) -> ToolCall | None:
    """The call in the text between ``<tool_call>`` and ``</tool_call>``, or None if it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), data["name"], json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str, forced: bool = False) -> tuple[str | None, list[ToolCall]]:
    """Split a whole answer into its text and its tool calls (the same rules as :class:`ToolCallStream`).

    The text is ``None`` when the answer was only calls (as OpenAI sends it).
    """
    stream = ToolCallStream(forced)
    events = [*stream.feed(text), *stream.finish()]
    content = "".join(value for kind, value in events if kind == "content")
    return (content or None) if stream.calls else content, stream.calls


class ToolCallStream:
    """Splits an answer, piece by piece as it streams, into text and finished tool calls.

    ``feed(piece)`` and then ``finish()`` yield ``("content", text)`` and
    ``("tool_call", ToolCall)`` events in order. Rules (also those of
    :func:`parse_tool_calls`, so streamed and whole answers agree):

    - a ``<tool_call>...</tool_call>`` block holding ``{"name", "arguments"}``
      is a call, and the whitespace around it is dropped;
    - a block that holds anything else, and an unclosed block (an answer cut
      by max_tokens), is text;
    - text that may still become ``<tool_call>`` is held back until it is known;
    - ``forced`` (``tool_choice`` ``required`` or a named function, where the
      grammar allows calls only): an unclosed block at the end is dropped, so an
      answer cut by max_tokens is the calls finished before the cut (maybe none)
      and never raw ``<tool_call>`` markup as text.
    """

    def __init__(self, forced: bool = False) -> None:
        self.forced = forced
        self.calls: list[ToolCall] = []
        self._buffer = ""  # undecided: a partial "<tool_call>" or an unclosed block
        self._held = ""  # trailing whitespace, dropped if a call follows
        self._after_call = False

    def feed(self, piece: str) -> Iterator[tuple[str, Any]]:
        self._buffer += piece
        while True:
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                cut = len(self._buffer) - _partial_suffix(self._buffer, CALL_OPEN)
                yield from self._text(self._buffer[:cut])
                self._buffer = self._buffer[cut:]
                return
            yield from self._text(self._buffer[:start])
            self._buffer = self._buffer[start:]
            end = self._buffer.find(CALL_CLOSE)
            if end < 0:
                return  # inside a block: wait for its end
            block = self._buffer[: end + len(CALL_CLOSE)]
            self._buffer = self._buffer[end + len(CALL_CLOSE) :]
            call = _call_from(block[len(CALL_OPEN) : -len(CALL_CLOSE)].strip())
            if call is None:
                yield from self._text(block)
                continue
            self._held = ""
            self._after_call = True
            self.calls.append(call)
            yield "tool_call", call

    def finish(self) -> Iterator[tuple[str, Any]]:
        rest, self._buffer = self._buffer, ""
        if self.forced and rest:
            return  # the call that max_tokens cut (and the separator before it)
        yield from self._text(rest)
        if self._held:
            yield "content", self._held
            self._held = ""

    def _text(self, text: str) -> Iterator[tuple[str, Any]]:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        body = text.rstrip()
        if body:
            yield "content", self._held + body
            self._held = text[len(body) :]
        else:
            self._held += text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
